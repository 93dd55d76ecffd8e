//! Operator features against the real binary: metrics after a known sequence of tunnels,
//! per-user bandwidth limits, hashed users written by `ringsocks passwd`, `--setuid`, and
//! systemd socket activation.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ringsocks::proto::{ReplyCode, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_known_sequence() {
    let echo = echo_server("127.0.0.1:0").await;
    let rules = format!(
        "[access]\n[[access.rule]]\nname = \"no-echo-port\"\naction = \"block\"\nport = [\"{}\"]\ncommand = [\"connect\"]\ndest = [\"127.0.0.2\"]\n",
        echo.port()
    );
    let cfg = temp_file(&rules);
    let proxy = Proxy::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--user",
        "alice:pw",
        "--config",
        cfg.as_str(),
    ]);
    let metrics = proxy.metrics_addr().await;
    let creds = Some(("alice", "pw"));

    // Three tunnels, 1000 bytes each way.
    for _ in 0..3 {
        let (s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), creds)
            .await
            .unwrap();
        assert_eq!(echo_roundtrip(s, &[7u8; 1000]).await, vec![7u8; 1000]);
    }
    // One blocked by the rule.
    let blocked = SocketAddr::new("127.0.0.2".parse().unwrap(), echo.port());
    assert_eq!(
        socks5_connect(proxy.addr, &TargetAddr::Ip(blocked), creds)
            .await
            .err(),
        Some(ReplyCode::NotAllowed)
    );
    // One wrong password, one garbage greeting.
    assert_eq!(
        socks5_connect(proxy.addr, &TargetAddr::Ip(echo), Some(("alice", "nope")))
            .await
            .err(),
        Some(ReplyCode::NotAllowed)
    );
    let _ = raw_exchange(proxy.addr, &[9, 1, 0]).await;

    // The relay's counters land when the tunnels end: wait for them.
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(metrics).await;
        // (The refused sessions end just after their client sees the close.)
        if value(&text, "ringsocks_tunnels_active{command=\"connect\"}") == Some(0.0)
            && value(&text, "ringsocks_bytes_total{direction=\"down\"}") == Some(3000.0)
            && sum(&text, "ringsocks_worker_sessions_active{") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("{s} missing in\n{text}"));
    assert_eq!(v("ringsocks_tunnels_total{command=\"connect\"}"), 3.0);
    assert_eq!(v("ringsocks_tunnels_total{command=\"udp\"}"), 0.0);
    assert_eq!(v("ringsocks_tunnels_active{command=\"connect\"}"), 0.0);
    assert_eq!(v("ringsocks_bytes_total{direction=\"up\"}"), 3000.0);
    assert_eq!(v("ringsocks_bytes_total{direction=\"down\"}"), 3000.0);
    assert_eq!(v("ringsocks_auth_failures_total"), 1.0);
    assert_eq!(v("ringsocks_rule_blocks_total{rule=\"no-echo-port\"}"), 1.0);
    assert_eq!(
        v("ringsocks_requests_refused_total{reply=\"not-allowed\"}"),
        1.0
    );
    assert_eq!(
        v("ringsocks_handshake_failures_total{reason=\"auth-failed\"}"),
        1.0
    );
    assert_eq!(
        // Answered with the SOCKS 6 version mismatch reply.
        v("ringsocks_handshake_failures_total{reason=\"version-mismatch\"}"),
        1.0
    );
    assert_eq!(v("ringsocks_connect_duration_seconds_count"), 3.0);
    assert_eq!(
        v("ringsocks_connect_duration_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    // Six connections, spread over the workers as the kernel chose.
    assert_eq!(sum(&text, "ringsocks_worker_connections_total{"), 6.0);
    assert_eq!(sum(&text, "ringsocks_worker_sessions_active{"), 0.0);
}

/// Sends `n` bytes up through `s` and waits for the echo; returns the time taken.
async fn push(s: TcpStream, n: usize) -> Duration {
    let started = Instant::now();
    let back = echo_roundtrip(s, &vec![1u8; n]).await;
    assert_eq!(back.len(), n);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bandwidth_limit_is_shared_by_a_users_tunnels() {
    let echo = echo_server("127.0.0.1:0").await;
    let cfg = temp_file("[user_bandwidth]\nfree = 0\n");
    let proxy = Proxy::start(&[
        "--user",
        "alice:pw",
        "--user",
        "free:pw",
        "--bandwidth-per-user",
        "200k",
        "--config",
        cfg.as_str(),
    ]);
    // Two tunnels of alice's at once, 250 kB each way each: 500 kB per direction at
    // 200 kB/s cannot take less than 2.5 s minus the 0.1 s burst.
    let target = TargetAddr::Ip(echo);
    let open = || socks5_connect(proxy.addr, &target, Some(("alice", "pw")));
    let (a, _) = open().await.unwrap();
    let (b, _) = open().await.unwrap();
    let (ta, tb) = tokio::join!(push(a, 250_000), push(b, 250_000));
    let slowest = ta.max(tb);
    assert!(
        slowest >= Duration::from_millis(2300),
        "500 kB at 200 kB/s took only {slowest:?}: the limit is not shared or not applied"
    );
    // The exempt user is not held back by the default (a lower bound only: the limit
    // would make this take at least 1.2 s).
    let (f, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), Some(("free", "pw")))
        .await
        .unwrap();
    let t = push(f, 250_000).await;
    assert!(t < Duration::from_millis(1200), "exempt user took {t:?}");
}

fn passwd_line(user: &str, password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringsocks"))
        .args(["passwd", "--stdin", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with(&format!("{user}:$argon2id$")), "{line}");
    assert!(!line.contains(password));
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_users_file_and_reload() {
    let echo = echo_server("127.0.0.1:0").await;
    let dir = std::env::temp_dir().join(format!("ringsocks-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users");
    std::fs::write(&file, passwd_line("alice", "s3cret pass")).unwrap();
    let proxy = Proxy::start(&["--users", file.to_str().unwrap()]);
    let target = TargetAddr::Ip(echo);

    // An independent client: tokio-socks.
    let ok = tokio_socks::tcp::Socks5Stream::connect_with_password(
        proxy.addr,
        echo,
        "alice",
        "s3cret pass",
    )
    .await
    .expect("hashed password accepted");
    let mut s = ok.into_inner();
    s.write_all(b"hi").await.unwrap();
    let mut two = [0u8; 2];
    s.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"hi");
    // Again (now from the worker's memory), and wrong ones.
    for _ in 0..3 {
        assert!(
            socks5_connect(proxy.addr, &target, Some(("alice", "s3cret pass")))
                .await
                .is_ok()
        );
    }
    assert_eq!(
        socks5_connect(proxy.addr, &target, Some(("alice", "s3cret")))
            .await
            .err(),
        Some(ReplyCode::NotAllowed)
    );
    assert_eq!(
        socks5_connect(proxy.addr, &target, Some(("bob", "s3cret pass")))
            .await
            .err(),
        Some(ReplyCode::NotAllowed)
    );

    // `passwd --file` changes the password; SIGHUP makes the old one stop working even though
    // the workers remembered it.
    let status = Command::new(env!("CARGO_BIN_EXE_ringsocks"))
        .args([
            "passwd",
            "--stdin",
            "--file",
            file.to_str().unwrap(),
            "alice",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            writeln!(c.stdin.take().unwrap(), "new pass")?;
            c.wait()
        })
        .unwrap();
    assert!(status.success());
    // Safety: signalling the child we started.
    unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) };
    assert!(
        proxy
            .wait_logged("SIGHUP: users, access rules, routes and TLS certificate reloaded")
            .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..2 {
        assert_eq!(
            socks5_connect(proxy.addr, &target, Some(("alice", "s3cret pass")))
                .await
                .err(),
            Some(ReplyCode::NotAllowed)
        );
    }
    assert!(
        socks5_connect(proxy.addr, &target, Some(("alice", "new pass")))
            .await
            .is_ok()
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("new pass") && !proxy.logged("new pass") && !proxy.logged("s3cret"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_drops_root_after_binding() {
    // Safety: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: --setuid needs root");
        return;
    }
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start(&["--setuid", "nobody"]);
    assert!(proxy.wait_logged("running as nobody").await);
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).unwrap();
    for field in ["Uid:", "Gid:"] {
        let ids = status.lines().find(|l| l.starts_with(field)).unwrap();
        assert!(
            ids.split_whitespace().skip(1).all(|u| u == "65534"),
            "{ids}"
        );
    }
    // Root's supplementary groups are gone too.
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(
        groups.split_whitespace().skip(1).all(|g| g == "65534"),
        "{groups}"
    );
    let (s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), None)
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(s, b"as nobody").await, b"as nobody");
}

/// Starts ringsocks as systemd would: `listener` as descriptor 3, LISTEN_PID set to the
/// child's own PID (by a shell that then execs), LISTEN_FDNAMES=`name`.
fn activated(listener: &std::net::TcpListener, name: &str) -> std::process::Child {
    activated_with(listener, name, &[])
}

/// The same with more arguments for `ringsocks serve`.
fn activated_with(
    listener: &std::net::TcpListener,
    name: &str,
    extra: &[&str],
) -> std::process::Child {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=\"$0\" exec \"$@\"",
        name,
        env!("CARGO_BIN_EXE_ringsocks"),
        "serve",
        "--threads",
        "2",
        "--drain-timeout",
        "1s",
    ])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // Safety: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(3, libc::F_GETFD);
            libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    cmd.spawn().expect("start ringsocks")
}

#[test]
fn socket_activation_keeps_the_open_proxy_rule() {
    // A passed socket on a public (wildcard) address, no users, no --allow-open: refused.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let mut child = activated(&listener, "socks");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "an open proxy on 0.0.0.0 kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
}

fn stop(mut child: std::process::Child) {
    // Safety: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn tunnel_works(addr: SocketAddr, echo: SocketAddr) {
    let mut last = None;
    for _ in 0..100 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            socks5_connect(addr, &TargetAddr::Ip(echo), None),
        )
        .await
        {
            Ok(Ok((s, _))) => {
                assert_eq!(echo_roundtrip(s, b"activated").await, b"activated");
                return;
            }
            other => last = Some(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no tunnel through the activated socket: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_and_restart_keep_the_socket() {
    let echo = echo_server("127.0.0.1:0").await;
    // The socket "systemd" owns: this test keeps it across two ringsocks instances.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(128).unwrap();
    let listener: std::net::TcpListener = sock.into();
    let addr = listener.local_addr().unwrap();

    let first = activated(&listener, "socks");
    tunnel_works(addr, echo).await;
    stop(first);

    // Stopped without shutting the socket down: a client connecting now waits in the
    // backlog and is served by the next instance.
    let waiting = TcpStream::connect(addr)
        .await
        .expect("socket still listening");
    let second = activated(&listener, "socks");
    let (s, _) = tokio::time::timeout(
        Duration::from_secs(10),
        socks5_request_on(waiting, b"", Cmd::Connect, &TargetAddr::Ip(echo), None),
    )
    .await
    .expect("the queued client was served")
    .unwrap();
    assert_eq!(echo_roundtrip(s, b"queued").await, b"queued");
    stop(second);

    // A socket named "proxy" expects a PROXY protocol header.
    let third = activated(&listener, "proxy");
    let header = ringsocks::proto::proxy::encode_v1("192.0.2.9:9".parse().unwrap(), addr);
    let s = TcpStream::connect(addr).await.unwrap();
    let (s, _) = tokio::time::timeout(
        Duration::from_secs(10),
        socks5_request_on(s, &header, Cmd::Connect, &TargetAddr::Ip(echo), None),
    )
    .await
    .expect("served")
    .unwrap();
    let result = Some(echo_roundtrip(s, b"pp").await);
    assert_eq!(result.as_deref(), Some(&b"pp"[..]));
    stop(third);
}

use ringsocks::proto::Command as Cmd;

/// Port maps are bound by ringsocks itself alongside the sockets systemd passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_keeps_the_port_maps() {
    let echo = echo_server("127.0.0.1:0").await;
    let udp_echo = common::udp_echo("127.0.0.1:0").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_map = common::closed_port();
    let udp_map = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (t, u) = (
        format!("tcp:{tcp_map}={echo}"),
        format!("udp:{udp_map}={udp_echo}"),
    );
    let child = activated_with(&listener, "socks", &["--map", &t, "--map", &u]);
    tunnel_works(listener.local_addr().unwrap(), echo).await;
    let s = TcpStream::connect(tcp_map).await.expect("TCP map bound");
    assert_eq!(echo_roundtrip(s, b"mapped").await, b"mapped");
    let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(udp_map).await.unwrap();
    let mut b = [0u8; 16];
    let mut got = None;
    for _ in 0..20 {
        c.send(b"datagram").await.unwrap();
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(250), c.recv(&mut b)).await {
            got = Some(r.unwrap());
            break;
        }
    }
    assert_eq!(&b[..got.expect("UDP map answers")], b"datagram");
    stop(child);
}
