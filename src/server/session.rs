//! One client connection: the SOCKS handshake inline on the accepting worker, the outbound
//! connect, the reply, then the relay, and one access-log line at the end.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::access::Access;
use super::bandwidth::UserBandwidth;
use super::bind;
use super::connect::{happy_eyeballs, send_first, ConnectOptions};
use super::metrics::WorkerMetrics;
use super::net::{is_connected, send_all, syn_data_acked, Net, Stream};
use super::relay::{relay, Meter, Side};
use super::tls::{self, Carrier};
use super::udp::{Association, UdpStats};
use super::upstream::{self, Upstream};
use super::worker::{Front, WorkerCtx};
use crate::auth::Check;
use crate::proto::proxy::{self, ProxyError, ProxyHeader};
use crate::proto::socks6;
use crate::proto::{
    AuthPolicy, Command, Event, Handshake, ProtoError, ReplyCode, Request, TargetAddr, Version,
};
use crate::route::Via;
use crate::rules::{Query, Rules};
use std::sync::Arc;

/// Handshake buffer: the longest handshake message is a SOCKS4a request (8 + 256 + 256 bytes),
/// and pipelined payload beyond this simply stays in the socket until the relay reads it.
const HANDSHAKE_BUF: usize = 1024;

/// The longest SOCKS 6 request: the fixed fields, a domain name (with its padding) and the
/// largest Options field.
const SOCKS6_REQUEST_MAX: usize = 8 + 256 + socks6::MAX_OPTIONS_LEN;

/// With `--upstream-fastopen` and a deferred (Fast Open) connect, how long the SYN waits for
/// the client's first bytes after the success reply. A protocol where the server speaks first
/// (SMTP, SSH) gets its SYN after this wait.
const FASTOPEN_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Why a session ended before relaying.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The client sent something the protocol does not allow.
    #[error("{0}")]
    Proto(#[from] ProtoError),
    /// The client closed or reset the connection mid-handshake.
    #[error("client closed the connection during the handshake")]
    ClientClosed,
    /// Reading from or writing to the client failed.
    #[error("client i/o: {0}")]
    ClientIo(io::Error),
    /// The client did not finish the handshake in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// A PROXY protocol listener got no valid header.
    #[error("PROXY protocol header: {0}")]
    ProxyHeader(#[from] ProxyError),
    /// A PROXY protocol listener was reached from outside `--proxy-from`.
    #[error("PROXY protocol listener reached from an address outside --proxy-from")]
    UntrustedBalancer,
    /// The TLS handshake failed (a certificate refused, not TLS at all, a closed connection).
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
}

impl SessionError {
    /// Label for the handshake failure metric.
    fn reason(&self) -> &'static str {
        match self {
            SessionError::Proto(p) => p.as_str(),
            SessionError::ClientClosed => "client-closed",
            SessionError::ClientIo(_) => "client-io",
            SessionError::HandshakeTimeout => "timeout",
            SessionError::ProxyHeader(_) => "proxy-header",
            SessionError::UntrustedBalancer => "proxy-untrusted",
            SessionError::Tls(_) => "tls",
        }
    }
}

/// Runs one session to completion. Never panics on peer input; errors end up in the log.
/// On a PROXY protocol listener, the connection starts with a header naming the real client,
/// which from then on is `peer` for rules, limits and logs. On a TLS listener, the TLS
/// handshake comes first and the session runs inside it.
pub async fn run<N: Net>(ctx: Rc<WorkerCtx>, client: N::Stream, peer: SocketAddr, front: Front) {
    let _active = ctx.enter();
    // Users, rules and certificate as they are now: a reload applies to sessions that start
    // after it.
    let access = ctx.access();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + ctx.config.handshake_timeout;
    let opened = Opened {
        peer,
        started,
        deadline,
        proxy_protocol: front == Front::ProxyHeader,
        identity: None,
        tls: None,
    };
    if let Front::Map(map) = front {
        return serve_map::<N>(&ctx, access, client, peer, started, map).await;
    }
    if front != Front::Tls {
        return serve::<N, _>(&ctx, access, client, opened).await;
    }
    let Some(config) = access.tls.clone() else {
        warn!(client = %peer, "TLS listener without a certificate: connection closed");
        client.shutdown(Shutdown::Both);
        return;
    };
    let for_kernel = ctx.ktls();
    let accepted = Box::pin(tokio::time::timeout_at(
        deadline,
        tls::accept(&client, config, for_kernel),
    ))
    .await;
    let e = match accepted {
        Ok(Ok(conn)) => {
            let identity = tls::peer_identity(&conn);
            debug!(client = %peer, "TLS {}", tls::describe(&conn));
            let carrier = match tls::offload(client, conn, for_kernel) {
                Ok(c) => c,
                Err((client, e)) => {
                    warn!(client = %peer, "kernel TLS refused the keys ({e}): connection closed");
                    client.shutdown(Shutdown::Both);
                    return;
                }
            };
            ctx.metrics.tls_session(carrier.name());
            let opened = Opened {
                identity,
                tls: Some(carrier.name()),
                ..opened
            };
            return match carrier {
                Carrier::Kernel(c) => serve::<N, _>(&ctx, access, c, opened).await,
                Carrier::User(c) => serve::<N, _>(&ctx, access, *c, opened).await,
            };
        }
        Ok(Err(e)) => SessionError::Tls(e),
        // Shut the socket down before the handshake's wait is dropped (see below).
        Err(_) => SessionError::HandshakeTimeout,
    };
    log_handshake_failure(&ctx, peer, &e);
    client.shutdown(Shutdown::Both);
}

/// A port map's connection (`--map`): no handshake, a CONNECT to the map's destination under
/// the same access rules (the client's address, no user), limits, routes and relay. A
/// refusal is a reset: the client has no reply to read.
async fn serve_map<N: Net>(
    ctx: &WorkerCtx,
    access: Arc<Access>,
    client: N::Stream,
    peer: SocketAddr,
    started: Instant,
    map: u16,
) {
    let request = Request {
        version: Version::V5,
        command: Command::Connect,
        target: ctx.config.maps[map as usize].target.clone(),
        userid: None,
        initial_data: 0,
        fast_open: false,
    };
    let mut log = AccessLog {
        peer,
        user: None,
        request: &request,
        started,
        metrics: &ctx.metrics,
        tls: None,
        parent: None,
        parent_tls: None,
    };
    let query = Query::for_target(peer.ip(), None, Command::Connect, &request.target);
    let verdict = access.rules.check(&query);
    if verdict.blocked() {
        ctx.metrics.rule_blocked(verdict.rule);
        let why = format!("port map: blocked by access rule {:?}", verdict.rule);
        return refuse(&client, None, Vec::new(), &log, ReplyCode::NotAllowed, &why).await;
    }
    let _permit = match ctx.limits.acquire(peer.ip(), None) {
        Ok(p) => p,
        Err(hit) => {
            let code = ReplyCode::GeneralFailure;
            return refuse(&client, None, Vec::new(), &log, code, &hit.to_string()).await;
        }
    };
    let outbound = Outbound {
        hs: None,
        out: Vec::new(),
        first: Vec::new(),
        pending: Vec::new(),
        tap: Tap { bandwidth: None },
    };
    connect_and_relay::<N, _>(ctx, &access, &client, &query, &mut log, outbound).await;
}

/// What a session knows once its connection is open (and, on a TLS listener, its TLS
/// handshake done).
struct Opened {
    peer: SocketAddr,
    started: Instant,
    /// The handshake's deadline (the TLS handshake included).
    deadline: tokio::time::Instant,
    proxy_protocol: bool,
    /// The user a verified TLS client certificate names.
    identity: Option<String>,
    /// How TLS is carried, for the access log ("user-space" or "ktls").
    tls: Option<&'static str>,
}

/// The SOCKS session proper, on a plain or TLS client stream.
async fn serve<N: Net, C: Stream>(ctx: &WorkerCtx, access: Arc<Access>, client: C, o: Opened) {
    let Opened {
        mut peer,
        started,
        deadline,
        proxy_protocol,
        identity,
        tls,
    } = o;
    // The handshake and the connect are boxed: their state is freed once they are done, so a
    // long-lived tunnel's task holds only what the relay needs.
    let hs = Box::pin(tokio::time::timeout_at(deadline, async {
        let mut initial = Vec::with_capacity(HANDSHAKE_BUF);
        if proxy_protocol {
            peer = proxy_header(ctx, &client, peer, &mut initial).await?;
        }
        let certified = identity.is_some();
        handshake(ctx, &access, &client, peer, initial, certified).await
    }))
    .await;
    let done = match hs {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            // The reply the error deserves was already written by `handshake`.
            log_handshake_failure(ctx, peer, &e);
            client.shutdown(Shutdown::Both);
            return;
        }
        Err(_) => {
            // Shut the socket down before the read future is dropped: a pending io_uring
            // read would otherwise keep the descriptor open.
            log_handshake_failure(ctx, peer, &SessionError::HandshakeTimeout);
            client.shutdown(Shutdown::Both);
            return;
        }
    };
    let Handshaken {
        hs,
        request,
        user,
        mut buf,
        consumed,
        out,
    } = done;

    #[cfg(debug_assertions)]
    super::worker::failpoint(ctx, &request.target);

    // Access rules: the request as given (a name is checked again per address once resolved).
    // A username only means something when users are configured: in open mode a client
    // that offers RFC 1929 is let in under any name, which must not match user rules. A
    // verified client certificate names its user, unless the client also logged in with a
    // (verified) password: then that user counts.
    let rule_user = if access.users.is_empty() {
        identity.as_deref()
    } else {
        user.as_deref().or(identity.as_deref())
    };
    let mut log = AccessLog {
        peer,
        user: rule_user.or(user.as_deref()).or(request.userid.as_deref()),
        request: &request,
        started,
        metrics: &ctx.metrics,
        tls,
        parent: None,
        parent_tls: None,
    };
    let query = Query::for_target(peer.ip(), rule_user, request.command, &request.target);
    let verdict = access.rules.check(&query);
    if verdict.blocked() {
        ctx.metrics.rule_blocked(verdict.rule);
        let why = format!("blocked by access rule {:?}", verdict.rule);
        return refuse(&client, Some(&hs), out, &log, ReplyCode::NotAllowed, &why).await;
    }
    if verdict.log {
        info!(target: "access", client = %peer, cmd = request.command.as_str(), dst = %request.target, "passed by access rule {:?}", verdict.rule);
    }
    // Counted until the session ends (a tunnel, an association or a BIND).
    let _permit = match ctx.limits.acquire(peer.ip(), rule_user) {
        Ok(p) => p,
        Err(hit) => {
            let code = ReplyCode::GeneralFailure;
            return refuse(&client, Some(&hs), out, &log, code, &hit.to_string()).await;
        }
    };

    if request.version == Version::V6 && request.command != Command::Connect {
        // SOCKS 6 BIND and UDP ASSOCIATE have messages of their own that are not implemented.
        let code = ReplyCode::CommandNotSupported;
        let why = "SOCKS 6 BIND and UDP ASSOCIATE are not supported";
        return refuse(&client, Some(&hs), out, &log, code, why).await;
    }
    match request.command {
        Command::Connect => {}
        Command::UdpAssociate => {
            let who = (rule_user, access.clone());
            return associate::<N>(ctx, &client, peer, who, &hs, out, &log).await;
        }
        Command::Bind => {
            let bandwidth = rule_user.and_then(|u| access.bandwidth.for_user(u));
            let tap = Tap {
                bandwidth: bandwidth.as_deref(),
            };
            return bind::<N>(ctx, client, &hs, out, &log, (buf, consumed), tap).await;
        }
    }

    let bandwidth = rule_user.and_then(|u| access.bandwidth.for_user(u));
    let tap = Tap {
        bandwidth: bandwidth.as_deref(),
    };
    // Bytes the client pipelined after its request go to the target first; SOCKS 6 initial
    // data (read in full by the handshake) ahead of them, in the SYN.
    buf.drain(..consumed);
    let first: Vec<u8> = buf.drain(..request.initial_data as usize).collect();
    let outbound = Outbound {
        hs: Some(&hs),
        out,
        first,
        pending: buf,
        tap,
    };
    connect_and_relay::<N, C>(ctx, &access, &client, &query, &mut log, outbound).await;
}

/// A CONNECT (or a port map's connection) on its way out.
struct Outbound<'a> {
    /// The handshake to reply through; `None` for a port map, whose client gets no reply.
    hs: Option<&'a Handshake>,
    out: Vec<u8>,
    /// SOCKS 6 initial data: carried in the SYN (TCP Fast Open, where the host allows it), and
    /// the connect confirmed, before the reply.
    first: Vec<u8>,
    /// Client bytes for the target (pipelined after the request).
    pending: Vec<u8>,
    tap: Tap<'a>,
}

/// Opens the outbound side (through a parent when a route says so, else direct, within the
/// connect timeout), replies and relays. A failure is the client's refusal: a reply, or for a
/// port map a reset.
async fn connect_and_relay<N: Net, C: Stream>(
    ctx: &WorkerCtx,
    access: &Access,
    client: &C,
    query: &Query<'_>,
    log: &mut AccessLog<'_>,
    o: Outbound<'_>,
) {
    let Outbound {
        hs,
        out,
        first,
        mut pending,
        tap,
    } = o;
    let target = &log.request.target;
    let connect_started = Instant::now();

    if let (Via::Parent(parent), route) = access.routes.choose(query) {
        // Initial data follows the parent's reply, ahead of anything pipelined after it.
        if !first.is_empty() {
            pending.splice(..0, first);
        }
        log.parent = Some(parent.url.to_string());
        let reached = match upstream::connect::<N>(ctx, parent, target).await {
            Ok(r) => r,
            Err(e) => {
                ctx.metrics.parent_failed(e.as_str());
                let why = format!("via {route:?}: {e}");
                return refuse(client, hs, out, log, e.reply(), &why).await;
            }
        };
        ctx.metrics.connect_latency(connect_started.elapsed());
        log.parent_tls = reached.stream.tls();
        ctx.metrics.parent_tunnel(log.parent_tls);
        let (addr, bound) = (reached.parent, reached.bound);
        let opened = Tunnel {
            hs,
            out,
            pending,
            early: reached.early,
            addr,
            log,
            tap,
            sent_first: 0,
            deferred: false,
            fast_open: None,
        };
        return match reached.stream {
            Upstream::Plain(t) => tunnel(ctx, client, t, bound, opened).await,
            Upstream::Tls(t) => tunnel(ctx, client, *t, bound, opened).await,
            Upstream::Ktls(t) => tunnel(ctx, client, t, bound, opened).await,
        };
    }

    let opts = ConnectOptions {
        fast_open: ctx.connect.fast_open || !first.is_empty(),
        ..ctx.connect
    };
    let deadline = tokio::time::Instant::now() + ctx.config.connect_timeout;
    let rules = &access.rules;
    let mut connected =
        connect_sending::<N>(ctx, (rules, target, query), &opts, &first, deadline).await;
    if let Err(Failed::Deferred(_)) = connected {
        // A deferred Fast Open connect is taken at once, untried, so Happy Eyeballs could not
        // fall back past a dead address: the initial data was not delivered (the connect never
        // completed), so an ordinary connect may try every address.
        let plain = ConnectOptions {
            fast_open: false,
            ..opts
        };
        connected =
            connect_sending::<N>(ctx, (rules, target, query), &plain, &first, deadline).await;
    }
    let (stream, addr) = match connected {
        Ok(c) => {
            ctx.metrics.connect_latency(connect_started.elapsed());
            c
        }
        Err(Failed::Connecting(e) | Failed::Deferred(e)) => {
            let (code, why) = match e.kind() {
                io::ErrorKind::TimedOut => (ReplyCode::HostUnreachable, "connect timed out".into()),
                _ => (ReplyCode::from_io_error(&e), e.to_string()),
            };
            return refuse(client, hs, out, log, code, &why).await;
        }
    };
    // A Fast Open connect that is still deferred: the SYN waits for the client's first bytes.
    let deferred = first.is_empty() && opts.fast_open && !is_connected(stream.raw_fd());
    // A SOCKS 6 client that asked for Fast Open on the proxy-server leg is told when its
    // initial data went in the SYN.
    let fast_open =
        (log.request.fast_open && syn_data_acked(stream.raw_fd())).then_some(first.len() as u16);
    let opened = Tunnel {
        hs,
        out,
        pending,
        early: Vec::new(),
        addr,
        log,
        tap,
        sent_first: first.len() as u64,
        deferred,
        fast_open,
    };
    if !first.is_empty() {
        ctx.metrics.bytes_up.add(first.len() as u64);
    }
    tunnel(ctx, client, stream, None, opened).await;
}

/// A CONNECT whose outbound side is open, before the success reply.
struct Tunnel<'a> {
    hs: Option<&'a Handshake>,
    out: Vec<u8>,
    /// Client bytes for the target (pipelined after the request).
    pending: Vec<u8>,
    /// Target bytes for the client (that came with a parent's reply).
    early: Vec<u8>,
    /// The address reached (the destination's, or the parent's).
    addr: SocketAddr,
    log: &'a AccessLog<'a>,
    tap: Tap<'a>,
    /// Client bytes already sent to the target (SOCKS 6 initial data), for the log.
    sent_first: u64,
    /// The outbound connect is a deferred Fast Open one: after the reply, the client's first
    /// bytes go in its SYN (`--upstream-fastopen`).
    deferred: bool,
    /// SOCKS 6: the initial data went in the SYN (this many bytes), for the reply's TCP Fast
    /// Open stack option.
    fast_open: Option<u16>,
}

/// Replies with success and relays. BND.ADDR/BND.PORT is the address the proxy uses on the
/// outbound connection (RFC 1928 section 6): ours, or what a parent reported as its own.
async fn tunnel<C: Stream, T: Stream>(
    ctx: &WorkerCtx,
    client: &C,
    target: T,
    bound: Option<SocketAddr>,
    t: Tunnel<'_>,
) {
    let Tunnel {
        hs,
        mut out,
        mut pending,
        early,
        addr,
        log,
        tap,
        mut sent_first,
        deferred,
        fast_open,
    } = t;
    if let Some(hs) = hs {
        let bound = bound.or_else(|| target.local_addr().ok());
        hs.reply_fast_open(ReplyCode::Succeeded, bound, fast_open, &mut out);
    }
    if !early.is_empty() {
        ctx.metrics.bytes_down.add(early.len() as u64);
        out.extend_from_slice(&early);
    }
    let r = match out.is_empty() {
        true => Ok(()),
        false => send_all(client, out).await.0,
    };
    if let Err(e) = r {
        target.shutdown(Shutdown::Both);
        client.shutdown(Shutdown::Both);
        log.relayed(addr, sent_first, 0, Some((Side::Client, &e)), false);
        return;
    }
    if deferred {
        if let Err(e) = fast_open_first(ctx, client, &target, &mut pending).await {
            target.abort();
            client.abort();
            log.relayed(addr, 0, 0, Some((Side::Target, &e)), false);
            return;
        }
        sent_first = pending.len() as u64;
        ctx.metrics.bytes_up.add(sent_first);
        pending.clear();
    }
    let _tunnel = ctx.metrics.tunnel(Command::Connect);
    run_relay(ctx, client, &target, (pending, sent_first), log, addr, tap).await;
}

/// How [`connect_sending`] failed.
enum Failed {
    /// Resolving, connecting or sending (or the deadline passed).
    Connecting(io::Error),
    /// A deferred Fast Open connect (returned before the handshake) failed once its SYN went
    /// out: nothing reached the destination.
    Deferred(io::Error),
}

/// Connects (within `deadline`) and, when there is initial data, sends it first and waits for
/// the destination's answer to the connect (see [`send_first`]). A failed stream is shut
/// down, so no operation is left in flight on it.
async fn connect_sending<N: Net>(
    ctx: &WorkerCtx,
    (rules, target, query): (&Rules, &TargetAddr, &Query<'_>),
    opts: &ConnectOptions,
    first: &[u8],
    deadline: tokio::time::Instant,
) -> Result<(N::Stream, SocketAddr), Failed> {
    let timed_out = || io::Error::from(io::ErrorKind::TimedOut);
    let connecting =
        tokio::time::timeout_at(deadline, connect::<N>(ctx, rules, target, query, opts));
    let (stream, addr) = match Box::pin(connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(Failed::Connecting(e)),
        Err(_) => return Err(Failed::Connecting(timed_out())),
    };
    if first.is_empty() {
        return Ok((stream, addr));
    }
    let deferred = !is_connected(stream.raw_fd());
    match Box::pin(tokio::time::timeout_at(
        deadline,
        send_first(&stream, first),
    ))
    .await
    {
        Ok(Ok(())) => Ok((stream, addr)),
        Ok(Err(e)) => {
            stream.abort();
            Err(match deferred {
                true => Failed::Deferred(e),
                false => Failed::Connecting(e),
            })
        }
        Err(_) => {
            stream.abort();
            Err(Failed::Connecting(timed_out()))
        }
    }
}

/// `--upstream-fastopen` after the reply: waits (briefly) for the client's first bytes and
/// sends them in the deferred connect's SYN, then waits for the destination's answer, so a
/// refusal ends the tunnel before any relaying. An error is the connect's.
async fn fast_open_first<C: Stream, T: Stream>(
    ctx: &WorkerCtx,
    client: &C,
    target: &T,
    pending: &mut Vec<u8>,
) -> io::Result<()> {
    let wait_until = tokio::time::Instant::now() + FASTOPEN_WAIT;
    pending.reserve(HANDSHAKE_BUF);
    while pending.is_empty() {
        // A readiness left over from the handshake is forgotten by the failed read.
        match client.try_read(pending) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match tokio::time::timeout_at(wait_until, client.readable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    let sent = tokio::time::timeout(ctx.config.connect_timeout, send_first(target, pending));
    match Box::pin(sent).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Reads the PROXY protocol header a balancer sends first; returns the client it names (or
/// `peer` itself for a LOCAL header: the balancer's own health check). Bytes after the
/// header are left in `rest` for the handshake.
async fn proxy_header<S: Stream>(
    ctx: &WorkerCtx,
    client: &S,
    peer: SocketAddr,
    rest: &mut Vec<u8>,
) -> Result<SocketAddr, SessionError> {
    if !ctx
        .config
        .proxy_from
        .iter()
        .any(|c| c.contains_ip(peer.ip()))
    {
        ctx.metrics.proxy_header_failed("untrusted-source");
        return Err(SessionError::UntrustedBalancer);
    }
    let mut buf = std::mem::take(rest);
    // Room for the longest header accepted (parse refuses anything longer before it fills).
    buf.reserve(proxy::MAX_HEADER_LEN);
    loop {
        match proxy::parse(&buf) {
            Ok(Some((header, n))) => {
                buf.drain(..n);
                *rest = buf;
                return Ok(match header {
                    ProxyHeader::Local => peer,
                    ProxyHeader::Proxied { source, .. } => source,
                });
            }
            Ok(None) => {}
            Err(e) => {
                ctx.metrics.proxy_header_failed(e.as_str());
                return Err(e.into());
            }
        }
        // Whatever arrives after the header is the start of the SOCKS handshake, kept in order.
        let (r, b) = client.read(buf).await;
        buf = b;
        read_some(r)?;
    }
}

/// Reads more of the handshake into the spare capacity of `buf`: one non-blocking recv, and a
/// wait through the runtime only when it finds nothing.
async fn read_more<S: Stream>(client: &S, mut buf: Vec<u8>) -> (Result<(), SessionError>, Vec<u8>) {
    let r = match client.try_read(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let (r, b) = client.read(buf).await;
            buf = b;
            r
        }
        r => r,
    };
    (read_some(r), buf)
}

/// A handshake read's outcome: end of stream or a reset is the client closing; anything else
/// failing is an I/O error.
fn read_some(r: io::Result<usize>) -> Result<(), SessionError> {
    match r {
        Ok(0) => Err(SessionError::ClientClosed),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(SessionError::ClientClosed),
        Err(e) => Err(SessionError::ClientIo(e)),
    }
}

/// Relays an established tunnel and logs it. The relay leaves both sockets shut down (FIN
/// sent each way, or both aborted on an error or shut by the idle sweep); dropping them closes
/// them, after the registration is gone.
async fn run_relay<C: Stream, T: Stream>(
    ctx: &WorkerCtx,
    client: &C,
    target: &T,
    (pending, sent_first): (Vec<u8>, u64),
    log: &AccessLog<'_>,
    via: SocketAddr,
    tap: Tap<'_>,
) {
    let registration = ctx.tunnels.register(client.raw_fd(), target.raw_fd());
    let touch = || registration.touch();
    let meter = Meter {
        touch: &touch,
        up: (&ctx.metrics.bytes_up, tap.bandwidth.map(|b| &b.up)),
        down: (&ctx.metrics.bytes_down, tap.bandwidth.map(|b| &b.down)),
    };
    let stats = relay(client, target, pending, &ctx.pools, ctx.relay, &meter).await;
    let idle_fired = registration.idle_fired();
    drop(registration);
    let err = stats.error.as_ref().map(|(s, e)| (*s, e));
    log.relayed(via, sent_first + stats.up, stats.down, err, idle_fired);
}

/// UDP ASSOCIATE: open the association, reply with its address, relay datagrams until the
/// control connection closes.
async fn associate<N: Net>(
    ctx: &WorkerCtx,
    client: &impl Stream,
    peer: SocketAddr,
    (user, access): (Option<&str>, Arc<Access>),
    hs: &Handshake,
    mut out: Vec<u8>,
    log: &AccessLog<'_>,
) {
    let assoc = match Association::<N>::open(ctx, client, peer, user, access, &log.request.target) {
        Ok(a) => a,
        Err(e) => {
            warn!(client = %peer, "udp associate: cannot open the relay sockets: {e}");
            let code = ReplyCode::GeneralFailure;
            return refuse(client, Some(hs), out, log, code, &e.to_string()).await;
        }
    };
    hs.reply(ReplyCode::Succeeded, Some(assoc.advertised()), &mut out);
    let (r, _) = send_all(client, out).await;
    if r.is_err() {
        client.shutdown(Shutdown::Both);
        return;
    }
    let _tunnel = ctx.metrics.tunnel(Command::UdpAssociate);
    let relay_at = assoc.advertised();
    let stats = assoc.run(ctx, client).await;
    client.shutdown(Shutdown::Both);
    log.associated(relay_at, &stats);
}

/// BIND: listen, first reply with the listening address, accept the expected peer, second
/// reply with its address, then relay as for CONNECT.
async fn bind<N: Net>(
    ctx: &WorkerCtx,
    client: impl Stream,
    hs: &Handshake,
    mut out: Vec<u8>,
    log: &AccessLog<'_>,
    (mut buf, consumed): (Vec<u8>, usize),
    tap: Tap<'_>,
) {
    let control_local = match client.local_addr() {
        Ok(a) => a,
        Err(e) => {
            let code = ReplyCode::GeneralFailure;
            return refuse(&client, Some(hs), out, log, code, &e.to_string()).await;
        }
    };
    let socks4 = hs.version() == crate::proto::Version::V4;
    let target = &log.request.target;
    let pending = match bind::listen::<N>(ctx, control_local, target, socks4).await {
        Ok(p) => p,
        Err(e) => return refuse(&client, Some(hs), out, log, e.reply(), &e.to_string()).await,
    };
    hs.reply(ReplyCode::Succeeded, Some(pending.addr), &mut out);
    let (r, o) = send_all(&client, out).await;
    if r.is_err() {
        client.shutdown(Shutdown::Both);
        return;
    }
    let mut out = o;
    out.clear();
    let (inbound, from) = match pending.accept(ctx, &client, ctx.config.bind_timeout).await {
        Ok(c) => c,
        Err(e) => return refuse(&client, Some(hs), out, log, e.reply(), &e.to_string()).await,
    };
    hs.reply(ReplyCode::Succeeded, Some(from), &mut out);
    let (r, _) = send_all(&client, out).await;
    if let Err(e) = r {
        inbound.abort();
        client.shutdown(Shutdown::Both);
        log.relayed(from, 0, 0, Some((Side::Client, &e)), false);
        return;
    }
    buf.drain(..consumed);
    let _tunnel = ctx.metrics.tunnel(Command::Bind);
    run_relay(ctx, &client, &inbound, (buf, 0), log, from, tap).await;
}

/// Answers a request with a failure reply, closes the client and logs the refusal.
async fn refuse<S: Stream>(
    client: &S,
    hs: Option<&Handshake>,
    mut out: Vec<u8>,
    log: &AccessLog<'_>,
    code: ReplyCode,
    why: &str,
) {
    match hs {
        Some(hs) => {
            hs.reply(code, None, &mut out);
            let _ = send_all(client, out).await;
            client.shutdown(Shutdown::Both);
        }
        // A port map's client has no reply to read: a reset says the way is closed.
        None => client.abort(),
    }
    log.refused(code, why);
}

struct Handshaken {
    hs: Handshake,
    request: Request,
    user: Option<String>,
    buf: Vec<u8>,
    consumed: usize,
    out: Vec<u8>,
}

/// Reads and answers the handshake up to a complete request. Replies are appended to `out`
/// and written only when more input is needed, so a client that pipelines its greeting and
/// request gets the method selection and the request reply in one write.
async fn handshake<S: Stream>(
    ctx: &WorkerCtx,
    access: &Access,
    client: &S,
    peer: SocketAddr,
    mut buf: Vec<u8>,
    certified: bool,
) -> Result<Handshaken, SessionError> {
    // A verified client certificate is authentication enough: no password is asked for.
    let policy = AuthPolicy {
        password_required: access.auth.password_required && !certified,
        ..access.auth
    };
    let mut hs = Handshake::new(policy);
    let mut out = Vec::with_capacity(32);
    let mut consumed = 0;
    let mut user = None;
    loop {
        let (event, n) = match hs.advance(&buf[consumed..], &mut out) {
            Ok(x) => x,
            Err(e) => {
                if !out.is_empty() {
                    let _ = send_all(client, out).await;
                }
                return Err(e.into());
            }
        };
        consumed += n;
        match event {
            Event::Request(request) => {
                // SOCKS 6 initial data follows the request at once: all of it is read now, so
                // it can ride in the outbound SYN.
                let want = consumed + request.initial_data as usize;
                while buf.len() < want {
                    buf.reserve(want - buf.len());
                    let (r, b) = read_more(client, buf).await;
                    buf = b;
                    r?;
                }
                return Ok(Handshaken {
                    hs,
                    request,
                    user,
                    buf,
                    consumed,
                    out,
                });
            }
            Event::Authenticate(creds) => {
                let name = String::from_utf8_lossy(creds.username).into_owned();
                let now = Instant::now();
                let ok = if ctx.logins.locked(peer.ip(), now) {
                    // Too many failures from this address: refused without a password check.
                    ctx.metrics.auth_failures.add(1);
                    debug!(client = %peer, user = %name, "login refused: too many failed logins");
                    false
                } else {
                    // (passed, failure already counted)
                    let (ok, counted) = match access.users.check(creds.username, creds.password) {
                        _ if access.users.is_empty() => (true, false),
                        Check::Ok => (true, false),
                        Check::Failed => (false, false),
                        Check::Slow(hash) => {
                            // Counted as a failure before the slow check and forgiven if it
                            // passes: logins that never finish (the client's handshake timed
                            // out while queued) still count towards the lockout.
                            if ctx.logins.failed(peer.ip(), now) {
                                lockout_warning(ctx, peer);
                            }
                            let (u, p) = (creds.username, creds.password);
                            // Locked out meanwhile by other failures (not this one's).
                            let locked = || ctx.logins.locked_besides(peer.ip(), Instant::now(), 1);
                            let ok = ctx.verifier.verify(u, p, hash, locked).await;
                            if ok {
                                ctx.logins.forgive(peer.ip());
                            }
                            (ok, true)
                        }
                    };
                    if !ok {
                        ctx.metrics.auth_failures.add(1);
                        warn!(client = %peer, user = %name, "authentication failed");
                        if !counted && ctx.logins.failed(peer.ip(), now) {
                            lockout_warning(ctx, peer);
                        }
                    }
                    ok
                };
                user = Some(name);
                if let Err(e) = hs.authenticated(ok, &mut out) {
                    let _ = send_all(client, out).await;
                    return Err(e.into());
                }
            }
            Event::NeedMore => {
                if !out.is_empty() {
                    let (r, o) = send_all(client, out).await;
                    out = o;
                    out.clear();
                    r.map_err(SessionError::ClientIo)?;
                }
                buf.drain(..consumed);
                consumed = 0;
                // A SOCKS 6 request (one message) may carry up to 16 KiB of options: room
                // for the largest, taken only by the one that needs it.
                if buf.len() == buf.capacity() && buf.first() == Some(&socks6::VERSION) {
                    buf.reserve(SOCKS6_REQUEST_MAX.saturating_sub(buf.len()));
                }
                // The bytes are usually there already (the listener defers accept until the
                // client's first bytes arrive; later messages follow our replies at once).
                let (r, b) = read_more(client, buf).await;
                buf = b;
                r?;
            }
        }
    }
}

/// Resolves (if needed) and connects to the target. The addresses a name resolves to are
/// checked against the access rules one by one (DNS rebinding: a public name pointing at a
/// blocked network); a blocked address is skipped, and if every one is blocked the request
/// is refused as not allowed.
async fn connect<N: Net>(
    ctx: &WorkerCtx,
    rules: &Rules,
    target: &TargetAddr,
    query: &Query<'_>,
    opts: &ConnectOptions,
) -> io::Result<(N::Stream, SocketAddr)> {
    match target {
        TargetAddr::Ip(addr) => happy_eyeballs::<N>(std::slice::from_ref(addr), opts).await,
        TargetAddr::Domain(host, port) => {
            let mut addrs = ctx.resolver.resolve(host, *port).await?;
            if !rules.is_open() {
                let mut blocked = None;
                let by_name = rules.check(query);
                addrs.retain(|a| {
                    let v = rules.check_resolved(by_name, &query.with_ip(a.ip()));
                    if v.blocked() {
                        blocked.get_or_insert((a.ip(), v.rule.to_string()));
                    }
                    !v.blocked()
                });
                if let (true, Some((ip, rule))) = (addrs.is_empty(), blocked) {
                    ctx.metrics.rule_blocked(&rule);
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("blocked by access rule {rule:?}: {host} resolves to {ip}"),
                    ));
                }
            }
            happy_eyeballs::<N>(&addrs, opts).await
        }
    }
}

fn lockout_warning(ctx: &WorkerCtx, peer: SocketAddr) {
    let (max, window) = ctx.config.max_auth_failures;
    warn!(client = %peer, "{max} failed logins within {window:?}: further logins from this address refused until the window ends");
}

fn log_handshake_failure(ctx: &WorkerCtx, peer: SocketAddr, e: &SessionError) {
    if let SessionError::Proto(ProtoError::Noop) = e {
        // A SOCKS 6 NOOP was answered: a probe, not a failure.
        debug!(client = %peer, "SOCKS 6 NOOP answered");
        return;
    }
    ctx.metrics.handshake_failed(e.reason());
    match e {
        SessionError::ClientClosed => debug!(client = %peer, "handshake: {e}"),
        SessionError::Proto(p) => {
            info!(client = %peer, reason = p.as_str(), "handshake rejected: {e}")
        }
        _ => info!(client = %peer, "handshake failed: {e}"),
    }
}

/// One line per tunnel, at info level under the `access` target. Never holds a password.
struct AccessLog<'a> {
    peer: SocketAddr,
    user: Option<&'a str>,
    request: &'a Request,
    started: Instant,
    metrics: &'a WorkerMetrics,
    /// How the client's TLS is carried, on a TLS listener.
    tls: Option<&'static str>,
    /// The parent proxy a CONNECT went through.
    parent: Option<String>,
    /// How TLS to the parent is carried.
    parent_tls: Option<&'static str>,
}

/// What a tunnel's relay is metered by besides the worker's byte counters.
struct Tap<'a> {
    /// The user's bandwidth limit, if any.
    bandwidth: Option<&'a UserBandwidth>,
}

impl AccessLog<'_> {
    /// "direct", or the parent proxy (its URL without the password).
    fn via(&self) -> &str {
        self.parent.as_deref().unwrap_or("direct")
    }

    fn refused(&self, code: ReplyCode, why: &str) {
        self.metrics.refused(code.as_str());
        info!(
            target: "access",
            client = %self.peer,
            user = self.user.unwrap_or("-"),
            cmd = self.request.command.as_str(),
            dst = %self.request.target,
            reply = code.as_str(),
            ms = self.started.elapsed().as_millis() as u64,
            via = self.via(),
            "refused: {why}"
        );
    }

    fn associated(&self, relay_at: SocketAddr, s: &UdpStats) {
        let how = if s.idle_timeout {
            "closed: idle timeout"
        } else {
            "closed"
        };
        info!(
            target: "access",
            client = %self.peer,
            user = self.user.unwrap_or("-"),
            cmd = self.request.command.as_str(),
            dst = %self.request.target,
            addr = %relay_at,
            reply = ReplyCode::Succeeded.as_str(),
            up = s.up.1,
            down = s.down.1,
            dgrams_up = s.up.0,
            dgrams_down = s.down.0,
            dropped = s.dropped(),
            dropped_stranger = s.stranger,
            dropped_fragment = s.fragment,
            dropped_malformed = s.malformed,
            dropped_oversize = s.oversize,
            dropped_unreachable = s.unreachable,
            dropped_blocked = s.blocked,
            ms = self.started.elapsed().as_millis() as u64,
            "{how}"
        );
    }

    fn relayed(
        &self,
        via: SocketAddr,
        up: u64,
        down: u64,
        err: Option<(Side, &io::Error)>,
        idle_timeout: bool,
    ) {
        let (side, error) = match err {
            Some((s, e)) => (s.as_str(), e.to_string()),
            None => ("-", String::new()),
        };
        let how = if idle_timeout {
            "closed: idle timeout"
        } else {
            "closed"
        };
        info!(
            target: "access",
            client = %self.peer,
            user = self.user.unwrap_or("-"),
            cmd = self.request.command.as_str(),
            dst = %self.request.target,
            addr = %via,
            reply = ReplyCode::Succeeded.as_str(),
            up,
            down,
            ms = self.started.elapsed().as_millis() as u64,
            error_side = side,
            error = %error,
            tls = self.tls.unwrap_or("-"),
            via = self.via(),
            via_tls = self.parent_tls.unwrap_or("-"),
            "{how}"
        );
    }
}
