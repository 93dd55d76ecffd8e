//! Bulk relay throughput: the real `ringsocks` binary in `--relay splice` and `--relay copy`
//! (io_uring runtime), against direct loopback, with 1 and 8 tunnels. One iteration opens the
//! tunnels (not timed), then streams 32 MiB up each of them at once and waits until the target
//! has counted every byte (timed).
//!
//! Besides criterion's throughput figures, the bench prints the proxy's CPU seconds per GiB
//! relayed in each mode (from `/proc/PID/stat`, user + system, all threads): on a shared
//! machine CPU per byte is steadier than wall-clock speed.
//!
//! Run with `cargo bench --bench relay` (loopback only; best inside `unshare -n`, see
//! `loadtest/README.md`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const PER_TUNNEL: u64 = 32 << 20;
const CHUNK: usize = 256 << 10;

/// A proxy process, killed on drop.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn start(relay: &str) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringsocks"))
            .args(["serve", "--listen", "127.0.0.1:0", "--threads", "2"])
            .args([
                "--runtime",
                "uring",
                "--relay",
                relay,
                "--log-level",
                "info",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringsocks");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = loop {
            let line = lines.next().expect("ringsocks exited").expect("stderr");
            if let Some(a) = line.split("listening on ").nth(1) {
                break a.trim().parse().expect("listen address");
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Proxy { child, addr }
    }

    /// User + system CPU seconds of the whole process so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("proxy stat");
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // Safety: sysconf has no memory effects.
        ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A target that reads each connection to its end and answers with the byte count.
fn counting_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes());
            });
        }
    });
    addr
}

/// A SOCKS5 CONNECT tunnel to `target` through `proxy`, or a direct connection.
fn open(proxy: Option<SocketAddr>, target: SocketAddr) -> TcpStream {
    let Some(proxy) = proxy else {
        return TcpStream::connect(target).unwrap();
    };
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_nodelay(true).unwrap();
    let SocketAddr::V4(t) = target else {
        panic!("IPv4 target")
    };
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&t.ip().octets());
    req.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(
        &reply[..4],
        &[5, 0, 5, 0],
        "SOCKS5 method and CONNECT reply"
    );
    s
}

/// Streams PER_TUNNEL bytes up every tunnel at once; returns when the target confirmed all.
fn stream(tunnels: Vec<TcpStream>) -> Duration {
    let t0 = Instant::now();
    let handles: Vec<_> = tunnels
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let chunk = vec![0x5au8; CHUNK];
                let mut sent = 0u64;
                while sent < PER_TUNNEL {
                    let n = (PER_TUNNEL - sent).min(CHUNK as u64) as usize;
                    s.write_all(&chunk[..n]).unwrap();
                    sent += n as u64;
                }
                s.shutdown(Shutdown::Write).unwrap();
                let mut count = [0u8; 8];
                s.read_exact(&mut count).unwrap();
                assert_eq!(u64::from_be_bytes(count), PER_TUNNEL, "bytes lost");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    t0.elapsed()
}

fn relay(c: &mut Criterion) {
    let target = counting_target();
    let mut cpu_report = Vec::new();
    for tunnels in [1usize, 8] {
        let mut g = c.benchmark_group(format!("relay/{tunnels} tunnels"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Bytes(PER_TUNNEL * tunnels as u64));
        for mode in ["direct", "splice", "copy"] {
            let proxy = (mode != "direct").then(|| Proxy::start(mode));
            let addr = proxy.as_ref().map(|p| p.addr);
            let cpu0 = proxy.as_ref().map(Proxy::cpu_seconds);
            let mut bytes = 0u64;
            g.bench_function(BenchmarkId::from_parameter(mode), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let ss = (0..tunnels).map(|_| open(addr, target)).collect();
                        total += stream(ss);
                        bytes += PER_TUNNEL * tunnels as u64;
                    }
                    total
                })
            });
            if let (Some(p), Some(cpu0)) = (&proxy, cpu0) {
                let gib = bytes as f64 / (1u64 << 30) as f64;
                let per_gib = (p.cpu_seconds() - cpu0) / gib;
                cpu_report.push(format!(
                    "{tunnels} tunnel(s), {mode}: {per_gib:.3} proxy CPU-s/GiB over {gib:.1} GiB"
                ));
            }
        }
        g.finish();
    }
    println!("\nproxy CPU per GiB relayed (user + system, all threads):");
    for line in cpu_report {
        println!("  {line}");
    }
}

criterion_group!(benches, relay);
criterion_main!(benches);
