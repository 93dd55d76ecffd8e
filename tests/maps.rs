//! Static port maps (`--map tcp:LISTEN=DEST`): every connection to the map's listener is
//! relayed to its destination, byte-exact, under access rules and routes.

mod common;

use std::time::Duration;

use common::{closed_port, echo_server, recv_all, send_pattern, temp_file, udp_echo, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

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
        "udp:127.0.0.1:5353",
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

/// A UDP port on loopback that was free a moment ago.
fn free_udp_port() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// Sends datagrams of many sizes (up to `max`) one at a time and checks each comes back whole.
async fn udp_echo_exact(c: &UdpSocket, seed: u8, max: usize) {
    let mut buf = vec![0u8; 70000];
    for (i, size) in [1usize, 2, 100, 1400, 1500, 9000, 30000, max]
        .into_iter()
        .enumerate()
    {
        let d: Vec<u8> = (0..size).map(|j| (j as u8) ^ seed ^ i as u8).collect();
        // A datagram may be lost: retry a few times (on loopback it should not be).
        let mut got = None;
        for _ in 0..5 {
            c.send(&d).await.unwrap();
            if let Ok(r) = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf)).await {
                got = Some(r.unwrap());
                break;
            }
        }
        let n = got.unwrap_or_else(|| panic!("no answer to a {size}-byte datagram"));
        assert_eq!(n, size);
        assert_eq!(&buf[..n], &d[..], "byte-exact {size}-byte datagram");
    }
}

async fn udp_map_carries_datagrams(runtime: &str) {
    let echo = udp_echo("127.0.0.1:0").await;
    let listen = free_udp_port();
    let spec = format!("udp:{listen}={echo}");
    let proxy = Proxy::start(&[
        "--runtime",
        runtime,
        "--map",
        &spec,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(proxy.wait_logged(&format!("{listen}: udp port map")).await);
    // A new flow's first datagram is not lost while its socket is fresh (each client sends
    // once and waits).
    for i in 0..5u8 {
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.connect(listen).await.unwrap();
        c.send(&[i; 32]).await.unwrap();
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut b))
            .await
            .unwrap_or_else(|_| panic!("{runtime}: the first datagram of flow {i} was lost"))
            .unwrap();
        assert_eq!(&b[..n], &[i; 32]);
    }
    // Several clients at once, each its own flow.
    let mut clients = Vec::new();
    for seed in 0..4u8 {
        clients.push(tokio::spawn(async move {
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.connect(listen).await.unwrap();
            // The largest IPv4 UDP payload.
            udp_echo_exact(&c, seed, 65507).await;
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_map_carries_datagrams_exactly_io_uring() {
    udp_map_carries_datagrams("uring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_map_carries_datagrams_exactly_epoll() {
    udp_map_carries_datagrams("epoll").await;
}

/// A flow ends after the idle timeout, with an access line of what it carried, and the same
/// client's next datagram opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flow_ends_when_idle() {
    let echo = udp_echo("127.0.0.1:0").await;
    let listen = free_udp_port();
    let spec = format!("udp:{listen}={echo}");
    let proxy = Proxy::start(&["--map", &spec, "--udp-map-idle", "300ms"]);
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(listen).await.unwrap();
    let mut b = [0u8; 16];
    for round in 0..2 {
        c.send(b"ping").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut b))
            .await
            .expect("answer")
            .unwrap();
        assert_eq!(&b[..n], b"ping");
        let line = format!(
            "client={} user=\"-\" cmd=\"udp-map\"",
            c.local_addr().unwrap()
        );
        let ended = format!("closed: idle timeout {line}");
        let mut waited = 0;
        while proxy.count_logged(&ended) <= round && waited < 100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        assert_eq!(proxy.count_logged(&ended), round + 1, "round {round}");
        let carried = "up=1 up_bytes=4 down=1 down_bytes=4";
        assert_eq!(proxy.count_logged(carried), round + 1);
    }
}

/// Through a parent (another ringsocks, by a route): a UDP ASSOCIATE there, datagrams through
/// its relay; and an access rule refuses a client's flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_map_through_a_parent_and_under_rules() {
    // An echo that remembers where datagrams came from: the parent sends from 127.0.0.2.
    let e = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo = e.local_addr().unwrap();
    let sources = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = sources.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = e.recv_from(&mut buf).await {
            seen.lock().unwrap().push(from.ip());
            let _ = e.send_to(&buf[..n], from).await;
        }
    });
    let blocked_echo = udp_echo("127.0.0.1:0").await;
    let parent = Proxy::start(&["--egress-ip", "127.0.0.2"]);
    let (via_parent, blocked) = (free_udp_port(), free_udp_port());
    let config = temp_file(&format!(
        "map = [\"udp:{via_parent}={echo}\", \"udp:{blocked}={blocked_echo}\"]\n\
         [access]\n[[access.rule]]\nname = \"no blocked echo\"\naction = \"block\"\nport = [\"{}\"]\n\
         [[route]]\ndest = [\"127.0.0.1\"]\nport = [\"{}\"]\nvia = \"socks5://{}\"\n",
        blocked_echo.port(),
        echo.port(),
        parent.addr
    ));
    let edge = Proxy::start(&["--config", config.as_str(), "--listen", "127.0.0.1:0"]);
    assert!(edge.wait_logged(&format!("{blocked}: udp port map")).await);

    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(via_parent).await.unwrap();
    // The parent's relay takes a 10-byte RFC 1928 header in front of each datagram.
    udp_echo_exact(&c, 9, 65507 - 10).await;
    let sources = sources.lock().unwrap().clone();
    assert!(!sources.is_empty());
    assert!(
        sources.iter().all(|ip| ip.to_string() == "127.0.0.2"),
        "through the parent: {sources:?}"
    );

    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(blocked).await.unwrap();
    c.send(b"nope").await.unwrap();
    let mut b = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_millis(500), c.recv(&mut b)).await;
    assert!(
        r.is_err() || r.unwrap().is_err(),
        "no answer through a blocked map"
    );
    assert!(edge.wait_logged("refused: blocked by access rule").await);
}
