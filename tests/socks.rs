//! End-to-end tests against the real binary, on both runtimes, with our own client and with
//! independent client crates (tokio-socks, reqwest).

mod common;

use std::time::Duration;

use common::*;
use ringsocks::proto::{ReplyCode, TargetAddr};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs each case once per runtime.
macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("uring").await })*
        }
        mod epoll {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("epoll").await })*
        }
    };
}

both_runtimes!(
    socks5_ipv4_ipv6_and_domain,
    socks4_and_socks4a,
    userpass_auth_and_wrong_password,
    bad_inputs_get_the_right_reply,
    refused_destination,
    handshake_one_byte_at_a_time,
    pipelined_handshake_and_payload,
    half_close_both_ways,
    big_transfer_hash_checked,
    concurrent_tunnels,
    stalled_handshake_times_out,
);

fn rt(runtime: &str) -> [&str; 2] {
    ["--runtime", runtime]
}

async fn socks5_ipv4_ipv6_and_domain(runtime: &str) {
    let proxy = Proxy::start(&rt(runtime));
    let v4 = echo_server("127.0.0.1:0").await;
    let (s, bound) = socks5_connect(proxy.addr, &TargetAddr::Ip(v4), None)
        .await
        .unwrap();
    assert!(matches!(bound, TargetAddr::Ip(a) if a.ip().is_loopback() && a.port() != 0));
    assert_eq!(echo_roundtrip(s, b"hello v4").await, b"hello v4");

    if let Ok(l) = std::net::TcpListener::bind("[::1]:0") {
        drop(l);
        let v6 = echo_server("[::1]:0").await;
        let (s, bound) = socks5_connect(proxy.addr, &TargetAddr::Ip(v6), None)
            .await
            .unwrap();
        assert!(
            matches!(bound, TargetAddr::Ip(a) if a.is_ipv6()),
            "{bound:?}"
        );
        assert_eq!(echo_roundtrip(s, b"hello v6").await, b"hello v6");
    }

    // "localhost" may resolve to ::1 first; Happy Eyeballs must fall back to 127.0.0.1.
    let domain = TargetAddr::Domain("localhost".into(), v4.port());
    let (s, _) = socks5_connect(proxy.addr, &domain, None).await.unwrap();
    assert_eq!(echo_roundtrip(s, b"hello name").await, b"hello name");

    // An independent client.
    let mut s = tokio_socks::tcp::Socks5Stream::connect(proxy.addr, ("localhost", v4.port()))
        .await
        .unwrap();
    s.write_all(b"tokio-socks").await.unwrap();
    let mut back = [0u8; 11];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"tokio-socks");
    assert!(proxy.wait_logged("dst=localhost:").await);
}

async fn socks4_and_socks4a(runtime: &str) {
    let proxy = Proxy::start(&rt(runtime));
    let echo = echo_server("127.0.0.1:0").await;
    let s = socks4_connect(proxy.addr, &TargetAddr::Ip(echo), "bob")
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(s, b"four").await, b"four");
    let s = socks4_connect(
        proxy.addr,
        &TargetAddr::Domain("localhost".into(), echo.port()),
        "",
    )
    .await
    .unwrap();
    assert_eq!(echo_roundtrip(s, b"four-a").await, b"four-a");
    assert!(
        proxy.wait_logged("user=\"bob\"").await,
        "SOCKS4 USERID is logged"
    );

    let mut s = tokio_socks::tcp::Socks4Stream::connect(proxy.addr, ("localhost", echo.port()))
        .await
        .unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x");

    let refused = closed_port();
    assert_eq!(
        socks4_connect(proxy.addr, &TargetAddr::Ip(refused), "")
            .await
            .unwrap_err(),
        91
    );
}

async fn userpass_auth_and_wrong_password(runtime: &str) {
    let proxy = Proxy::start(&[
        "--runtime",
        runtime,
        "--user",
        "alice:correct horse",
        "--user",
        "bob:b",
    ]);
    let echo = echo_server("127.0.0.1:0").await;
    let t = TargetAddr::Ip(echo);
    let (s, _) = socks5_connect(proxy.addr, &t, Some(("alice", "correct horse")))
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(s, b"authed").await, b"authed");

    let mut s = tokio_socks::tcp::Socks5Stream::connect_with_password(proxy.addr, echo, "bob", "b")
        .await
        .unwrap();
    s.write_all(b"y").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();

    // Wrong password: RFC 1929 failure status, then close.
    let got = raw_exchange(proxy.addr, b"\x05\x01\x02\x01\x05alice\x05wrong").await;
    assert_eq!(got, [5, 2, 1, 1]);
    // Unknown user: same answer.
    let got = raw_exchange(proxy.addr, b"\x05\x01\x02\x01\x03eve\x01x").await;
    assert_eq!(got, [5, 2, 1, 1]);
    // No-auth offered while users are configured: X'FF'.
    let got = raw_exchange(proxy.addr, &[5, 1, 0]).await;
    assert_eq!(got, [5, 0xFF]);
    // SOCKS4 carries no password: refused with 91.
    assert_eq!(
        socks4_connect(proxy.addr, &t, "alice").await.unwrap_err(),
        91
    );
    assert!(proxy.wait_logged("authentication failed").await);
    assert!(
        !proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("wrong") || l.contains("correct horse")),
        "passwords must never be logged"
    );

    // With --allow-socks4, SOCKS4 is served alongside authenticated SOCKS5.
    let proxy = Proxy::start(&["--runtime", runtime, "--user", "a:b", "--allow-socks4"]);
    let s = socks4_connect(proxy.addr, &t, "").await.unwrap();
    assert_eq!(echo_roundtrip(s, b"4").await, b"4");
}

async fn bad_inputs_get_the_right_reply(runtime: &str) {
    let proxy = Proxy::start(&rt(runtime));
    let echo = echo_server("127.0.0.1:0").await;
    // Wrong version: the SOCKS 6 version mismatch reply (one byte, X'06'), then the close.
    assert_eq!(
        raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\n\r\n").await,
        [6]
    );
    // Zero methods and no acceptable method: X'FF'.
    assert_eq!(raw_exchange(proxy.addr, &[5, 0]).await, [5, 0xFF]);
    assert_eq!(raw_exchange(proxy.addr, &[5, 2, 1, 0x80]).await, [5, 0xFF]);
    // Unknown command: X'07'.
    let got = raw_exchange(proxy.addr, &[5, 1, 0, 5, 9, 0, 1, 127, 0, 0, 1, 0, 80]).await;
    assert_eq!(got, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
    // Unknown address type: X'08'.
    let got = raw_exchange(proxy.addr, &[5, 1, 0, 5, 1, 0, 7, 1, 2, 3, 4]).await;
    assert_eq!(got, [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
    // Zero-length domain: host unreachable.
    let got = raw_exchange(proxy.addr, &[5, 1, 0, 5, 1, 0, 3, 0, 0, 80]).await;
    assert_eq!(got, [5, 0, 5, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
    // SOCKS4 unknown command: 91.
    let got = raw_exchange(proxy.addr, b"\x04\x07\x00\x50\x7f\x00\x00\x01\x00").await;
    assert_eq!(got, [0, 91, 0, 0, 0, 0, 0, 0]);
    // A malformed UDP ASSOCIATE (unknown address type) is refused like any request: X'08'.
    let got = raw_exchange(proxy.addr, &[5, 1, 0, 5, 3, 0, 7, 0, 0, 0, 0, 0, 0]).await;
    assert_eq!(got, [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
    // A client resetting mid-handshake.
    let s = std::net::TcpStream::connect(proxy.addr).unwrap();
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    std::io::Write::write_all(&mut &s, &[5, 1]).unwrap();
    drop(s);

    // The workers are still serving everyone else.
    for _ in 0..8 {
        let (s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(echo), None)
            .await
            .unwrap();
        assert_eq!(echo_roundtrip(s, b"still alive").await, b"still alive");
    }
    assert!(
        proxy.wait_logged("reason=\"unknown-command\"").await
            || proxy.logged("reason=unknown-command")
    );
}

async fn refused_destination(runtime: &str) {
    let proxy = Proxy::start(&rt(runtime));
    let refused = closed_port();
    let e = socks5_connect(proxy.addr, &TargetAddr::Ip(refused), None)
        .await
        .unwrap_err();
    assert_eq!(e, ReplyCode::ConnectionRefused);
    let e = socks5_connect(
        proxy.addr,
        &TargetAddr::Domain("localhost".into(), refused.port()),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e, ReplyCode::ConnectionRefused);
    assert!(proxy.wait_logged("connection-refused").await);
}

async fn handshake_one_byte_at_a_time(runtime: &str) {
    let proxy = Proxy::start(&["--runtime", runtime, "--user", "u:p"]);
    let echo = echo_server("127.0.0.1:0").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut expect = vec![5, 2, 1, 0];
    let mut msg = vec![5, 1, 2, 1, 1, b'u', 1, b'p', 5, 1, 0, 1, 127, 0, 0, 1];
    msg.extend_from_slice(&echo.port().to_be_bytes());
    for b in msg {
        s.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut got = vec![0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    let reply = read_socks5_reply(&mut s).await;
    assert_eq!(reply.code, ReplyCode::Succeeded);
    expect.truncate(4);
    assert_eq!(got, expect);
    assert_eq!(echo_roundtrip(s, b"slow").await, b"slow");
}

async fn pipelined_handshake_and_payload(runtime: &str) {
    let proxy = Proxy::start(&rt(runtime));
    let echo = echo_server("127.0.0.1:0").await;
    let mut msg = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1];
    msg.extend_from_slice(&echo.port().to_be_bytes());
    let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    msg.extend_from_slice(&payload);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..2], &[5, 0]);
    assert_eq!(&got[2..5], &[5, 0, 0]);
    assert_eq!(got.len(), 2 + 10 + payload.len());
    assert_eq!(
        &got[12..],
        &payload[..],
        "every pipelined byte arrives, in order"
    );
}

async fn half_close_both_ways(runtime: &str) {
    let proxy = Proxy::start(&rt(runtime));
    // A target that reads to EOF, then answers with what it read, then closes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                s.write_all(format!("got {} bytes", all.len()).as_bytes())
                    .await
                    .unwrap();
            });
        }
    });
    let (mut s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap();
    s.write_all(&[7u8; 3000]).await.unwrap();
    s.shutdown().await.unwrap(); // client -> target EOF, while target -> client stays open
    let mut back = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, "got 3000 bytes");

    // The other way: the target half-closes first and still receives what the client sends.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        all
    });
    let (mut s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap();
    let mut first = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, b"bye");
    s.write_all(b"after your FIN").await.unwrap();
    s.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"after your FIN");
}

async fn big_transfer_hash_checked(runtime: &str) {
    const SIZE: usize = 64 << 20;
    let proxy = Proxy::start(&rt(runtime));
    // Target: hashes what it receives while sending its own 64 MiB stream.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let send = tokio::spawn(async move {
            let mut h = Sha256::new();
            let mut chunk = vec![0u8; 1 << 16];
            for i in 0..SIZE / chunk.len() {
                chunk
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (i * 31 + j * 7) as u8);
                h.update(&chunk);
                w.write_all(&chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
            h.finalize()
        });
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n_total = 0;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            n_total += n;
            h.update(&buf[..n]);
        }
        (n_total, h.finalize(), send.await.unwrap())
    });

    let (s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let up = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut chunk = vec![0u8; 100_003];
        let mut left = SIZE;
        let mut i = 0usize;
        while left > 0 {
            let n = left.min(chunk.len());
            chunk[..n]
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (i * 13 + j) as u8);
            h.update(&chunk[..n]);
            w.write_all(&chunk[..n]).await.unwrap();
            left -= n;
            i += 1;
        }
        w.shutdown().await.unwrap();
        h.finalize()
    });
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut down = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        down += n;
        h.update(&buf[..n]);
    }
    let sent_up = up.await.unwrap();
    let (got_up, got_up_hash, sent_down) = server.await.unwrap();
    assert_eq!(got_up, SIZE);
    assert_eq!(got_up_hash, sent_up, "client -> target bytes intact");
    assert_eq!(down, SIZE);
    assert_eq!(h.finalize(), sent_down, "target -> client bytes intact");
    assert!(proxy.wait_logged(&format!("up={SIZE} down={SIZE}")).await);
}

async fn concurrent_tunnels(runtime: &str) {
    const N: usize = 1000;
    let proxy = Proxy::start(&rt(runtime));
    let echo = echo_server("127.0.0.1:0").await;
    // Open all tunnels first so that N are alive at once, then use them.
    let mut tunnels = Vec::with_capacity(N);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..N {
        let p = proxy.addr;
        opening.spawn(async move {
            (
                i,
                socks5_connect(p, &TargetAddr::Ip(echo), None)
                    .await
                    .unwrap()
                    .0,
            )
        });
        if opening.len() >= 128 {
            tunnels.push(opening.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(t) = opening.join_next().await {
        tunnels.push(t.unwrap());
    }
    assert_eq!(tunnels.len(), N);
    let mut checks = tokio::task::JoinSet::new();
    for (i, s) in tunnels {
        checks.spawn(async move {
            let msg = format!("tunnel {i}").into_bytes();
            assert_eq!(echo_roundtrip(s, &msg).await, msg);
        });
    }
    while let Some(r) = checks.join_next().await {
        r.unwrap();
    }
}

async fn stalled_handshake_times_out(runtime: &str) {
    let proxy = Proxy::start(&["--runtime", runtime, "--handshake-timeout", "500ms"]);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[5, 1]).await.unwrap(); // greeting cut short
    let mut buf = Vec::new();
    let t0 = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "closed by the handshake timeout");
    assert!(buf.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(400));
    assert!(proxy.wait_logged("handshake timed out").await);
}
