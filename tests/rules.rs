//! Access rules against the real binary: each rule kind, the egress preset, DNS rebinding,
//! SOCKS4, BIND and per-datagram UDP checks; blocked requests get X'02' (SOCKS4: 91) and an
//! access-log line naming the rule.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ringsocks::proto::udp::{encode_header, parse_header};
use ringsocks::proto::{socks4, Command as Cmd, ReplyCode, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Starts the proxy with `toml` as its config file.
fn proxy_with(toml: &str, args: &[&str]) -> (Proxy, TempPath) {
    let path = temp_file(toml);
    let mut all = vec!["--config", path.as_str()];
    all.extend_from_slice(args);
    (Proxy::start(&all), path)
}

async fn connect_code(proxy: &Proxy, target: TargetAddr, creds: Option<(&str, &str)>) -> ReplyCode {
    match socks5_connect(proxy.addr, &target, creds).await {
        Ok(_) => ReplyCode::Succeeded,
        Err(c) => c,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_preset_blocks_loopback_and_rebinding_names() {
    let echo = echo_server("127.0.0.1:0").await;
    let (proxy, _cfg) = proxy_with("[access]\npreset = \"egress\"\n", &[]);
    assert_eq!(
        connect_code(&proxy, TargetAddr::Ip(echo), None).await,
        ReplyCode::NotAllowed
    );
    assert!(
        proxy
            .wait_logged("blocked by access rule \"egress preset\"")
            .await
    );
    // A name is not blocked as a name, but every address it resolves to is checked.
    let name = TargetAddr::Domain("localhost".into(), echo.port());
    assert_eq!(
        connect_code(&proxy, name, None).await,
        ReplyCode::NotAllowed
    );
    assert!(proxy.wait_logged("localhost resolves to").await);
    // Metadata and private ranges, IPv4 and IPv6.
    for ip in [
        "169.254.169.254:80",
        "10.0.0.1:80",
        "[::1]:80",
        "[fe80::1]:80",
    ] {
        let t = TargetAddr::Ip(ip.parse().unwrap());
        assert_eq!(
            connect_code(&proxy, t, None).await,
            ReplyCode::NotAllowed,
            "{ip}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_rules_before_the_preset_and_port_ranges() {
    let echo = echo_server("127.0.0.1:0").await;
    let other = echo_server("127.0.0.1:0").await;
    let cfg = format!(
        "[access]\npreset = \"egress\"\n[[access.rule]]\nname = \"local echo\"\naction = \"pass\"\ndest = [\"127.0.0.1/32\"]\nport = [\"{p}-{p}\"]\nlog = true\n",
        p = echo.port()
    );
    let (proxy, _cfg) = proxy_with(&cfg, &[]);
    let (s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), None)
        .await
        .expect("passed by the rule");
    assert_eq!(echo_roundtrip(s, b"allowed").await, b"allowed");
    assert!(
        proxy
            .wait_logged("passed by access rule \"local echo\"")
            .await
    );
    assert_eq!(
        connect_code(&proxy, TargetAddr::Ip(other), None).await,
        ReplyCode::NotAllowed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suffix_host_user_and_command_rules() {
    let echo = echo_server("127.0.0.1:0").await;
    let cfg = r#"
[access]
[[access.rule]]
name = "no example"
action = "block"
dest = [".blocked.test", "exact.test"]
[[access.rule]]
name = "bob stays home"
action = "block"
user = ["bob"]
[[access.rule]]
name = "no bind"
action = "block"
command = ["bind"]
"#;
    let (proxy, _cfg) = proxy_with(
        cfg,
        &["--user", "alice:a", "--user", "bob:b", "--allow-socks4"],
    );
    let code = |t: TargetAddr, c: Option<(&'static str, &'static str)>| {
        let proxy = &proxy;
        async move { connect_code(proxy, t, c).await }
    };
    // Names are refused before any lookup (these do not resolve anyway: the reply proves
    // the rule, not the resolver, decided).
    let dom = |h: &str| TargetAddr::Domain(h.into(), 80);
    assert_eq!(
        code(dom("a.blocked.test"), Some(("alice", "a"))).await,
        ReplyCode::NotAllowed
    );
    assert_eq!(
        code(dom("exact.test"), Some(("alice", "a"))).await,
        ReplyCode::NotAllowed
    );
    assert_eq!(
        code(dom("sub.exact.test"), Some(("alice", "a"))).await,
        ReplyCode::HostUnreachable
    );
    assert_eq!(
        code(TargetAddr::Ip(echo), Some(("alice", "a"))).await,
        ReplyCode::Succeeded
    );
    assert_eq!(
        code(TargetAddr::Ip(echo), Some(("bob", "b"))).await,
        ReplyCode::NotAllowed
    );
    assert!(proxy.wait_logged("\"bob stays home\"").await);
    let bind = socks5_request(
        proxy.addr,
        Cmd::Bind,
        &TargetAddr::Ip("0.0.0.0:0".parse().unwrap()),
        Some(("alice", "a")),
    )
    .await;
    assert_eq!(bind.err(), Some(ReplyCode::NotAllowed));
    // SOCKS4 gets 91 from the same rule.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = Vec::new();
    socks4::encode_request(
        Cmd::Bind,
        &TargetAddr::Ip("0.0.0.0:0".parse().unwrap()),
        b"x",
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let mut r = [0u8; 8];
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(r[1], 91);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_are_checked_one_by_one() {
    let open = udp_echo("127.0.0.1:0").await;
    let closed = udp_echo("127.0.0.1:0").await;
    let cfg = format!(
        "[access]\n[[access.rule]]\nname = \"no udp there\"\naction = \"block\"\ncommand = [\"udp\"]\ndest = [\"127.0.0.1\"]\nport = [\"{}\"]\n",
        closed.port()
    );
    let (proxy, _cfg) = proxy_with(&cfg, &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (control, bound) = socks5_request(
        proxy.addr,
        Cmd::UdpAssociate,
        &TargetAddr::Ip("0.0.0.0:0".parse().unwrap()),
        None,
    )
    .await
    .expect("the association itself is allowed");
    let TargetAddr::Ip(relay) = bound else {
        panic!()
    };
    let send = |to: SocketAddr, p: &'static [u8]| {
        let sock = &sock;
        async move {
            let mut d = Vec::new();
            encode_header(&TargetAddr::Ip(to), &mut d);
            d.extend_from_slice(p);
            sock.send_to(&d, relay).await.unwrap();
        }
    };
    send(closed, b"blocked").await;
    send(open, b"through").await;
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let (h, off) = parse_header(&buf[..n]).unwrap().unwrap();
    assert_eq!(
        (h.addr, &buf[off..n]),
        (TargetAddr::Ip(open), &b"through"[..])
    );
    let r = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await;
    assert!(r.is_err(), "the blocked destination answered");
    drop(control);
    assert!(proxy.wait_logged("dropped_blocked=1").await);
}

#[test]
fn bad_rules_stop_the_start_with_a_clear_error() {
    let path =
        temp_file("[access]\n[[access.rule]]\naction = \"block\"\ndest = [\"10.0.0.0/40\"]\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringsocks"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            path.as_str(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rule 1") && err.contains("prefix length"),
        "{err}"
    );
}

#[test]
fn check_config_reports_errors_with_their_line() {
    let bin = env!("CARGO_BIN_EXE_ringsocks");
    let good = temp_file("[access]\npreset = \"egress\"\n");
    let out = std::process::Command::new(bin)
        .args(["check-config", good.as_str()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 access rule(s)"));
    let bad = temp_file("threads = 2\n\nbacklog = \"deep\"\n");
    let out = std::process::Command::new(bin)
        .args(["check-config", bad.as_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    // A rule that parses as TOML but does not compile: named, with its line.
    let bad_rule = temp_file(
        "[access]\n[[access.rule]]\naction = \"pass\"\n\n[[access.rule]]\naction = \"block\"\nport = [\"9-1\"]\n",
    );
    let out = std::process::Command::new(bin)
        .args(["check-config", bad_rule.as_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"rule 2\" (line 5)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_users_and_rules_live_tunnels_keep_flowing() {
    let echo = echo_server("127.0.0.1:0").await;
    let other = echo_server("127.0.0.1:0").await;
    let (proxy, cfg) = proxy_with("[users]\nalice = \"a\"\n", &[]);
    let (mut live, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), Some(("alice", "a")))
        .await
        .unwrap();
    live.write_all(b"before ").await.unwrap();
    let hup = |pid: u32| {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    // New users (alice gone, bob in) and a rule blocking `echo` for new tunnels.
    std::fs::write(
        cfg.as_str(),
        format!(
            "[users]\nbob = \"b\"\n[access]\n[[access.rule]]\nname = \"after reload\"\naction = \"block\"\ndest = [\"127.0.0.1\"]\nport = [\"{}\"]\n",
            echo.port()
        ),
    )
    .unwrap();
    hup(proxy.pid());
    assert!(
        proxy
            .wait_logged("SIGHUP: users, access rules, routes and TLS certificate reloaded")
            .await
    );
    // The live tunnel keeps flowing under the rules it started with.
    live.write_all(b"after").await.unwrap();
    assert_eq!(echo_roundtrip(live, b"").await, b"before after");
    assert_eq!(
        connect_code(&proxy, TargetAddr::Ip(other), Some(("alice", "a"))).await,
        ReplyCode::NotAllowed,
        "alice was removed"
    );
    assert_eq!(
        connect_code(&proxy, TargetAddr::Ip(other), Some(("bob", "b"))).await,
        ReplyCode::Succeeded
    );
    assert_eq!(
        connect_code(&proxy, TargetAddr::Ip(echo), Some(("bob", "b"))).await,
        ReplyCode::NotAllowed,
        "the new rule applies to new tunnels"
    );
    // A bad file is rejected and the current settings stay.
    std::fs::write(cfg.as_str(), "[access]\npreset = \"nonsense\"\n").unwrap();
    hup(proxy.pid());
    assert!(
        proxy
            .wait_logged("configuration rejected, keeping the current one")
            .await
    );
    assert_eq!(
        connect_code(&proxy, TargetAddr::Ip(other), Some(("bob", "b"))).await,
        ReplyCode::Succeeded
    );
}
