//! Every scenario for about a second through a real ringsocks server:
//! `RINGSOCKS_BIN=target/release/ringsocks cargo test -p ringsocks-load --test ringsocks`.
//! Without RINGSOCKS_BIN it uses the ringsocks binary built beside it, which `cargo test
//! --workspace` always builds; only a lone `cargo test -p ringsocks-load` before any server
//! build skips it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use ringsocks_load::{run, Args, RunResult};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &str) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringsocks");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "ringsocks did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server(child), port)
}

fn one(args: &[&str]) -> RunResult {
    let mut v = vec!["ringsocks-load"];
    v.extend_from_slice(args);
    v.extend_from_slice(&["--threads", "1", "--no-pin", "-q", "-w", "200ms", "-d", "1"]);
    let mut r = run(Args::try_parse_from(v).unwrap()).expect("run");
    r.runs.remove(0)
}

#[test]
fn every_scenario_through_ringsocks() {
    let Some(bin) = ringsocks_bin() else {
        eprintln!(
            "no ringsocks binary (RINGSOCKS_BIN unset, none built beside this test); skipped"
        );
        return;
    };
    let (server, port) = start(&bin);
    let pid = server.0.id().to_string();
    for scheme in ["socks5", "socks4", "socks4a", "socks6"] {
        let url = format!("{scheme}://127.0.0.1:{port}");
        for scenario in ["cps", "rps"] {
            let r = one(&[scenario, "-p", &url, "-c", "4"]);
            assert_eq!(r.iterations, r.successes + r.errors);
            assert_eq!(r.errors, 0, "{scheme} {scenario}: {:?}", r.first_errors);
            assert_eq!(r.bytes_sent, r.bytes_received);
        }
    }
    for scheme in ["socks5", "socks6"] {
        let url = format!("{scheme}://127.0.0.1:{port}");
        let r = one(&["throughput", "-p", &url, "-c", "2"]);
        assert!(
            r.throughput.as_ref().unwrap().byte_exact,
            "{scheme}: {:?}",
            r.first_errors
        );
    }
    let url = format!("socks5://127.0.0.1:{port}");
    let r = one(&[
        "hold",
        "-p",
        &url,
        "-c",
        "100",
        "-r",
        "1000",
        "--keepalive",
        "300ms",
        "--proxy-pid",
        &pid,
    ]);
    assert_eq!(r.hold.as_ref().unwrap().held, 100, "{:?}", r.first_errors);
    let r = one(&["udp", "-p", &url, "-c", "2", "--timeout", "1s"]);
    assert_eq!(r.iterations, r.successes + r.errors);
    if r.errors_by_kind
        .contains_key("socks5_reply_07_command_not_supported")
    {
        eprintln!("ringsocks does not support UDP ASSOCIATE yet");
    } else {
        assert_eq!(r.errors, 0, "{:?}", r.first_errors);
    }
}

/// `RINGSOCKS_BIN`, else the workspace's own build beside this test binary (`cargo test
/// --workspace` builds it before running any test).
fn ringsocks_bin() -> Option<String> {
    if let Ok(bin) = std::env::var("RINGSOCKS_BIN") {
        return Some(bin);
    }
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir.join("ringsocks");
    bin.is_file().then(|| bin.display().to_string())
}
