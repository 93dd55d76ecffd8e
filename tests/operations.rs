//! Operational behaviour: timeouts, graceful shutdown, descriptors returning to baseline, the
//! open-proxy guard, and an HTTP client (reqwest) through the proxy.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ringsocks::proto::{ReplyCode, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn reqwest_through_socks5h() {
    let proxy = Proxy::start(&[]);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&b[..n]);
                }
                let body = format!(
                    "you asked for {}",
                    String::from_utf8_lossy(&req).lines().next().unwrap_or("")
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            });
        }
    });
    for scheme in ["socks5", "socks5h"] {
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(format!("{scheme}://{}", proxy.addr)).unwrap())
            .build()
            .unwrap();
        let body = client
            .get(format!("http://localhost:{port}/path?q=1"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "you asked for GET /path?q=1 HTTP/1.1", "{scheme}");
    }
}

#[tokio::test]
async fn connect_timeout_replies_host_unreachable_and_holds_no_fd() {
    let proxy = Proxy::start(&["--connect-timeout", "700ms"]);
    // A listener that never accepts, its queue filled: further SYNs are dropped, so a connect
    // to it hangs like one to a blackholed host.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let target = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(target)).await
        {
            fillers.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = fd_count(proxy.pid());
    let t0 = Instant::now();
    let e = socks5_connect(proxy.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap_err();
    assert_eq!(e, ReplyCode::HostUnreachable);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(proxy.wait_logged("connect timed out").await);
    let now = fds_return_to(proxy.pid(), baseline).await;
    assert!(
        now <= baseline,
        "descriptors leaked: {baseline} before, {now} after"
    );
}

#[tokio::test]
async fn descriptors_return_to_baseline_after_tunnels_close() {
    let proxy = Proxy::start(&[]);
    let echo = echo_server("127.0.0.1:0").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = fd_count(proxy.pid());
    let mut tunnels = Vec::new();
    for _ in 0..200 {
        tunnels.push(
            socks5_connect(proxy.addr, &TargetAddr::Ip(echo), None)
                .await
                .unwrap()
                .0,
        );
    }
    assert!(fd_count(proxy.pid()) >= baseline + 400);
    // Half of them vanish abruptly (reset), half close cleanly.
    for (i, s) in tunnels.into_iter().enumerate() {
        if i % 2 == 0 {
            let std = s.into_std().unwrap();
            socket2::SockRef::from(&std)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(std);
        } else {
            assert_eq!(echo_roundtrip(s, b"bye").await, b"bye");
        }
    }
    let now = fds_return_to(proxy.pid(), baseline).await;
    assert!(
        now <= baseline,
        "descriptors leaked: {baseline} before, {now} after"
    );
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let proxy = Proxy::start(&["--idle-timeout", "600ms"]);
    let echo = echo_server("127.0.0.1:0").await;
    let (mut s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), None)
        .await
        .unwrap();
    // Activity keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.write_all(b"k").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    // ...silence closes it.
    let t0 = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert!(proxy.wait_logged("idle timeout").await);
}

#[tokio::test]
async fn sigterm_drains_live_tunnels_and_refuses_new_ones() {
    let mut proxy = Proxy::start(&["--drain-timeout", "20s"]);
    let echo = echo_server("127.0.0.1:0").await;
    let (mut s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), None)
        .await
        .unwrap();
    let pid = proxy.pid() as i32;
    // Safety: signalling a child we own.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    assert!(proxy.wait_logged("SIGTERM").await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New clients are turned away...
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "listener closed"
    );
    // ...while the live tunnel keeps flowing.
    s.write_all(b"still here").await.unwrap();
    let mut b = [0u8; 10];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"still here");
    let t0 = Instant::now();
    assert_eq!(echo_roundtrip(s, b"last").await, b"last");
    let status = proxy.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exited once the tunnel closed"
    );
}

#[test]
fn open_proxy_on_public_address_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringsocks"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-open"), "{err}");
}

#[tokio::test]
async fn listens_on_ipv6_and_ipv4_at_once() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    }
    let port = closed_port().port();
    let proxy = Proxy::start_on(
        &format!("[::1]:{port}"),
        &["--listen", &format!("127.0.0.1:{port}")],
    );
    let echo = echo_server("127.0.0.1:0").await;
    for addr in [format!("[::1]:{port}"), format!("127.0.0.1:{port}")] {
        let (s, _) = socks5_connect(addr.parse().unwrap(), &TargetAddr::Ip(echo), None)
            .await
            .unwrap();
        assert_eq!(echo_roundtrip(s, addr.as_bytes()).await, addr.as_bytes());
    }
    drop(proxy);
}
