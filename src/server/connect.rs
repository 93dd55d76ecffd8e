//! Outbound connections: a plain non-blocking `connect()` per address (no bind-before-connect,
//! which exhausts ephemeral ports under load; with an egress address, IP_BIND_ADDRESS_NO_PORT
//! defers the port choice to connect time), and Happy Eyeballs across every address
//! (RFC 8305 section 5): start the next attempt when the previous one fails or after the
//! connection attempt delay, keep earlier attempts running, take the first to succeed.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::net::{
    established, retry_writable, send_now, setsockopt_int, shutdown_fd, write_ready, Dir, Net,
    Stream,
};

/// How to connect.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Source address for outbound sockets.
    pub egress_ip: Option<IpAddr>,
    /// RFC 8305 connection attempt delay.
    pub attempt_delay: Duration,
    /// TCP_FASTOPEN_CONNECT: with a Fast Open cookie cached for the destination, `connect`
    /// returns at once and the SYN waits for the first bytes, which it carries
    /// ([`send_first`]). Without a cookie (or with Fast Open off in
    /// `net.ipv4.tcp_fastopen`) the connect is an ordinary one.
    pub fast_open: bool,
}

/// Connects to the first address of `addrs` that answers, racing them per RFC 8305. Returns
/// the stream and the address it reached. On failure, the error of the last attempt that
/// failed (refusals are preferred over other errors, as they are the most telling).
pub async fn happy_eyeballs<N: Net>(
    addrs: &[SocketAddr],
    opts: &ConnectOptions,
) -> io::Result<(N::Stream, SocketAddr)> {
    if let [only] = addrs {
        return connect_one::<N>(*only, opts).await.map(|s| (s, *only));
    }
    let mut next = 0;
    let mut attempts: Vec<Attempt> = Vec::with_capacity(addrs.len());
    let mut error: Option<io::Error> = None;
    let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));

    loop {
        enum Wake {
            Start,
            Won(usize),
            Failed(usize, io::Error),
        }
        let wake = std::future::poll_fn(|cx| {
            for (i, a) in attempts.iter_mut().enumerate() {
                if let Poll::Ready(r) = a.fut.as_mut().poll(cx) {
                    return Poll::Ready(match r {
                        Ok(()) => Wake::Won(i),
                        Err(e) => Wake::Failed(i, e),
                    });
                }
            }
            if next < addrs.len() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Start);
            }
            Poll::Pending
        })
        .await;

        match wake {
            Wake::Won(i) => {
                let winner = attempts.swap_remove(i);
                // The losers are aborted as `attempts` drops.
                drop(attempts);
                let addr = winner.addr;
                return Ok((winner.into_stream::<N>()?, addr));
            }
            Wake::Failed(i, e) => {
                let failed = attempts.swap_remove(i);
                tracing::debug!(addr = %failed.addr, error = %e, "connect attempt failed");
                if !matches!(&error, Some(prev) if prev.kind() == io::ErrorKind::ConnectionRefused)
                {
                    error = Some(e);
                }
                // A failure starts the next attempt at once (RFC 8305 section 5).
                timer.as_mut().reset(tokio::time::Instant::now());
            }
            Wake::Start => {
                let addr = addrs[next];
                next += 1;
                match start::<N>(addr, opts) {
                    Ok(a) => attempts.push(a),
                    Err(e) => error = Some(e),
                }
                let delay = if attempts.is_empty() {
                    Duration::ZERO
                } else {
                    opts.attempt_delay
                };
                timer.as_mut().reset(tokio::time::Instant::now() + delay);
            }
        }
        if attempts.is_empty() && next >= addrs.len() {
            return Err(error.unwrap_or_else(|| io::Error::other("no address to connect to")));
        }
    }
}

/// Connects to one address (aborted cleanly if this future is dropped by a timeout).
pub async fn connect_one<N: Net>(addr: SocketAddr, opts: &ConnectOptions) -> io::Result<N::Stream> {
    let mut attempt = start::<N>(addr, opts)?;
    attempt.fut.as_mut().await?;
    attempt.into_stream::<N>()
}

/// One connection attempt of a race. Dropping it aborts it: `shutdown` ends a connect in
/// progress (the socket goes back to unconnected and the pending operation completes), so a
/// lost or timed-out attempt leaves neither a half-open connection nor an in-flight io_uring
/// operation behind.
struct Attempt {
    addr: SocketAddr,
    sock: Option<Rc<Socket>>,
    fut: Pin<Box<dyn Future<Output = io::Result<()>>>>,
}

impl Attempt {
    /// The stream of an attempt whose connect succeeded.
    fn into_stream<N: Net>(mut self) -> io::Result<N::Stream> {
        let sock = self.sock.take().and_then(|s| Rc::try_unwrap(s).ok());
        let sock = sock.ok_or_else(|| io::Error::other("connect attempt still referenced"))?;
        N::stream(sock)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(s) = self.sock.take() {
            shutdown_fd(s.as_raw_fd(), Shutdown::Both);
        }
    }
}

fn start<N: Net>(addr: SocketAddr, opts: &ConnectOptions) -> io::Result<Attempt> {
    let sock = Rc::new(socket(addr, opts, N::NONBLOCKING)?);
    let fut = Box::pin(N::connect(sock.clone(), SockAddr::from(addr)));
    Ok(Attempt {
        addr,
        sock: Some(sock),
        fut,
    })
}

/// Sends a fresh connection's first bytes and waits until the destination has answered the
/// connect. On a socket whose connect was deferred by TCP Fast Open the bytes go in the SYN,
/// so the answer carries the first response; an empty `data` sends a plain SYN. A refusal
/// is returned as the connect error it is.
pub async fn send_first<S: Stream>(s: &S, data: &[u8]) -> io::Result<()> {
    // The first send starts a deferred connect: its SYN carries what fits of the data, or
    // (no usable cookie: EINPROGRESS) none of it, the rest going once connected. On a
    // connected socket it is an ordinary send.
    let sent = match s.direct(Dir::Write, || send_now(s.raw_fd(), data)) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => 0,
        Err(e) => return Err(e),
    };
    retry_writable(s, || s.direct(Dir::Write, || established(s.raw_fd()))).await?;
    write_ready(s, &data[sent..]).await
}

/// A TCP socket for `addr` with TCP_NODELAY, bound to the egress address if one is set (same
/// family only).
fn socket(addr: SocketAddr, opts: &ConnectOptions, nonblocking: bool) -> io::Result<Socket> {
    let ty = if nonblocking {
        Type::STREAM.nonblocking()
    } else {
        Type::STREAM
    };
    let sock = Socket::new(Domain::for_address(addr), ty.cloexec(), Some(Protocol::TCP))?;
    sock.set_nodelay(true)?;
    if opts.fast_open {
        // Not fatal where the kernel lacks it (before 4.11): the connect is then ordinary.
        let fd = sock.as_raw_fd();
        if let Err(e) = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, 1) {
            tracing::debug!(error = %e, "TCP_FASTOPEN_CONNECT unavailable");
        }
    }
    if let Some(ip) = opts.egress_ip {
        if ip.is_ipv4() != addr.is_ipv4() {
            return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        }
        set_bind_address_no_port(&sock)?;
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    Ok(sock)
}

/// IP_BIND_ADDRESS_NO_PORT: `bind` fixes only the address; the port is chosen at `connect`,
/// per destination, so egress-bound connections do not exhaust the ephemeral range.
fn set_bind_address_no_port(sock: &Socket) -> io::Result<()> {
    setsockopt_int(
        sock.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::net::epoll::Epoll;
    use crate::server::net::uring::Uring;
    use std::time::Instant;

    /// A loopback address whose connects hang like a blackholed host's: a listener that never
    /// accepts, its queue already full, so further SYNs are dropped.
    fn blackhole() -> (Socket, Vec<std::net::TcpStream>, SocketAddr) {
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let mut fill = Vec::new();
        for _ in 0..3 {
            let s = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None).unwrap();
            let _ = s.connect(&addr.into());
            fill.push(s.into());
        }
        std::thread::sleep(Duration::from_millis(50));
        (l, fill, addr)
    }

    fn opts() -> ConnectOptions {
        ConnectOptions {
            egress_ip: None,
            attempt_delay: Duration::from_millis(100),
            fast_open: false,
        }
    }

    async fn falls_back_past_dead_and_slow_addresses<N: Net>() {
        let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let good_addr = good.local_addr().unwrap();
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (_l, _fill, hole) = blackhole();

        // Refused first: the next attempt starts at once, not after the delay.
        let t0 = Instant::now();
        let (_s, via) = happy_eyeballs::<N>(&[refused, good_addr], &opts())
            .await
            .unwrap();
        assert_eq!(via, good_addr);
        assert!(
            t0.elapsed() < Duration::from_millis(90),
            "{:?}",
            t0.elapsed()
        );

        // Blackholed first: the next attempt starts after the attempt delay, and wins.
        let t0 = Instant::now();
        let (_s, via) = happy_eyeballs::<N>(&[hole, refused, good_addr], &opts())
            .await
            .unwrap();
        assert_eq!(via, good_addr);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(90) && took < Duration::from_secs(2),
            "{took:?}"
        );

        // Everything refused: the refusal is reported.
        let Err(e) = happy_eyeballs::<N>(&[refused, refused], &opts()).await else {
            panic!("connected to a closed port");
        };
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn happy_eyeballs_epoll() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new()
            .block_on(&rt, falls_back_past_dead_and_slow_addresses::<Epoll>());
    }

    #[test]
    fn happy_eyeballs_uring() {
        if crate::server::net::uring::unavailable_reason().is_some() {
            eprintln!("io_uring unavailable here; skipped");
            return;
        }
        tokio_uring::start(falls_back_past_dead_and_slow_addresses::<Uring>());
    }

    #[test]
    fn egress_ip_sets_the_source_address() {
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = target.local_addr().unwrap();
        let opts = ConnectOptions {
            egress_ip: Some("127.0.0.2".parse().unwrap()),
            ..opts()
        };
        tokio_uring::start(async {
            let _s = connect_one::<Uring>(addr, &opts).await.unwrap();
        });
        let (_s, peer) = target.accept().unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
    }
}
