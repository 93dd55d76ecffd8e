//! Runs every scenario for about a second against the in-process targets, directly and through a
//! minimal SOCKS5 server written here, and checks that the counts add up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use ringsocks_load::{run, Args, Report, RunResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A minimal SOCKS server (SOCKS5 without auth: CONNECT and UDP ASSOCIATE; SOCKS4/4a CONNECT;
/// SOCKS6 CONNECT with initial data, without auth or with user "u", password "p") on its own
/// thread.
fn mini_socks5() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::from_std(l).unwrap();
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = session(s).await;
                });
            }
        });
    });
    addr
}

async fn read_addr(s: &mut TcpStream, atyp: u8) -> std::io::Result<SocketAddr> {
    let mut b = [0u8; 6];
    assert_eq!(atyp, 1, "mini server speaks IPv4 only");
    s.read_exact(&mut b).await?;
    Ok(SocketAddr::from((
        [b[0], b[1], b[2], b[3]],
        u16::from_be_bytes([b[4], b[5]]),
    )))
}

fn reply(code: u8, a: SocketAddr) -> Vec<u8> {
    let mut r = vec![5, code, 0, 1];
    match a {
        SocketAddr::V4(v4) => r.extend_from_slice(&v4.ip().octets()),
        SocketAddr::V6(_) => r.extend_from_slice(&[0; 4]),
    }
    r.extend_from_slice(&a.port().to_be_bytes());
    r
}

async fn nul_terminated(c: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    loop {
        let byte = c.read_u8().await?;
        if byte == 0 {
            return Ok(v);
        }
        v.push(byte);
    }
}

/// SOCKS4/4a CONNECT: VN CD DSTPORT DSTIP USERID NUL [HOST NUL].
async fn socks4(mut c: TcpStream, cmd: u8) -> std::io::Result<()> {
    let mut b = [0u8; 6];
    c.read_exact(&mut b).await?;
    nul_terminated(&mut c).await?;
    let port = u16::from_be_bytes([b[0], b[1]]);
    let dst = if b[2..5] == [0, 0, 0] && b[5] != 0 {
        let host = String::from_utf8(nul_terminated(&mut c).await?).unwrap();
        SocketAddr::new(host.parse().unwrap(), port)
    } else {
        SocketAddr::from(([b[2], b[3], b[4], b[5]], port))
    };
    match TcpStream::connect(dst).await {
        Ok(mut up) if cmd == 1 => {
            c.write_all(&[0, 0x5a, 0, 0, 0, 0, 0, 0]).await?;
            tokio::io::copy_bidirectional(&mut c, &mut up).await?;
        }
        _ => c.write_all(&[0, 0x5b, 0, 0, 0, 0, 0, 0]).await?,
    }
    Ok(())
}

/// Initial data bytes the mini server received in SOCKS6 requests.
static SOCKS6_INITIAL: AtomicU64 = AtomicU64::new(0);

/// SOCKS6 (draft-11) CONNECT, IPv4 only: request, initial data, Authentication Reply,
/// Operation Reply, then relay.
async fn socks6(mut c: TcpStream, cmd: u8) -> std::io::Result<()> {
    let mut h = [0u8; 6];
    c.read_exact(&mut h).await?;
    let olen = u16::from_be_bytes([h[0], h[1]]) as usize;
    let dst = read_addr6(&mut c, h[5], u16::from_be_bytes([h[2], h[3]])).await?;
    let mut opts = vec![0u8; olen];
    c.read_exact(&mut opts).await?;
    let (mut idl, mut login, mut rest) = (0usize, None, &opts[..]);
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        assert!(
            len >= 4 && len % 4 == 0 && len <= rest.len(),
            "bad option length"
        );
        let d = &rest[4..len];
        match kind {
            2 => idl = u16::from_be_bytes([d[0], d[1]]) as usize,
            4 if d[0] == 2 => {
                let u = &d[3..3 + d[2] as usize];
                let p = &d[4 + u.len()..4 + u.len() + d[3 + u.len()] as usize];
                login = Some(u == b"u" && p == b"p");
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    let mut early = vec![0u8; idl];
    c.read_exact(&mut early).await?;
    SOCKS6_INITIAL.fetch_add(idl as u64, Ordering::Relaxed);
    let auth_reply: Vec<u8> = match login {
        None => vec![6, 0, 0, 0],
        Some(ok) => vec![6, !ok as u8, 0, 8, 0, 4, 0, 8, 2, 1, !ok as u8, 0],
    };
    c.write_all(&auth_reply).await?;
    if login == Some(false) {
        return Ok(());
    }
    let op = |code: u8, a: SocketAddr| {
        let mut r = vec![6, code, 0, 0];
        r.extend_from_slice(&a.port().to_be_bytes());
        r.extend_from_slice(&[0, 1]);
        match a {
            SocketAddr::V4(v4) => r.extend_from_slice(&v4.ip().octets()),
            SocketAddr::V6(_) => r.extend_from_slice(&[0; 4]),
        }
        r
    };
    match TcpStream::connect(dst).await {
        Ok(mut up) if cmd == 1 => {
            up.write_all(&early).await?;
            c.write_all(&op(0, up.local_addr()?)).await?;
            tokio::io::copy_bidirectional(&mut c, &mut up).await?;
        }
        Ok(_) => c.write_all(&op(7, dst)).await?,
        Err(_) => c.write_all(&op(5, dst)).await?,
    }
    Ok(())
}

async fn read_addr6(s: &mut TcpStream, atyp: u8, port: u16) -> std::io::Result<SocketAddr> {
    assert_eq!(atyp, 1, "mini server speaks IPv4 only");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await?;
    Ok(SocketAddr::from((b, port)))
}

async fn session(mut c: TcpStream) -> std::io::Result<()> {
    let mut h = [0u8; 2];
    c.read_exact(&mut h).await?;
    if h[0] == 4 {
        return socks4(c, h[1]).await;
    }
    if h[0] == 6 {
        return socks6(c, h[1]).await;
    }
    let mut m = vec![0u8; h[1] as usize];
    c.read_exact(&mut m).await?;
    c.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    c.read_exact(&mut req).await?;
    let dst = read_addr(&mut c, req[3]).await?;
    match req[1] {
        1 => match TcpStream::connect(dst).await {
            Ok(mut up) => {
                c.write_all(&reply(0, up.local_addr()?)).await?;
                tokio::io::copy_bidirectional(&mut c, &mut up).await?;
            }
            Err(_) => c.write_all(&reply(5, dst)).await?,
        },
        3 => {
            let u = UdpSocket::bind("127.0.0.1:0").await?;
            c.write_all(&reply(0, u.local_addr()?)).await?;
            let mut buf = vec![0u8; 65536];
            let mut client = None;
            let mut ctl = [0u8; 1];
            loop {
                tokio::select! {
                    r = u.recv_from(&mut buf) => {
                        let (n, from) = r?;
                        if client.is_none() || client == Some(from) {
                            client = Some(from);
                            let to = SocketAddr::from(([buf[4], buf[5], buf[6], buf[7]], u16::from_be_bytes([buf[8], buf[9]])));
                            u.send_to(&buf[10..n], to).await?;
                        } else if let Some(cl) = client {
                            let mut out = vec![0, 0, 0];
                            out.extend_from_slice(&reply(0, from)[3..]);
                            out.extend_from_slice(&buf[..n]);
                            u.send_to(&out, cl).await?;
                        }
                    }
                    r = c.read(&mut ctl) => if r? == 0 { return Ok(()) },
                }
            }
        }
        _ => c.write_all(&reply(7, dst)).await?,
    }
    Ok(())
}

fn go(args: &[&str]) -> Report {
    let mut v = vec!["ringsocks-load"];
    v.extend_from_slice(args);
    v.extend_from_slice(&["--threads", "1", "--no-pin", "--pause", "0", "-q"]);
    let a = Args::try_parse_from(v).expect("valid arguments");
    run(a).expect("run succeeds")
}

fn one(args: &[&str]) -> RunResult {
    let mut r = go(args);
    assert_eq!(r.runs.len(), 1);
    r.runs.remove(0)
}

fn socks_url() -> String {
    format!("socks5://{}", mini_socks5())
}

fn check_counts(r: &RunResult) {
    assert_eq!(r.iterations, r.successes + r.errors, "{r:?}");
    assert_eq!(r.errors, r.errors_by_kind.values().sum::<u64>());
    assert!(r.successes > 0, "nothing succeeded: {:?}", r.first_errors);
    assert_eq!(r.errors, 0, "errors: {:?}", r.first_errors);
}

#[test]
fn cps_and_rps_count_up_direct_and_via_socks5() {
    let url = socks_url();
    for proxy in ["direct", url.as_str()] {
        for scenario in ["cps", "rps"] {
            let r = one(&[scenario, "-p", proxy, "-c", "4", "-d", "1", "-w", "200ms"]);
            check_counts(&r);
            assert_eq!(r.bytes_sent, r.successes * 64);
            assert_eq!(r.bytes_sent, r.bytes_received, "bytes sent = bytes echoed");
            assert_eq!(r.latency_us.iteration.count, r.successes);
            if scenario == "cps" {
                assert_eq!(r.latency_us.handshake.count, r.successes);
            }
        }
    }
    // The client closing first works too.
    let r = one(&[
        "cps", "-p", &url, "-c", "2", "-d", "300ms", "-w", "0", "--close", "client",
    ]);
    check_counts(&r);
    // SOCKS4 and SOCKS4a clients.
    let addr = url.trim_start_matches("socks5://");
    for scheme in ["socks4", "socks4a"] {
        let r = one(&[
            "cps",
            "-p",
            &format!("{scheme}://{addr}"),
            "-c",
            "2",
            "-d",
            "300ms",
            "-w",
            "0",
        ]);
        check_counts(&r);
    }
    // Different request and response sizes.
    let r = one(&[
        "cps",
        "-p",
        &url,
        "-c",
        "2",
        "-d",
        "500ms",
        "-w",
        "0",
        "--request-size",
        "100",
        "--response-size",
        "3000",
    ]);
    check_counts(&r);
    assert_eq!(r.bytes_received, r.successes * 3000);
    assert_eq!(r.bytes_sent, r.successes * 100);
}

#[test]
fn socks6_with_initial_data_in_every_scenario() {
    let addr = mini_socks5();
    let me = std::process::id().to_string();
    for url in [format!("socks6://{addr}"), format!("socks6://u:p@{addr}")] {
        let before = SOCKS6_INITIAL.load(Ordering::Relaxed);
        let r = one(&["cps", "-p", &url, "-c", "2", "-d", "500ms", "-w", "0"]);
        check_counts(&r);
        assert_eq!(r.bytes_sent, r.successes * 64);
        assert_eq!(r.bytes_sent, r.bytes_received);
        assert_eq!(r.latency_us.ttfb.count, r.successes);
        assert!(r.latency_us.ttfb.p50 <= r.latency_us.iteration.p50);
        // Each request went out as initial data (64 bytes per tunnel, warmup-free run).
        assert!(SOCKS6_INITIAL.load(Ordering::Relaxed) - before >= r.successes * 64);
        let r = one(&["rps", "-p", &url, "-c", "2", "-d", "500ms", "-w", "0"]);
        check_counts(&r);
        assert_eq!(r.latency_us.ttfb.count, 0, "ttfb is a cps figure");
        let r = one(&[
            "throughput",
            "-p",
            &url,
            "-c",
            "2",
            "-d",
            "500ms",
            "-w",
            "0",
        ]);
        check_counts(&r);
        assert!(r.throughput.as_ref().unwrap().byte_exact);
        let r = one(&[
            "hold",
            "-p",
            &url,
            "-c",
            "8",
            "-r",
            "100",
            "-d",
            "500ms",
            "--keepalive",
            "200ms",
            "--proxy-pid",
            &me,
        ]);
        check_counts(&r);
        assert_eq!(r.hold.as_ref().unwrap().held, 8);
    }
    // A wrong password is counted as an auth error.
    let r = go(&[
        "cps",
        "-p",
        &format!("socks6://u:x@{addr}"),
        "-c",
        "1",
        "-d",
        "300ms",
        "-w",
        "0",
        "--max-error-rate",
        "1",
    ]);
    assert!(
        r.runs[0].errors_by_kind.contains_key("auth"),
        "{:?}",
        r.runs[0].errors_by_kind
    );
    // A proxy that answers SOCKS6 with the Version Mismatch Reply and closes.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = std::io::Write::write_all(&mut s, &[6]);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    let r = go(&[
        "cps",
        "-p",
        &format!("socks6://{refusing}"),
        "-c",
        "1",
        "-d",
        "300ms",
        "-w",
        "0",
        "--max-error-rate",
        "1",
    ]);
    let kinds = &r.runs[0].errors_by_kind;
    assert!(kinds.contains_key("socks6_refused"), "{kinds:?}");
    assert_eq!(r.runs[0].successes, 0);
}

#[test]
fn open_loop_rate_is_kept() {
    let r = one(&["cps", "-c", "8", "-r", "400", "-d", "1", "-w", "250ms"]);
    check_counts(&r);
    assert!(
        (320..=440).contains(&r.successes),
        "{} at 400/s for 1 s",
        r.successes
    );
}

#[test]
fn throughput_is_byte_exact() {
    let url = socks_url();
    for (proxy, dir) in [
        ("direct", "both"),
        (url.as_str(), "both"),
        (url.as_str(), "up"),
        (url.as_str(), "down"),
    ] {
        let r = one(&[
            "throughput",
            "-p",
            proxy,
            "-c",
            "2",
            "-d",
            "1",
            "-w",
            "200ms",
            "--direction",
            dir,
        ]);
        check_counts(&r);
        let t = r.throughput.as_ref().unwrap();
        assert!(t.byte_exact, "{t:?}");
        assert_eq!(t.verified, 2);
        assert_eq!(t.client_sent, t.target_received);
        assert_eq!(t.target_sent, t.client_received);
        assert!(t.gbps_total > 0.0);
        match dir {
            "up" => assert_eq!(t.client_received, 0),
            "down" => assert_eq!(t.client_sent, 0),
            _ => assert!(t.client_sent > 0 && t.client_received > 0),
        }
    }
}

#[test]
fn hold_and_udp() {
    let url = socks_url();
    let me = std::process::id().to_string();
    for proxy in ["direct", url.as_str()] {
        let r = one(&[
            "hold",
            "-p",
            proxy,
            "-c",
            "60",
            "-r",
            "600",
            "-d",
            "1",
            "--keepalive",
            "300ms",
            "--proxy-pid",
            &me,
        ]);
        check_counts(&r);
        let h = r.hold.as_ref().unwrap();
        assert_eq!((h.established, h.held), (60, 60));
        // This process holds both ends (and the mini proxy two more): > 1 fd per tunnel.
        assert!(h.fds_per_tunnel.unwrap() >= 1.5, "{h:?}");
        assert!(r.latency_us.iteration.count >= 60);

        let r = one(&[
            "udp",
            "-p",
            proxy,
            "-c",
            "2",
            "-d",
            "1",
            "-w",
            "200ms",
            "--timeout",
            "1s",
        ]);
        check_counts(&r);
        let u = r.udp.as_ref().unwrap();
        assert_eq!(u.sent, u.received + u.lost);
        assert_eq!(r.bytes_sent, r.bytes_received);
    }
}

#[test]
fn errors_are_counted_by_kind_and_fail_the_threshold() {
    // Nothing listens on the target port: direct gets connect_refused, SOCKS5 reply 05.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let url = socks_url();
    let r = go(&[
        "cps", "-p", "direct", "--target", &dead, "-c", "1", "-d", "300ms", "-w", "0",
    ]);
    assert_eq!(r.failing(0.01).len(), 1);
    let run = &r.runs[0];
    assert_eq!(run.iterations, run.successes + run.errors);
    assert!(
        run.errors_by_kind.contains_key("connect_refused"),
        "{:?}",
        run.errors_by_kind
    );
    let r = one(&[
        "cps", "-p", &url, "--target", &dead, "-c", "1", "-d", "300ms", "-w", "0",
    ]);
    assert!(r.errors > 0 && r.successes == 0);
    assert!(
        r.errors_by_kind
            .contains_key("socks5_reply_05_connection_refused"),
        "{:?}",
        r.errors_by_kind
    );
    // No proxy listening at all.
    let r = one(&[
        "rps",
        "-p",
        "socks5://127.0.0.1:1",
        "-c",
        "1",
        "-d",
        "300ms",
        "-w",
        "0",
    ]);
    assert!(r.errors_by_kind.contains_key("connect_refused"));
}

#[test]
fn compare_writes_tables_hgrm_and_svg() {
    let url = socks_url();
    let dir = std::env::temp_dir().join(format!("ringsocks-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hgrm = dir.join("lat.hgrm");
    let svg = dir.join("plot.svg");
    let compare = format!("direct,mini={url}");
    let args = [
        "ringsocks-load",
        "cps",
        "--compare",
        &compare,
        "--rounds",
        "2",
        "-c",
        "2",
        "-d",
        "300ms",
        "-w",
        "0",
        "--threads",
        "1",
        "--pause",
        "0",
        "-q",
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ];
    let a = Args::try_parse_from(args).unwrap();
    let report = run(a.clone()).unwrap();
    assert_eq!(report.runs.len(), 4);
    let names: Vec<&str> = report.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["direct", "mini", "direct", "mini"],
        "interleaved rounds"
    );
    let c = report.compare.as_ref().unwrap();
    assert_eq!(c.rows.len(), 2);
    assert_eq!(c.rows[0].ratio, Some(1.0));
    let mut out = Vec::new();
    ringsocks_load::emit(&report, &a, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("== compare Cps"), "{text}");
    let h = std::fs::read_to_string(dir.join("lat.mini.hgrm")).unwrap();
    assert!(h.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(dir.join("lat.direct.handshake.hgrm").exists());
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.contains("polyline") && s.contains(">mini<"));
    // JSON: one object per run plus the summary.
    let mut j = Vec::new();
    let mut aj = a.clone();
    aj.json = true;
    ringsocks_load::emit(&report, &aj, &mut j).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(j)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["type"], "run");
    assert_eq!(lines[4]["type"], "compare");
    let _ = std::fs::remove_dir_all(&dir);
}
