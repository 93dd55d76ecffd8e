//! Orchestration: targets, worker threads, the measurement window, progress, Ctrl-C, compare.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::cli::{Args, Entry, Scenario};
use crate::error::LoadError;
use crate::proc::{cpu_snapshot, sample_tree, CpuSnapshot};
use crate::report::{
    summarize, HoldResult, Latencies, Report, RunResult, ThroughputResult, UdpResult,
};
use crate::scenario::{hold::DEFAULT_RAMP_RATE, spawn_workers, stop_pair, Ctx};
use crate::socks::Dest;
use crate::stats::{Live, Percentiles, ThreadStats};
use crate::target::Targets;

fn validate(a: &Args) -> Result<(), LoadError> {
    let bad = |m: &str| Err(LoadError::Config(m.to_string()));
    if a.concurrency == 0 {
        return bad("--concurrency must be at least 1");
    }
    if a.rounds == 0 {
        return bad("--rounds must be at least 1");
    }
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            return bad("--rate must be a positive number");
        }
    }
    if matches!(a.scenario, Scenario::Cps | Scenario::Rps)
        && (a.request_size as usize) < crate::target::RR_HEADER
    {
        return bad("--request-size must be at least 8 (the request header)");
    }
    if a.request_size > crate::target::RR_MAX || a.response_size > crate::target::RR_MAX {
        return bad("--request-size/--response-size must be at most 64 MiB");
    }
    if a.scenario == Scenario::Udp && a.request_size > 65000 {
        return bad("--request-size for udp must fit a datagram (<= 65000)");
    }
    if a.timeout.is_zero() {
        return bad("--timeout must be positive");
    }
    if !(0.0..=1.0).contains(&a.max_error_rate) {
        return bad("--max-error-rate is a fraction between 0 and 1");
    }
    Ok(())
}

/// Run the scenario against every entry for every round; see [`Args`].
pub fn run(args: Args) -> Result<Report, LoadError> {
    validate(&args)?;
    let entries = args.entries()?;
    let nofile = crate::proc::raise_nofile();
    if args.scenario == Scenario::Hold {
        // Client side needs one fd per tunnel, in-process targets one more.
        let need = args.concurrency as u64 * if args.target.is_none() { 2 } else { 1 } + 64;
        if need > nofile && !args.quiet {
            eprintln!(
                "warning: holding {} tunnels needs ~{need} fds here but the limit is {nofile}",
                args.concurrency
            );
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::io("coordinator runtime", e))?;
    let targets = match args.target {
        Some(_) => None,
        None => Some(Targets::start(
            args.target_bind,
            args.target_threads.unwrap_or_else(|| args.threads()),
        )?),
    };
    let target_addr: SocketAddr = match (&targets, args.target) {
        (Some(t), _) => t.addr,
        (None, Some(a)) => a,
        (None, None) => unreachable!("either in-process or external target"),
    };
    // Ctrl-C: first press stops the current run and skips the rest; the second exits at once.
    let (int_tx, int_rx) = watch::channel(false);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        rt.spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if interrupted.swap(true, Ordering::SeqCst) {
                    eprintln!("interrupted twice; exiting");
                    std::process::exit(130);
                }
                eprintln!(
                    "\ninterrupted: finishing the current run and reporting what was measured"
                );
                let _ = int_tx.send(true);
            }
        });
    }
    if args.scenario == Scenario::Serve {
        println!("targets listening on {target_addr} (TCP rr/echo/stream/http and UDP echo); Ctrl-C to stop");
        let mut rx = int_rx.clone();
        rt.block_on(async move {
            let _ = rx.wait_for(|v| *v).await;
        });
        return Ok(Report {
            runs: Vec::new(),
            compare: None,
            interrupted: true,
        });
    }
    let target_tids = targets.as_ref().map(|t| t.tids()).unwrap_or_default();
    let mut runs = Vec::new();
    'rounds: for round in 0..args.rounds {
        for (i, e) in entries.iter().enumerate() {
            if interrupted.load(Ordering::SeqCst) {
                break 'rounds;
            }
            if !runs.is_empty() && !args.pause.is_zero() {
                std::thread::sleep(args.pause);
            }
            let r = run_one(
                &args,
                e,
                round,
                target_addr,
                targets.is_some(),
                &target_tids,
                &rt,
                int_rx.clone(),
            )?;
            if !args.quiet && !args.json && (entries.len() > 1 || args.rounds > 1) {
                eprintln!(
                    "[{}/{}] {} round {}: {:.2} {}",
                    round * entries.len() + i + 1,
                    entries.len() * args.rounds,
                    e.name,
                    round + 1,
                    r.headline(),
                    crate::report::headline_unit(args.scenario)
                );
            }
            runs.push(r);
        }
    }
    let compare = if entries.len() > 1 || args.rounds > 1 {
        summarize(&runs)
    } else {
        None
    };
    drop(targets);
    Ok(Report {
        runs,
        compare,
        interrupted: interrupted.load(Ordering::SeqCst),
    })
}

struct Window {
    cpu: CpuSnapshot,
    tcp: Option<crate::proc::KernelTcp>,
    up: u64,
    down: u64,
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    args: &Args,
    entry: &Entry,
    round: usize,
    target: SocketAddr,
    in_process: bool,
    target_tids: &[i32],
    rt: &tokio::runtime::Runtime,
    interrupt: watch::Receiver<bool>,
) -> Result<RunResult, LoadError> {
    let scenario = args.scenario;
    let threads = args.threads().min(args.concurrency).max(1);
    let dest = match &args.target_name {
        Some(n) => Dest::Name(n.clone(), target.port()),
        None => Dest::Addr(target),
    };
    let is_hold = scenario == Scenario::Hold;
    let warmup = if is_hold { Duration::ZERO } else { args.warmup };
    let live = Arc::new(Live::default());
    let (stop_handle, stop) = stop_pair();
    let base = Instant::now() + Duration::from_millis(20);
    let ctx = Arc::new(Ctx {
        scenario,
        proxy: entry.proxy.clone(),
        dest,
        udp_target: target,
        concurrency: args.concurrency,
        rate: args.rate,
        timeout: args.timeout,
        request_size: args.request_size,
        response_size: args.response_size,
        direction: args.direction,
        close: args.close,
        chunk_size: args.chunk_size,
        keepalive: args.keepalive,
        base,
        measure_start: base + warmup,
        live: live.clone(),
        stop,
    });
    let loadavg_before = crate::proc::loadavg();
    let proxy_before = entry.pid.and_then(sample_tree);
    let client_tids = Arc::new(Mutex::new(Vec::new()));
    // Slots still busy this long after the stop are abandoned.
    let grace = args.timeout + Duration::from_secs(1);
    let workers = spawn_workers(
        ctx.clone(),
        threads,
        !args.no_pin,
        client_tids.clone(),
        grace,
    )?;

    let show = !args.no_progress
        && !args.quiet
        && !args.json
        && warmup + args.duration > Duration::from_secs(3);
    let pb = if show {
        let pb = ProgressBar::new((warmup + args.duration).as_millis() as u64);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {elapsed}/{duration} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_prefix(format!(
            "{:?} {} {:.0}s",
            scenario,
            entry.name,
            (warmup + args.duration).as_secs_f64()
        ));
        pb
    } else {
        ProgressBar::hidden()
    };

    let tids = || client_tids.lock().map(|v| v.clone()).unwrap_or_default();
    let snapshot = |cpu: CpuSnapshot| Window {
        cpu,
        tcp: crate::proc::kernel_tcp(),
        up: Live::get(&live.bytes_up),
        down: Live::get(&live.bytes_down),
    };
    let progress = |pb: &ProgressBar, start: Instant, last: &mut (Instant, u64, u64)| {
        let now = Instant::now();
        pb.set_position(now.saturating_duration_since(base).as_millis() as u64);
        let ok = Live::get(&live.ok);
        let bytes = Live::get(&live.bytes_up) + Live::get(&live.bytes_down);
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let msg = match scenario {
            Scenario::Throughput => format!(
                "{:.2} Gbit/s, {} tunnels, {} errors",
                (bytes - last.2) as f64 * 8.0 / dt / 1e9,
                Live::get(&live.active),
                Live::get(&live.errors)
            ),
            Scenario::Hold => format!(
                "{} up, {} failed",
                Live::get(&live.active),
                Live::get(&live.errors)
            ),
            _ => format!(
                "{:.0}/s, {} ok, {} errors{}",
                (ok - last.1) as f64 / dt,
                ok,
                Live::get(&live.errors),
                if now < start { " (warmup)" } else { "" }
            ),
        };
        pb.set_message(msg);
        *last = (now, ok, bytes);
    };

    let mut hold_info: Option<(f64, Option<crate::proc::ProcSample>)> = None;
    let (w0, w1, was_interrupted) = rt.block_on(async {
        let mut int = interrupt.clone();
        let mut last = (Instant::now(), 0u64, 0u64);
        let measure_start = base + warmup;
        // Sleep until `until`, updating the progress bar; false if interrupted.
        macro_rules! wait_until {
            ($until:expr, $cond:expr) => {{
                let until: Instant = $until;
                let mut iv = tokio::time::interval(Duration::from_millis(250));
                loop {
                    if $cond {
                        break true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.into()) => break true,
                        _ = iv.tick() => progress(&pb, measure_start, &mut last),
                        _ = int.wait_for(|v| *v) => break false,
                    }
                }
            }};
        }
        let mut ok = wait_until!(measure_start, false);
        let mut w0 = snapshot(cpu_snapshot(&tids(), target_tids, entry.pid));
        if is_hold && ok {
            let rate = args.rate.unwrap_or(DEFAULT_RAMP_RATE);
            let ramp_limit = args.ramp_timeout.unwrap_or_else(|| {
                Duration::from_secs_f64(args.concurrency as f64 / rate) + Duration::from_secs(30)
            });
            let k = args.concurrency as u64;
            ok = wait_until!(
                base + ramp_limit,
                Live::get(&live.established) + Live::get(&live.failed) >= k
            );
            let ramp_s = base.elapsed().as_secs_f64();
            // Let the proxy finish its bookkeeping before reading its memory.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let full = entry.pid.and_then(sample_tree);
            hold_info = Some((ramp_s, full));
            pb.set_length(
                (Instant::now() + args.duration)
                    .duration_since(base)
                    .as_millis() as u64,
            );
            w0 = snapshot(cpu_snapshot(&tids(), target_tids, entry.pid));
        }
        let end = if is_hold {
            Instant::now() + args.duration
        } else {
            measure_start + args.duration
        };
        if ok {
            ok = wait_until!(end, false);
        }
        let w1 = snapshot(cpu_snapshot(&tids(), target_tids, entry.pid));
        (w0, w1, !ok)
    });
    stop_handle.stop();
    pb.finish_and_clear();
    let mut stats = ThreadStats::default();
    for w in workers {
        let s = w.join().map_err(|_| LoadError::WorkerPanicked)?;
        stats.merge(&s);
    }
    let (proxy_after, proxy_settled) = if is_hold {
        std::thread::sleep(Duration::from_secs(1));
        let after = entry.pid.and_then(sample_tree);
        std::thread::sleep(Duration::from_secs(2));
        (after, entry.pid.and_then(sample_tree))
    } else {
        (None, None)
    };
    let measured = w1
        .cpu_at()
        .duration_since(w0.cpu_at())
        .as_secs_f64()
        .max(1e-6);
    let cpu = w1.cpu.usage_since(&w0.cpu);
    let iterations = stats.iterations();
    let errors = stats.errors.total();
    let gbps = |b: u64| b as f64 * 8.0 / measured / 1e9;
    let throughput = (scenario == Scenario::Throughput).then(|| {
        let up = gbps(w1.up - w0.up);
        let down = gbps(w1.down - w0.down);
        ThroughputResult {
            direction: args.direction,
            tunnels: iterations,
            verified: stats.verified,
            gbps_up: up,
            gbps_down: down,
            gbps_total: up + down,
            client_sent: stats.bytes_sent,
            target_received: stats.peer_received,
            target_sent: stats.peer_sent,
            client_received: stats.bytes_received,
            byte_exact: errors == 0
                && stats.verified == iterations
                && stats.bytes_sent == stats.peer_received
                && stats.bytes_received == stats.peer_sent,
        }
    });
    let hold = hold_info.map(|(ramp_s, full)| {
        let per = |f: &dyn Fn(&crate::proc::ProcSample) -> u64| match (&proxy_before, &full) {
            (Some(b), Some(f2)) if stats.established > 0 => {
                Some((f(f2) as f64 - f(b) as f64) / stats.established as f64)
            }
            _ => None,
        };
        HoldResult {
            target: args.concurrency as u64,
            established: stats.established,
            held: stats.held,
            ramp_s,
            rss_kib_per_tunnel: per(&|p| p.rss_kib),
            pss_kib_per_tunnel: per(&|p| p.pss_kib),
            fds_per_tunnel: per(&|p| p.fds),
            proxy_before: proxy_before.clone(),
            proxy_full: full,
            proxy_after,
            proxy_settled,
        }
    });
    let udp = (scenario == Scenario::Udp).then(|| UdpResult {
        sent: stats.dgrams_sent,
        received: stats.dgrams_received,
        lost: stats.dgrams_lost,
        late: stats.dgrams_late,
        loss_pct: if stats.dgrams_sent > 0 {
            stats.dgrams_lost as f64 * 100.0 / stats.dgrams_sent as f64
        } else {
            0.0
        },
    });
    let mut notes = Vec::new();
    let per_thread = cpu.generator_clients_pct / threads as f64;
    if per_thread > 90.0 {
        notes.push(format!(
            "generator client threads averaged {per_thread:.0}% of a core each: the generator \
             may be the bottleneck (add --threads or cores, or move the targets elsewhere)"
        ));
    }
    if let (Some(rate), Scenario::Cps | Scenario::Rps | Scenario::Udp) = (args.rate, scenario) {
        let achieved = stats.successes as f64 / measured;
        if achieved < rate * 0.95 && !was_interrupted {
            notes.push(format!(
                "open loop asked for {rate}/s but completed {achieved:.0}/s: the schedule fell \
                 behind, and the latencies include that queueing (more --concurrency if the \
                 slots, not the proxy, are the limit)"
            ));
        }
    }
    Ok(RunResult {
        kind: "run",
        name: entry.name.clone(),
        proxy: entry.proxy.to_string(),
        scenario,
        round,
        target: ctx.dest.to_string(),
        target_in_process: in_process,
        threads,
        pinned: !args.no_pin,
        concurrency: args.concurrency,
        rate: args.rate,
        request_size: args.request_size,
        response_size: args.response_size,
        close: (scenario == Scenario::Cps).then_some(args.close),
        warmup_s: warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        measured_s: measured,
        interrupted: was_interrupted,
        iterations,
        successes: stats.successes,
        errors,
        error_rate: if iterations > 0 {
            errors as f64 / iterations as f64
        } else {
            0.0
        },
        errors_by_kind: stats.errors.counts.clone(),
        first_errors: stats.errors.first.clone(),
        per_second: stats.successes as f64 / measured,
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        throughput,
        hold,
        udp,
        latency_us: Latencies {
            handshake: Percentiles::of(&stats.handshake),
            iteration: Percentiles::of(&stats.iteration),
            ttfb: Percentiles::of(&stats.ttfb),
        },
        cpu,
        loadavg_before,
        notes,
        kernel_tcp: match (&w1.tcp, &w0.tcp) {
            (Some(a), Some(b)) => Some(a.since(b)),
            _ => None,
        },
        hist_handshake: stats.handshake,
        hist_iteration: stats.iteration,
        hist_ttfb: stats.ttfb,
    })
}

impl Window {
    fn cpu_at(&self) -> Instant {
        self.cpu.at()
    }
}
