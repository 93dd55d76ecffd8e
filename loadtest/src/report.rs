//! Results and their renderings: a readable table, JSON lines, HdrHistogram text (.hgrm) and an
//! SVG plot of a compare run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::{Close, Direction, Scenario};
use crate::proc::{CpuUsage, ProcSample};
use crate::stats::{new_histogram, Percentiles};

#[derive(Clone, Debug, Serialize)]
pub struct ThroughputResult {
    pub direction: Direction,
    pub tunnels: u64,
    pub verified: u64,
    pub gbps_up: f64,
    pub gbps_down: f64,
    pub gbps_total: f64,
    /// Payload bytes over the whole run (warmup included) as counted by each side.
    pub client_sent: u64,
    pub target_received: u64,
    pub target_sent: u64,
    pub client_received: u64,
    /// True when every tunnel's counts matched exactly and none failed.
    pub byte_exact: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct HoldResult {
    pub target: u64,
    pub established: u64,
    pub held: u64,
    pub ramp_s: f64,
    pub proxy_before: Option<ProcSample>,
    pub proxy_full: Option<ProcSample>,
    /// One second after the tunnels closed.
    pub proxy_after: Option<ProcSample>,
    /// Three seconds after: a proxy that hands memory back on a timer has had its tick.
    pub proxy_settled: Option<ProcSample>,
    /// RSS summed over the proxy's processes counts shared pages once per process; PSS
    /// (proportional set size) splits them, so it is the fairer figure for multi-process proxies.
    pub rss_kib_per_tunnel: Option<f64>,
    pub pss_kib_per_tunnel: Option<f64>,
    pub fds_per_tunnel: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UdpResult {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub late: u64,
    pub loss_pct: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latencies {
    /// From the intended start to the SOCKS success reply (TCP connect for direct).
    pub handshake: Percentiles,
    /// Whole iteration (cps), round trip (rps, udp), keepalive round trip (hold).
    pub iteration: Percentiles,
    /// cps: time to first byte, from the intended start (closed loop: the start of the TCP
    /// connect) to the first byte of the target's response. Empty for other scenarios.
    pub ttfb: Percentiles,
}

/// One run of one scenario against one proxy.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub proxy: String,
    pub scenario: Scenario,
    pub round: usize,
    pub target: String,
    pub target_in_process: bool,
    pub threads: usize,
    pub pinned: bool,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub request_size: u32,
    pub response_size: u32,
    /// cps: which end closed first.
    pub close: Option<Close>,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub measured_s: f64,
    pub interrupted: bool,
    pub iterations: u64,
    pub successes: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub first_errors: BTreeMap<String, String>,
    /// Successful iterations per second (connections/s, requests/s, datagrams/s).
    pub per_second: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub throughput: Option<ThroughputResult>,
    pub hold: Option<HoldResult>,
    pub udp: Option<UdpResult>,
    pub latency_us: Latencies,
    pub cpu: CpuUsage,
    /// 1-minute load average just before the run started (other work on the machine shows here).
    pub loadavg_before: Option<f64>,
    /// TCP connections the kernel counted during the measured window (all processes of the
    /// network namespace): a cross-check of conn/s, where each proxied tunnel is two connections.
    pub kernel_tcp: Option<crate::proc::KernelTcp>,
    /// Warnings about the measurement itself (a saturated generator, an unkept rate).
    pub notes: Vec<String>,
    #[serde(skip)]
    pub hist_handshake: Histogram<u64>,
    #[serde(skip)]
    pub hist_iteration: Histogram<u64>,
    #[serde(skip)]
    pub hist_ttfb: Histogram<u64>,
}

impl RunResult {
    /// The figure a compare ranks by.
    pub fn headline(&self) -> f64 {
        match self.scenario {
            Scenario::Throughput => self.throughput.as_ref().map_or(0.0, |t| t.gbps_total),
            Scenario::Hold => self.hold.as_ref().map_or(0.0, |h| h.held as f64),
            _ => self.per_second,
        }
    }
}

pub fn headline_unit(s: Scenario) -> &'static str {
    match s {
        Scenario::Cps => "conn/s",
        Scenario::Rps => "req/s",
        Scenario::Udp => "dgram/s",
        Scenario::Throughput => "Gbit/s",
        Scenario::Hold => "held",
        Scenario::Serve => "",
    }
}

/// Medians over the rounds of one compare entry.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    pub name: String,
    pub proxy: String,
    pub rounds: usize,
    pub headline: f64,
    pub headline_all: Vec<f64>,
    pub ratio: Option<f64>,
    pub handshake_p50_us: f64,
    pub handshake_p99_us: f64,
    pub iteration_p50_us: f64,
    pub iteration_p99_us: f64,
    pub iteration_p999_us: f64,
    /// cps: time to first response byte (0 for other scenarios).
    pub ttfb_p50_us: f64,
    pub ttfb_p99_us: f64,
    pub error_rate: f64,
    pub generator_cpu_pct: f64,
    pub proxy_cpu_pct: Option<f64>,
    /// Proxy CPU seconds per GiB relayed (throughput scenario).
    pub proxy_cpu_s_per_gib: Option<f64>,
    pub machine_busy_pct: Option<f64>,
    pub rss_kib_per_tunnel: Option<f64>,
    pub pss_kib_per_tunnel: Option<f64>,
    pub fds_per_tunnel: Option<f64>,
    #[serde(skip)]
    pub hist_iteration: Histogram<u64>,
    #[serde(skip)]
    pub hist_handshake: Histogram<u64>,
    #[serde(skip)]
    pub hist_ttfb: Histogram<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareSummary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub scenario: Scenario,
    pub unit: &'static str,
    pub rows: Vec<CompareRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub runs: Vec<RunResult>,
    pub compare: Option<CompareSummary>,
    pub interrupted: bool,
}

impl Report {
    /// Runs whose error rate exceeds `max`.
    pub fn failing(&self, max: f64) -> Vec<&RunResult> {
        self.runs.iter().filter(|r| r.error_rate > max).collect()
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_of(runs: &[&RunResult], f: impl Fn(&RunResult) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|r| f(r)).collect();
    median(&mut v)
}

fn median_opt(runs: &[&RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
    (!v.is_empty()).then(|| median(&mut v))
}

/// Proxy CPU seconds per GiB relayed in one throughput run: CPU is a steadier measure than
/// wall-clock speed on a shared machine.
fn cpu_s_per_gib(r: &RunResult) -> Option<f64> {
    if r.scenario != Scenario::Throughput {
        return None;
    }
    let gib_per_s = r.headline() * 1e9 / 8.0 / (1u64 << 30) as f64;
    let cores = r.cpu.proxy_pct? / 100.0;
    (gib_per_s > 0.0).then(|| cores / gib_per_s)
}

/// Group runs by entry name (in first-seen order) and take medians across rounds.
pub fn summarize(runs: &[RunResult]) -> Option<CompareSummary> {
    let first = runs.first()?;
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    let mut rows: Vec<CompareRow> = Vec::new();
    for name in names {
        let rs: Vec<&RunResult> = runs.iter().filter(|r| r.name == name).collect();
        let mut hi = new_histogram();
        let mut hh = new_histogram();
        let mut ht = new_histogram();
        for r in &rs {
            let _ = hi.add(&r.hist_iteration);
            let _ = hh.add(&r.hist_handshake);
            let _ = ht.add(&r.hist_ttfb);
        }
        rows.push(CompareRow {
            name: name.to_string(),
            proxy: rs[0].proxy.clone(),
            rounds: rs.len(),
            headline: median_of(&rs, |r| r.headline()),
            headline_all: rs.iter().map(|r| r.headline()).collect(),
            ratio: None,
            handshake_p50_us: median_of(&rs, |r| r.latency_us.handshake.p50 as f64),
            handshake_p99_us: median_of(&rs, |r| r.latency_us.handshake.p99 as f64),
            iteration_p50_us: median_of(&rs, |r| r.latency_us.iteration.p50 as f64),
            iteration_p99_us: median_of(&rs, |r| r.latency_us.iteration.p99 as f64),
            iteration_p999_us: median_of(&rs, |r| r.latency_us.iteration.p999 as f64),
            ttfb_p50_us: median_of(&rs, |r| r.latency_us.ttfb.p50 as f64),
            ttfb_p99_us: median_of(&rs, |r| r.latency_us.ttfb.p99 as f64),
            error_rate: median_of(&rs, |r| r.error_rate),
            generator_cpu_pct: median_of(&rs, |r| r.cpu.generator_pct),
            proxy_cpu_pct: median_opt(&rs, |r| r.cpu.proxy_pct),
            proxy_cpu_s_per_gib: median_opt(&rs, cpu_s_per_gib),
            machine_busy_pct: median_opt(&rs, |r| r.cpu.machine_busy_pct),
            rss_kib_per_tunnel: median_opt(&rs, |r| r.hold.as_ref()?.rss_kib_per_tunnel),
            pss_kib_per_tunnel: median_opt(&rs, |r| r.hold.as_ref()?.pss_kib_per_tunnel),
            fds_per_tunnel: median_opt(&rs, |r| r.hold.as_ref()?.fds_per_tunnel),
            hist_iteration: hi,
            hist_handshake: hh,
            hist_ttfb: ht,
        });
    }
    let base = rows[0].headline;
    for r in &mut rows {
        r.ratio = (base > 0.0).then(|| r.headline / base);
    }
    Some(CompareSummary {
        kind: "compare",
        scenario: first.scenario,
        unit: headline_unit(first.scenario),
        rows,
    })
}

fn ms(us: f64) -> String {
    if us <= 0.0 {
        "-".into()
    } else if us < 10_000.0 {
        format!("{:.3}", us / 1000.0)
    } else {
        format!("{:.1}", us / 1000.0)
    }
}

fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}%"))
}

fn headline_str(scenario: Scenario, v: f64) -> String {
    match scenario {
        Scenario::Throughput => format!("{v:.2}"),
        Scenario::Hold => format!("{v:.0}"),
        _ => format!("{v:.0}"),
    }
}

/// The human-readable report of one run.
pub fn render_run(r: &RunResult) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "== {:?} via {} ({}){}{}",
        r.scenario,
        r.name,
        r.proxy,
        if r.round > 0 {
            format!(", round {}", r.round + 1)
        } else {
            String::new()
        },
        if r.interrupted { "  [INTERRUPTED]" } else { "" }
    );
    let loop_kind = match r.rate {
        Some(rate) => format!("open loop at {rate}/s"),
        None => "closed loop".into(),
    };
    let _ = writeln!(
        o,
        "   target {}{}, {} threads{}, concurrency {}, {}, warmup {:.1}s, measured {:.2}s",
        r.target,
        if r.target_in_process {
            " (in-process)"
        } else {
            ""
        },
        r.threads,
        if r.pinned { " pinned" } else { "" },
        r.concurrency,
        loop_kind,
        r.warmup_s,
        r.measured_s
    );
    let _ = writeln!(
        o,
        "   iterations {}  ok {}  errors {} ({:.3}%)",
        r.iterations,
        r.successes,
        r.errors,
        r.error_rate * 100.0
    );
    for (k, n) in &r.errors_by_kind {
        let first = r.first_errors.get(k).map(String::as_str).unwrap_or("");
        let _ = writeln!(o, "     {k}: {n}   (first: {first})");
    }
    match r.scenario {
        Scenario::Throughput => {
            if let Some(t) = &r.throughput {
                let _ = writeln!(
                    o,
                    "   throughput {:.3} Gbit/s (up {:.3}, down {:.3}), {} tunnels, direction {:?}",
                    t.gbps_total, t.gbps_up, t.gbps_down, t.tunnels, t.direction
                );
                let _ = writeln!(
                    o,
                    "   byte-exact: {} ({} of {} tunnels verified; up {} sent / {} received by target; down {} sent by target / {} received)",
                    if t.byte_exact { "OK" } else { "FAILED" },
                    t.verified,
                    t.tunnels,
                    t.client_sent,
                    t.target_received,
                    t.target_sent,
                    t.client_received
                );
            }
        }
        Scenario::Hold => {
            if let Some(h) = &r.hold {
                let _ = writeln!(
                    o,
                    "   held {} of {} (established {}, ramp {:.2}s)",
                    h.held, h.target, h.established, h.ramp_s
                );
                let s = |p: &Option<ProcSample>| {
                    p.as_ref().map_or("-".to_string(), |p| {
                        format!(
                            "RSS {} KiB, PSS {} KiB, {} fds, {} processes, {} threads",
                            p.rss_kib, p.pss_kib, p.fds, p.processes, p.threads
                        )
                    })
                };
                if h.proxy_before.is_some() {
                    let _ = writeln!(o, "   proxy before: {}", s(&h.proxy_before));
                    let _ = writeln!(o, "   proxy full:   {}", s(&h.proxy_full));
                    let _ = writeln!(o, "   proxy after:  {} (1 s)", s(&h.proxy_after));
                    let _ = writeln!(o, "   proxy after:  {} (3 s)", s(&h.proxy_settled));
                    let _ = writeln!(
                        o,
                        "   per tunnel: {} KiB RSS, {} KiB PSS, {} fds",
                        h.rss_kib_per_tunnel
                            .map_or("-".into(), |v| format!("{v:.2}")),
                        h.pss_kib_per_tunnel
                            .map_or("-".into(), |v| format!("{v:.2}")),
                        h.fds_per_tunnel.map_or("-".into(), |v| format!("{v:.2}"))
                    );
                }
            }
        }
        Scenario::Udp => {
            if let Some(u) = &r.udp {
                let _ = writeln!(
                    o,
                    "   {:.0} datagrams/s; sent {}, echoed {}, lost {} ({:.3}%), late {}",
                    r.per_second, u.sent, u.received, u.lost, u.loss_pct, u.late
                );
            }
        }
        _ => {
            let _ = writeln!(
                o,
                "   {:.1} {}   sent {}, received {}{}",
                r.per_second,
                headline_unit(r.scenario),
                human_bytes(r.bytes_sent),
                human_bytes(r.bytes_received),
                match r.close {
                    Some(Close::Server) => "; target closes first",
                    Some(Close::Client) => "; client closes first",
                    None => "",
                }
            );
        }
    }
    let _ = writeln!(
        o,
        "   latency ms        p50       p90       p99     p99.9    p99.99       max      mean     count"
    );
    let iter_label = match r.scenario {
        Scenario::Cps => "iteration",
        Scenario::Hold => "keepalive",
        _ => "round trip",
    };
    for (label, p) in [
        ("handshake", &r.latency_us.handshake),
        ("ttfb", &r.latency_us.ttfb),
        (iter_label, &r.latency_us.iteration),
    ] {
        if p.count == 0 {
            continue;
        }
        let _ = writeln!(
            o,
            "   {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            label,
            ms(p.p50 as f64),
            ms(p.p90 as f64),
            ms(p.p99 as f64),
            ms(p.p999 as f64),
            ms(p.p9999 as f64),
            ms(p.max as f64),
            ms(p.mean),
            p.count
        );
    }
    for n in &r.notes {
        let _ = writeln!(o, "   NOTE: {n}");
    }
    if let (Scenario::Cps, Some(k)) = (r.scenario, &r.kernel_tcp) {
        let per_tunnel = if r.proxy == "direct" { 1.0 } else { 2.0 };
        let _ = writeln!(
            o,
            "   kernel: {} connections accepted in the window = {:.1} tunnels/s at {} per tunnel",
            k.passive_opens,
            k.passive_opens as f64 / per_tunnel / r.measured_s.max(1e-6),
            per_tunnel
        );
    }
    let c = &r.cpu;
    let _ = writeln!(
        o,
        "   cpu (100% = 1 core of {}): generator {:.0}% (clients {:.0}%, targets {:.0}%), proxy {}, machine busy {}; load avg before {}",
        c.cores,
        c.generator_pct,
        c.generator_clients_pct,
        c.generator_targets_pct,
        pct(c.proxy_pct),
        pct(c.machine_busy_pct),
        r.loadavg_before
            .map_or("-".into(), |l| format!("{l:.2}"))
    );
    o
}

/// Side-by-side medians with ratios to the first entry.
pub fn render_compare(s: &CompareSummary) -> String {
    let mut o = String::new();
    let hold = s.scenario == Scenario::Hold;
    let bulk = s.scenario == Scenario::Throughput;
    let rounds = s.rows.first().map_or(0, |r| r.rounds);
    let _ =
        writeln!(
        o,
        "== compare {:?}: medians over {} round(s); latency in ms; ratio = {} / first entry's{}",
        s.scenario,
        rounds,
        s.unit,
        if hold { "; memory and fds are per tunnel" } else { "" }
    );
    let _ = write!(
        o,
        "{:<12} {:>12} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "name",
        s.unit,
        "ratio",
        "hs p50",
        "hs p99",
        "it p50",
        "it p99",
        "it p99.9",
        "err %",
        "gen cpu",
        "prx cpu",
        "busy"
    );
    if hold {
        let _ = write!(o, " {:>8} {:>8} {:>7}", "RSS KiB", "PSS KiB", "fds");
    }
    if bulk {
        let _ = write!(o, " {:>9}", "cpu-s/GiB");
    }
    o.push('\n');
    for r in &s.rows {
        let _ = write!(
            o,
            "{:<12} {:>12} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.3} {:>8} {:>8} {:>8}",
            r.name,
            headline_str(s.scenario, r.headline),
            r.ratio.map_or("-".into(), |v| format!("{v:.2}x")),
            ms(r.handshake_p50_us),
            ms(r.handshake_p99_us),
            ms(r.iteration_p50_us),
            ms(r.iteration_p99_us),
            ms(r.iteration_p999_us),
            r.error_rate * 100.0,
            format!("{:.0}%", r.generator_cpu_pct),
            pct(r.proxy_cpu_pct),
            pct(r.machine_busy_pct)
        );
        if hold {
            let f = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
            let _ = write!(
                o,
                " {:>8} {:>8} {:>7}",
                f(r.rss_kib_per_tunnel, 1),
                f(r.pss_kib_per_tunnel, 1),
                f(r.fds_per_tunnel, 2)
            );
        }
        if bulk {
            let v = r
                .proxy_cpu_s_per_gib
                .map_or("-".into(), |v| format!("{v:.3}"));
            let _ = write!(o, " {v:>9}");
        }
        o.push('\n');
    }
    o
}

/// The percentile distribution in HdrHistogram's text format (`outputPercentileDistribution`,
/// 5 ticks per half distance), values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let scale = 1000.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            if q < 1.0 {
                let _ = writeln!(
                    o,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(o, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let _ = writeln!(
        o,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / scale,
        h.stdev() / scale
    );
    let _ = writeln!(
        o,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let sub_buckets = 2u64.pow((2.0 * 10f64.powi(i32::from(h.sigfig()))).log2().ceil() as u32);
    let _ = writeln!(
        o,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    o
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG with latency percentile curves (solid: iteration/round trip; dashed: handshake) on a
/// log-log "1/(1-p)" axis, and bars of each entry's headline figure.
pub fn svg(summary: &CompareSummary, title: &str) -> String {
    let (w, h) = (900.0, 760.0);
    let (px, py, pw, ph) = (80.0, 60.0, 780.0, 380.0);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    // Curves: x = log10(1/(1-q)) in [0, 5]; y = log10(ms).
    let max_x: f64 = 5.0;
    let mut ymin = f64::MAX;
    let mut ymax = f64::MIN;
    // (entry index, dashed, points)
    type Curve = (usize, bool, Vec<(f64, f64)>);
    let mut curves: Vec<Curve> = Vec::new();
    for (i, row) in summary.rows.iter().enumerate() {
        for (dashed, hist) in [(false, &row.hist_iteration), (true, &row.hist_handshake)] {
            if hist.is_empty() {
                continue;
            }
            let mut pts = Vec::new();
            for v in hist.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                let x = if q >= 1.0 {
                    max_x
                } else {
                    (-(1.0 - q).log10()).min(max_x)
                };
                let y = (v.value_iterated_to().max(1) as f64 / 1000.0).log10();
                ymin = ymin.min(y);
                ymax = ymax.max(y);
                pts.push((x, y));
            }
            curves.push((i, dashed, pts));
        }
    }
    if curves.is_empty() {
        ymin = -1.0;
        ymax = 1.0;
    }
    let (y0, y1) = (ymin.floor(), ymax.ceil().max(ymin.floor() + 1.0));
    let sx = |x: f64| px + x / max_x * pw;
    let sy = |y: f64| py + ph - (y - y0) / (y1 - y0) * ph;
    let _ = writeln!(
        o,
        r##"<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    for (k, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = sx(k as f64);
        let _ = writeln!(
            o,
            r##"<line x1="{x}" y1="{py}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            py + ph,
            py + ph + 16.0
        );
    }
    let mut d = y0;
    while d <= y1 + 1e-9 {
        let y = sy(d);
        let v = 10f64.powf(d);
        let label = if v >= 1.0 {
            format!("{v:.0}")
        } else {
            format!("{v}")
        };
        let _ = writeln!(
            o,
            r##"<line x1="{px}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
            px + pw,
            px - 6.0,
            y + 4.0
        );
        d += 1.0;
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="20" y="{}" transform="rotate(-90 20 {})" text-anchor="middle">latency (ms, log)</text>"#,
        px + pw / 2.0,
        py + ph + 34.0,
        py + ph / 2.0,
        py + ph / 2.0
    );
    for (i, dashed, pts) in &curves {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{} points="{}"/>"#,
            if *dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            },
            path.join(" ")
        );
    }
    // Legend.
    for (i, row) in summary.rows.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let y = py + 14.0 + i as f64 * 16.0;
        let _ = writeln!(
            o,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            px + 10.0,
            y - 4.0,
            px + 34.0,
            y - 4.0,
            px + 40.0,
            y,
            esc(&row.name)
        );
    }
    let _ = writeln!(
        o,
        r##"<text x="{}" y="{}" text-anchor="end" fill="#555">solid: {}; dashed: connect+handshake</text>"##,
        px + pw - 6.0,
        py + 16.0,
        match summary.scenario {
            Scenario::Cps => "whole iteration",
            Scenario::Hold => "keepalive round trip",
            _ => "round trip",
        }
    );
    // Bars.
    let (bx, by, bw, bh) = (80.0, 520.0, 780.0, 190.0);
    let maxv = summary
        .rows
        .iter()
        .map(|r| r.headline)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let n = summary.rows.len().max(1) as f64;
    let slot = bw / n;
    let _ = writeln!(
        o,
        r#"<text x="{bx}" y="{}" font-size="14">{} (median over rounds)</text>"#,
        by - 14.0,
        summary.unit
    );
    for (i, row) in summary.rows.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let bar_h = row.headline / maxv * bh;
        let x = bx + i as f64 * slot + slot * 0.2;
        let _ = writeln!(
            o,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bar_h:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            by + bh - bar_h,
            slot * 0.6,
            x + slot * 0.3,
            by + bh - bar_h - 4.0,
            headline_str(summary.scenario, row.headline),
            x + slot * 0.3,
            by + bh + 16.0,
            esc(&row.name)
        );
    }
    let _ = writeln!(
        o,
        r##"<line x1="{bx}" y1="{}" x2="{}" y2="{}" stroke="#444"/>"##,
        by + bh,
        bx + bw,
        by + bh
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::record;
    use std::time::Duration;

    #[test]
    fn hgrm_has_the_hdrhistogram_layout() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            record(&mut h, Duration::from_micros(i * 10));
        }
        let t = hgrm(&h);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("Value") && lines[0].contains("1/(1-Percentile)"));
        assert!(lines[1].is_empty());
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first.len(), 4);
        assert_eq!(first[1], "0.000000000000");
        let last = lines.iter().rfind(|l| !l.starts_with('#')).unwrap();
        let cols: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(cols[1], "1.000000000000");
        assert_eq!(cols[2], "1000");
        assert!(t.contains("#[Max     =       10.007, Total count    =         1000]"));
        assert!(t.contains("SubBuckets     =         2048"));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
