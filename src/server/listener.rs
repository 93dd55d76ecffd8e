//! Listening sockets, built with socket2 so the backlog is ours to choose (tokio-uring's own
//! `bind` fixes it at 1024) and every worker gets its own SO_REUSEPORT socket, so the kernel
//! spreads new connections across workers without any shared accept queue.

use std::io;
use std::net::SocketAddr;

use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::net::setsockopt_int;

/// Builds a non-blocking listener on `addr` with SO_REUSEADDR, SO_REUSEPORT, TCP_NODELAY
/// (inherited by accepted sockets) and the given backlog. IPv6 listeners are IPv6-only so that
/// `[::]:1080` and `0.0.0.0:1080` can both be given.
pub fn bind(
    addr: SocketAddr,
    backlog: u32,
    defer_accept_secs: u32,
    fastopen: u32,
) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nodelay(true)?;
    // A SOCKS client always speaks first: let the kernel complete the accept only once the
    // greeting has arrived, so the first read finds data and a silent connection costs no
    // wakeup. Connections that stay silent are still accepted after the timeout (and then
    // closed by the handshake timeout).
    setsockopt_int(
        sock.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        defer_accept_secs.min(i32::MAX as u32) as libc::c_int,
    )?;
    if fastopen > 0 {
        // Server-side TCP Fast Open (`--listen-fastopen`): a client's SYN may carry its first
        // message (a SOCKS 6 request with its initial data), accepted with a cookie. Takes
        // effect where net.ipv4.tcp_fastopen has bit 2.
        setsockopt_int(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            fastopen.min(i32::MAX as u32) as libc::c_int,
        )?;
    }
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(sock.into())
}

/// Binds one listener per worker for every address. The first worker's socket for an address
/// given with port 0 fixes the port the others then share.
pub fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
    backlog: u32,
    defer_accept_secs: u32,
    fastopen: u32,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    for &addr in addrs {
        let first = bind(addr, backlog, defer_accept_secs, fastopen)
            .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
        let actual = first.local_addr()?;
        per_worker[0].push(first);
        for list in per_worker.iter_mut().skip(1) {
            list.push(bind(actual, backlog, defer_accept_secs, fastopen)?);
        }
    }
    Ok(per_worker)
}

/// Builds a non-blocking UDP socket on `addr` for a UDP port map, with SO_REUSEADDR and
/// SO_REUSEPORT (the kernel then picks one worker's socket per sender address and port, so a
/// client's flow stays on one worker) and 1 MiB socket buffers asked for.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // A burst waits in the kernel rather than being dropped there (capped by rmem_max).
    let _ = sock.set_recv_buffer_size(1 << 20);
    let _ = sock.set_send_buffer_size(1 << 20);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// One UDP socket per worker on `addr`; port 0 is fixed by the first.
pub fn bind_udp_all(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let first = bind_udp(addr).map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind_udp(actual)?);
    }
    Ok(all)
}
