//! Panics against the real (debug) binary, through its debug-only failpoints: a panic in one
//! tunnel's task ends that tunnel only; a worker whose own loop dies is logged and restarted on
//! the same listeners.

mod common;

use std::time::Duration;

use common::*;
use ringsocks::proto::{ReplyCode, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn failpoint(name: &str) -> TargetAddr {
    TargetAddr::Domain(format!("{name}.failpoint.invalid"), 80)
}

/// Sends a SOCKS5 CONNECT to a failpoint name; returns what came back before the close (the
/// method selection, then nothing: the session died). Panics if the connection stays open.
async fn request_failpoint(proxy: std::net::SocketAddr, name: &str) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let mut out = vec![5, 1, 0];
    ringsocks::proto::socks5::encode_request(
        ringsocks::proto::Command::Connect,
        &failpoint(name),
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let mut back = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await;
    assert!(r.is_ok(), "the failed session's connection stayed open");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_tunnel_costs_only_that_tunnel() {
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start(&["--threads", "1"]);
    let (mut live, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), None)
        .await
        .unwrap();
    live.write_all(b"before ").await.unwrap();
    let baseline = fd_count(proxy.pid());

    for _ in 0..5 {
        // No reply: the task died, and with it the connection.
        let rest = request_failpoint(proxy.addr, "panic").await;
        assert!(rest.len() < 3 || rest[1] != 0, "{rest:?}");
    }
    assert!(proxy.wait_logged("failpoint: a session panics").await);
    assert!(proxy.logged("panic:"));

    // The same worker goes on: the live tunnel flows, new ones open, nothing leaked.
    live.write_all(b"after").await.unwrap();
    live.shutdown().await.unwrap();
    let mut back = Vec::new();
    live.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"before after");
    let (s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), None)
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(s, b"new").await, b"new");
    assert_fds_back(proxy.pid(), baseline).await;
    assert!(!proxy.logged("restarting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_logged_and_restarted() {
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start(&["--threads", "1"]);
    // The only worker's own loop panics.
    request_failpoint(proxy.addr, "crash-worker").await;
    assert!(
        proxy
            .wait_logged(
                "worker panicked: failpoint: worker 0 crashes; restarting it on the same listeners"
            )
            .await
    );
    // Served again on the same listener.
    let mut ok = false;
    for _ in 0..50 {
        match socks5_connect(proxy.addr, &TargetAddr::Ip(echo), None).await {
            Ok((s, _)) => {
                assert_eq!(echo_roundtrip(s, b"again").await, b"again");
                ok = true;
                break;
            }
            Err(ReplyCode::GeneralFailure) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
        }
    }
    assert!(ok, "no tunnel after the restart");
}
