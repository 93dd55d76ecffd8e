//! The thread-per-core server: start-up (limits, runtime choice, listeners), one pinned
//! worker per core, and graceful shutdown on SIGINT/SIGTERM.

pub mod access;
pub mod activation;
pub mod bandwidth;
pub mod bind;
pub mod connect;
pub mod ktls;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod privileges;
pub mod relay;
pub mod resolve;
pub mod session;
pub mod tls;
pub mod tunnels;
pub mod udp;
pub mod udpmap;
pub mod upstream;
pub mod verify;
pub mod worker;

use std::io;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, RuntimeChoice};
use access::Access;

/// Submission queue entries per worker ring.
pub(crate) const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries per worker ring. A relaying tunnel keeps at most two operations in
/// flight (one readiness poll per direction), and completions are reaped every tick; a burst
/// beyond this waits in the kernel's overflow list (IORING_FEAT_NODROP), nothing is lost. The
/// ring's pages stay resident once touched (16 bytes per entry), so a larger ring would keep
/// memory after a burst is over: 16384 entries is 256 KiB per worker.
pub(crate) const CQ_ENTRIES: u32 = 16384;

/// Which runtime the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// tokio-uring.
    Uring,
    /// tokio (epoll).
    Epoll,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listen address could not be bound.
    #[error("cannot listen: {0}")]
    Listen(io::Error),
    /// `--runtime uring` was requested where io_uring is unavailable.
    #[error("io_uring unavailable: {0} (use --runtime auto or epoll)")]
    UringUnavailable(String),
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Spawn(io::Error),
    /// The signal handler could not be set up.
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    /// The sockets systemd passed cannot be used.
    #[error("socket activation: {0}")]
    Activation(#[from] activation::ActivationError),
    /// The metrics listener could not be started.
    #[error("cannot serve metrics: {0}")]
    Metrics(io::Error),
    /// Every worker failed and none could be restarted.
    #[error("every worker failed; see the log")]
    Workers,
    /// `--setuid` failed.
    #[error(transparent)]
    Privileges(#[from] privileges::PrivilegeError),
}

/// Picks the runtime, logging why when io_uring cannot be used.
pub fn choose_runtime(choice: RuntimeChoice) -> Result<RuntimeKind, ServerError> {
    match choice {
        RuntimeChoice::Epoll => Ok(RuntimeKind::Epoll),
        RuntimeChoice::Uring => match net::uring::unavailable_reason() {
            None => Ok(RuntimeKind::Uring),
            Some(why) => Err(ServerError::UringUnavailable(why)),
        },
        RuntimeChoice::Auto => match net::uring::unavailable_reason() {
            None => Ok(RuntimeKind::Uring),
            Some(why) => {
                warn!("io_uring unavailable ({why}); falling back to the epoll runtime");
                Ok(RuntimeKind::Epoll)
            }
        },
    }
}

/// Loads the configuration again for SIGHUP (the same flags and file as at start).
pub type Reload = Box<dyn Fn() -> Result<Config, String> + Send>;

/// Runs the server until SIGINT or SIGTERM, then drains and returns. On SIGHUP, `reload`
/// (if given) loads the configuration again and the users and access rules are replaced on
/// every worker at once, for sessions that start from then on; a configuration that does not
/// load is rejected with a log line and the old one stays.
pub fn run(config: Config, reload: Option<Reload>) -> Result<(), ServerError> {
    // Before any other thread reads the environment: the variables are removed.
    let activated = activation::take()?;
    let registry = Arc::new(metrics::Registry::new(config.threads, info_labels(&config)));
    tls_warnings(&config);
    if config.tls.is_some() || !config.routes.is_direct() {
        match config.ktls {
            crate::config::KtlsChoice::Off => {
                info!("kernel TLS off (--ktls off): TLS is relayed in user space")
            }
            crate::config::KtlsChoice::Auto => info!("{}", ktls::support().describe()),
        }
    }
    let (tx, rx) = watch::channel(false);
    let (access_tx, access_rx) = watch::channel(Arc::new(Access::from_config(&config)));
    let signals = spawn_signal_thread(tx, access_tx, reload, registry.clone())?;
    let result = serve(config, activated, registry, rx, access_rx, |addrs| {
        for a in addrs {
            info!("listening on {a}");
        }
    });
    drop(signals);
    result
}

/// Facts for the `ringsocks_info` metric.
fn info_labels(config: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        (
            "relay",
            format!("{:?}", worker::relay_mode(config.relay)).to_lowercase(),
        ),
        ("threads", config.threads.to_string()),
    ]
}

/// Binds every worker's listeners: one SO_REUSEPORT socket per worker and address, or the
/// sockets systemd passed (shared by all workers).
fn listeners(
    config: &Config,
    activated: Option<Vec<activation::Activated>>,
) -> io::Result<Vec<Vec<worker::Listener>>> {
    let threads = config.threads;
    let mut per_worker: Vec<Vec<worker::Listener>> = (0..threads).map(|_| Vec::new()).collect();
    let defer = defer_secs(config);
    let mut fronts = Vec::new();
    if let Some(sockets) = activated {
        if sockets.is_empty() {
            return Err(io::Error::other(
                "socket activation passed no sockets (LISTEN_FDS=0)",
            ));
        }
        // The same rule as for --listen: no open proxy on a public address by accident.
        let addrs: Vec<_> = sockets
            .iter()
            .filter_map(|a| a.socket.local_addr().ok())
            .collect();
        config
            .check_open_proxy_on(&addrs)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if !config.listen.is_empty() || !config.proxy_listen.is_empty() {
            info!("socket activation: using the {} socket(s) systemd passed instead of the configured listen addresses", sockets.len());
        }
        for a in sockets {
            let front = a.front();
            if front == worker::Front::Tls && config.tls.is_none() {
                return Err(io::Error::other(
                    "socket activation: a socket named \"tls\" needs --tls-cert and --tls-key",
                ));
            }
            if front == worker::Front::Socks && a.name != "socks" {
                warn!(
                    "socket activation: descriptor named {:?} served as a plain SOCKS listener (name it \"socks\", \"proxy\" for PROXY protocol, or \"tls\" for SOCKS over TLS)",
                    a.name
                );
            }
            for list in per_worker.iter_mut() {
                list.push(worker::Listener {
                    socket: worker::Bound::Tcp(a.socket.try_clone()?),
                    front,
                    shared: true,
                });
            }
        }
        // Port maps are not passed by systemd: they are bound here either way.
    } else {
        fronts = vec![
            (config.listen.clone(), worker::Front::Socks, defer),
            (
                config.proxy_listen.clone(),
                worker::Front::ProxyHeader,
                defer,
            ),
            (config.tls_listen.clone(), worker::Front::Tls, defer),
        ];
    }
    for (i, m) in config.maps.iter().enumerate() {
        let front = worker::Front::Map(i as u16);
        if m.udp {
            // Bound after the TCP listeners below, which keep their order.
            continue;
        }
        // No deferred accept: the destination may speak first (SSH, SMTP).
        fronts.push((vec![m.listen], front, 0));
    }
    for (addrs, front, defer) in fronts {
        let fastopen = config.listen_fastopen;
        let bound = listener::bind_all(&addrs, threads, config.backlog, defer, fastopen)?;
        for (list, sockets) in per_worker.iter_mut().zip(bound) {
            list.extend(sockets.into_iter().map(|socket| worker::Listener {
                socket: worker::Bound::Tcp(socket),
                front,
                shared: false,
            }));
        }
    }
    for (i, m) in config.maps.iter().enumerate().filter(|(_, m)| m.udp) {
        let bound = listener::bind_udp_all(m.listen, threads)?;
        for (list, socket) in per_worker.iter_mut().zip(bound) {
            list.push(worker::Listener {
                socket: worker::Bound::Udp(socket),
                front: worker::Front::Map(i as u16),
                shared: false,
            });
        }
    }
    Ok(per_worker)
}

/// Starts the workers and blocks until `shutdown` flips to true and they have drained.
/// `on_ready` is called with the bound addresses (useful when a port was 0).
pub fn serve(
    config: Config,
    activated: Option<Vec<activation::Activated>>,
    registry: Arc<metrics::Registry>,
    shutdown: watch::Receiver<bool>,
    access: watch::Receiver<Arc<Access>>,
    on_ready: impl FnOnce(&[std::net::SocketAddr]),
) -> Result<(), ServerError> {
    let nofile = raise_nofile_limit();
    let threads = config.threads;
    let per_worker = listeners(&config, activated).map_err(ServerError::Listen)?;
    let bound: Vec<_> = per_worker[0]
        .iter()
        .filter_map(|l| l.socket.local_addr().ok())
        .collect();
    for l in &per_worker[0] {
        if let Ok(a) = l.socket.local_addr() {
            match l.front {
                worker::Front::ProxyHeader => {
                    info!("{a}: connections must start with a PROXY protocol v1/v2 header")
                }
                worker::Front::Tls => info!("{a}: SOCKS over TLS"),
                worker::Front::Map(i) => {
                    let m = &config.maps[i as usize];
                    let proto = if m.udp { "udp" } else { "tcp" };
                    info!("{a}: {proto} port map to {}", m.target)
                }
                worker::Front::Socks => {}
            }
        }
    }
    if let Some(addr) = config.metrics {
        let l = metrics::bind(addr).map_err(ServerError::Metrics)?;
        metrics::spawn(l, registry.clone()).map_err(ServerError::Metrics)?;
    }
    // Everything privileged is done: listeners (including ports below 1024) and the
    // descriptor limit.
    if let Some(user) = &config.setuid {
        let (uid, gid) = privileges::drop_to(user)?;
        info!(uid, gid, "running as {user}");
        for f in &config.files {
            if let Err(e) = std::fs::File::open(f) {
                warn!("{} is not readable as {user} ({e}): SIGHUP reloads will be rejected; make it readable by that user's group", f.display());
            }
        }
    }
    // After the switch: io_uring may be allowed to root and not to the user.
    let kind = choose_runtime(config.runtime)?;
    let relay = worker::relay_mode(config.relay);
    info!(
        runtime = ?kind,
        ?relay,
        threads,
        nofile,
        "ringsocks {} starting: about {} concurrent tunnels fit in the descriptor limit",
        env!("CARGO_PKG_VERSION"),
        nofile.saturating_sub(64) / 2,
    );
    if config.upstream_fastopen {
        let sysctl = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen");
        match sysctl.ok().and_then(|v| v.trim().parse::<u32>().ok()) {
            Some(v) if v & 1 == 1 => info!(
                "--upstream-fastopen: CONNECT replies precede the destination's answer; first bytes ride in the SYN"
            ),
            v => warn!(
                "--upstream-fastopen: net.ipv4.tcp_fastopen is {v:?}, client Fast Open is off; connects stay ordinary (sysctl -w net.ipv4.tcp_fastopen=1)"
            ),
        }
    }
    if config.users.is_empty() {
        info!("no users configured: SOCKS5 without authentication, SOCKS4/4a accepted");
    } else {
        info!(
            users = config.users.len(),
            "username/password authentication required"
        );
    }

    let (total, per_client, per_user) = config.max_tunnels;
    let limits = Arc::new(limits::Limits::new(total, per_client, per_user));
    let (max_failures, window) = config.max_auth_failures;
    let logins = Arc::new(crate::auth::LoginThrottle::new(max_failures, window));
    let config = Arc::new(config);
    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let shared = worker::Shared {
        ready: ready_tx,
        config: config.clone(),
        limits,
        logins,
        metrics: registry,
        access,
        shutdown: shutdown.clone(),
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<usize, String>)>();
    // A second handle on every worker's listeners, so that a worker that dies can be restarted
    // on the same sockets (connections queued on them meanwhile are not lost).
    let spare: Vec<Vec<worker::Listener>> = per_worker
        .iter()
        .map(|ls| ls.iter().map(worker::Listener::try_clone).collect())
        .collect::<io::Result<_>>()
        .map_err(ServerError::Listen)?;
    let spawn = |id: usize, listeners: Vec<worker::Listener>| {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let shared = shared.clone();
        let done_tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("ringsocks-w{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        warn!(worker = id, "could not pin to core {}", core.id);
                    }
                }
                // A panic in a tunnel's task is caught by the runtime and ends only that
                // tunnel; one that escapes to the worker's own loop ends up here.
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
                        RuntimeKind::Uring => net::uring::block_on(
                            SQ_ENTRIES,
                            CQ_ENTRIES,
                            worker::run::<net::uring::Uring>(id, shared, listeners),
                        )
                        .and_then(|r| r),
                        RuntimeKind::Epoll => {
                            epoll_block_on(worker::run::<net::epoll::Epoll>(id, shared, listeners))
                        }
                    }));
                let outcome = match result {
                    Ok(Ok(left)) => Ok(left),
                    Ok(Err(e)) => Err(format!("failed: {e}")),
                    Err(panic) => Err(format!("panicked: {}", panic_message(&*panic))),
                };
                let _ = done_tx.send((id, outcome));
            })
            .map_err(ServerError::Spawn)
    };
    let mut handles = Vec::with_capacity(threads);
    for (id, listeners) in per_worker.into_iter().enumerate() {
        handles.push(Some(spawn(id, listeners)?));
    }
    // "Listening" once every worker accepts (or a few seconds have passed: one that failed to
    // start is restarted below).
    let ready_by = Instant::now() + Duration::from_secs(5);
    for _ in 0..threads {
        let left = ready_by.saturating_duration_since(Instant::now());
        if ready_rx.recv_timeout(left).is_err() {
            warn!("not every worker was ready within 5 s");
            break;
        }
    }
    on_ready(&bound);

    // Wait for every worker to report, then join them. A worker only returns after shutdown
    // was requested and its drain finished; one that fails or panics before that is logged
    // and started again on the same listeners (at most MAX_RESTARTS times).
    let mut restarts = vec![0u32; threads];
    let mut given_up = 0;
    let mut left = 0;
    let mut reported = 0;
    let mut deadline: Option<Instant> = None;
    while reported < handles.len() {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(200),
        };
        match done_rx.recv_timeout(wait) {
            Ok((id, Ok(n))) => {
                reported += 1;
                left += n;
                if let Some(h) = handles[id].take() {
                    let _ = h.join();
                }
            }
            Ok((id, Err(why))) => {
                if let Some(h) = handles[id].take() {
                    let _ = h.join();
                }
                if *shutdown.borrow() || restarts[id] >= MAX_RESTARTS {
                    error!(worker = id, "worker {why}; not restarted");
                    reported += 1;
                    given_up += 1;
                    continue;
                }
                restarts[id] += 1;
                error!(
                    worker = id,
                    restarts = restarts[id],
                    "worker {why}; restarting it on the same listeners"
                );
                std::thread::sleep(RESTART_DELAY);
                let listeners = spare[id]
                    .iter()
                    .map(worker::Listener::try_clone)
                    .collect::<io::Result<Vec<_>>>();
                match listeners.map_err(ServerError::Listen) {
                    Ok(l) => handles[id] = Some(spawn(id, l)?),
                    Err(e) => {
                        error!(worker = id, "cannot restart: {e}");
                        reported += 1;
                        given_up += 1;
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    warn!("workers did not stop in time; exiting");
                    return Ok(());
                }
                if deadline.is_none() && *shutdown.borrow() {
                    deadline = Some(Instant::now() + config.drain_timeout + Duration::from_secs(5));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(spare);
    if given_up == threads {
        return Err(ServerError::Workers);
    }
    if left > 0 {
        info!(
            tunnels = left,
            "drain deadline passed; closing remaining tunnels"
        );
    }
    info!("stopped");
    Ok(())
}

/// How many times one worker is restarted after failing before it is given up.
const MAX_RESTARTS: u32 = 100;

/// Pause before restarting a worker, so that one failing at once cannot spin.
const RESTART_DELAY: Duration = Duration::from_millis(100);

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-text panic payload)".into())
}

/// TCP_DEFER_ACCEPT timeout: as long as the handshake timeout, at least a second.
fn defer_secs(config: &Config) -> u32 {
    config.handshake_timeout.as_secs().clamp(1, 3600) as u32
}

fn epoll_block_on<F: std::future::Future<Output = io::Result<usize>>>(fut: F) -> io::Result<usize> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, fut)
}

/// Waits for SIGINT or SIGTERM on a small thread of its own and flips `tx`.
fn spawn_signal_thread(
    tx: watch::Sender<bool>,
    access: watch::Sender<Arc<Access>>,
    reload: Option<Reload>,
    registry: Arc<metrics::Registry>,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Signals)?;
    // Register before returning so a signal arriving right after start-up is not missed.
    let (mut int, mut term, mut hup) = rt
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ))
        })
        .map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("ringsocks-signals".into())
        .spawn(move || {
            rt.block_on(async {
                loop {
                    tokio::select! {
                        _ = int.recv() => { info!("SIGINT: stopping"); break }
                        _ = term.recv() => { info!("SIGTERM: stopping"); break }
                        _ = hup.recv() => {
                            let ok = reload_access(reload.as_deref(), &access);
                            let p = &registry.process;
                            let c = if ok { &p.reloads_ok } else { &p.reloads_failed };
                            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
            let _ = tx.send(true);
        })
        .map_err(ServerError::Spawn)
}

/// Warns about a TLS listener certificate clients will refuse (expired, not yet valid).
fn tls_warnings(config: &Config) {
    for w in config.tls.iter().flat_map(|t| &t.warnings) {
        warn!("TLS: {w}");
    }
}

/// SIGHUP: load the configuration again and hand its users and rules to the workers.
fn reload_access(
    reload: Option<&(dyn Fn() -> Result<Config, String> + Send)>,
    access: &watch::Sender<Arc<Access>>,
) -> bool {
    let Some(reload) = reload else {
        warn!("SIGHUP: nothing to reload");
        return false;
    };
    match reload() {
        Ok(config) => {
            let new = Access::reloaded(&config, Some(&access.borrow()));
            tls_warnings(&config);
            info!(
                users = new.users.len(),
                rules = new.rules.len(),
                tls = new.tls.is_some(),
                "SIGHUP: users, access rules, routes and TLS certificate reloaded; they apply to new sessions (other settings need a restart)"
            );
            access.send_replace(Arc::new(new));
            true
        }
        Err(e) => {
            error!("SIGHUP: configuration rejected, keeping the current one: {e}");
            false
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the result: each tunnel costs
/// two descriptors.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit/setrlimit with a pointer to a live rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}
