//! Metrics: counters kept per worker and summed only when scraped, served as Prometheus text
//! by a small admin listener (`--metrics ADDR`, `GET /metrics`).
//!
//! Every counter has exactly one writer, its worker thread, which updates it with a relaxed
//! load and store (no read-modify-write, no lock prefix, no cache line shared with another
//! writer); the scraper only reads. Labels with an open set of values (rule names, failure
//! reasons) live in a small per-worker map behind a mutex that only failure paths and the
//! scraper touch.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::proto::Command;

/// A counter or gauge written by one thread only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (single writer: a plain load and store).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtracts `n` (gauges).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the connect-latency histogram buckets, in seconds.
pub const CONNECT_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The three SOCKS commands, as label values, in [`command_index`] order.
const COMMANDS: [&str; 3] = ["connect", "bind", "udp"];

/// Index of a command in per-command arrays.
pub fn command_index(c: Command) -> usize {
    match c {
        Command::Connect => 0,
        Command::Bind => 1,
        Command::UdpAssociate => 2,
    }
}

/// One worker's metrics.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Connections accepted (including ones that never finished a handshake).
    pub accepted: Counter,
    /// Sessions open now (handshaking or relaying).
    pub sessions: Counter,
    /// Tunnels established, by command (after the success reply).
    pub tunnels_total: [Counter; 3],
    /// Tunnels open now, by command.
    pub tunnels_active: [Counter; 3],
    /// Bytes from clients to targets (TCP payload and UDP datagram payload).
    pub bytes_up: Counter,
    /// Bytes from targets to clients.
    pub bytes_down: Counter,
    /// Failed RFC 1929 logins (wrong password, unknown user, or refused while locked out).
    pub auth_failures: Counter,
    /// TLS sessions on TLS listeners, by carrier ([`CARRIERS`]).
    pub tls_sessions: [Counter; 2],
    /// Tunnels through parent proxies, by how TLS to the parent is carried ([`PARENT_TLS`]).
    pub parent_tunnels: [Counter; 3],
    /// Connect latency histogram: cumulative counts are computed on scrape; these are the
    /// per-bucket counts (the last slot is +Inf).
    connect_buckets: [Counter; CONNECT_BUCKETS.len() + 1],
    /// Sum of connect latencies, in microseconds.
    connect_micros: Counter,
    /// Handshake failures by reason, requests refused by reply code, blocks by rule name and
    /// PROXY header failures by reason: failure paths only.
    labelled: Mutex<Labelled>,
}

#[derive(Debug, Default)]
struct Labelled {
    handshake_failures: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    rule_blocks: BTreeMap<String, u64>,
    proxy_header_failures: BTreeMap<&'static str, u64>,
    parent_failures: BTreeMap<&'static str, u64>,
}

/// TLS carriers, as `tls_sessions` counts them.
pub const CARRIERS: [&str; 2] = ["ktls", "user-space"];
/// TLS to parents, as `parent_tunnels` counts them.
pub const PARENT_TLS: [&str; 3] = ["none", "user-space", "ktls"];

impl WorkerMetrics {
    /// Records how long a successful outbound connect took.
    pub fn connect_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = CONNECT_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(CONNECT_BUCKETS.len());
        self.connect_buckets[i].add(1);
        self.connect_micros
            .add(d.as_micros().min(u64::MAX as u128) as u64);
    }

    /// Counts a handshake that failed, by reason.
    pub fn handshake_failed(&self, reason: &'static str) {
        *self.lock().handshake_failures.entry(reason).or_default() += 1;
    }

    /// Counts a request refused with `reply`.
    pub fn refused(&self, reply: &'static str) {
        *self.lock().refused.entry(reply).or_default() += 1;
    }

    /// Counts a request blocked by the named access rule.
    pub fn rule_blocked(&self, rule: &str) {
        let mut l = self.lock();
        match l.rule_blocks.get_mut(rule) {
            Some(n) => *n += 1,
            None => {
                l.rule_blocks.insert(rule.to_owned(), 1);
            }
        }
    }

    /// Counts a connection on a PROXY protocol listener whose header was refused.
    pub fn proxy_header_failed(&self, reason: &'static str) {
        *self.lock().proxy_header_failures.entry(reason).or_default() += 1;
    }

    /// Counts a tunnel a parent proxy could not give, by reason.
    pub fn parent_failed(&self, reason: &'static str) {
        *self.lock().parent_failures.entry(reason).or_default() += 1;
    }

    /// Counts a TLS session by its carrier's name (see [`CARRIERS`]).
    pub fn tls_session(&self, carrier: &str) {
        if let Some(i) = CARRIERS.iter().position(|c| *c == carrier) {
            self.tls_sessions[i].add(1);
        }
    }

    /// Counts a tunnel through a parent by how TLS to it is carried (see [`PARENT_TLS`]).
    pub fn parent_tunnel(&self, tls: Option<&str>) {
        let name = tls.unwrap_or("none");
        if let Some(i) = PARENT_TLS.iter().position(|c| *c == name) {
            self.parent_tunnels[i].add(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Labelled> {
        // A panic while holding this lock cannot leave the maps inconsistent (single inserts).
        self.labelled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a tunnel of `command` open until the guard drops.
    pub fn tunnel(self: &Arc<Self>, command: Command) -> TunnelGauge {
        let i = command_index(command);
        self.tunnels_total[i].add(1);
        self.tunnels_active[i].add(1);
        TunnelGauge(self.clone(), i)
    }
}

/// Keeps a tunnel counted in `tunnels_active`.
pub struct TunnelGauge(Arc<WorkerMetrics>, usize);

impl Drop for TunnelGauge {
    fn drop(&mut self) {
        self.0.tunnels_active[self.1].sub(1);
    }
}

/// Process-wide metrics, written outside the workers (reloads).
#[derive(Debug, Default)]
pub struct ProcessMetrics {
    /// SIGHUP reloads that were applied.
    pub reloads_ok: AtomicU64,
    /// SIGHUP reloads rejected (the old configuration stayed).
    pub reloads_failed: AtomicU64,
}

/// Every worker's metrics, for the scraper.
#[derive(Debug, Default)]
pub struct Registry {
    /// One entry per worker, by worker index.
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// Process-wide counters.
    pub process: ProcessMetrics,
    /// Static facts for `ringsocks_info`.
    pub info: Vec<(&'static str, String)>,
}

impl Registry {
    /// A registry with `n` workers.
    pub fn new(n: usize, info: Vec<(&'static str, String)>) -> Self {
        Registry {
            workers: (0..n).map(|_| Arc::default()).collect(),
            process: ProcessMetrics::default(),
            info,
        }
    }

    /// Renders the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let sum = |f: &dyn Fn(&WorkerMetrics) -> u64| self.workers.iter().map(|w| f(w)).sum();

        let labels: Vec<String> = self
            .info
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        header(
            &mut out,
            "ringsocks_info",
            "gauge",
            "Build and runtime facts.",
        );
        let _ = writeln!(out, "ringsocks_info{{{}}} 1", labels.join(","));

        header(
            &mut out,
            "ringsocks_tunnels_active",
            "gauge",
            "Tunnels open now, by command (connect, bind, udp associations).",
        );
        for (i, c) in COMMANDS.iter().enumerate() {
            let v: u64 = sum(&|w| w.tunnels_active[i].get());
            let _ = writeln!(out, "ringsocks_tunnels_active{{command=\"{c}\"}} {v}");
        }
        header(
            &mut out,
            "ringsocks_tunnels_total",
            "counter",
            "Tunnels established (success reply sent), by command.",
        );
        for (i, c) in COMMANDS.iter().enumerate() {
            let v: u64 = sum(&|w| w.tunnels_total[i].get());
            let _ = writeln!(out, "ringsocks_tunnels_total{{command=\"{c}\"}} {v}");
        }
        header(
            &mut out,
            "ringsocks_bytes_total",
            "counter",
            "Payload bytes relayed: up = client to target, down = target to client.",
        );
        let up: u64 = sum(&|w| w.bytes_up.get());
        let down: u64 = sum(&|w| w.bytes_down.get());
        let _ = writeln!(out, "ringsocks_bytes_total{{direction=\"up\"}} {up}");
        let _ = writeln!(out, "ringsocks_bytes_total{{direction=\"down\"}} {down}");
        header(
            &mut out,
            "ringsocks_auth_failures_total",
            "counter",
            "Failed username/password logins (including ones refused during a lockout).",
        );
        let v: u64 = sum(&|w| w.auth_failures.get());
        let _ = writeln!(out, "ringsocks_auth_failures_total {v}");

        // Labelled maps: merged across workers.
        let mut hs: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut refused: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut rules: BTreeMap<String, u64> = BTreeMap::new();
        let mut proxy: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut parents: BTreeMap<&'static str, u64> = BTreeMap::new();
        for w in &self.workers {
            let l = w.lock();
            for (k, v) in &l.handshake_failures {
                *hs.entry(k).or_default() += v;
            }
            for (k, v) in &l.refused {
                *refused.entry(k).or_default() += v;
            }
            for (k, v) in &l.rule_blocks {
                *rules.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &l.proxy_header_failures {
                *proxy.entry(k).or_default() += v;
            }
            for (k, v) in &l.parent_failures {
                *parents.entry(k).or_default() += v;
            }
        }
        header(
            &mut out,
            "ringsocks_tls_sessions_total",
            "counter",
            "TLS sessions on TLS listeners after their handshake, by carrier (ktls = kernel TLS).",
        );
        for (i, c) in CARRIERS.iter().enumerate() {
            let v: u64 = sum(&|w| w.tls_sessions[i].get());
            let _ = writeln!(out, "ringsocks_tls_sessions_total{{carrier=\"{c}\"}} {v}");
        }
        header(
            &mut out,
            "ringsocks_parent_tunnels_total",
            "counter",
            "Tunnels opened through parent proxies, by how TLS to the parent is carried.",
        );
        for (i, c) in PARENT_TLS.iter().enumerate() {
            let v: u64 = sum(&|w| w.parent_tunnels[i].get());
            let _ = writeln!(out, "ringsocks_parent_tunnels_total{{tls=\"{c}\"}} {v}");
        }
        header(
            &mut out,
            "ringsocks_parent_failures_total",
            "counter",
            "CONNECTs a parent proxy did not carry, by reason.",
        );
        for (k, v) in &parents {
            let _ = writeln!(out, "ringsocks_parent_failures_total{{reason=\"{k}\"}} {v}");
        }
        header(
            &mut out,
            "ringsocks_handshake_failures_total",
            "counter",
            "Connections that ended before a complete SOCKS request, by reason.",
        );
        for (k, v) in &hs {
            let _ = writeln!(
                out,
                "ringsocks_handshake_failures_total{{reason=\"{k}\"}} {v}"
            );
        }
        header(
            &mut out,
            "ringsocks_requests_refused_total",
            "counter",
            "Requests answered with a failure reply, by reply code.",
        );
        for (k, v) in &refused {
            let _ = writeln!(out, "ringsocks_requests_refused_total{{reply=\"{k}\"}} {v}");
        }
        header(
            &mut out,
            "ringsocks_rule_blocks_total",
            "counter",
            "Requests blocked by an access rule, by rule name.",
        );
        for (k, v) in &rules {
            let _ = writeln!(
                out,
                "ringsocks_rule_blocks_total{{rule=\"{}\"}} {v}",
                escape(k)
            );
        }
        header(
            &mut out,
            "ringsocks_proxy_header_failures_total",
            "counter",
            "Connections on PROXY protocol listeners closed for a bad or missing header.",
        );
        for (k, v) in &proxy {
            let _ = writeln!(
                out,
                "ringsocks_proxy_header_failures_total{{reason=\"{k}\"}} {v}"
            );
        }

        header(
            &mut out,
            "ringsocks_connect_duration_seconds",
            "histogram",
            "Time to connect to a destination (name resolution included), successful connects.",
        );
        let mut cumulative = 0u64;
        for (i, b) in CONNECT_BUCKETS.iter().enumerate() {
            cumulative += sum(&|w| w.connect_buckets[i].get());
            let _ = writeln!(
                out,
                "ringsocks_connect_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        cumulative += sum(&|w| w.connect_buckets[CONNECT_BUCKETS.len()].get());
        let _ = writeln!(
            out,
            "ringsocks_connect_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let micros: u64 = sum(&|w| w.connect_micros.get());
        let _ = writeln!(
            out,
            "ringsocks_connect_duration_seconds_sum {}",
            micros as f64 / 1e6
        );
        let _ = writeln!(out, "ringsocks_connect_duration_seconds_count {cumulative}");

        header(
            &mut out,
            "ringsocks_worker_sessions_active",
            "gauge",
            "Sessions open now on each worker (handshaking or relaying): the load balance.",
        );
        for (i, w) in self.workers.iter().enumerate() {
            let v = w.sessions.get();
            let _ = writeln!(
                out,
                "ringsocks_worker_sessions_active{{worker=\"{i}\"}} {v}"
            );
        }
        header(
            &mut out,
            "ringsocks_worker_connections_total",
            "counter",
            "Connections accepted by each worker.",
        );
        for (i, w) in self.workers.iter().enumerate() {
            let v = w.accepted.get();
            let _ = writeln!(
                out,
                "ringsocks_worker_connections_total{{worker=\"{i}\"}} {v}"
            );
        }
        header(
            &mut out,
            "ringsocks_config_reloads_total",
            "counter",
            "SIGHUP reloads, by result.",
        );
        let ok = self.process.reloads_ok.load(Relaxed);
        let failed = self.process.reloads_failed.load(Relaxed);
        let _ = writeln!(out, "ringsocks_config_reloads_total{{result=\"ok\"}} {ok}");
        let _ = writeln!(
            out,
            "ringsocks_config_reloads_total{{result=\"rejected\"}} {failed}"
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds the admin listener (before privileges are dropped).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("metrics {addr}: {e}")))
}

/// Serves `GET /metrics` on its own small thread, one request at a time, off the workers.
pub fn spawn(listener: TcpListener, registry: Arc<Registry>) -> io::Result<()> {
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringsocks-metrics".into())
        .spawn(move || {
            info!("metrics on http://{addr}/metrics");
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(s, &registry) {
                            debug!("metrics request: {e}");
                        }
                    }
                    Err(e) => {
                        warn!("metrics accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(())
}

/// Reads one HTTP/1.x request (bounded in size and time) and answers it.
/// Reads from a stream, each read bounded by what is left until one deadline.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: std::time::Instant,
}

impl io::Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
        self.stream.set_read_timeout(Some(left))?;
        io::Read::read(&mut self.stream, buf)
    }
}

fn answer(stream: TcpStream, registry: &Registry) -> io::Result<()> {
    // One deadline for the whole request, so a client trickling bytes cannot hold the
    // (single) metrics thread.
    let timed = DeadlineReader {
        stream: &stream,
        deadline: std::time::Instant::now() + Duration::from_secs(5),
    };
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(io::Read::take(timed, 8192));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Headers are read and ignored, up to the blank line.
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") | ("HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        ),
        ("GET", "/") | ("HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "ringsocks: metrics at /metrics\n".to_owned(),
        ),
        ("GET", _) | ("HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "method not allowed\n".to_owned(),
        ),
    };
    let mut w = &stream;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        w.write_all(body.as_bytes())?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_and_renders_histogram_cumulatively() {
        let r = Registry::new(2, vec![("version", "0.1.0".into())]);
        r.workers[0].tunnels_total[0].add(2);
        r.workers[1].tunnels_total[0].add(3);
        r.workers[1].bytes_up.add(10);
        r.workers[0].connect_latency(Duration::from_micros(300));
        r.workers[1].connect_latency(Duration::from_millis(30));
        r.workers[1].connect_latency(Duration::from_secs(60));
        r.workers[0].rule_blocked("no \"x\"");
        r.workers[1].rule_blocked("no \"x\"");
        r.workers[0].handshake_failed("timeout");
        let text = r.render();
        assert!(text.contains("ringsocks_tunnels_total{command=\"connect\"} 5\n"));
        assert!(text.contains("ringsocks_bytes_total{direction=\"up\"} 10\n"));
        assert!(text.contains("ringsocks_connect_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("ringsocks_connect_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("ringsocks_connect_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("ringsocks_connect_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("ringsocks_connect_duration_seconds_count 3\n"));
        assert!(text.contains("ringsocks_rule_blocks_total{rule=\"no \\\"x\\\"\"} 2\n"));
        assert!(text.contains("ringsocks_handshake_failures_total{reason=\"timeout\"} 1\n"));
        assert!(text.contains("ringsocks_info{version=\"0.1.0\"} 1\n"));
    }

    #[test]
    fn tunnel_gauge_goes_back_down() {
        let w = Arc::new(WorkerMetrics::default());
        let g = w.tunnel(Command::Bind);
        assert_eq!(w.tunnels_active[1].get(), 1);
        drop(g);
        assert_eq!(w.tunnels_active[1].get(), 0);
        assert_eq!(w.tunnels_total[1].get(), 1);
    }
}
