//! Worker threads and the per-slot loops of each scenario.
//!
//! Each worker is an OS thread (pinned to a core unless `--no-pin`) running a `current_thread`
//! tokio runtime; slots `i, i+T, i+2T, ...` of the run's concurrency live on worker `i`. Stats are
//! kept per thread without locks and merged when the run ends.

pub mod cps;
pub mod hold;
pub mod rps;
pub mod throughput;
pub mod udp;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::cli::{Close, Direction, Scenario};
use crate::error::Fail;
use crate::socks::{Dest, Proxy};
use crate::stats::{Live, Pacing, Schedule, ThreadStats};

/// Settings of one run, shared by all workers.
#[derive(Debug)]
pub struct Ctx {
    pub scenario: Scenario,
    pub proxy: Proxy,
    /// TCP destination as sent to the proxy.
    pub dest: Dest,
    /// UDP echo target.
    pub udp_target: SocketAddr,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub request_size: u32,
    pub response_size: u32,
    pub direction: Direction,
    pub close: Close,
    pub chunk_size: usize,
    pub keepalive: Duration,
    /// Schedules are relative to this instant.
    pub base: Instant,
    /// Iterations that start before this are warmup and not recorded. (In open loop an iteration
    /// may start later than intended; it is recorded if it *started* in the window, with its
    /// latency still counted from the intended start, so a backlog built up during the warmup
    /// shows up in the measured latencies instead of hiding the window's work.)
    pub measure_start: Instant,
    pub live: Arc<Live>,
    pub stop: Stop,
}

impl Ctx {
    pub fn pacing(&self, slot: usize) -> Pacing {
        match self.rate {
            Some(r) if r > 0.0 => Pacing::Open(Schedule::new(slot, self.concurrency, r)),
            _ => Pacing::Closed,
        }
    }

    pub fn measured(&self, started: Instant) -> bool {
        started >= self.measure_start
    }

    /// Counts a failed step: always on the live counter, in the run's statistics only when
    /// `measured`.
    pub fn count_failure(&self, stats: &Shared, f: &Fail, measured: bool) {
        Live::add(&self.live.errors, 1);
        if measured {
            stats.borrow_mut().fail(f);
        }
    }

    /// The result of setting up a tunnel or an association begun at `t0`. Set-ups happen
    /// mostly during the warmup, so a success's setup time is recorded regardless; a failure
    /// is counted (see [`Ctx::count_failure`]) and `None` returned, for the caller to pause
    /// and retry.
    pub fn setup_done<T>(&self, stats: &Shared, t0: Instant, res: Result<T, Fail>) -> Option<T> {
        match res {
            Ok(t) => {
                crate::stats::record(&mut stats.borrow_mut().handshake, t0.elapsed());
                Some(t)
            }
            Err(f) => {
                self.count_failure(stats, &f, self.measured(t0));
                None
            }
        }
    }
}

/// The end-of-run signal: a flag for cheap polling plus a channel to await.
#[derive(Clone, Debug)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    rx: watch::Receiver<bool>,
}

#[derive(Debug)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    tx: watch::Sender<bool>,
}

pub fn stop_pair() -> (StopHandle, Stop) {
    let flag = Arc::new(AtomicBool::new(false));
    let (tx, rx) = watch::channel(false);
    (
        StopHandle {
            flag: flag.clone(),
            tx,
        },
        Stop { flag, rx },
    )
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.tx.send(true);
    }
}

impl Stop {
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Resolves once the run is stopping.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

pub type Shared = Rc<RefCell<ThreadStats>>;

/// Start the worker threads of one run. Each returns its stats when its slots finish, or at the
/// latest `grace` after the stop signal (unfinished slots are then abandoned, not counted).
pub fn spawn_workers(
    ctx: Arc<Ctx>,
    threads: usize,
    pin: bool,
    tids: Arc<Mutex<Vec<i32>>>,
    grace: Duration,
) -> Result<Vec<JoinHandle<ThreadStats>>, crate::error::LoadError> {
    let cores = if pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let handles = (0..threads)
        .map(|t| {
            let ctx = ctx.clone();
            let tids = tids.clone();
            let ready = ready_tx.clone();
            let core = (!cores.is_empty()).then(|| cores[t % cores.len()]);
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    if let Ok(mut v) = tids.lock() {
                        v.push(crate::proc::gettid());
                    }
                    let _ = ready.send(());
                    worker(ctx, t, threads, grace)
                })
                .map_err(|e| crate::error::LoadError::io("spawn worker thread", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for _ in 0..threads {
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    }
    Ok(handles)
}

fn worker(ctx: Arc<Ctx>, t: usize, threads: usize, grace: Duration) -> ThreadStats {
    let stats: Shared = Rc::new(RefCell::new(ThreadStats::default()));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker {t}: cannot build runtime: {e}");
            return ThreadStats::default();
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut handles = Vec::new();
        for slot in (t..ctx.concurrency).step_by(threads) {
            let (ctx, st) = (ctx.clone(), stats.clone());
            handles.push(tokio::task::spawn_local(async move {
                match ctx.scenario {
                    Scenario::Cps => cps::slot(&ctx, slot, &st).await,
                    Scenario::Rps => rps::slot(&ctx, slot, &st).await,
                    Scenario::Throughput => throughput::slot(&ctx, slot, &st).await,
                    Scenario::Hold => hold::slot(&ctx, slot, &st).await,
                    Scenario::Udp => udp::slot(&ctx, slot, &st).await,
                    Scenario::Serve => {}
                }
            }));
        }
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        let deadline = async {
            ctx.stop.wait().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            _ = all => {}
            _ = deadline => {}
        }
    });
    drop(local);
    let out = stats.borrow().clone();
    out
}

/// Run `fut` with the per-operation timeout, giving up (returning `None`) if the run stops.
pub async fn bounded<T>(
    ctx: &Ctx,
    fut: impl std::future::Future<Output = Result<T, Fail>>,
) -> Option<Result<T, Fail>> {
    tokio::select! {
        r = tokio::time::timeout(ctx.timeout, fut) => Some(r.unwrap_or(Err(Fail::Timeout))),
        _ = ctx.stop.wait() => None,
    }
}

/// Build an rr request of `request_size` bytes asking for `response_size` bytes back, and for
/// the server to close afterwards if `close`.
pub fn rr_request(request_size: u32, response_size: u32, close: bool) -> Vec<u8> {
    let n = request_size.max(crate::target::RR_HEADER as u32);
    let flags = if close { crate::target::RR_CLOSE } else { 0 };
    let mut req = vec![0x5a; n as usize];
    req[..crate::target::RR_HEADER]
        .copy_from_slice(&crate::target::rr_header(n | flags, response_size));
    req
}

/// One request/response round trip on an open tunnel (`req` may be empty when the request
/// already went out, e.g. as SOCKS 6 initial data). Returns when the first response byte
/// arrived (`None` for an empty response).
pub async fn round_trip(
    s: &mut TcpStream,
    req: &[u8],
    resp_len: usize,
    buf: &mut [u8],
) -> Result<Option<Instant>, Fail> {
    if !req.is_empty() {
        s.write_all(req).await?;
    }
    let mut got = 0;
    let mut first = None;
    while got < resp_len {
        let k = (resp_len - got).min(buf.len());
        let n = s.read(&mut buf[..k]).await?;
        if n == 0 {
            return Err(Fail::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        first.get_or_insert_with(Instant::now);
        got += n;
    }
    Ok(first)
}
