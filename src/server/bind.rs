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
use tracing::info;

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
) -> Result<Pending<N>, BindError> {
    let expected: Option<Vec<IpAddr>> = match target {
        TargetAddr::Ip(a) if a.ip().is_unspecified() => None,
        TargetAddr::Ip(a) => Some(vec![a.ip().to_canonical()]),
        TargetAddr::Domain(host, port) => Some(
            ctx.resolver
                .resolve(host, *port)
                .await
                .map_err(BindError::Resolve)?
                .into_iter()
                .map(|a| a.ip().to_canonical())
                .collect(),
        ),
    };
    let ip = outward_ip(ctx, control_local.ip().to_canonical(), expected.as_deref());
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
        control: &N::Stream,
        timeout: Duration,
    ) -> Result<(N::Stream, SocketAddr), BindError> {
        let wait = async {
            loop {
                let (s, peer) = N::accept(&self.listener).await.map_err(BindError::Accept)?;
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
        let r = tokio::select! {
            r = wait => r,
            _ = control.closed() => Err(BindError::ClientClosed),
            _ = tokio::time::sleep(timeout) => Err(BindError::Timeout(timeout)),
        };
        // Completes an accept still in flight (io_uring operations outlive their futures),
        // so the listening socket closes now.
        shutdown_fd(self.fd, Shutdown::Both);
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
