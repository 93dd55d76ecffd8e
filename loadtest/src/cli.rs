//! Command-line arguments (shared by the binary and by tests, which drive [`crate::run`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::error::LoadError;
use crate::socks::Proxy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// New tunnel per iteration: connect, handshake, request, response, close.
    Cps,
    /// Persistent tunnels doing request/response round trips.
    Rps,
    /// Bulk streaming through C tunnels with a byte-exact end check.
    Throughput,
    /// Ramp to K tunnels and hold them open with occasional keepalives.
    Hold,
    /// SOCKS5 UDP ASSOCIATE round trips.
    Udp,
    /// Only run the target servers (for use by another generator or tool) until Ctrl-C.
    Serve,
}

/// Which end closes a `cps` tunnel first (and so keeps the TIME_WAIT state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Close {
    /// The target closes after its response (like an HTTP/1.0 server); TIME_WAIT stays on the
    /// target's side, no ephemeral ports are tied up on the client or the proxy.
    Server,
    /// The client closes after reading the response; TIME_WAIT ties up ephemeral ports of the
    /// client and, for its outgoing connection, of the proxy. Needed for plain echo targets.
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
    Both,
}

/// Load generator for SOCKS4/4a/5/6 proxies.
///
/// Examples:
///   ringsocks-load cps --proxy socks5://127.0.0.1:1080 -c 64 -d 10s
///   ringsocks-load throughput --compare rs=socks5://127.0.0.1:1080,dante=socks5://127.0.0.1:11080,direct -c 8 --rounds 3
///   ringsocks-load hold -c 9000 --proxy socks5://127.0.0.1:1080 --proxy-pid 1234
#[derive(Clone, Debug, Parser)]
#[command(name = "ringsocks-load", version, verbatim_doc_comment)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Proxy URL: socks5://[user:pass@]host:port, socks5+pipe://..., socks6://[user:pass@]host:port
    /// (SOCKS 6, draft-11, first payload sent as initial data), socks4://host:port,
    /// socks4a://host:port or direct.
    #[arg(short, long, default_value = "direct")]
    pub proxy: String,

    /// Run the scenario against each entry in turn: name=URL,name=URL,direct (overrides --proxy).
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,

    /// Compare rounds; entries are interleaved within each round and medians reported.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,

    /// Pause between runs of a compare, letting sockets in TIME_WAIT and proxies settle.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub pause: Duration,

    /// PID of the proxy for CPU/RSS/fd readings (its descendants are included). With --compare,
    /// a comma-separated list aligned with the entries; use - for none.
    #[arg(long, value_delimiter = ',')]
    pub proxy_pid: Vec<String>,

    /// Use an external target (TCP and UDP on this address) instead of the in-process ones.
    #[arg(long)]
    pub target: Option<SocketAddr>,

    /// Address the in-process targets bind to (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub target_bind: SocketAddr,

    /// Ask the proxy to resolve this host name instead of sending the target's IP
    /// (SOCKS4a/SOCKS5/SOCKS6 domain address type).
    #[arg(long)]
    pub target_name: Option<String>,

    /// Concurrent connection slots (cps/rps/udp), tunnels (throughput), or tunnels to hold (hold).
    #[arg(short, long, default_value_t = 1)]
    pub concurrency: usize,

    /// Open loop: total iterations per second over all slots (hold: tunnels opened per second).
    /// Latency is measured from each iteration's intended start (coordinated-omission corrected).
    #[arg(short, long)]
    pub rate: Option<f64>,

    /// Worker threads, one pinned per core (default: available cores).
    #[arg(short, long)]
    pub threads: Option<usize>,

    /// Do not pin worker threads to cores.
    #[arg(long)]
    pub no_pin: bool,

    /// Threads for the in-process target servers (default: same as --threads).
    #[arg(long)]
    pub target_threads: Option<usize>,

    /// Measured time (5, 5s, 500ms, 2m). For hold: how long the tunnels are held.
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time before measuring starts (not for hold, whose ramp is its warmup).
    #[arg(short, long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Per-operation timeout (connect+handshake, one round trip, the end of a stream).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Request bytes per iteration (cps/rps; at least 8, the request header) or datagram size (udp, at least 16).
    #[arg(long, default_value_t = 64)]
    pub request_size: u32,

    /// Response bytes per iteration (cps/rps).
    #[arg(long, default_value_t = 64)]
    pub response_size: u32,

    /// cps: which end closes the tunnel first.
    #[arg(long, value_enum, default_value = "server")]
    pub close: Close,

    /// Throughput: which way data flows through each tunnel.
    #[arg(long, value_enum, default_value = "both")]
    pub direction: Direction,

    /// Throughput: bytes per write.
    #[arg(long, default_value_t = 65536)]
    pub chunk_size: usize,

    /// Hold: interval between keepalive bytes on each tunnel.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub keepalive: Duration,

    /// Hold: give up ramping after this long (default: K / rate + 30 s).
    #[arg(long, value_parser = parse_duration)]
    pub ramp_timeout: Option<Duration>,

    /// Exit non-zero when errors / iterations of any run exceeds this fraction.
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,

    /// Print one JSON object per run (and one for the compare summary) instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Also append the JSON lines (as --json prints them) to this file, keeping the tables on stdout.
    #[arg(long)]
    pub json_file: Option<PathBuf>,

    /// Write the iteration latency distribution in HdrHistogram text format (per entry with --compare).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,

    /// Draw latency percentile curves and rate/throughput bars of the run(s) as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Less output on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// One proxy to measure.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub url: String,
    pub proxy: Proxy,
    pub pid: Option<i32>,
}

impl Args {
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1)
    }

    /// The proxies to run against, in order.
    pub fn entries(&self) -> Result<Vec<Entry>, LoadError> {
        let specs: Vec<(String, String)> = if self.compare.is_empty() {
            let name = if self.proxy.trim().eq_ignore_ascii_case("direct") {
                "direct".to_string()
            } else {
                "proxy".to_string()
            };
            vec![(name, self.proxy.clone())]
        } else {
            self.compare
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| match s.split_once('=') {
                    Some((n, u)) => (n.trim().to_string(), u.trim().to_string()),
                    None => (s.trim().to_string(), s.trim().to_string()),
                })
                .collect()
        };
        if self.proxy_pid.len() > specs.len() {
            return Err(LoadError::Config(format!(
                "{} --proxy-pid values for {} entries",
                self.proxy_pid.len(),
                specs.len()
            )));
        }
        let mut out = Vec::new();
        for (i, (name, url)) in specs.into_iter().enumerate() {
            let pid = match self.proxy_pid.get(i).map(|s| s.trim()) {
                None | Some("-") | Some("") | Some("0") => None,
                Some(p) => Some(
                    p.parse::<i32>()
                        .map_err(|_| LoadError::Config(format!("--proxy-pid {p:?}")))?,
                ),
            };
            let proxy: Proxy = url.parse()?;
            out.push(Entry {
                name,
                url,
                proxy,
                pid,
            });
        }
        Ok(out)
    }
}

/// Parse `5`, `5s`, `1.5s`, `500ms`, `2m`, `1h` into a duration (bare numbers are seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with optional unit (ms, s, m, h)"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn compare_entries() {
        let a = Args::try_parse_from([
            "x",
            "cps",
            "--compare",
            "a=socks5://127.0.0.1:1,b=socks4://127.0.0.1:2,direct",
            "--proxy-pid",
            "12,-",
        ])
        .unwrap();
        let e = a.entries().unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].name, "a");
        assert_eq!(e[0].pid, Some(12));
        assert_eq!(e[1].pid, None);
        assert_eq!(e[2].name, "direct");
        assert!(e[2].proxy.is_direct());
    }
}
