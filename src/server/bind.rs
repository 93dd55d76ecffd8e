//! BIND (RFC 1928 section 4, and SOCKS4): listen on an ephemeral port on the proxy's outward
//! address, accept exactly one inbound connection, then relay it like a CONNECT. The session
//! sends the two replies; this module does the socket work.
//!
//! The outward address is `--egress-ip` when set, else the local address the kernel would use
//! to reach the expected peer (a route lookup), else the control connection's local address.
//! When DST.ADDR names an expected peer (not 0.0.0.0 or ::), connections from any other
//! address are reset and the wait goes on; only the first connection from the expected peer
//! is taken, and the listening socket is closed at once.

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info};

use super::net::{shutdown_fd, Net, Stream};
use super::worker::WorkerCtx;
use crate::proto::{ReplyCode, TargetAddr};

/// Why a BIND did not get its connection.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The expected peer's name did not resolve.
    #[error("expected peer does not resolve: {0}")]
    Resolve(io::Error),
    /// The listening socket could not be opened.
    #[error("cannot listen: {0}")]
    Listen(io::Error),
    /// Accepting failed.
    #[error("accept failed: {0}")]
    Accept(io::Error),
    /// Nobody connected in time.
    #[error("no inbound connection within {0:?}")]
    Timeout(Duration),
    /// The client closed its control connection while waiting.
    #[error("client closed the connection while waiting")]
    ClientClosed,
}

impl BindError {
    /// The failure reply this error deserves.
    pub fn reply(&self) -> ReplyCode {
        match self {
            BindError::Resolve(_) => ReplyCode::HostUnreachable,
            _ => ReplyCode::GeneralFailure,
        }
    }
}

/// A BIND waiting for its connection.
pub struct Pending<N: Net> {
    listener: N::Listener,
    fd: std::os::fd::RawFd,
    /// Where the proxy listens (the first reply's BND).
    pub addr: SocketAddr,
    /// The peers allowed to connect; `None` for any.
    expected: Option<Vec<IpAddr>>,
}

/// Opens the listening socket for a BIND whose request named `target`, on a control
/// connection accepted at `control_local`.
pub async fn listen<N: Net>(
    ctx: &WorkerCtx,
    control_local: SocketAddr,
    target: &TargetAddr,
    ipv4_only: bool,
) -> Result<Pending<N>, BindError> {
    let expected: Option<Vec<IpAddr>> = match target {
        TargetAddr::Ip(a) if a.ip().is_unspecified() => None,
        TargetAddr::Ip(a) => Some(vec![a.ip().to_canonical()]),
        TargetAddr::Domain(host, port) => {
            let lookup = ctx.resolver.resolve(host, *port);
            let addrs = tokio::time::timeout(ctx.config.connect_timeout, lookup)
                .await
                .map_err(|_| BindError::Resolve(io::ErrorKind::TimedOut.into()))?
                .map_err(BindError::Resolve)?;
            Some(addrs.into_iter().map(|a| a.ip().to_canonical()).collect())
        }
    };
    let mut ip = outward_ip(ctx, control_local.ip().to_canonical(), expected.as_deref());
    if ipv4_only && ip.is_ipv6() {
        // A SOCKS4 reply can only name an IPv4 address: listen on every IPv4 address and
        // reply 0.0.0.0, which tells the client to use the proxy's own address.
        ip = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    }
    let listener = open_listener(SocketAddr::new(ip, 0)).map_err(BindError::Listen)?;
    let addr = listener
        .local_addr()
        .map_err(BindError::Listen)?
        .as_socket()
        .ok_or_else(|| BindError::Listen(io::Error::other("not an IP socket")))?;
    let std: std::net::TcpListener = listener.into();
    let fd = std.as_raw_fd();
    let listener = N::listener(std).map_err(BindError::Listen)?;
    Ok(Pending {
        listener,
        fd,
        addr,
        expected,
    })
}

impl<N: Net> Pending<N> {
    /// Waits for the expected peer's connection, up to `timeout`, while watching the control
    /// connection: returns the connection and its address. The listening socket is closed
    /// when this returns, whatever the outcome.
    pub async fn accept(
        self,
        ctx: &WorkerCtx,
        control: &impl Stream,
        timeout: Duration,
    ) -> Result<(N::Stream, SocketAddr), BindError> {
        // While waiting, the end-of-drain close (and the idle sweep) can end the BIND like
        // a tunnel: shutting the listener down completes the accept.
        let registration = ctx.tunnels.register(control.raw_fd(), self.fd);
        let wait = async {
            loop {
                let (s, peer) = match N::accept(&self.listener).await {
                    Ok(c) => c,
                    // The connection died in the backlog: keep waiting for another.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ECONNABORTED | libc::EPROTO | libc::EINTR | libc::EAGAIN)
                        ) =>
                    {
                        info!("bind: accept: {e}; waiting on");
                        continue;
                    }
                    Err(e) => {
                        debug!("bind: accept failed: {e}");
                        return Err(BindError::Accept(e));
                    }
                };
                let ip = peer.ip().to_canonical();
                match &self.expected {
                    Some(ips) if !ips.contains(&ip) => {
                        info!(peer = %peer, expected = ?ips, "bind: connection from an unexpected address reset");
                        s.abort();
                    }
                    _ => return Ok((s, SocketAddr::new(ip, peer.port()))),
                }
            }
        };
        let mut wait = std::pin::pin!(wait);
        let r = tokio::select! {
            r = &mut wait => r,
            _ = control.closed() => Err(BindError::ClientClosed),
            _ = tokio::time::sleep(timeout) => Err(BindError::Timeout(timeout)),
        };
        // Close the listening socket now. An accept still in flight completes (io_uring
        // operations outlive their futures): wait for it, so that a connection it took is
        // reset rather than leaked.
        shutdown_fd(self.fd, Shutdown::Both);
        if r.is_err() {
            if let Ok((late, _)) = wait.await {
                late.abort();
            }
        }
        drop(registration);
        r
    }
}

/// The address inbound connections should reach: the egress address, or the source address
/// the routing table picks toward the expected peer, or the control connection's address.
fn outward_ip(ctx: &WorkerCtx, control_local: IpAddr, expected: Option<&[IpAddr]>) -> IpAddr {
    if let Some(ip) = ctx.config.egress_ip {
        return ip;
    }
    expected
        .and_then(|ips| ips.first())
        .and_then(|&peer| route_source(peer).ok())
        .unwrap_or(control_local)
}

/// The local address the kernel would use to reach `peer`: a UDP socket's connect does the
/// route lookup without sending anything.
fn route_source(peer: IpAddr) -> io::Result<IpAddr> {
    let to = SocketAddr::new(peer, 9);
    let s = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))?;
    s.connect(&to.into())?;
    s.local_addr()?
        .as_socket()
        .map(|a| a.ip())
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// A non-blocking TCP listener with a backlog of one, on `at`.
fn open_listener(at: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))?;
    if at.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    s.bind(&at.into())?;
    s.listen(1)?;
    Ok(s)
}
