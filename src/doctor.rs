//! `ringsocks doctor`: what limits concurrent tunnels on this host, and the fix for each.
//!
//! A tunnel holds two descriptors (client and destination sockets), a few KiB of proxy memory
//! and two kernel sockets; each worker needs an io_uring ring and a listener whose backlog the
//! kernel caps. [`run`] reads the host's values ([`Host::gather`]: getrlimit, `/proc/sys`,
//! `/proc/meminfo`, cgroup files, an `io_uring_setup` probe), judges each with a pure function
//! of those values ([`diagnose`]), and prints the [`Finding`]s and a [`Summary`]: how many
//! tunnels fit and which limit comes first.
//!
//! A value that cannot be read (a `/proc` file that another kernel, a container or an unloaded
//! module lacks) gives a skipped finding with a note, never an error. Figures other than the
//! limits themselves (memory per tunnel, pipes wanted) are estimates and say so. The settings
//! named in the fixes are explained in `tuning/sysctl.conf` and `tuning/limits.conf`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::thread::available_parallelism;

/// Options of `ringsocks doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Tunnels you want to carry
    #[arg(long, default_value_t = 10000)]
    #[arg(value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    pub tunnels: u64,
}

/// Checks this host for `args.tunnels` concurrent tunnels and prints the findings; exits 1 when
/// a limit leaves room for fewer tunnels than asked for, else 0.
pub fn run(args: &DoctorArgs) -> ExitCode {
    let host = Host::gather();
    let findings = diagnose(&host, args.tunnels);
    let out = render(&findings, &summarize(&findings, &host), &host, args.tunnels);
    // A closed stdout (`ringsocks doctor | head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    match findings.iter().any(|f| f.severity == Limit) {
        true => ExitCode::from(1),
        false => ExitCode::SUCCESS,
    }
}

/// Descriptors kept spare beyond two per tunnel (listeners, rings, logs, pooled pipes): the
/// same reserve as the server's start-up line `about N concurrent tunnels fit`.
pub const SPARE_FDS: u64 = 64;
/// Listen backlog each worker asks for (`--backlog`).
pub const BACKLOG: u64 = 4096;
/// What a worker's ring (4096 SQ, 16384 CQ entries) charges to RLIMIT_MEMLOCK before Linux
/// 5.12: the rings with 16384 CQEs and the SQ array (~272 KiB, allocated as a power of two of
/// pages: 512 KiB) plus the 4096 SQEs (256 KiB).
pub const RING_MEMLOCK: u64 = 768 << 10;
/// Proxy memory of an idle tunnel (PSS measured over 9000 idle tunnels: 3.39 KiB).
pub const PROXY_BYTES: u64 = 3472;
/// Kernel memory of an established TCP socket with empty queues (sock, inode, file, dentry
/// slabs: 3.8 to 4.7 KiB measured on Linux 6.18).
pub const SOCKET_BYTES: u64 = 4096;
/// Pages of a default (64 KiB, `--pipe-size`) pipe.
const PIPE_PAGES: u64 = 16;

/// How much a finding matters for the number of tunnels asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The value could not be read; the note says which.
    Skip,
    /// Enough for the tunnels asked for.
    Ok,
    /// Works, but slower or bounded in a way worth knowing (epoll instead of io_uring, a small
    /// backlog, one destination's port range).
    Warn,
    /// Fewer tunnels than asked for fit.
    Limit,
}

use Severity::{Limit, Warn};

/// `Ok` when `enough`, else `bad`.
fn judge(enough: bool, bad: Severity) -> Severity {
    if enough {
        Severity::Ok
    } else {
        bad
    }
}

/// One checked limit: what was read, what it means here, and the setting that changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Short name of what was checked (`nofile`, `somaxconn`, ...).
    pub check: &'static str,
    /// How much it matters.
    pub severity: Severity,
    /// The values read and what they mean for tunnels.
    pub detail: String,
    /// The setting (sysctl, ulimit, systemd, flag) that changes it; `None` when skipped.
    pub fix: Option<String>,
    /// Tunnels this resource allows on its own, when it bounds all tunnels together.
    pub capacity: Option<u64>,
}

impl Finding {
    /// A finding (an empty `fix` is none); [`diagnose`] fills in `check`.
    fn new(severity: Severity, detail: String, fix: impl Into<String>) -> Finding {
        let fix = Some(fix.into()).filter(|f| !f.is_empty());
        Finding {
            check: "",
            severity,
            detail,
            fix,
            capacity: None,
        }
    }

    fn capacity(mut self, tunnels: u64) -> Finding {
        self.capacity = Some(tunnels);
        self
    }
}

/// How many tunnels fit here, and which limit binds first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Tunnels within every limit that bounds all tunnels together (`None`: none was read).
    pub fit: Option<u64>,
    /// The check with the smallest capacity.
    pub first_limit: Option<&'static str>,
    /// Tunnels to any one destination ip:port (the ephemeral port range).
    pub per_destination: Option<u64>,
}

/// The sysctls [`Host::gather`] reads.
pub const SYSCTLS: [&str; 14] = [
    "fs.nr_open",
    "fs.file-nr",
    "fs.pipe-user-pages-soft",
    "kernel.io_uring_disabled",
    "net.core.somaxconn",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_fastopen",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_wmem",
    "net.netfilter.nf_conntrack_max",
];

/// The host's values that bound tunnels; `None` (or no entry) where they could not be read.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// The numbers in each readable sysctl of [`SYSCTLS`], by name.
    pub sysctl: BTreeMap<&'static str, Vec<u64>>,
    /// RLIMIT_NOFILE (soft, hard); `u64::MAX` is unlimited.
    pub nofile: Option<(u64, u64)>,
    /// RLIMIT_MEMLOCK (soft, hard) in bytes.
    pub memlock: Option<(u64, u64)>,
    /// `io_uring_setup` of an 8-entry ring: `Err(errno)` when refused; `None`: not probed.
    pub uring_probe: Option<Result<(), i32>>,
    /// `io_uring_setup` of a worker-sized ring (4096 SQ, 16384 CQ entries).
    pub uring_worker: Option<Result<(), i32>>,
    /// Kernel release (`uname -r`).
    pub kernel: Option<String>,
    /// CPUs online.
    pub cpus_online: Option<u64>,
    /// CPUs in this process's affinity mask.
    pub cpus_allowed: Option<u64>,
    /// `std::thread::available_parallelism`: ringsocks' default `--threads`.
    pub parallelism: Option<u64>,
    /// `/sys/fs/cgroup/cpu.max` as read (`max 100000`, `150000 100000`).
    pub cpu_max: Option<String>,
    /// MemAvailable in bytes.
    pub mem_available: Option<u64>,
    /// Bytes left under the cgroup's `memory.max`, when it has one.
    pub cgroup_mem_left: Option<u64>,
    /// Page size in bytes (`None`: 4096 assumed).
    pub page_size: Option<u64>,
    /// Kernel TLS: `Err(why)` when unavailable; `None`: not probed.
    pub ktls: Option<Result<String, String>>,
}

impl Host {
    /// Reads this host's values; anything unreadable stays `None` or absent.
    pub fn gather() -> Host {
        let sys = |name: &str| read_nums(&format!("/proc/sys/{}", name.replace('.', "/")));
        let sysctl = SYSCTLS.iter().filter_map(|&n| Some((n, sys(n)?))).collect();
        let cgroup = |file: &str| read(&format!("/sys/fs/cgroup/{file}"));
        let cg_num = |file: &str| cgroup(file)?.trim().parse::<u64>().ok(); // "max": None
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(0);
        let mut worker_ring = io_uring::IoUring::builder();
        worker_ring.setup_cqsize(16384);
        let worker_ring: std::io::Result<io_uring::IoUring> = worker_ring.build(4096);
        let (nofile, memlock) = rlimits();
        Host {
            sysctl,
            nofile,
            memlock,
            uring_probe: Some(io_uring::IoUring::new(8).map(drop).map_err(errno)),
            uring_worker: Some(worker_ring.map(drop).map_err(errno)),
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
            cpus_online: sysconf(libc::_SC_NPROCESSORS_ONLN),
            cpus_allowed: affinity_count(),
            parallelism: available_parallelism().ok().map(|n| n.get() as u64),
            cpu_max: cgroup("cpu.max").map(|s| s.trim().to_string()),
            mem_available: read("/proc/meminfo").and_then(|m| meminfo_available(&m)),
            cgroup_mem_left: cg_num("memory.max")
                .zip(cg_num("memory.current"))
                .map(|(max, now)| max.saturating_sub(now)),
            page_size: sysconf(libc::_SC_PAGESIZE),
            ktls: Some({
                let s = crate::server::ktls::support();
                match &s.unavailable {
                    Some(why) => Err(why.clone()),
                    None => Ok(s.describe()),
                }
            }),
        }
    }

    /// The `N` numbers of sysctl `name`, if it was read and has that many.
    pub fn nums<const N: usize>(&self, name: &str) -> Option<[u64; N]> {
        self.sysctl.get(name)?.as_slice().try_into().ok()
    }
}

/// A check: the finding for so many tunnels, `None` when its values could not be read.
type Check = fn(&Host, u64) -> Option<Finding>;

/// Every check in print order, with what it reads (named in the note when it is skipped).
const CHECKS: [(&str, &str, Check); 15] = [
    ("nofile", "RLIMIT_NOFILE", nofile),
    ("nr_open", "fs.nr_open", nr_open),
    ("file-max", "fs.file-nr", file_max),
    ("somaxconn", "net.core.somaxconn", somaxconn),
    ("syn_backlog", "tcp_max_syn_backlog", syn_backlog),
    ("port_range", "ip_local_port_range", port_range),
    ("tw_reuse", "net.ipv4.tcp_tw_reuse", tw_reuse),
    ("io_uring", "io_uring_setup", uring),
    ("cpus", "available_parallelism", cpus),
    ("memory", "MemAvailable", memory),
    ("tcp_mem", "net.ipv4.tcp_mem", tcp_mem),
    ("conntrack", "nf_conntrack_max (not loaded)", conntrack),
    ("pipes", "pipe-user-pages-soft", pipes),
    ("ktls", "TCP_ULP tls", ktls),
    ("fastopen", "net.ipv4.tcp_fastopen", fastopen),
];

/// Every finding for `tunnels` concurrent tunnels on `host`, in print order.
pub fn diagnose(host: &Host, tunnels: u64) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (check, source, f) in CHECKS {
        let skip = || Finding::new(Severity::Skip, format!("could not read {source}"), "");
        findings.push(Finding {
            check,
            ..f(host, tunnels).unwrap_or_else(skip)
        });
    }
    findings
}

/// The smallest capacity among `findings` and its check, and the per-destination bound.
pub fn summarize(findings: &[Finding], host: &Host) -> Summary {
    let capacities = findings.iter().filter_map(|f| Some((f.capacity?, f.check)));
    let first = capacities.min_by_key(|p| p.0);
    Summary {
        fit: first.map(|(c, _)| c),
        first_limit: first.map(|(_, check)| check),
        per_destination: host.nums("net.ipv4.ip_local_port_range").map(port_count),
    }
}

/// Descriptors `tunnels` tunnels need.
pub fn fds_needed(tunnels: u64) -> u64 {
    tunnels.saturating_mul(2).saturating_add(SPARE_FDS)
}

/// Tunnels that fit in `fds` descriptors.
pub fn tunnels_in_fds(fds: u64) -> u64 {
    fds.saturating_sub(SPARE_FDS) / 2
}

fn nofile(h: &Host, tunnels: u64) -> Option<Finding> {
    let (soft, hard) = h.nofile?;
    let (need, fit) = (fds_needed(tunnels), tunnels_in_fds(hard));
    let detail = format!(
        "RLIMIT_NOFILE soft {soft}, hard {hard}: ringsocks raises soft to hard, so the hard limit \
         counts; 2 descriptors per tunnel + {SPARE_FDS} spare: about {fit} tunnels"
    );
    let n = need.next_multiple_of(1024);
    let fix = format!(
        "LimitNOFILE={n} in the systemd unit, or `ringsocks hard nofile {n}` in \
         /etc/security/limits.d/ (PAM logins only); at most fs.nr_open"
    );
    Some(Finding::new(judge(hard >= need, Limit), detail, fix).capacity(fit))
}

fn nr_open(h: &Host, tunnels: u64) -> Option<Finding> {
    let ([nr], need) = (h.nums("fs.nr_open")?, fds_needed(tunnels));
    let detail = format!("fs.nr_open {nr}: the ceiling of any nofile hard limit; {need} needed");
    let fix = format!("sysctl -w fs.nr_open={}", need.next_multiple_of(1 << 20));
    Some(Finding::new(judge(nr >= need, Limit), detail, fix))
}

fn file_max(h: &Host, tunnels: u64) -> Option<Finding> {
    let [open, _, max] = h.nums("fs.file-nr")?;
    let fit = max.saturating_sub(open) / 2;
    let detail = format!(
        "fs.file-max {max}, {open} files open (fs.file-nr), for all processes together: room \
         for about {fit} more tunnels (then ENFILE, `VFS: file-max limit reached`)"
    );
    let want = (open + fds_needed(tunnels)).next_multiple_of(1 << 20);
    let fix = format!("sysctl -w fs.file-max={want}");
    Some(Finding::new(judge(fit >= tunnels, Limit), detail, fix).capacity(fit))
}

fn somaxconn(h: &Host, _: u64) -> Option<Finding> {
    let [v] = h.nums("net.core.somaxconn")?;
    let detail = format!(
        "net.core.somaxconn {v}: each worker queues min(--backlog {BACKLOG}, {v}) connections \
         not yet accepted; a larger burst is dropped (`nstat -az TcpExtListenOverflows`)"
    );
    let fix = format!("sysctl -w net.core.somaxconn={BACKLOG}");
    Some(Finding::new(judge(v >= BACKLOG, Warn), detail, fix))
}

fn syn_backlog(h: &Host, _: u64) -> Option<Finding> {
    let [v] = h.nums("net.ipv4.tcp_max_syn_backlog")?;
    let cookies = h.nums("net.ipv4.tcp_syncookies").map_or(1, |[c]| c);
    let why = match cookies {
        0 => "tcp_syncookies=0: once 3/4 full, SYNs from peers not seen before are dropped",
        _ => "unused while SYN cookies are on: the listen backlog bounds half-open connections",
    };
    let detail = format!("net.ipv4.tcp_max_syn_backlog {v}: {why}");
    let fix = "sysctl -w net.ipv4.tcp_max_syn_backlog=8192";
    let severity = judge(cookies != 0 || v >= BACKLOG, Warn);
    Some(Finding::new(severity, detail, fix))
}

fn port_count([first, last]: [u64; 2]) -> u64 {
    (last + 1).saturating_sub(first)
}

fn port_range(h: &Host, tunnels: u64) -> Option<Finding> {
    let [first, last] = h.nums("net.ipv4.ip_local_port_range")?;
    let n = port_count([first, last]);
    let detail = format!(
        "net.ipv4.ip_local_port_range {first}-{last}: {n} source ports. Each destination \
         ip:port has its own 4-tuple space, so this bounds tunnels to ONE destination (e.g. a \
         single upstream), not in total; past it connects fail with EADDRNOTAVAIL"
    );
    let fix = "sysctl -w net.ipv4.ip_local_port_range='10240 65535' (and list the ports local \
               services listen on in net.ipv4.ip_local_reserved_ports)";
    Some(Finding::new(judge(n >= tunnels, Warn), detail, fix))
}

fn tw_reuse(h: &Host, _: u64) -> Option<Finding> {
    let [v] = h.nums("net.ipv4.tcp_tw_reuse")?;
    let range = h.nums("net.ipv4.ip_local_port_range");
    let rate = range.map_or(28232, port_count) / 60;
    let mode = match v {
        0 => "off",
        1 => "on",
        2 => "loopback destinations only",
        _ => "unknown",
    };
    let detail = format!(
        "net.ipv4.tcp_tw_reuse {v} ({mode}): an outbound connection ringsocks closes first holds \
         its source port in TIME_WAIT for 60 s; without reuse one destination ip:port sustains \
         at most {rate} new tunnels/s"
    );
    let fix = "sysctl -w net.ipv4.tcp_tw_reuse=1 (outgoing connections only; there is no \
               tcp_tw_recycle since Linux 4.12)";
    Some(Finding::new(judge(v == 1, Warn), detail, fix))
}

/// Kernel TLS matters only for TLS listeners and parents: without it their tunnels relay in
/// user space (more CPU per byte, and no splice), which is worth knowing, not a
/// limit.
fn ktls(h: &Host, _: u64) -> Option<Finding> {
    Some(match h.ktls.as_ref()? {
        Ok(what) => Finding::new(Severity::Ok, what.clone(), ""),
        Err(why) => Finding::new(
            Warn,
            format!("kernel TLS unavailable ({why}): TLS tunnels relay in user space"),
            "modprobe tls, and tls in /etc/modules-load.d/ (only matters with TLS listeners or parents)",
        ),
    })
}

/// Client-side TCP Fast Open (bit 1 of net.ipv4.tcp_fastopen) lets SOCKS 6 initial data and,
/// with `--upstream-fastopen`, a CONNECT's first bytes ride in the SYN; without it they wait
/// a round trip. Not a limit.
fn fastopen(h: &Host, _: u64) -> Option<Finding> {
    let [v] = h.nums("net.ipv4.tcp_fastopen")?;
    Some(if v & 1 == 1 {
        Finding::new(
            Severity::Ok,
            format!("net.ipv4.tcp_fastopen {v}: outbound connects may carry data in the SYN"),
            "",
        )
    } else {
        Finding::new(
            Warn,
            format!(
                "net.ipv4.tcp_fastopen {v}: client Fast Open off, SOCKS 6 initial data and \
                 --upstream-fastopen wait a round trip"
            ),
            "sysctl -w net.ipv4.tcp_fastopen=1 (or 3 to accept Fast Open as a server too)",
        )
    })
}

fn uring(h: &Host, _: u64) -> Option<Finding> {
    let disabled = h.nums("kernel.io_uring_disabled").map(|[v]| v);
    let switch = disabled.map_or("kernel.io_uring_disabled not readable (6.6+)".into(), |v| {
        format!("kernel.io_uring_disabled {v} (0 on, 1 CAP_SYS_ADMIN/io_uring_group only, 2 off)")
    });
    let (errno, severity, what) = match (h.uring_probe?, h.uring_worker) {
        (Err(e), _) => (
            e,
            Warn,
            "io_uring_setup fails: ringsocks falls back to epoll (slower)",
        ),
        (Ok(()), Some(Err(e))) => (e, Limit, WORKER_RING_FAILS),
        (Ok(()), _) => return Some(memlock(h, format!("{switch}; io_uring_setup works"))),
    };
    let fix = match errno {
        libc::EPERM if disabled.unwrap_or(0) != 0 => "sysctl -w kernel.io_uring_disabled=0",
        libc::EPERM => "allow io_uring_setup, io_uring_enter, io_uring_register in seccomp",
        libc::ENOSYS => "a kernel with CONFIG_IO_URING (5.6+), or --runtime epoll",
        libc::ENOMEM => "LimitMEMLOCK=64M (before 5.12 rings count against RLIMIT_MEMLOCK)",
        _ => "--runtime epoll",
    };
    let err = std::io::Error::from_raw_os_error(errno);
    Some(Finding::new(
        severity,
        format!("{switch}; {what} ({err})"),
        fix,
    ))
}

/// Why a failing worker-sized ring is a limit: the server's own start-up probe uses an
/// 8-entry ring, so it picks io_uring and then its workers fail.
const WORKER_RING_FAILS: &str = "an 8-entry ring works but a worker's (4096 SQ, 16384 CQ \
    entries) fails; ringsocks' start-up probe uses 8 entries, so its workers would fail to \
    start unless run with --runtime epoll";

/// The io_uring finding when rings can be set up: whether RLIMIT_MEMLOCK still suffices for
/// one ring per worker on kernels before 5.12, which charge rings to it.
fn memlock(h: &Host, works: String) -> Finding {
    let fix = "LimitMEMLOCK=64M in the unit, or `ringsocks - memlock 65536` in limits.d";
    let release = h.kernel.as_deref().unwrap_or("?");
    let soft = h.memlock.map_or(u64::MAX, |m| m.0);
    let workers = h.parallelism.unwrap_or(1);
    if !matches!(parse_release(release), Some(v) if v < (5, 12)) || soft == u64::MAX {
        let detail = format!("{works}; kernel {release}: RLIMIT_MEMLOCK does not bound rings here");
        return Finding::new(Severity::Ok, detail, fix);
    }
    let need = workers * RING_MEMLOCK;
    let detail = format!(
        "{works}; kernel {release} (before 5.12) charges rings to RLIMIT_MEMLOCK, summed over \
         the user's processes: {workers} workers x 768 KiB = {} KiB, soft limit {} KiB; short \
         of it, workers' io_uring_setup fails (ENOMEM) and they do not start",
        need >> 10,
        soft >> 10
    );
    Finding::new(judge(soft >= need, Limit), detail, fix)
}

/// (major, minor) of a kernel release such as `6.18.44-fc-v669` or `5.12-rc3`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(str::parse);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

/// CPUs a `cpu.max` line grants (`150000 100000` is 1.5); `None` for `max` (no quota).
pub fn parse_cpu_max(line: &str) -> Option<f64> {
    let mut it = line.split_whitespace().map(|n| n.parse::<f64>().ok());
    let (quota, period) = (it.next()??, it.next()??);
    (period > 0.0).then_some(quota / period)
}

fn cpus(h: &Host, _: u64) -> Option<Finding> {
    let workers = h.parallelism?;
    let quota = h.cpu_max.as_deref().and_then(parse_cpu_max);
    let allowed = h.cpus_allowed.unwrap_or(workers);
    let online = h.cpus_online.unwrap_or(allowed);
    let cpu_max = h.cpu_max.as_deref().unwrap_or("not readable");
    let throttled = workers < allowed || quota.is_some_and(|q| q < allowed as f64);
    let note = [
        "",
        "; the quota is below the cores: keep --threads at or below it",
    ];
    let detail = format!(
        "{online} CPUs online, {allowed} in the affinity mask, cgroup cpu.max {cpu_max}: \
         {workers} workers by default (available_parallelism counts mask and quota){}",
        note[usize::from(throttled)]
    );
    let n = quota.map_or(workers, |q| (q as u64).clamp(1, workers));
    let fix = format!("--threads {n}");
    Some(Finding::new(judge(!throttled, Warn), detail, fix))
}

/// MemAvailable from `/proc/meminfo`, in bytes.
pub fn meminfo_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Least buffer memory the kernel leaves a busy socket (tcp_rmem[0] + tcp_wmem[0], bytes).
fn socket_floor(h: &Host) -> u64 {
    let min = |name| h.nums::<3>(name).map_or(4096, |v| v[0]);
    min("net.ipv4.tcp_rmem") + min("net.ipv4.tcp_wmem")
}

fn memory(h: &Host, tunnels: u64) -> Option<Finding> {
    let avail = h.mem_available?;
    let usable = h.cgroup_mem_left.map_or(avail, |c| c.min(avail));
    let idle = PROXY_BYTES + 2 * SOCKET_BYTES;
    let busy = idle + 2 * socket_floor(h);
    let (fit, fit_idle, mib) = (usable / busy, usable / idle, usable >> 20);
    let (idle_kib, busy_kib) = (idle as f64 / 1024.0, busy as f64 / 1024.0);
    let detail = format!(
        "{mib} MiB available (MemAvailable, or the cgroup's memory.max if lower). Estimate per \
         tunnel: {idle_kib:.1} KiB idle (3.4 KiB proxy + 2 sockets of ~4 KiB), {busy_kib:.1} KiB \
         with both sockets at their minimum buffers: about {fit} tunnels ({fit_idle} if idle); \
         bulk transfers hold more (buffers up to tcp_rmem/wmem max, a pipe or buffer)"
    );
    let fix = format!("more memory, or --max-tunnels {fit} (a clean refusal instead of OOM)");
    Some(Finding::new(judge(fit >= tunnels, Limit), detail, fix).capacity(fit))
}

fn tcp_mem(h: &Host, tunnels: u64) -> Option<Finding> {
    let [low, pressure, max] = h.nums("net.ipv4.tcp_mem")?;
    let (page, per_tunnel) = (h.page_size.unwrap_or(4096), 2 * socket_floor(h));
    let fit = max.saturating_mul(page) / per_tunnel;
    let detail = format!(
        "net.ipv4.tcp_mem {low} {pressure} {max} pages ({} MiB) caps all TCP buffers: idle \
         tunnels hold none, one with data queued at least {per_tunnel} bytes, so about {fit} \
         can have data queued at once (then `TCP: out of memory -- consider tuning tcp_mem`)",
        max.saturating_mul(page) >> 20
    );
    let want = tunnels.saturating_mul(per_tunnel).div_ceil(page).max(max);
    let (lo, mid) = (want / 2, want / 3 * 2);
    let fix = format!("sysctl -w net.ipv4.tcp_mem='{lo} {mid} {want}' (pages; if memory allows)");
    Some(Finding::new(judge(fit >= tunnels, Warn), detail, fix))
}

fn conntrack(h: &Host, tunnels: u64) -> Option<Finding> {
    let [max] = h.nums("net.netfilter.nf_conntrack_max")?;
    let fit = max / 2;
    let detail = format!(
        "net.netfilter.nf_conntrack_max {max}: a tunnel is 2 tracked connections, and closed \
         ones linger up to 120 s: about {fit} tunnels (then `nf_conntrack: table full`)"
    );
    let want = (tunnels.saturating_mul(5) / 2).next_power_of_two().max(max);
    let fix = format!(
        "sysctl -w net.netfilter.nf_conntrack_max={want}, or exempt the proxy's ports from \
         tracking (raw table, -j CT --notrack)"
    );
    Some(Finding::new(judge(fit >= tunnels, Limit), detail, fix).capacity(fit))
}

fn pipes(h: &Host, tunnels: u64) -> Option<Finding> {
    let [soft] = h.nums("fs.pipe-user-pages-soft")?;
    let full = soft / PIPE_PAGES;
    let detail = format!(
        "fs.pipe-user-pages-soft {soft} pages (0: no limit) for all the user's pipes: room for \
         {full} of 64 KiB; a tunnel holds one while a chunk moves (wanted: one per tunnel). Past \
         it new pipes get 2 pages (1 before Linux 5.14) and cannot grow: splice moves 8 KiB per \
         call, slower but working"
    );
    let want = tunnels.saturating_mul(PIPE_PAGES);
    let fix = format!("sysctl -w fs.pipe-user-pages-soft={want} (pages), or --relay copy");
    let severity = judge(soft == 0 || soft >= want, Warn);
    Some(Finding::new(severity, detail, fix))
}

/// The findings as text, ending with the summary.
pub fn render(findings: &[Finding], summary: &Summary, host: &Host, tunnels: u64) -> String {
    let workers = host.parallelism.unwrap_or(1);
    let mut out = format!("ringsocks doctor: {tunnels} tunnels here, {workers} workers\n\n");
    for f in findings {
        let label = ["skip", "ok", "warn", "limit"][f.severity as usize]; // declaration order
        out += &format!("[{label:<5}] {}: {}\n", f.check, f.detail);
        if let (Warn | Limit, Some(fix)) = (f.severity, &f.fix) {
            out += &format!("        fix: {fix}\n");
        }
    }
    out += &match (summary.fit, summary.first_limit) {
        (Some(fit), Some(first)) => {
            format!("\nabout {fit} concurrent tunnels fit here; first limit: {first}")
        }
        _ => "\nno limit could be read: cannot estimate how many tunnels fit".into(),
    };
    if let Some(n) = summary.per_destination {
        out += &format!(" (to any one destination ip:port: {n}, ip_local_port_range)");
    }
    out + "\n"
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_nums(path: &str) -> Option<Vec<u64>> {
    read(path)?
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect()
}

type Limits = Option<(u64, u64)>;

/// RLIMIT_NOFILE and RLIMIT_MEMLOCK, (soft, hard) each.
fn rlimits() -> (Limits, Limits) {
    let get = |resource| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // Safety: getrlimit writes into the rlimit struct it is given, which we own.
        let ok = unsafe { libc::getrlimit(resource, &mut lim) } == 0;
        ok.then_some((lim.rlim_cur, lim.rlim_max))
    };
    (get(libc::RLIMIT_NOFILE), get(libc::RLIMIT_MEMLOCK))
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // Safety: sysconf only reads a system value.
    u64::try_from(unsafe { libc::sysconf(name) }).ok()
}

fn affinity_count() -> Option<u64> {
    // Safety: cpu_set_t is plain data (all zero: an empty set); sched_getaffinity fills it for
    // this process and CPU_COUNT only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        u64::try_from(libc::CPU_COUNT(&set)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host with enough of everything for 10000 tunnels; no conntrack.
    fn host() -> Host {
        let mut h = Host {
            nofile: Some((1024, 1_048_576)),
            memlock: Some((8 << 20, 8 << 20)),
            uring_probe: Some(Ok(())),
            uring_worker: Some(Ok(())),
            kernel: Some("6.1.0-18-amd64".into()),
            cpus_online: Some(4),
            cpus_allowed: Some(4),
            parallelism: Some(4),
            cpu_max: Some("max 100000".into()),
            mem_available: Some(16 << 30),
            page_size: Some(4096),
            ..Host::default()
        };
        set(&mut h, "fs.nr_open", &[1_048_576]);
        set(&mut h, "fs.file-nr", &[2000, 0, 9_223_372_036_854_775_807]);
        set(&mut h, "fs.pipe-user-pages-soft", &[262_144]);
        set(&mut h, "kernel.io_uring_disabled", &[0]);
        set(&mut h, "net.core.somaxconn", &[4096]);
        set(&mut h, "net.ipv4.ip_local_port_range", &[32768, 60999]);
        set(&mut h, "net.ipv4.tcp_max_syn_backlog", &[2048]);
        set(
            &mut h,
            "net.ipv4.tcp_mem",
            &[1_000_000, 1_500_000, 2_000_000],
        );
        set(&mut h, "net.ipv4.tcp_rmem", &[4096, 131_072, 6_291_456]);
        set(&mut h, "net.ipv4.tcp_syncookies", &[1]);
        set(&mut h, "net.ipv4.tcp_tw_reuse", &[1]);
        set(&mut h, "net.ipv4.tcp_wmem", &[4096, 16384, 4_194_304]);
        h
    }

    fn set(h: &mut Host, name: &'static str, values: &[u64]) {
        assert!(SYSCTLS.contains(&name), "{name} is not gathered");
        h.sysctl.insert(name, values.to_vec());
    }

    fn find(h: &Host, tunnels: u64, check: &str) -> Finding {
        diagnose(h, tunnels)
            .into_iter()
            .find(|f| f.check == check)
            .unwrap()
    }

    #[test]
    fn tunnels_default_to_10000_and_stay_in_range() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: DoctorArgs,
        }
        let parse = |argv: &[&str]| clap::Parser::try_parse_from(argv).map(|c: Cli| c.args.tunnels);
        assert_eq!(parse(&["doctor"]).unwrap(), 10_000);
        assert_eq!(parse(&["doctor", "--tunnels", "100000"]).unwrap(), 100_000);
        assert!(parse(&["doctor", "--tunnels", "0"]).is_err());
        assert!(parse(&["doctor", "--tunnels", "18446744073709551615"]).is_err());
    }

    #[test]
    fn descriptor_arithmetic_matches_the_server_start_up_line() {
        assert_eq!(fds_needed(10_000), 20_064);
        assert_eq!(tunnels_in_fds(20_000), 9_968);
        assert_eq!(tunnels_in_fds(10), 0);
        assert_eq!(tunnels_in_fds(fds_needed(123_456)), 123_456);
    }

    #[test]
    fn a_good_host_has_no_warning_or_limit() {
        let findings = diagnose(&host(), 10_000);
        assert_eq!(
            findings.iter().map(|f| f.check).collect::<Vec<_>>(),
            CHECKS.map(|c| c.0)
        );
        let bad: Vec<_> = findings
            .iter()
            .filter(|f| f.severity > Severity::Ok)
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
        // conntrack is not loaded: skipped with a note, not a failure.
        let f = find(&host(), 10_000, "conntrack");
        assert_eq!(
            (f.severity, f.fix, f.capacity),
            (Severity::Skip, None, None)
        );
        assert!(f.detail.contains("nf_conntrack_max (not loaded)"));
    }

    #[test]
    fn the_hard_nofile_limit_counts_not_the_soft_one() {
        let mut h = host();
        h.nofile = Some((1024, 20_000));
        let f = find(&h, 10_000, "nofile");
        assert_eq!((f.severity, f.capacity), (Limit, Some(9_968)));
        assert!(f.fix.unwrap().contains("LimitNOFILE=20480"));
        h.nofile = Some((1024, 20_064));
        assert_eq!(find(&h, 10_000, "nofile").severity, Severity::Ok);
    }

    #[test]
    fn nr_open_and_file_max_bound_the_descriptor_fix() {
        let mut h = host();
        set(&mut h, "fs.nr_open", &[65_536]);
        set(&mut h, "fs.file-nr", &[2000, 0, 102_000]);
        let nr = find(&h, 100_000, "nr_open");
        assert_eq!(nr.severity, Limit);
        assert_eq!(nr.fix.as_deref(), Some("sysctl -w fs.nr_open=1048576"));
        let fm = find(&h, 100_000, "file-max");
        assert_eq!((fm.severity, fm.capacity), (Limit, Some(50_000)));
        set(&mut h, "fs.file-nr", &[2000]); // malformed: skipped, not misread
        assert_eq!(find(&h, 100_000, "file-max").severity, Severity::Skip);
    }

    #[test]
    fn backlog_sysctls() {
        let mut h = host();
        assert_eq!(find(&h, 1, "syn_backlog").severity, Severity::Ok); // cookies cover it
        set(&mut h, "net.core.somaxconn", &[128]);
        set(&mut h, "net.ipv4.tcp_syncookies", &[0]);
        assert_eq!(find(&h, 1, "somaxconn").severity, Warn);
        assert_eq!(find(&h, 1, "syn_backlog").severity, Warn);
        set(&mut h, "net.ipv4.tcp_max_syn_backlog", &[8192]);
        assert_eq!(find(&h, 1, "syn_backlog").severity, Severity::Ok);
    }

    #[test]
    fn port_range_bounds_one_destination_only() {
        let mut h = host();
        let f = find(&h, 100_000, "port_range");
        assert_eq!((f.severity, f.capacity), (Warn, None));
        assert!(f.detail.contains("28232 source ports"));
        let s = summarize(&diagnose(&h, 100_000), &h);
        assert_eq!(s.per_destination, Some(28_232));
        assert_ne!(s.first_limit, Some("port_range"));
        set(&mut h, "net.ipv4.ip_local_port_range", &[10, 5]);
        assert_eq!(summarize(&[], &h).per_destination, Some(0));
    }

    #[test]
    fn fastopen_client_bit_is_checked() {
        let mut h = host();
        set(&mut h, "net.ipv4.tcp_fastopen", &[0]);
        let f = find(&h, 1, "fastopen");
        assert_eq!(f.severity, Warn);
        assert!(f.fix.unwrap().contains("tcp_fastopen=1"));
        set(&mut h, "net.ipv4.tcp_fastopen", &[3]);
        assert_eq!(find(&h, 1, "fastopen").severity, Severity::Ok);
        set(&mut h, "net.ipv4.tcp_fastopen", &[2]); // server side only
        assert_eq!(find(&h, 1, "fastopen").severity, Warn);
    }

    #[test]
    fn tw_reuse_other_than_one_warns_with_the_churn_rate() {
        let mut h = host();
        set(&mut h, "net.ipv4.tcp_tw_reuse", &[2]);
        let f = find(&h, 1, "tw_reuse");
        assert_eq!(f.severity, Warn);
        assert!(f.detail.contains("loopback") && f.detail.contains("470 new tunnels/s"));
        assert!(f.fix.unwrap().contains("outgoing connections only"));
        set(&mut h, "net.ipv4.tcp_tw_reuse", &[0]);
        assert!(find(&h, 1, "tw_reuse").detail.contains("(off)"));
        set(&mut h, "net.ipv4.tcp_tw_reuse", &[7]); // unknown value: still reported
        assert_eq!(find(&h, 1, "tw_reuse").severity, Warn);
    }

    #[test]
    fn io_uring_errors_name_their_fix() {
        let mut h = host();
        h.uring_probe = Some(Err(libc::EPERM));
        assert!(find(&h, 1, "io_uring").fix.unwrap().contains("seccomp"));
        set(&mut h, "kernel.io_uring_disabled", &[2]);
        let f = find(&h, 1, "io_uring");
        assert_eq!(f.severity, Warn);
        assert!(f.detail.contains("io_uring_disabled 2") && f.detail.contains("epoll"));
        assert_eq!(
            f.fix.as_deref(),
            Some("sysctl -w kernel.io_uring_disabled=0")
        );
        h.uring_probe = Some(Err(libc::ENOSYS));
        assert!(find(&h, 1, "io_uring")
            .fix
            .unwrap()
            .contains("CONFIG_IO_URING"));
        h.uring_probe = Some(Ok(()));
        h.uring_worker = Some(Err(libc::ENOMEM));
        let f = find(&h, 1, "io_uring");
        assert_eq!((f.severity, f.capacity), (Limit, None));
        assert!(f.detail.contains("4096 SQ") && f.fix.unwrap().contains("LimitMEMLOCK"));
        h.uring_probe = None;
        assert_eq!(find(&h, 1, "io_uring").severity, Severity::Skip);
    }

    #[test]
    fn memlock_matters_only_before_5_12() {
        let mut h = host();
        h.memlock = Some((64 << 10, 64 << 10));
        assert_eq!(find(&h, 1, "io_uring").severity, Severity::Ok);
        h.kernel = Some("5.10.0-28-amd64".into());
        let f = find(&h, 1, "io_uring");
        assert_eq!(f.severity, Limit);
        assert!(
            f.detail.contains("4 workers x 768 KiB = 3072 KiB"),
            "{}",
            f.detail
        );
        h.memlock = Some((64 << 20, 64 << 20));
        assert_eq!(find(&h, 1, "io_uring").severity, Severity::Ok);
    }

    #[test]
    fn release_and_cpu_max_parsing() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.12-rc3"), Some((5, 12)));
        assert_eq!(parse_release("4.19"), Some((4, 19)));
        assert_eq!(parse_release("6"), None);
        assert_eq!(parse_release("x.y"), None);
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn a_cpu_quota_below_the_cores_suggests_fewer_threads() {
        let mut h = host();
        assert_eq!(find(&h, 1, "cpus").severity, Severity::Ok);
        h.cpu_max = Some("250000 100000".into());
        h.parallelism = Some(2);
        let f = find(&h, 1, "cpus");
        assert_eq!(f.severity, Warn);
        assert_eq!(f.fix.as_deref(), Some("--threads 2"));
    }

    #[test]
    fn memory_estimate_and_cgroup_limit() {
        assert_eq!(
            meminfo_available("MemTotal: 10 kB\nMemAvailable:   2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(meminfo_available("MemTotal: 10 kB\n"), None);
        let mut h = host();
        // 3472 + 2 x 4096 + 2 x 8192 = 28048 bytes per busy tunnel.
        h.mem_available = Some(28_048 * 1000);
        let f = find(&h, 1000, "memory");
        assert_eq!((f.severity, f.capacity), (Severity::Ok, Some(1000)));
        h.cgroup_mem_left = Some(28_048 * 10);
        let f = find(&h, 1000, "memory");
        assert_eq!((f.severity, f.capacity), (Limit, Some(10)));
        assert!(f.fix.unwrap().contains("--max-tunnels 10"));
    }

    #[test]
    fn tcp_mem_is_pages() {
        let mut h = host();
        set(&mut h, "net.ipv4.tcp_mem", &[100, 200, 400]); // 1.6 MB: 100 tunnels of 16 KiB
        let f = find(&h, 1000, "tcp_mem");
        assert_eq!((f.severity, f.capacity), (Warn, None));
        assert!(f.detail.contains("about 100 can"), "{}", f.detail);
        assert!(f.fix.unwrap().contains("'2000 2666 4000'"));
    }

    #[test]
    fn conntrack_counts_two_entries_per_tunnel() {
        let mut h = host();
        h.sysctl
            .insert("net.netfilter.nf_conntrack_max", vec![262_144]);
        let f = find(&h, 200_000, "conntrack");
        assert_eq!((f.severity, f.capacity), (Limit, Some(131_072)));
        assert!(f.fix.unwrap().contains("nf_conntrack_max=524288"));
        let s = summarize(&diagnose(&h, 200_000), &h);
        assert_eq!((s.fit, s.first_limit), (Some(131_072), Some("conntrack")));
    }

    #[test]
    fn pipes_past_the_soft_limit_shrink() {
        let mut h = host();
        set(&mut h, "fs.pipe-user-pages-soft", &[16_384]);
        let f = find(&h, 10_000, "pipes");
        assert_eq!(f.severity, Warn);
        assert!(f.detail.contains("room for 1024 of 64 KiB"));
        assert!(f.fix.unwrap().contains("fs.pipe-user-pages-soft=160000"));
        set(&mut h, "fs.pipe-user-pages-soft", &[0]);
        assert_eq!(find(&h, 10_000, "pipes").severity, Severity::Ok);
    }

    #[test]
    fn an_unreadable_host_skips_everything_without_panicking() {
        let h = Host::default();
        let findings = diagnose(&h, 10_000);
        assert!(
            findings.iter().all(|f| f.severity == Severity::Skip),
            "{findings:#?}"
        );
        let s = summarize(&findings, &h);
        assert_eq!(
            s,
            Summary {
                fit: None,
                first_limit: None,
                per_destination: None
            }
        );
        assert!(render(&findings, &s, &h, 10_000).contains("cannot estimate"));
    }

    #[test]
    fn summary_names_the_smallest_capacity() {
        let mut h = host();
        h.nofile = Some((20_000, 20_000));
        let findings = diagnose(&h, 100_000);
        let s = summarize(&findings, &h);
        assert_eq!((s.fit, s.first_limit), (Some(9_968), Some("nofile")));
        let text = render(&findings, &s, &h, 100_000);
        assert!(text.contains("about 9968 concurrent tunnels fit here; first limit: nofile"));
        assert!(text.contains("[limit] nofile") && text.contains("fix: LimitNOFILE=200704"));
        assert!(
            !text.contains("[ok   ] cpus: ") || !text.contains("fix: --threads"),
            "{text}"
        );
    }
}
