//! UDP ASSOCIATE (RFC 1928 section 7): one association per control connection, on the worker
//! that accepted it.
//!
//! Two UDP sockets per association:
//! - the **client side**, bound to the local IP of the control connection (so the address in
//!   the reply is one the client can reach, not 0.0.0.0; `--udp-advertise` overrides it for a
//!   proxy behind NAT). Only the client's IP may send to it, and only from the port it named
//!   in its request (or, when it named port 0 or an address other than the one it connects
//!   from, i.e. it is behind NAT, the port of its first datagram); anything else is dropped
//!   and counted.
//! - the **outside**, bound to the egress address (or the wildcard, dual-stack), which sends
//!   the client's datagrams to their destinations and receives the replies, from any remote,
//!   wrapped for the client with a header naming their source.
//!
//! Datagrams move with direct non-blocking syscalls; buffers come from the worker's pool only
//! while a datagram moves, so an idle association holds its three sockets and nothing else.
//! Nothing is truncated silently: a datagram that does not fit, a fragment (FRAG != 0; this
//! server does not reassemble, which RFC 1928 allows), a malformed header or an unresolvable
//! destination is dropped, counted, and reported in the access log line.
//!
//! The association ends when the control connection closes (or at the idle timeout, through
//! the worker's sweep, which shuts the control connection down), and its sockets are closed
//! at once.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info};

use std::sync::Arc;

use super::access::Access;
use super::metrics::Counter;
use super::net::{shutdown_fd, Datagram, Net, Stream};
use super::worker::WorkerCtx;
use crate::proto::udp::{ip_header_len, parse_header, write_ip_header, MAX_IP_HEADER};
use crate::proto::{Command, ProtoError, TargetAddr};
use crate::rules::{Dest, Query, Verdict};

/// Socket buffer sizes asked for (the kernel caps them at net.core.[rw]mem_max): a burst of
/// datagrams should wait in the kernel rather than be dropped there.
const SOCKET_BUFFER: usize = 1 << 20;

/// Domain names resolved per association, and for how long.
const NAME_CACHE: usize = 16;
const NAME_TTL: Duration = Duration::from_secs(60);
const NAME_FAIL_TTL: Duration = Duration::from_secs(5);

/// What an association counted.
#[derive(Debug, Default)]
pub struct UdpStats {
    /// Datagrams and payload bytes from the client to destinations.
    pub up: (u64, u64),
    /// Datagrams and payload bytes from remotes to the client.
    pub down: (u64, u64),
    /// Dropped: from an address other than the client's.
    pub stranger: u64,
    /// Dropped: FRAG != 0.
    pub fragment: u64,
    /// Dropped: a malformed or truncated header.
    pub malformed: u64,
    /// Dropped: too large for the buffer or for the client's socket.
    pub oversize: u64,
    /// Dropped: the destination did not resolve, or sending failed.
    pub unreachable: u64,
    /// Dropped: an access rule blocks the destination.
    pub blocked: u64,
    /// Whether the idle timeout ended it.
    pub idle_timeout: bool,
}

impl UdpStats {
    /// All dropped datagrams.
    pub fn dropped(&self) -> u64 {
        self.stranger
            + self.fragment
            + self.malformed
            + self.oversize
            + self.unreachable
            + self.blocked
    }
}

/// An open association: its sockets and the client it serves.
pub struct Association<N: Net> {
    client_side: N::Datagram,
    outside: N::Datagram,
    /// The outside socket is IPv6 (dual-stack unless an IPv6 egress address is set).
    outside_v6: bool,
    outside_dual: bool,
    client_ip: IpAddr,
    client_port: Cell<Option<u16>>,
    /// The authenticated user, for the access rules.
    user: Option<String>,
    /// The users and rules the association started with.
    access: Arc<Access>,
    advertised: SocketAddr,
    ended: Cell<bool>,
    /// The control connection's descriptor, shut down for reading when the association ends
    /// for another reason, so that its watcher wakes too.
    control_fd: Cell<Option<RawFd>>,
    stats: RefCell<UdpStats>,
    /// Names resolved (or found not to resolve: `None`) recently.
    names: RefCell<Vec<NameEntry>>,
}

/// A remembered lookup: name, port, answer (`None`: it did not resolve), when.
type NameEntry = (String, u16, Option<SocketAddr>, Instant);

/// Binds a non-blocking UDP socket.
fn udp_socket(at: SocketAddr, dual_stack: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))?;
    if at.is_ipv6() {
        s.set_only_v6(!dual_stack)?;
    }
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&at.into())?;
    Ok(s)
}

impl<N: Net> Association<N> {
    /// Opens the sockets for a client whose control connection is `control` (accepted at its
    /// local address), from `peer`, which asked for datagrams from `requested` (DST.ADDR and
    /// DST.PORT of its request).
    pub fn open(
        ctx: &WorkerCtx,
        control: &impl Stream,
        peer: SocketAddr,
        user: Option<&str>,
        access: Arc<Access>,
        requested: &TargetAddr,
    ) -> io::Result<Self> {
        let local = control.local_addr()?;
        let local_ip = local.ip().to_canonical();
        let client_side = udp_socket(SocketAddr::new(local_ip, 0), false)?;
        let port = client_side
            .local_addr()?
            .as_socket()
            .map_or(0, |a| a.port());
        let (outside, outside_v6, outside_dual) = match ctx.config.egress_ip {
            Some(ip) => (
                udp_socket(SocketAddr::new(ip, 0), false)?,
                ip.is_ipv6(),
                false,
            ),
            None => match udp_socket(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0), true) {
                Ok(s) => (s, true, true),
                // No IPv6 on this host: IPv4 destinations only.
                Err(_) => (
                    udp_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0), false)?,
                    false,
                    false,
                ),
            },
        };
        let advertised_ip = ctx.config.udp_advertise_for(local).unwrap_or(local_ip);
        // DST.PORT fixes the client's source port when the client names it together with an
        // address we can check it against (unspecified, or the address we see). A client
        // that names another address is behind NAT: its port will be translated too, so the
        // first datagram fixes the port instead.
        let client_ip = peer.ip().to_canonical();
        let client_port = match requested {
            TargetAddr::Ip(a)
                if a.port() != 0
                    && (a.ip().is_unspecified() || a.ip().to_canonical() == client_ip) =>
            {
                Some(a.port())
            }
            _ => None,
        };
        Ok(Association {
            client_side: N::datagram(client_side)?,
            outside: N::datagram(outside)?,
            outside_v6,
            outside_dual,
            client_ip,
            client_port: Cell::new(client_port),
            user: user.map(str::to_owned),
            access,
            advertised: SocketAddr::new(advertised_ip, port),
            ended: Cell::new(false),
            control_fd: Cell::new(None),
            stats: RefCell::new(UdpStats::default()),
            names: RefCell::new(Vec::new()),
        })
    }

    /// The address for the reply's BND.ADDR and BND.PORT.
    pub fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    /// Relays until the control connection closes, the idle sweep fires, or the worker
    /// closes everything at the end of a drain.
    pub async fn run(self, ctx: &WorkerCtx, control: &impl Stream) -> UdpStats {
        // The idle sweep and the end-of-drain close shut down the control connection only:
        // its watcher then ends the association in order (flag first, then the UDP sockets),
        // so no datagram loop ever polls a shut-down socket without knowing why.
        let registration = ctx.tunnels.register(control.raw_fd(), control.raw_fd());
        self.control_fd.set(Some(control.raw_fd()));
        let touch = || registration.touch();
        tokio::join!(
            self.watch_control(control),
            self.client_to_remotes(ctx, &touch),
            self.remotes_to_client(ctx, &touch),
        );
        let mut stats = self.stats.take();
        stats.idle_timeout = registration.idle_fired();
        stats
    }

    /// Ends the association: both datagram loops wake (a shut-down socket polls as hung up)
    /// and stop.
    fn end(&self) {
        if !self.ended.replace(true) {
            shutdown_fd(self.client_side.raw_fd(), Shutdown::Both);
            shutdown_fd(self.outside.raw_fd(), Shutdown::Both);
            if let Some(fd) = self.control_fd.get() {
                shutdown_fd(fd, Shutdown::Read);
            }
        }
    }

    /// Waits for the control connection to close. Bytes the client sends on it mean nothing
    /// in RFC 1928 and are discarded.
    async fn watch_control(&self, control: &impl Stream) {
        let mut sink: Vec<u8> = Vec::new();
        loop {
            if self.ended.get() || control.readable().await.is_err() {
                break;
            }
            if sink.capacity() == 0 {
                sink.reserve(512);
            }
            sink.clear();
            let (r, b) = control.read_now(sink).await;
            sink = b;
            match r {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        self.end();
    }

    async fn client_to_remotes(&self, ctx: &WorkerCtx, touch: &dyn Fn()) {
        let pool = &ctx.pools.datagrams;
        while !self.ended.get() {
            // A flood of datagrams never blocks: yield now and then so that the worker's
            // other tunnels and timers run.
            tokio::task::consume_budget().await;
            let mut buf = pool.take();
            match self.client_side.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    self.forward_up(ctx, &buf, n, from, touch).await;
                    pool.give(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pool.give(buf);
                    if self.client_side.readable().await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // An ICMP error queued on the socket, or the socket was shut down.
                    pool.give(buf);
                    debug!("udp: client-side receive: {e}");
                    if self.ended.get() {
                        break;
                    }
                }
            }
        }
        self.end();
    }

    /// One datagram from the client side: check its source, unwrap it, send it on.
    async fn forward_up(
        &self,
        ctx: &WorkerCtx,
        buf: &[u8],
        n: usize,
        from: SocketAddr,
        touch: &dyn Fn(),
    ) {
        if from.ip().to_canonical() != self.client_ip
            || self.client_port.get().is_some_and(|p| p != from.port())
        {
            debug!(from = %from, client = %self.client_ip, "udp: datagram from a stranger dropped");
            self.stats.borrow_mut().stranger += 1;
            return;
        }
        if self.client_port.get().is_none() {
            self.client_port.set(Some(from.port()));
        }
        if n > buf.len() {
            self.oversize(n, "from the client");
            return;
        }
        let (header, offset) = match parse_header(buf) {
            Ok(Some(h)) => h,
            Err(ProtoError::Fragmented(f)) => {
                debug!(
                    frag = f,
                    "udp: fragment dropped (fragmentation is not supported)"
                );
                self.stats.borrow_mut().fragment += 1;
                return;
            }
            Ok(None) | Err(_) => {
                debug!(len = n, "udp: malformed datagram header dropped");
                self.stats.borrow_mut().malformed += 1;
                return;
            }
        };
        // Access rules, per datagram: the name as given, then the address it resolves to.
        let rules = &self.access.rules;
        let (dest, port) = match &header.addr {
            TargetAddr::Ip(a) => (Dest::Ip(a.ip()), a.port()),
            TargetAddr::Domain(h, p) => (Dest::Name(h), *p),
        };
        let query = Query {
            client: self.client_ip,
            user: self.user.as_deref(),
            command: Command::UdpAssociate,
            dest,
            port,
        };
        let by_name = rules.check(&query);
        if !rules.is_open() && self.blocked(by_name) {
            return;
        }
        let dest = match &header.addr {
            TargetAddr::Ip(a) => Some(*a),
            TargetAddr::Domain(host, port) => {
                let d = self.resolve(ctx, host.clone(), *port).await;
                if let Some(d) = d {
                    let v = rules.check_resolved(by_name, &query.with_ip(d.ip()));
                    if !rules.is_open() && self.blocked(v) {
                        return;
                    }
                }
                d
            }
        };
        let Some(dest) = dest.and_then(|d| self.outside_addr(d)) else {
            self.stats.borrow_mut().unreachable += 1;
            return;
        };
        let payload = &buf[offset..n];
        match self.send(&self.outside, payload, dest).await {
            Ok(()) => {
                let mut s = self.stats.borrow_mut();
                s.up.0 += 1;
                s.up.1 += payload.len() as u64;
                ctx.metrics.bytes_up.add(payload.len() as u64);
                touch();
            }
            Err(e) => self.send_failed(&e, payload.len(), "to a destination"),
        }
    }

    async fn remotes_to_client(&self, ctx: &WorkerCtx, touch: &dyn Fn()) {
        let pool = &ctx.pools.datagrams;
        while !self.ended.get() {
            tokio::task::consume_budget().await;
            let mut buf = pool.take();
            // Room in front for the header, written just before the payload once the source
            // is known.
            buf.resize(MAX_IP_HEADER, 0);
            match self.outside.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    let counter = &ctx.metrics.bytes_down;
                    self.forward_down(&mut buf, n, from, (touch, counter)).await;
                    pool.give(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pool.give(buf);
                    if self.outside.readable().await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    pool.give(buf);
                    debug!("udp: outside receive: {e}");
                    if self.ended.get() {
                        break;
                    }
                }
            }
        }
        self.end();
    }

    /// One datagram from a remote: wrap it with its source and send it to the client.
    async fn forward_down(
        &self,
        buf: &mut [u8],
        n: usize,
        from: SocketAddr,
        (touch, counter): (&dyn Fn(), &Counter),
    ) {
        if MAX_IP_HEADER + n > buf.len() {
            self.oversize(n, "from a remote");
            return;
        }
        let Some(port) = self.client_port.get() else {
            // No datagram from the client yet, so nobody asked for this one.
            self.stats.borrow_mut().stranger += 1;
            return;
        };
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let start = MAX_IP_HEADER - ip_header_len(&from);
        write_ip_header(&from, &mut buf[start..MAX_IP_HEADER]);
        let to = SocketAddr::new(self.client_ip, port);
        match self
            .send(&self.client_side, &buf[start..MAX_IP_HEADER + n], to)
            .await
        {
            Ok(()) => {
                let mut s = self.stats.borrow_mut();
                s.down.0 += 1;
                s.down.1 += n as u64;
                counter.add(n as u64);
                touch();
            }
            // EMSGSIZE: too large once wrapped for the client's address family.
            Err(e) => self.send_failed(&e, MAX_IP_HEADER - start + n, "to the client"),
        }
    }

    /// Sends one datagram, waiting for room in the socket buffer rather than dropping it.
    async fn send(&self, sock: &N::Datagram, data: &[u8], to: SocketAddr) -> io::Result<()> {
        loop {
            match sock.try_send_to(data, to) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.ended.get() {
                        return Err(e);
                    }
                    Box::pin(sock.writable()).await?;
                }
                Err(e) => {
                    debug!(to = %to, len = data.len(), "udp: send failed: {e}");
                    return Err(e);
                }
            }
        }
    }

    fn send_failed(&self, e: &io::Error, len: usize, dir: &str) {
        if e.raw_os_error() == Some(libc::EMSGSIZE) {
            self.oversize(len, dir);
        } else {
            self.stats.borrow_mut().unreachable += 1;
        }
    }

    /// Counts and logs a datagram an access rule blocks; `true` if blocked.
    fn blocked(&self, v: Verdict<'_>) -> bool {
        if v.blocked() {
            debug!(rule = v.rule, "udp: datagram blocked by access rule");
            self.stats.borrow_mut().blocked += 1;
        }
        v.blocked()
    }

    fn oversize(&self, len: usize, dir: &str) {
        let mut s = self.stats.borrow_mut();
        if s.oversize == 0 {
            info!(len, "udp: datagram {dir} too large, dropped");
        }
        s.oversize += 1;
    }

    /// The destination as the outside socket can send to it: IPv4 as v4-mapped on a
    /// dual-stack socket; `None` for a family the socket cannot reach.
    fn outside_addr(&self, dest: SocketAddr) -> Option<SocketAddr> {
        match (dest, self.outside_v6) {
            (SocketAddr::V4(a), true) if self.outside_dual => Some(SocketAddr::new(
                IpAddr::V6(a.ip().to_ipv6_mapped()),
                a.port(),
            )),
            (SocketAddr::V4(_), true) | (SocketAddr::V6(_), false) => None,
            _ => Some(dest),
        }
    }

    /// Resolves a destination name through the worker's resolver (within the connect
    /// timeout), remembering the answer, or its absence, for a while so that a stream of
    /// datagrams to one name resolves it once.
    async fn resolve(&self, ctx: &WorkerCtx, host: String, port: u16) -> Option<SocketAddr> {
        let now = Instant::now();
        {
            let mut names = self.names.borrow_mut();
            names.retain(|e| {
                let ttl = if e.2.is_some() {
                    NAME_TTL
                } else {
                    NAME_FAIL_TTL
                };
                now.duration_since(e.3) < ttl
            });
            if let Some(e) = names.iter().find(|e| e.1 == port && e.0 == host) {
                return e.2;
            }
        }
        let lookup = ctx.resolver.resolve(&host, port);
        let addr = match tokio::time::timeout(ctx.config.connect_timeout, lookup).await {
            Ok(Ok(addrs)) => addrs.into_iter().find(|a| self.outside_addr(*a).is_some()),
            Ok(Err(e)) => {
                debug!(host = %host, "udp: destination does not resolve: {e}");
                None
            }
            Err(_) => {
                debug!(host = %host, "udp: name lookup timed out");
                None
            }
        };
        let mut names = self.names.borrow_mut();
        if names.len() >= NAME_CACHE {
            names.remove(0);
        }
        names.push((host, port, addr, now));
        addr
    }
}
