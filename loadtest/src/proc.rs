//! Readings from /proc: CPU time of this process, of chosen threads, of a proxy and its
//! descendants (Dante forks workers), the proxy's RSS and open fds, and machine-wide busy time.

use std::fs;
use std::time::Instant;

use serde::Serialize;

pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Fields of a /proc/.../stat line after the command name (field 3 onward).
fn stat_fields(path: &str) -> Option<Vec<u64>> {
    let s = fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    // Field 3 is the state letter; map it to 0 so indices stay aligned.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime (+ cutime + cstime when `children`) in ticks. Index 0 here is field 3.
fn cpu_ticks(path: &str, children: bool) -> Option<u64> {
    let f = stat_fields(path)?;
    let own = f.get(11)? + f.get(12)?;
    Some(if children {
        own + f.get(13)? + f.get(14)?
    } else {
        own
    })
}

fn ppid(pid: i32) -> Option<i32> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    i32::try_from(*f.get(1)?).ok()
}

/// `pid` and all its live descendants.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut all: Vec<(i32, i32)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                if let Some(pp) = ppid(p) {
                    all.push((p, pp));
                }
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// A point-in-time reading of the proxy's process tree.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcSample {
    pub processes: usize,
    pub threads: u64,
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub fds: u64,
    #[serde(skip)]
    pub cpu_ticks: u64,
}

/// Sum over `pid` and its descendants. CPU includes reaped children (cutime/cstime), so time of
/// short-lived worker processes is not lost.
pub fn sample_tree(pid: i32) -> Option<ProcSample> {
    fs::metadata(format!("/proc/{pid}")).ok()?;
    let mut s = ProcSample::default();
    for p in process_tree(pid) {
        s.processes += 1;
        s.cpu_ticks += cpu_ticks(&format!("/proc/{p}/stat"), true).unwrap_or(0);
        let (rss, threads) = rss_threads(p).unwrap_or((0, 0));
        s.rss_kib += rss;
        s.threads += threads;
        s.pss_kib += pss_kib(p).unwrap_or(0);
        s.fds += fs::read_dir(format!("/proc/{p}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
    }
    Some(s)
}

fn field_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// VmRSS (KiB) and thread count from /proc/PID/status.
fn rss_threads(pid: i32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        field_kib(&s, "VmRSS:")?,
        field_kib(&s, "Threads:").unwrap_or(1),
    ))
}

/// Proportional set size (KiB): shared pages divided among the processes sharing them.
fn pss_kib(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kib(&s, "Pss:")
}

/// Machine-wide (all CPUs) busy and total jiffies from /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// CPU counters at one instant; subtract two to get utilisation.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    at: Instant,
    own: u64,
    clients: u64,
    targets: u64,
    proxy: Option<u64>,
    machine: Option<(u64, u64)>,
}

/// CPU use over a window, in percent of one core (200% = two cores busy).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUsage {
    /// The whole generator process (client workers + in-process targets + coordinator).
    pub generator_pct: f64,
    pub generator_clients_pct: f64,
    pub generator_targets_pct: f64,
    /// The proxy's process tree, when `--proxy-pid` was given.
    pub proxy_pct: Option<f64>,
    /// Busy share of the whole machine, percent of all cores.
    pub machine_busy_pct: Option<f64>,
    pub cores: usize,
}

pub fn cpu_snapshot(client_tids: &[i32], target_tids: &[i32], proxy: Option<i32>) -> CpuSnapshot {
    let tsum = |tids: &[i32]| -> u64 {
        tids.iter()
            .filter_map(|t| cpu_ticks(&format!("/proc/self/task/{t}/stat"), false))
            .sum()
    };
    CpuSnapshot {
        at: Instant::now(),
        own: cpu_ticks("/proc/self/stat", false).unwrap_or(0),
        clients: tsum(client_tids),
        targets: tsum(target_tids),
        proxy: proxy.and_then(sample_tree).map(|s| s.cpu_ticks),
        machine: machine_ticks(),
    }
}

impl CpuSnapshot {
    pub fn at(&self) -> Instant {
        self.at
    }

    pub fn usage_since(&self, start: &CpuSnapshot) -> CpuUsage {
        let secs = self.at.duration_since(start.at).as_secs_f64().max(1e-3);
        let tck = clk_tck();
        let pct = |a: u64, b: u64| a.saturating_sub(b) as f64 / tck / secs * 100.0;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        CpuUsage {
            generator_pct: pct(self.own, start.own),
            generator_clients_pct: pct(self.clients, start.clients),
            generator_targets_pct: pct(self.targets, start.targets),
            proxy_pct: match (self.proxy, start.proxy) {
                (Some(a), Some(b)) => Some(pct(a, b)),
                _ => None,
            },
            machine_busy_pct: match (self.machine, start.machine) {
                (Some((b1, t1)), Some((b0, t0))) if t1 > t0 => {
                    Some((b1 - b0) as f64 / (t1 - t0) as f64 * 100.0)
                }
                _ => None,
            },
            cores,
        }
    }
}

/// Kernel TCP counters (/proc/net/snmp) of this network namespace: an independent count of the
/// connections made during a window (every tunnel through a proxy is two connections).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct KernelTcp {
    pub active_opens: u64,
    pub passive_opens: u64,
}

pub fn kernel_tcp() -> Option<KernelTcp> {
    let s = fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = s.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = tcp.next()?.split_whitespace().collect();
    let values: Vec<&str> = tcp.next()?.split_whitespace().collect();
    let get = |k: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == k)?;
        values.get(i)?.parse().ok()
    };
    Some(KernelTcp {
        active_opens: get("ActiveOpens")?,
        passive_opens: get("PassiveOpens")?,
    })
}

impl KernelTcp {
    pub fn since(&self, start: &KernelTcp) -> KernelTcp {
        KernelTcp {
            active_opens: self.active_opens.saturating_sub(start.active_opens),
            passive_opens: self.passive_opens.saturating_sub(start.passive_opens),
        }
    }
}

/// The 1-minute load average, to tell a reader whether the machine was quiet.
pub fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Raise the soft fd limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        let s = sample_tree(me).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.pss_kib > 0);
        assert!(s.threads >= 1);
        assert!(s.fds > 0);
        assert!(process_tree(me).contains(&me));
        let a = cpu_snapshot(&[gettid()], &[], Some(me));
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = cpu_snapshot(&[gettid()], &[], Some(me));
        let u = b.usage_since(&a);
        assert!(u.generator_pct >= 0.0);
        assert!(u.proxy_pct.is_some());
        let k0 = kernel_tcp().expect("/proc/net/snmp");
        let _l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(_l.local_addr().unwrap()).unwrap();
        let d = kernel_tcp().unwrap().since(&k0);
        assert!(d.active_opens >= 1 && d.passive_opens >= 1, "{d:?}");
    }
}
