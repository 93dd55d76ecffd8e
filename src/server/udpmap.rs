//! UDP port maps (`--map udp:LISTEN=DEST`): every datagram to LISTEN goes to DEST, and DEST's
//! answers come back to the sender, like 3proxy's udppm.
//!
//! Each worker has its own SO_REUSEPORT socket on LISTEN; the kernel picks the socket by a
//! hash of the sender's address and port, so one client's datagrams always reach the same
//! worker and its flow lives there, with no state shared between threads.
//!
//! A **flow** per client address: its first datagram is checked against the access rules (as
//! a UDP ASSOCIATE from that client to DEST) and the limits (a flow counts as one tunnel),
//! then the flow's own socket is opened, connected to DEST (or, when a route sends DEST
//! through a SOCKS5 parent, a UDP ASSOCIATE is made with the parent and datagrams go through
//! its relay with the RFC 1928 header). Datagrams that arrive while the flow opens wait (up to
//! [`WAITING`]). Answers from DEST go back to the client from LISTEN. The flow ends after
//! `--udp-map-idle` (60 s) without a datagram either way, when the parent closes the
//! association, or when the worker stops; one access-log line then tells what it carried.
//!
//! Datagrams are never truncated or fragmented here: one that does not fit is dropped and
//! counted, as is one that finds its socket's send buffer full (UDP promises no delivery, and
//! waiting would hold up every other flow on the worker).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, warn};

use super::access::Access;
use super::limits::Permit;
use super::net::{shutdown_fd, Datagram, Net};
use super::upstream::{self, Upstream};
use super::worker::{Stopping, WorkerCtx};
use crate::proto::udp::{encode_header, parse_header};
use crate::proto::{Command, TargetAddr};
use crate::route::Via;
use crate::rules::{Dest, Query};

/// Datagrams held for a flow whose outbound side is still opening; more are dropped.
const WAITING: usize = 32;

/// After a refusal (rules, limits, an unreachable destination), how long the client's further
/// datagrams are dropped without another attempt (and another log line).
const REFUSED_HOLD: Duration = Duration::from_secs(5);

/// Expired refusals are swept from a worker's flow table once it holds this many entries; and
/// beyond [`MAX_ENTRIES`] a refused sender is not remembered at all (many source ports, or
/// spoofed sources, cannot grow the table without bound).
const SWEEP_AT: usize = 1024;
const MAX_ENTRIES: usize = 65536;

/// Refusal lines a worker logs per second at most (the rest are counted in the next line).
const REFUSAL_LINES: u32 = 10;

/// Runs one worker's share of UDP map `map` on `sock` until the worker stops.
pub(crate) async fn serve<N: Net>(
    ctx: Rc<WorkerCtx>,
    sock: std::net::UdpSocket,
    map: u16,
    stopping: Rc<Stopping>,
) {
    let sock = match N::datagram(sock.into()) {
        Ok(s) => Rc::new(s),
        Err(e) => {
            warn!(worker = ctx.id, "UDP port map: {e}");
            return;
        }
    };
    let flows: Flows<N> = Rc::new(RefCell::new(HashMap::new()));
    let lines = LogBudget::default();
    let pool = &ctx.pools.datagrams;
    while !stopping.is_set() {
        tokio::task::consume_budget().await;
        let mut buf = pool.take();
        match sock.try_recv_from(&mut buf) {
            Ok((n, from)) if n > buf.len() => {
                pool.give(buf);
                debug!(client = %from, "UDP port map: a {n}-byte datagram does not fit; dropped");
            }
            Ok((_, from)) => {
                let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                let stop = &stopping;
                from_client::<N>(&ctx, (&sock, &flows, stop, &lines), map, from, &buf);
                pool.give(buf);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool.give(buf);
                tokio::select! {
                    r = sock.readable() => if r.is_err() { break },
                    _ = stopping.notified() => break,
                }
            }
            Err(e) => {
                pool.give(buf);
                debug!("UDP port map: receive: {e}");
            }
        }
    }
    // The worker stops: every flow ends now (UDP has no close to wait for); each one's task
    // sees the stop itself, even one still opening.
    flows.borrow_mut().clear();
}

/// At most [`REFUSAL_LINES`] refusal lines a second on one worker.
#[derive(Default)]
struct LogBudget {
    second: Cell<Option<Instant>>,
    used: Cell<u32>,
    suppressed: Cell<u64>,
}

impl LogBudget {
    /// Whether a line may be logged now, and how many were suppressed before it.
    fn take(&self, now: Instant) -> Option<u64> {
        if self
            .second
            .get()
            .map_or(true, |t| now >= t + Duration::from_secs(1))
        {
            self.second.set(Some(now));
            self.used.set(0);
        }
        if self.used.get() >= REFUSAL_LINES {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.used.set(self.used.get() + 1);
        Some(self.suppressed.replace(0))
    }
}

type Flows<N> = Rc<RefCell<HashMap<SocketAddr, Entry<<N as Net>::Datagram>>>>;

enum Entry<D> {
    /// The outbound side is opening; these datagrams wait for it.
    Opening(Vec<Vec<u8>>),
    /// Relaying.
    Open(Rc<Flow<D>>),
    /// Refused until then: datagrams are dropped.
    Refused(Instant),
}

/// One client address's flow.
struct Flow<D> {
    /// Connected to the destination, or to the parent's UDP relay.
    out: D,
    /// The RFC 1928 header for the destination, when going through a parent; else empty.
    header: Vec<u8>,
    last: Cell<Instant>,
    up: Cell<(u64, u64)>,
    down: Cell<(u64, u64)>,
    dropped: Cell<u64>,
}

impl<D: Datagram> Flow<D> {
    /// Sends one of the client's datagrams out; one that finds no room is dropped.
    fn send_up(&self, ctx: &WorkerCtx, payload: &[u8]) {
        let r = if self.header.is_empty() {
            self.out.try_send(payload)
        } else {
            let mut d = Vec::with_capacity(self.header.len() + payload.len());
            d.extend_from_slice(&self.header);
            d.extend_from_slice(payload);
            self.out.try_send(&d)
        };
        match r {
            Ok(_) => {
                let (n, b) = self.up.get();
                self.up.set((n + 1, b + payload.len() as u64));
                ctx.metrics.bytes_up.add(payload.len() as u64);
                self.last.set(Instant::now());
            }
            Err(e) => {
                self.dropped.set(self.dropped.get() + 1);
                debug!("UDP port map: send to the destination: {e}");
            }
        }
    }
}

/// One datagram from a client: to its flow, or the start of a new one.
fn from_client<N: Net>(
    ctx: &Rc<WorkerCtx>,
    (sock, flows, stopping, lines): (&Rc<N::Datagram>, &Flows<N>, &Rc<Stopping>, &LogBudget),
    map: u16,
    from: SocketAddr,
    payload: &[u8],
) {
    let mut table = flows.borrow_mut();
    match table.get_mut(&from) {
        Some(Entry::Open(flow)) => return flow.send_up(ctx, payload),
        Some(Entry::Opening(waiting)) => {
            if waiting.len() < WAITING {
                waiting.push(payload.to_vec());
            }
            return;
        }
        Some(Entry::Refused(until)) if Instant::now() < *until => return,
        Some(Entry::Refused(_)) | None => {}
    }
    let access = ctx.access();
    let target = &ctx.config.maps[map as usize].target;
    let query = datagram_query(from.ip(), target);
    let verdict = access.rules.check(&query);
    let refused = if verdict.blocked() {
        ctx.metrics.rule_blocked(verdict.rule);
        Some(format!("blocked by access rule {:?}", verdict.rule))
    } else {
        None
    };
    let permit = match refused {
        Some(why) => Err(why),
        None => ctx
            .limits
            .acquire(from.ip(), None)
            .map_err(|e| e.to_string()),
    };
    let now = Instant::now();
    if table.len() >= SWEEP_AT {
        table.retain(|_, e| !matches!(e, Entry::Refused(until) if *until <= now));
    }
    let permit = match permit {
        Ok(p) => p,
        Err(why) => {
            if let Some(suppressed) = lines.take(now) {
                let why = match suppressed {
                    0 => why,
                    n => format!("{why} ({n} more refusals not logged)"),
                };
                refused_line(from, target, &why, now);
            }
            if table.len() < MAX_ENTRIES {
                table.insert(from, Entry::Refused(now + REFUSED_HOLD));
            } else {
                table.remove(&from);
            }
            return;
        }
    };
    table.insert(from, Entry::Opening(vec![payload.to_vec()]));
    drop(table);
    let (sock, flows, stopping) = (sock.clone(), flows.clone(), stopping.clone());
    let flow = run_flow::<N>(ctx.clone(), (sock, flows, stopping), map, from, permit);
    tokio::task::spawn_local(flow);
}

/// What a flow's outbound side is.
struct Opened<D, S> {
    out: D,
    /// Where `out` sends: the destination, or the parent's relay.
    addr: SocketAddr,
    header: Vec<u8>,
    /// The UDP association's control connection to the parent.
    control: Option<Upstream<S>>,
    via: String,
}

/// Opens the flow, relays the destination's answers to the client until the flow ends, and
/// logs it.
async fn run_flow<N: Net>(
    ctx: Rc<WorkerCtx>,
    (sock, flows, stopping): (Rc<N::Datagram>, Flows<N>, Rc<Stopping>),
    map: u16,
    client: SocketAddr,
    _permit: Permit,
) {
    let _active = ctx.enter();
    // Made now, so a stop from here on is seen (even while the flow opens).
    let stop = stopping.notified();
    tokio::pin!(stop);
    let started = Instant::now();
    let access = ctx.access();
    let target = ctx.config.maps[map as usize].target.clone();
    // Bounded within: the parent's handshake by the connect timeout (its socket shut down at
    // the deadline, so no operation outlives it), a name's resolution likewise.
    let opened = match Box::pin(open::<N>(&ctx, &access, client.ip(), &target)).await {
        Ok(o) => o,
        Err(why) => return refused(&flows, client, &target, &why, started),
    };
    if stopping.is_set() {
        flows.borrow_mut().remove(&client);
        if let Some(c) = &opened.control {
            c.shutdown(Shutdown::Both);
        }
        return refused_line(client, &target, "worker stopping", started);
    }
    let _gauge = ctx.metrics.tunnel(Command::UdpAssociate);
    let flow = Rc::new(Flow {
        out: opened.out,
        header: opened.header,
        last: Cell::new(Instant::now()),
        up: Cell::new((0, 0)),
        down: Cell::new((0, 0)),
        dropped: Cell::new(0),
    });
    let waiting = flows.borrow_mut().insert(client, Entry::Open(flow.clone()));
    if let Some(Entry::Opening(waiting)) = waiting {
        for d in waiting {
            flow.send_up(&ctx, &d);
        }
    }

    // Every wait below is made once and kept until it completes: an io_uring poll is not
    // cancelled by dropping its future, so re-arming them per datagram would pile them up.
    let control = opened.control;
    let parent_closed = async {
        match &control {
            Some(c) => c.closed().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(parent_closed);
    let mut readable = Box::pin(flow.out.readable());
    let idle = ctx.config.udp_map_idle;
    let end = loop {
        let deadline = tokio::time::Instant::from_std(flow.last.get() + idle);
        tokio::select! {
            r = &mut readable => {
                if let Err(e) = r {
                    break format!("closed: {e}");
                }
                if let Err(e) = down(&ctx, &flow, &sock, client).await {
                    break format!("closed: {e}");
                }
                readable = Box::pin(flow.out.readable());
            }
            _ = tokio::time::sleep_until(deadline) => {
                if flow.last.get() + idle <= Instant::now() {
                    break "closed: idle timeout".to_string();
                }
            }
            _ = &mut parent_closed => break "closed: the parent ended the association".to_string(),
            _ = &mut stop => break "closed: worker stopping".to_string(),
        }
    };
    // Shut down: completes the polls still in flight on these sockets.
    shutdown_fd(flow.out.raw_fd(), Shutdown::Both);
    if let Some(c) = &control {
        c.shutdown(Shutdown::Both);
    }
    {
        let mut table = flows.borrow_mut();
        if matches!(table.get(&client), Some(Entry::Open(f)) if Rc::ptr_eq(f, &flow)) {
            table.remove(&client);
        }
    }
    let (up, up_bytes) = flow.up.get();
    let (down, down_bytes) = flow.down.get();
    info!(
        target: "access",
        client = %client,
        user = "-",
        cmd = "udp-map",
        dst = %target,
        addr = %opened.addr,
        up,
        up_bytes,
        down,
        down_bytes,
        dropped = flow.dropped.get(),
        ms = started.elapsed().as_millis() as u64,
        via = %opened.via,
        "{end}"
    );
}

/// Moves the answers waiting on the flow's socket to the client.
async fn down<D: Datagram>(
    ctx: &WorkerCtx,
    flow: &Flow<D>,
    sock: &D,
    client: SocketAddr,
) -> io::Result<()> {
    let pool = &ctx.pools.datagrams;
    loop {
        tokio::task::consume_budget().await;
        let mut buf = pool.take();
        let (n, _) = match flow.out.try_recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool.give(buf);
                return Ok(());
            }
            // An ICMP error for an earlier datagram (port unreachable): the flow goes on.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                pool.give(buf);
                continue;
            }
            Err(e) => {
                pool.give(buf);
                return Err(e);
            }
        };
        if n > buf.len() {
            pool.give(buf);
            flow.dropped.set(flow.dropped.get() + 1);
            continue;
        }
        let payload = if flow.header.is_empty() {
            Some(&buf[..])
        } else {
            // From the parent's relay: the RFC 1928 header first.
            match parse_header(&buf) {
                Ok(Some((_, at))) => Some(&buf[at..]),
                _ => None,
            }
        };
        match payload.map(|p| (sock.try_send_to(p, client), p.len())) {
            Some((Ok(_), len)) => {
                let (k, b) = flow.down.get();
                flow.down.set((k + 1, b + len as u64));
                ctx.metrics.bytes_down.add(len as u64);
                flow.last.set(Instant::now());
            }
            Some((Err(e), _)) => {
                flow.dropped.set(flow.dropped.get() + 1);
                debug!(client = %client, "UDP port map: send to the client: {e}");
            }
            None => flow.dropped.set(flow.dropped.get() + 1),
        }
        pool.give(buf);
    }
}

/// Opens a flow's outbound side: through a SOCKS5 parent when a route says so (the routes of a
/// CONNECT to the map's destination), else a socket connected to the destination (a name is
/// resolved, and each address checked against the rules, as for a CONNECT).
async fn open<N: Net>(
    ctx: &WorkerCtx,
    access: &Arc<Access>,
    client: IpAddr,
    target: &TargetAddr,
) -> Result<Opened<N::Datagram, N::Stream>, String> {
    let route_query = Query::for_target(client, None, Command::Connect, target);
    if let (Via::Parent(parent), _) = access.routes.choose(&route_query) {
        let (reached, relay) = upstream::associate::<N>(ctx, parent).await.map_err(|e| {
            ctx.metrics.parent_failed(e.as_str());
            e.to_string()
        })?;
        let mut header = Vec::with_capacity(262);
        encode_header(target, &mut header);
        let out = datagram::<N>(ctx, relay).map_err(|e| e.to_string())?;
        return Ok(Opened {
            out,
            addr: relay,
            header,
            control: Some(reached.stream),
            via: parent.url.to_string(),
        });
    }
    let addr = match target {
        TargetAddr::Ip(a) => *a,
        TargetAddr::Domain(host, port) => {
            let resolving = ctx.resolver.resolve(host, *port);
            let addrs = match tokio::time::timeout(ctx.config.connect_timeout, resolving).await {
                Ok(r) => r.map_err(|e| e.to_string())?,
                Err(_) => return Err(format!("{host} did not resolve in time")),
            };
            let query = datagram_query(client, target);
            let by_name = access.rules.check(&query);
            let allowed = addrs.into_iter().find(|a| {
                access.rules.is_open()
                    || !access
                        .rules
                        .check_resolved(by_name, &query.with_ip(a.ip()))
                        .blocked()
            });
            allowed.ok_or_else(|| format!("{host} resolves only to addresses the rules block"))?
        }
    };
    let out = datagram::<N>(ctx, addr).map_err(|e| e.to_string())?;
    Ok(Opened {
        out,
        addr,
        header: Vec::new(),
        control: None,
        via: "direct".into(),
    })
}

/// The rules' question for a map's datagrams: UDP from `client` to the map's destination (as
/// for a datagram of a UDP ASSOCIATE).
fn datagram_query(client: IpAddr, target: &TargetAddr) -> Query<'_> {
    let (dest, port) = match target {
        TargetAddr::Ip(a) => (Dest::Ip(a.ip()), a.port()),
        TargetAddr::Domain(h, p) => (Dest::Name(h), *p),
    };
    Query {
        client,
        user: None,
        command: Command::UdpAssociate,
        dest,
        port,
    }
}

/// A UDP socket connected to `to` (from the egress address, if one is set and of its family).
fn datagram<N: Net>(ctx: &WorkerCtx, to: SocketAddr) -> io::Result<N::Datagram> {
    let sock = Socket::new(
        Domain::for_address(to),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if let Some(ip) = ctx
        .config
        .egress_ip
        .filter(|ip| ip.is_ipv4() == to.is_ipv4())
    {
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    sock.connect(&to.into())?;
    N::datagram(sock)
}

fn refused<D>(
    flows: &RefCell<HashMap<SocketAddr, Entry<D>>>,
    client: SocketAddr,
    target: &TargetAddr,
    why: &str,
    started: Instant,
) {
    refused_line(client, target, why, started);
    let until = Instant::now() + REFUSED_HOLD;
    flows.borrow_mut().insert(client, Entry::Refused(until));
}

fn refused_line(client: SocketAddr, target: &TargetAddr, why: &str, started: Instant) {
    info!(
        target: "access",
        client = %client,
        user = "-",
        cmd = "udp-map",
        dst = %target,
        ms = started.elapsed().as_millis() as u64,
        "refused: {why}"
    );
}
