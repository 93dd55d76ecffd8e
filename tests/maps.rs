//! Static port maps (`--map tcp:LISTEN=DEST`): every connection to the map's listener is
//! relayed to its destination, byte-exact, under access rules and routes.

mod common;

use std::time::Duration;

use common::{closed_port, echo_server, recv_all, send_pattern, temp_file, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `n` bytes of a pattern through `s` to an echo server while reading the echo, then
/// half-closes; the echo must come back whole and in order, then the end.
async fn echo_exact(s: TcpStream, n: u64) {
    let (mut r, mut w) = s.into_split();
    let send = async move {
        let h = send_pattern(&mut w, n, 0x7E).await;
        w.shutdown().await.unwrap();
        h
    };
    let (sent, (got, received)) = tokio::join!(send, recv_all(&mut r));
    assert_eq!(got, n);
    assert_eq!(sent, received, "byte-exact");
}

async fn map_carries_bytes(runtime: &str) {
    let echo = echo_server("127.0.0.1:0").await;
    let listen = closed_port();
    let spec = format!("tcp:{listen}={echo}");
    let proxy = Proxy::start(&[
        "--runtime",
        runtime,
        "--map",
        &spec,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(proxy.wait_logged(&format!("listening on {listen}")).await);
    for _ in 0..3 {
        let s = TcpStream::connect(listen).await.unwrap();
        echo_exact(s, 8 << 20).await;
    }
    assert!(proxy.wait_logged(&format!("dst={echo}")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_carries_bytes_exactly_io_uring() {
    map_carries_bytes("uring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_carries_bytes_exactly_epoll() {
    map_carries_bytes("epoll").await;
}

/// The destination may speak first (SSH, SMTP): the map's listener does not wait for the
/// client's first bytes. A name destination is resolved by the proxy.
#[tokio::test]
async fn the_destination_may_speak_first() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"220 banner\r\n").await;
        }
    });
    let listen = closed_port();
    let spec = format!("tcp:{listen}=localhost:{port}");
    let _proxy = Proxy::start(&["--map", &spec, "--listen", "127.0.0.1:0"]);
    let mut s = TcpStream::connect(listen).await.unwrap();
    let mut b = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
        .await
        .expect("the banner arrives without the client sending anything")
        .unwrap();
    assert_eq!(&b, b"220 banner\r\n");
}

/// Access rules apply to a map's clients (a refusal is a reset), and a route sends the map's
/// connections through a parent, as `ssh -L` through a chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_routes_apply_to_maps() {
    let echo = echo_server("127.0.0.1:0").await;
    // The parent connects out from 127.0.0.2: the target sees which way a connection came.
    let parent = Proxy::start(&["--egress-ip", "127.0.0.2"]);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let (via_parent, blocked) = (closed_port(), closed_port());
    let config = temp_file(&format!(
        "map = [\"tcp:{via_parent}={target}\", \"tcp:{blocked}={echo}\"]\n\
         [access]\n[[access.rule]]\nname = \"no echo\"\naction = \"block\"\nport = [\"{}\"]\n\
         [[route]]\ndest = [\"127.0.0.1\"]\nport = [\"{}\"]\nvia = \"socks5://{}\"\n",
        echo.port(),
        target.port(),
        parent.addr
    ));
    let edge = Proxy::start(&["--config", config.as_str(), "--listen", "127.0.0.1:0"]);

    let mut c = TcpStream::connect(via_parent).await.unwrap();
    let (mut t, from) = l.accept().await.unwrap();
    assert_eq!(from.ip().to_string(), "127.0.0.2", "through the parent");
    c.write_all(b"through the chain").await.unwrap();
    let mut b = [0u8; 17];
    t.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"through the chain");

    // Reset at once: the connect itself may already see it.
    if let Ok(mut c) = TcpStream::connect(blocked).await {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
            .await
            .expect("closed promptly");
        assert!(r.is_err() || r.unwrap() == 0);
    }
    assert!(edge.wait_logged("port map: blocked by access rule").await);
}

#[test]
fn map_specs_are_checked() {
    let bad = [
        "tcp:127.0.0.1:8080",
        "tcp:127.0.0.1=example.com:80",
        "tcp:127.0.0.1:8080=example.com",
        "tcp:127.0.0.1:8080=example.com:0",
        "tcp:127.0.0.1:8080=[::1:80",
        "sctp:127.0.0.1:8080=example.com:80",
        "udp:127.0.0.1:5353=10.0.0.1:53",
    ];
    for spec in bad {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringsocks"))
            .args(["check-config", "/dev/null", "--map", spec])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{spec} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--map"), "{spec}: {err}");
    }
}
