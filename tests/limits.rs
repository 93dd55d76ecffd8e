//! Concurrent tunnel limits against the real binary: a refused tunnel gets X'01' (SOCKS4: 91)
//! and a log line, and the count comes back when a tunnel closes.

mod common;

use std::time::Duration;

use common::*;
use ringsocks::proto::{ReplyCode, TargetAddr};

async fn open(
    proxy: &Proxy,
    echo: std::net::SocketAddr,
    creds: Option<(&str, &str)>,
) -> Result<tokio::net::TcpStream, ReplyCode> {
    socks5_connect(proxy.addr, &TargetAddr::Ip(echo), creds)
        .await
        .map(|(s, _)| s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limit_refuses_then_recovers() {
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start(&["--max-tunnels-per-client", "2"]);
    let a = open(&proxy, echo, None).await.unwrap();
    let b = open(&proxy, echo, None).await.unwrap();
    assert_eq!(
        open(&proxy, echo, None).await.err(),
        Some(ReplyCode::GeneralFailure)
    );
    assert!(
        proxy
            .wait_logged("tunnel limit per client reached (2)")
            .await
    );
    // SOCKS4 gets 91 from the same limit.
    assert_eq!(
        socks4_connect(proxy.addr, &TargetAddr::Ip(echo), "x")
            .await
            .err(),
        Some(91)
    );
    assert_eq!(echo_roundtrip(a, b"first").await, b"first");
    // The closed tunnel's count comes back (the proxy sees the close asynchronously).
    let mut again = None;
    for _ in 0..50 {
        if let Ok(s) = open(&proxy, echo, None).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        echo_roundtrip(again.expect("a slot freed up"), b"again").await,
        b"again"
    );
    assert_eq!(echo_roundtrip(b, b"second").await, b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_total_limits() {
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start(&[
        "--user",
        "alice:a",
        "--user",
        "bob:b",
        "--max-tunnels-per-user",
        "1",
        "--max-tunnels",
        "2",
    ]);
    let _a = open(&proxy, echo, Some(("alice", "a"))).await.unwrap();
    assert_eq!(
        open(&proxy, echo, Some(("alice", "a"))).await.err(),
        Some(ReplyCode::GeneralFailure)
    );
    let _b = open(&proxy, echo, Some(("bob", "b"))).await.unwrap();
    let proxy2_total = open(&proxy, echo, Some(("bob", "b"))).await.err();
    assert_eq!(proxy2_total, Some(ReplyCode::GeneralFailure));
    assert!(proxy.wait_logged("tunnel limit per user reached (1)").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_an_address_out_for_the_window() {
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start(&[
        "--user",
        "alice:right",
        "--max-auth-failures",
        "3",
        "--auth-failure-window",
        "1s",
    ]);
    for _ in 0..3 {
        assert_eq!(
            open(&proxy, echo, Some(("alice", "wrong"))).await.err(),
            Some(ReplyCode::NotAllowed)
        );
    }
    // Locked out: even the right password is refused, without being checked.
    assert_eq!(
        open(&proxy, echo, Some(("alice", "right"))).await.err(),
        Some(ReplyCode::NotAllowed)
    );
    assert!(proxy.wait_logged("3 failed logins within 1s").await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = open(&proxy, echo, Some(("alice", "right")))
        .await
        .expect("window over");
    assert_eq!(echo_roundtrip(s, b"back in").await, b"back in");
}
