//! A worker: one OS thread pinned to one core, with its own runtime and its own SO_REUSEPORT
//! listeners. Connections accepted here are handshaken and relayed here; nothing crosses to
//! another thread.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use super::connect::ConnectOptions;
use super::limits::Limits;
use super::metrics::{Registry, WorkerMetrics};
use super::net::{shutdown_fd, Net, Stream};
use super::pool::{BufferPool, PipePool, Pools, DATAGRAM_BUFFER, SMALL_BUFFER};
use super::relay::Mode;
use super::resolve::Resolver;
use super::session;
use super::tunnels::Tunnels;
use super::udpmap;
use super::verify::Verifier;
use crate::auth::LoginThrottle;
use crate::config::{Config, RelayChoice};

/// Free buffers and free pipes each worker keeps for reuse (more are made on demand and
/// released when returned to a full pool).
const POOL_KEEP: usize = 64;

/// How often a worker releases pooled buffers and pipes that went unused.
const POOL_TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// The relay mode `--relay` asks for. `auto` is splice: measured against copy in
/// `loadtest/README.md` (bulk throughput, CPU per GiB and small request/response latency).
pub fn relay_mode(choice: RelayChoice) -> Mode {
    match choice {
        RelayChoice::Auto | RelayChoice::Splice => Mode::Splice,
        RelayChoice::Adaptive => Mode::Adaptive,
        RelayChoice::Copy => Mode::Copy,
    }
}

use super::access::Access;

/// Per-worker state shared by its sessions (single-threaded: `Rc` and `Cell`, no locks).
pub struct WorkerCtx {
    /// Worker index.
    pub id: usize,
    /// Settings.
    pub config: Arc<Config>,
    /// Users and access rules now (replaced on SIGHUP).
    access: RefCell<Arc<Access>>,
    /// How to connect out.
    pub connect: ConnectOptions,
    /// This worker's resolver.
    pub resolver: Resolver,
    /// Relay buffers and pipes, held by tunnels only while bytes move.
    pub pools: Pools,
    /// How tunnels on this worker move bytes.
    pub relay: Mode,
    /// Live tunnels, for the idle sweep and the forced close after a drain.
    pub tunnels: Tunnels,
    /// Concurrent tunnel limits, shared with the other workers.
    pub limits: Arc<Limits>,
    /// Failed logins per client address, shared with the other workers.
    pub logins: Arc<LoginThrottle>,
    /// This worker's counters (read by the metrics scraper).
    pub metrics: Arc<WorkerMetrics>,
    /// Hashed-password checks, remembered once verified.
    pub verifier: Verifier,
    /// A descriptor kept in reserve: when accept fails for want of descriptors, closing it
    /// lets the waiting client be taken and refused at once instead of left hanging.
    reserve: RefCell<Option<Box<dyn std::any::Any>>>,
    active: Cell<usize>,
    idle: Notify,
    /// Debug builds: a session asks the worker's own loop to panic (see [`failpoint`]).
    #[cfg(debug_assertions)]
    pub crash: Notify,
}

impl WorkerCtx {
    /// Whether TLS handshakes should prepare for kernel TLS (`--ktls auto` on a kernel that
    /// has it).
    pub fn ktls(&self) -> bool {
        self.config.ktls == crate::config::KtlsChoice::Auto
            && super::ktls::support().unavailable.is_none()
    }

    /// The current users and access rules; a session takes them once and keeps them.
    pub fn access(&self) -> Arc<Access> {
        self.access.borrow().clone()
    }

    /// Counts a session as active until the guard drops.
    pub fn enter(self: &Rc<Self>) -> ActiveGuard {
        self.active.set(self.active.get() + 1);
        self.metrics.sessions.add(1);
        ActiveGuard(self.clone())
    }

    /// Resolves once no session is active.
    async fn all_closed(&self) {
        while self.active.get() > 0 {
            self.idle.notified().await;
        }
    }
}

/// Keeps a session counted as active.
pub struct ActiveGuard(Rc<WorkerCtx>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let n = self.0.active.get() - 1;
        self.0.active.set(n);
        self.0.metrics.sessions.sub(1);
        if n == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every worker shares: settings, limits, the login throttle, and (read only by the
/// scraper) the metrics registry.
#[derive(Clone)]
pub struct Shared {
    /// Settings.
    pub config: Arc<Config>,
    /// Concurrent tunnel limits.
    pub limits: Arc<Limits>,
    /// Failed logins per client address.
    pub logins: Arc<LoginThrottle>,
    /// Every worker's metrics.
    pub metrics: Arc<Registry>,
    /// The current users and rules (replaced on SIGHUP).
    pub access: watch::Receiver<Arc<Access>>,
    /// Flips to true to stop.
    pub shutdown: watch::Receiver<bool>,
    /// Told this worker's index once it accepts on every listener.
    pub ready: std::sync::mpsc::Sender<usize>,
}

/// What a listener's connections start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// The SOCKS handshake.
    Socks,
    /// A PROXY protocol header, then the SOCKS handshake.
    ProxyHeader,
    /// A TLS handshake, then the SOCKS handshake inside TLS.
    Tls,
    /// Nothing: the connection is relayed to the destination of port map N (`--map`).
    Map(u16),
}

/// A listening TCP socket, or a UDP port map's socket.
pub enum Bound {
    /// Accepts connections.
    Tcp(std::net::TcpListener),
    /// Receives a UDP port map's datagrams.
    Udp(std::net::UdpSocket),
}

impl Bound {
    /// The address it is bound to.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            Bound::Tcp(s) => s.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
    }

    /// Another handle on the same socket.
    pub fn try_clone(&self) -> io::Result<Bound> {
        Ok(match self {
            Bound::Tcp(s) => Bound::Tcp(s.try_clone()?),
            Bound::Udp(s) => Bound::Udp(s.try_clone()?),
        })
    }

    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Bound::Tcp(s) => s.as_raw_fd(),
            Bound::Udp(s) => s.as_raw_fd(),
        }
    }
}

/// A listening socket and what its connections start with.
pub struct Listener {
    /// The socket.
    pub socket: Bound,
    /// What connections start with.
    pub front: Front,
    /// Shared with other processes (systemd socket activation): never shut down here.
    pub shared: bool,
}

impl Listener {
    /// Another handle on the same socket.
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(Listener {
            socket: self.socket.try_clone()?,
            front: self.front,
            shared: self.shared,
        })
    }
}

/// The body of a worker thread: accept on every listener until `shutdown` flips, then drain
/// sessions for up to the drain timeout. Returns the number of sessions still open at the end.
pub async fn run<N: Net>(id: usize, shared: Shared, listeners: Vec<Listener>) -> io::Result<usize> {
    let Shared {
        config,
        limits,
        logins,
        metrics,
        mut access,
        mut shutdown,
        ready,
    } = shared;
    let ctx = Rc::new(WorkerCtx {
        id,
        metrics: metrics.workers[id].clone(),
        verifier: Verifier::default(),
        reserve: RefCell::new(open_reserve()),
        access: RefCell::new(access.borrow().clone()),
        connect: ConnectOptions {
            egress_ip: config.egress_ip,
            attempt_delay: config.happy_eyeballs_delay,
            fast_open: config.upstream_fastopen,
        },
        resolver: Resolver::default(),
        pools: Pools {
            buffers: BufferPool::new(config.buffer_size, POOL_KEEP),
            small: BufferPool::new(SMALL_BUFFER.min(config.buffer_size), POOL_KEEP * 4),
            pipes: PipePool::new(config.pipe_size, POOL_KEEP),
            datagrams: BufferPool::new(DATAGRAM_BUFFER, POOL_KEEP),
        },
        relay: relay_mode(config.relay),
        tunnels: Tunnels::default(),
        limits,
        logins,
        config,
        active: Cell::new(0),
        idle: Notify::new(),
        #[cfg(debug_assertions)]
        crash: Notify::new(),
    });

    let stopping = Rc::new(Stopping::default());
    let mut fds = Vec::new();
    let mut loops = Vec::new();
    let mut udp_maps = Vec::new();
    for l in listeners {
        fds.push((l.socket.as_raw_fd(), l.shared));
        let front = l.front;
        let socket = match (l.socket, front) {
            (Bound::Tcp(s), _) => s,
            (Bound::Udp(s), Front::Map(map)) => {
                let serve = udpmap::serve::<N>(ctx.clone(), s, map, stopping.clone());
                udp_maps.push(tokio::task::spawn_local(serve));
                continue;
            }
            (Bound::Udp(_), _) => continue,
        };
        let listener = N::listener(socket)?;
        loops.push(tokio::task::spawn_local(accept_loop::<N>(
            ctx.clone(),
            listener,
            front,
            stopping.clone(),
        )));
    }

    let _ = ready.send(id);

    // Give pooled buffers and pipes back to the system once a burst is over, and close
    // tunnels that went idle: one timer per worker rather than one per tunnel.
    // SIGHUP: take the new users and rules for sessions that start from now on.
    let reloads = {
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            while access.changed().await.is_ok() {
                let new = access.borrow_and_update().clone();
                *ctx.access.borrow_mut() = new;
                // Passwords may have changed.
                ctx.verifier.clear();
            }
        })
    };

    let housekeeping = {
        let ctx = ctx.clone();
        let every = match ctx.config.idle_timeout {
            Some(idle) => (idle / 4).clamp(Duration::from_millis(50), POOL_TRIM_INTERVAL),
            None => POOL_TRIM_INTERVAL,
        };
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut since_trim = Duration::ZERO;
            // Live tunnels at their highest since memory was last handed back.
            let mut peak = 0usize;
            loop {
                tick.tick().await;
                if let Some(idle) = ctx.config.idle_timeout {
                    ctx.tunnels.sweep_idle(idle);
                }
                since_trim += every;
                let live = ctx.tunnels.len();
                peak = peak.max(live);
                if since_trim >= POOL_TRIM_INTERVAL {
                    since_trim = Duration::ZERO;
                    let trimmed = ctx.pools.trim_if_unused();
                    // After a burst (pools idle, or most tunnels gone), hand this thread's
                    // freed memory back to the system now rather than whenever the allocator
                    // next happens to run.
                    if trimmed || (peak >= 1024 && live < peak / 2) {
                        ctx.tunnels.shrink_if_empty();
                        release_freed_memory();
                        peak = live;
                    }
                }
            }
        })
    };

    while !*shutdown.borrow_and_update() {
        #[cfg(debug_assertions)]
        let changed = tokio::select! {
            c = shutdown.changed() => c,
            _ = ctx.crash.notified() => panic!("failpoint: worker {id} crashes"),
        };
        #[cfg(not(debug_assertions))]
        let changed = shutdown.changed().await;
        if changed.is_err() {
            break;
        }
    }

    // Stop accepting: shutdown(2) on a listening socket fails its pending accept with EINVAL,
    // which ends the accept loop (dropping an io_uring accept would not stop it).
    // A socket shared with systemd must stay usable for the next instance: its accepts are
    // cancelled instead.
    stopping.flag.set(true);
    stopping.notify.notify_waiters();
    // Every cancel is submitted before any is awaited, and the listeners stay open until all
    // loops are done, so a cancel by descriptor can never hit a reused descriptor.
    let mut wakers = Vec::new();
    for &(fd, shared) in &fds {
        if !shared {
            shutdown_fd(fd, Shutdown::Both);
        } else if let Err(e) = N::cancel_accepts(fd).await {
            // Kernels before 5.19 cannot cancel by descriptor: wake the accept with a
            // connection of our own, which the stopping loop closes.
            debug!(
                worker = id,
                "cannot cancel accepts on fd {fd} ({e}); waking them"
            );
            wakers.extend(wake_accept(fd));
        }
    }
    let mut closed = Vec::new();
    for l in loops {
        if let Ok(listener) = l.await {
            closed.push(listener);
        }
    }
    for u in udp_maps {
        let _ = u.await;
    }
    drop(closed);
    drop(wakers);

    let drain = ctx.config.drain_timeout;
    if ctx.active.get() > 0 {
        info!(
            worker = id,
            tunnels = ctx.active.get(),
            "draining for up to {drain:?}"
        );
        if tokio::time::timeout(drain, ctx.all_closed()).await.is_err() {
            // Deadline: shut every tunnel down so each ends cleanly (FIN both ways, buffers and
            // pipes back) instead of vanishing with the runtime.
            ctx.tunnels.close_all();
            let _ = tokio::time::timeout(Duration::from_secs(2), ctx.all_closed()).await;
        }
    }
    housekeeping.abort();
    reloads.abort();
    Ok(ctx.active.get())
}

/// Debug builds only (the tests' binary): a CONNECT to `panic.failpoint.invalid` panics in
/// its session's task, and one to `crash-worker.failpoint.invalid` panics in the worker's own
/// loop, so the tests can show that a panic costs one tunnel, and that a dead worker is
/// restarted. Release builds have no such names.
#[cfg(debug_assertions)]
pub fn failpoint(ctx: &WorkerCtx, target: &crate::proto::TargetAddr) {
    if let crate::proto::TargetAddr::Domain(host, _) = target {
        match host.as_str() {
            "panic.failpoint.invalid" => panic!("failpoint: a session panics"),
            "crash-worker.failpoint.invalid" => ctx.crash.notify_one(),
            _ => {}
        }
    }
}

/// Asks mimalloc (the binary's allocator) to return this thread's free pages to the system.
/// Without it, a worker that goes quiet after a burst keeps them until it next allocates.
fn release_freed_memory() {
    // Safety: mi_collect takes no pointers and only touches the calling thread's heap; when
    // mimalloc is not the global allocator it has nothing to collect.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Tells the accept loops (and UDP map loops) to stop.
#[derive(Default)]
pub(crate) struct Stopping {
    flag: Cell<bool>,
    notify: Notify,
}

impl Stopping {
    /// Whether the worker is stopping.
    pub(crate) fn is_set(&self) -> bool {
        self.flag.get()
    }

    /// Resolves when the worker starts stopping (after `is_set` was checked).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }
}

/// Connects to the listener on `fd` (its own address, or loopback for a wildcard one) so
/// that a pending accept completes; the socket is kept until the accept loops have ended.
fn wake_accept(fd: std::os::fd::RawFd) -> Option<socket2::Socket> {
    let mut addr = super::net::local_addr_of(fd).ok()?;
    if addr.ip().is_unspecified() {
        let lo: std::net::IpAddr = match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        addr.set_ip(lo);
    }
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        None,
    )
    .ok()?;
    match sock.connect(&addr.into()) {
        Ok(()) => Some(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Some(sock),
        Err(_) => None,
    }
}

/// Accepts until stopped; returns the listener, so that the caller decides when it closes.
async fn accept_loop<N: Net>(
    ctx: Rc<WorkerCtx>,
    listener: N::Listener,
    front: Front,
    stopping: Rc<Stopping>,
) -> N::Listener {
    let mut backoff = Duration::from_millis(5);
    let mut last_warning: Option<Instant> = None;
    loop {
        if stopping.flag.get() {
            return listener;
        }
        let accepted = if N::ACCEPT_CANCEL_SAFE {
            tokio::select! {
                r = N::accept(&listener) => r,
                _ = stopping.notify.notified() => return listener,
            }
        } else {
            N::accept(&listener).await
        };
        match accepted {
            // Taken while stopping (e.g. our own wake-up connection): close it.
            Ok(_) if stopping.flag.get() => return listener,
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                ctx.metrics.accepted.add(1);
                let session = session::run::<N>(ctx.clone(), stream, peer, front);
                tokio::task::spawn_local(session);
            }
            Err(_) if stopping.flag.get() => return listener,
            Err(e) => match e.raw_os_error() {
                // Out of descriptors or memory: existing tunnels keep flowing; waiting clients
                // are refused at once (below), and accept backs off rather than spins.
                Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                | Some(libc::ENOMEM) => {
                    // At most one warning a second, not one per client or retry.
                    if last_warning.map_or(true, |t| t.elapsed() >= Duration::from_secs(1)) {
                        last_warning = Some(Instant::now());
                        warn!(
                            worker = ctx.id,
                            "accept: {e}; refusing new clients until descriptors free up"
                        );
                    }
                    // Each waiting client is taken and reset, one after another (work done per
                    // client, not a spin); a pause only when none could be taken.
                    if shed_one::<N>(&ctx, &listener).await {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                // The connection died in the backlog: nothing to do.
                Some(libc::ECONNABORTED)
                | Some(libc::EPROTO)
                | Some(libc::EINTR)
                | Some(libc::EPERM) => {}
                _ => {
                    error!(worker = ctx.id, "accept: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
        }
    }
}

/// Out of descriptors: frees the reserve descriptor, takes the client that could not be
/// accepted and resets it (it learns at once, and does not sit in the backlog), and keeps that
/// reset socket's descriptor as the new reserve. Keeping it, rather than closing it and opening
/// another, means no other worker's accept can take the slot in between and leave this worker
/// without a reserve (seen under a parallel test run). The connection stays queued when accept
/// fails, so the one taken is the one waiting.
async fn shed_one<N: Net>(ctx: &WorkerCtx, listener: &N::Listener) -> bool {
    let Some(spare) = ctx.reserve.borrow_mut().take() else {
        *ctx.reserve.borrow_mut() = open_reserve();
        return false;
    };
    drop(spare);
    match N::accept(listener).await {
        Ok((stream, peer)) => {
            stream.abort();
            *ctx.reserve.borrow_mut() = Some(Box::new(stream));
            ctx.metrics.handshake_failed("no-descriptors");
            debug!(worker = ctx.id, client = %peer, "out of descriptors: connection refused (reset)");
            true
        }
        Err(_) => {
            *ctx.reserve.borrow_mut() = open_reserve();
            false
        }
    }
}

/// A descriptor to hold in reserve.
fn open_reserve() -> Option<Box<dyn std::any::Any>> {
    let f = std::fs::File::open("/dev/null").ok()?;
    Some(Box::new(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_relay_is_splice() {
        assert_eq!(relay_mode(RelayChoice::Auto), Mode::Splice);
        assert_eq!(relay_mode(RelayChoice::Copy), Mode::Copy);
        assert_eq!(relay_mode(RelayChoice::Adaptive), Mode::Adaptive);
    }
}
