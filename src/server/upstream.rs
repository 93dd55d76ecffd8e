//! Tunnels through a parent proxy: resolve and connect to it (Happy Eyeballs over its
//! addresses, the same connector as direct tunnels), TLS when its URL says `socks5+tls`, then
//! its protocol's CONNECT for our client's destination (SOCKS5 with optional RFC 1929, or
//! HTTP CONNECT). The destination is passed on as given, so a name is resolved by the parent.
//! The codec is [`crate::proto::upstream`]; this is its I/O.

use std::io;
use std::net::{Shutdown, SocketAddr};

use super::connect::happy_eyeballs;
use super::ktls::KtlsStream;
use super::net::{send_all, Net, Stream};
use super::tls::{self, Carrier, TlsStream};
use super::worker::WorkerCtx;
use crate::proto::upstream::{
    http_connect_request, parse_http_connect_response, Socks5Connect, Step, UpstreamError,
    UpstreamKind, UpstreamUrl,
};
use crate::proto::{Command, ReplyCode, TargetAddr};
use crate::route::Parent;

/// A tunnel to the destination through a parent: a plain or a TLS stream.
pub enum Upstream<S> {
    /// SOCKS5 or HTTP CONNECT in the clear.
    Plain(S),
    /// SOCKS5 inside TLS, in user space.
    Tls(Box<TlsStream<S>>),
    /// SOCKS5 inside TLS, in the kernel.
    Ktls(KtlsStream<S>),
}

/// A parent that agreed to connect.
pub struct Reached<S> {
    /// The stream, ready to relay.
    pub stream: Upstream<S>,
    /// The parent's address.
    pub parent: SocketAddr,
    /// The address the parent says it connected from (SOCKS5 BND), when it is an address.
    pub bound: Option<SocketAddr>,
    /// Bytes from the destination that came with the parent's reply.
    pub early: Vec<u8>,
}

impl<S> Upstream<S> {
    /// How TLS to the parent is carried, for the access log.
    pub fn tls(&self) -> Option<&'static str> {
        match self {
            Upstream::Plain(_) => None,
            Upstream::Tls(_) => Some("user-space"),
            Upstream::Ktls(_) => Some("ktls"),
        }
    }
}

impl<S: Stream> Upstream<S> {
    /// Shuts the connection down (its pending operations complete).
    pub fn shutdown(&self, how: Shutdown) {
        match self {
            Upstream::Plain(s) => s.shutdown(how),
            Upstream::Tls(s) => s.shutdown(how),
            Upstream::Ktls(s) => s.shutdown(how),
        }
    }

    /// Resolves once the parent closes the connection (or it fails): for a UDP association,
    /// whose control connection carries nothing after the reply.
    pub async fn closed(&self) {
        match self {
            Upstream::Plain(s) => s.closed().await,
            Upstream::Tls(s) => s.closed().await,
            Upstream::Ktls(s) => s.closed().await,
        }
    }
}

/// Why a parent did not give us a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// Its name did not resolve, or no address answered.
    #[error("cannot reach the parent proxy: {0}")]
    Connect(io::Error),
    /// The TLS handshake with it failed (its certificate refused, say).
    #[error("TLS with the parent proxy: {0}")]
    Tls(io::Error),
    /// Reading from or writing to it failed.
    #[error("parent proxy i/o: {0}")]
    Io(io::Error),
    /// It closed the connection before answering.
    #[error("parent proxy closed the connection during its handshake")]
    Closed,
    /// It answered with a refusal or something unreadable.
    #[error("{0}")]
    Refused(#[from] UpstreamError),
    /// No tunnel within the connect timeout.
    #[error("parent proxy did not answer within the connect timeout")]
    Timeout,
    /// An HTTP CONNECT parent was asked to carry UDP.
    #[error("an HTTP CONNECT parent cannot carry UDP")]
    NoUdp,
}

impl ParentError {
    /// Label for the parent failure metric.
    pub fn as_str(&self) -> &'static str {
        match self {
            ParentError::Connect(_) => "unreachable",
            ParentError::Tls(_) => "tls",
            ParentError::Io(_) => "io",
            ParentError::Closed => "closed",
            ParentError::Refused(e) => e.as_str(),
            ParentError::Timeout => "timeout",
            ParentError::NoUdp => "no-udp",
        }
    }

    /// The reply our client gets: the parent's own refusal when it gave one, host unreachable
    /// when it did not answer in time, else a general failure (our side of the chain broke,
    /// not the destination).
    pub fn reply(&self) -> ReplyCode {
        match self {
            ParentError::Refused(e) => e.reply_code(),
            // As for a direct connect that times out.
            ParentError::Timeout => ReplyCode::HostUnreachable,
            _ => ReplyCode::GeneralFailure,
        }
    }
}

/// Opens a tunnel to `target` through `parent`, all within the connect timeout.
pub async fn connect<N: Net>(
    ctx: &WorkerCtx,
    parent: &Parent,
    target: &TargetAddr,
) -> Result<Reached<N::Stream>, ParentError> {
    let (mut reached, bound) = open::<N>(ctx, parent, Command::Connect, target).await?;
    reached.bound = match bound {
        Some(TargetAddr::Ip(a)) if !a.ip().is_unspecified() => Some(a),
        _ => None,
    };
    Ok(reached)
}

/// A UDP ASSOCIATE with a SOCKS5 parent, within the connect timeout: the control connection
/// (the association lasts as long as it does) and the parent's UDP relay address. A relay
/// reported as 0.0.0.0 (or ::) is on the parent's own address.
pub async fn associate<N: Net>(
    ctx: &WorkerCtx,
    parent: &Parent,
) -> Result<(Reached<N::Stream>, SocketAddr), ParentError> {
    if parent.url.kind == UpstreamKind::HttpConnect {
        return Err(ParentError::NoUdp);
    }
    let any = TargetAddr::Ip(SocketAddr::from(([0, 0, 0, 0], 0)));
    let (reached, bound) = open::<N>(ctx, parent, Command::UdpAssociate, &any).await?;
    let relay = match bound {
        Some(TargetAddr::Ip(a)) if a.ip().is_unspecified() => {
            SocketAddr::new(reached.parent.ip(), a.port())
        }
        Some(TargetAddr::Ip(a)) => a,
        _ => {
            reached.stream.shutdown(Shutdown::Both);
            let e = UpstreamError::Malformed("UDP relay named by a domain name");
            return Err(ParentError::Refused(e));
        }
    };
    Ok((reached, relay))
}

/// Connects to `parent` and has it carry out `command`: the stream, and what the parent
/// reported as bound.
async fn open<N: Net>(
    ctx: &WorkerCtx,
    parent: &Parent,
    command: Command,
    target: &TargetAddr,
) -> Result<(Reached<N::Stream>, Option<TargetAddr>), ParentError> {
    let deadline = tokio::time::Instant::now() + ctx.config.connect_timeout;
    let url = &parent.url;
    let reach = async {
        let addrs = ctx.resolver.resolve(&url.host, url.port).await?;
        happy_eyeballs::<N>(&addrs, &ctx.connect).await
    };
    let (sock, addr) = match tokio::time::timeout_at(deadline, Box::pin(reach)).await {
        Ok(r) => r.map_err(ParentError::Connect)?,
        Err(_) => return Err(ParentError::Timeout),
    };
    match &parent.tls {
        None => {
            let r =
                tokio::time::timeout_at(deadline, Box::pin(exchange(&sock, url, command, target)));
            let (bound, early) = timed(r.await, &sock)?;
            let reached = Reached {
                stream: Upstream::Plain(sock),
                parent: addr,
                bound: None,
                early,
            };
            Ok((reached, bound))
        }
        Some((config, name)) => {
            let for_kernel = ctx.ktls();
            let hs = tls::connect(&sock, config.clone(), name.clone(), for_kernel);
            let r = tokio::time::timeout_at(
                deadline,
                Box::pin(async { hs.await.map_err(ParentError::Tls) }),
            );
            let conn = timed(r.await, &sock)?;
            let (stream, bound, early) = match tls::offload(sock, conn, for_kernel) {
                Err((sock, e)) => {
                    sock.shutdown(Shutdown::Both);
                    return Err(ParentError::Tls(e));
                }
                Ok(Carrier::Kernel(s)) => {
                    let r = tokio::time::timeout_at(
                        deadline,
                        Box::pin(exchange(&s, url, command, target)),
                    );
                    let (bound, early) = timed(r.await, &s)?;
                    (Upstream::Ktls(s), bound, early)
                }
                Ok(Carrier::User(s)) => {
                    let r = tokio::time::timeout_at(
                        deadline,
                        Box::pin(exchange(&*s, url, command, target)),
                    );
                    let (bound, early) = timed(r.await, &*s)?;
                    (Upstream::Tls(s), bound, early)
                }
            };
            let reached = Reached {
                stream,
                parent: addr,
                bound: None,
                early,
            };
            Ok((reached, bound))
        }
    }
}

/// The outcome of a step under the deadline; a step that ran out of time has its socket
/// shut down first, which completes its pending operation before the future is dropped
/// (io_uring operations are not cancelled by dropping them).
fn timed<T, S: Stream>(
    r: Result<Result<T, ParentError>, tokio::time::error::Elapsed>,
    s: &S,
) -> Result<T, ParentError> {
    r.unwrap_or_else(|_| {
        s.shutdown(Shutdown::Both);
        Err(ParentError::Timeout)
    })
}

/// The parent's CONNECT: returns the bound address it reported and any bytes past its reply.
async fn exchange<S: Stream>(
    s: &S,
    url: &UpstreamUrl,
    command: Command,
    target: &TargetAddr,
) -> Result<(Option<TargetAddr>, Vec<u8>), ParentError> {
    let mut out = Vec::with_capacity(64);
    let mut buf = Vec::with_capacity(1024);
    let mut socks = match url.kind {
        UpstreamKind::Socks5 | UpstreamKind::Socks5Tls => {
            let auth = url.auth.as_ref().map(|(u, p)| (u.as_bytes(), p.as_bytes()));
            let mut m = Socks5Connect::with_command(command, target, auth);
            m.start(&mut out);
            Some(m)
        }
        UpstreamKind::HttpConnect => {
            let auth = url.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            http_connect_request(target, auth, &mut out);
            None
        }
    };
    loop {
        if !out.is_empty() {
            let (r, o) = send_all(s, out).await;
            out = o;
            out.clear();
            r.map_err(ParentError::Io)?;
        }
        if buf.len() == buf.capacity() {
            buf.reserve(1024);
        }
        let (r, b) = s.read(buf).await;
        buf = b;
        match r {
            Ok(0) => return Err(ParentError::Closed),
            Ok(_) => {}
            Err(e) => return Err(ParentError::Io(e)),
        }
        match &mut socks {
            Some(m) => match m.advance(&buf, &mut out)? {
                Step::NeedMore { consumed } => {
                    buf.drain(..consumed);
                }
                Step::Done { consumed, bound } => {
                    buf.drain(..consumed);
                    return Ok((Some(bound), buf));
                }
            },
            None => {
                if let Some(n) = parse_http_connect_response(&buf)? {
                    buf.drain(..n);
                    return Ok((None, buf));
                }
            }
        }
    }
}
