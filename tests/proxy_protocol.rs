//! PROXY protocol listeners against the real binary: the header's client address drives
//! rules, limits and logs; bad, truncated or missing headers close the connection; only
//! `--proxy-from` networks may connect.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ringsocks::proto::proxy::{encode_v1, encode_v2, ProxyHeader};
use ringsocks::proto::{Command as Cmd, ReplyCode, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str =
    "[access]\n[[access.rule]]\nname = \"no-66\"\naction = \"block\"\nclient = [\"192.0.2.66\"]\n";

struct Setup {
    proxy: Proxy,
    pp: SocketAddr,
    echo: SocketAddr,
    _cfg: TempPath,
}

async fn setup(extra: &[&str]) -> Setup {
    let echo = echo_server("127.0.0.1:0").await;
    let cfg = temp_file(RULES);
    let path = cfg.as_str().to_owned();
    let mut args = vec!["--proxy-listen", "127.0.0.1:0", "--config", &path];
    args.extend_from_slice(extra);
    let proxy = Proxy::start(&args);
    let mut pp = None;
    for _ in 0..100 {
        let l = proxy.listening();
        if l.len() >= 2 {
            pp = Some(l[1]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pp = pp.expect("PROXY listener logged");
    Setup {
        proxy,
        pp,
        echo,
        _cfg: cfg,
    }
}

fn proxied(client: &str, to: SocketAddr) -> ProxyHeader {
    ProxyHeader::Proxied {
        source: client.parse().unwrap(),
        destination: to,
    }
}

async fn tunnel(pp: SocketAddr, header: &[u8], echo: SocketAddr) -> Result<TcpStream, ReplyCode> {
    let s = TcpStream::connect(pp).await.unwrap();
    socks5_request_on(s, header, Cmd::Connect, &TargetAddr::Ip(echo), None)
        .await
        .map(|(s, _)| s)
}

/// Writes `bytes`, then reads until the proxy closes; panics if it stays open 5 s.
async fn closed_after(addr: SocketAddr, bytes: &[u8], then_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if then_close {
        s.shutdown().await.unwrap();
    }
    let mut back = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await;
    assert!(r.is_ok(), "the proxy kept the connection open");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_headers_name_the_client_for_logs_and_rules() {
    let s = setup(&[]).await;
    // v1, header and SOCKS greeting in one write.
    let h = encode_v1("192.0.2.10:40000".parse().unwrap(), s.pp);
    let t = tunnel(s.pp, &h, s.echo).await.expect("v1 tunnel");
    assert_eq!(echo_roundtrip(t, b"via v1").await, b"via v1");
    assert!(s.proxy.wait_logged("client=192.0.2.10:40000").await);

    // v2 over IPv6.
    let h = encode_v2(&proxied("[2001:db8::7]:5555", s.pp));
    let t = tunnel(s.pp, &h, s.echo).await.expect("v2 tunnel");
    assert_eq!(echo_roundtrip(t, b"via v2").await, b"via v2");
    assert!(s.proxy.wait_logged("client=[2001:db8::7]:5555").await);

    // A v2 header near the size limit (a 997-byte NOOP TLV): longer than the handshake
    // buffer, still read whole, and the SOCKS bytes behind it stay in order.
    let mut h = encode_v2(&proxied("192.0.2.20:2000", s.pp));
    h.push(0x04);
    h.extend_from_slice(&997u16.to_be_bytes());
    h.extend(std::iter::repeat(0xAB).take(997));
    let len = (h.len() - 16) as u16;
    h[14..16].copy_from_slice(&len.to_be_bytes());
    let t = tunnel(s.pp, &h, s.echo).await.expect("large v2 header");
    assert_eq!(echo_roundtrip(t, b"big").await, b"big");
    assert!(s.proxy.wait_logged("client=192.0.2.20:2000").await);

    // The rule on the real client address blocks, and the log names both.
    let h = encode_v2(&proxied("192.0.2.66:1234", s.pp));
    assert_eq!(
        tunnel(s.pp, &h, s.echo).await.err(),
        Some(ReplyCode::NotAllowed)
    );
    assert!(s.proxy.wait_logged("no-66").await);
    assert!(s.proxy.logged("client=192.0.2.66:1234"));

    // v2 LOCAL (a balancer's health check that then goes on): the connection's own address.
    let h = encode_v2(&ProxyHeader::Local);
    let t = tunnel(s.pp, &h, s.echo).await.expect("LOCAL tunnel");
    let local = t.local_addr().unwrap();
    assert_eq!(echo_roundtrip(t, b"local").await, b"local");
    assert!(s.proxy.wait_logged(&format!("client={local}")).await);

    // A PROXY header sent to the plain listener is not believed: the connection is closed
    // after the one-byte SOCKS 6 version mismatch reply ("P" is no SOCKS version).
    let h = encode_v1("192.0.2.99:1".parse().unwrap(), s.proxy.addr);
    let mut bytes = h.clone();
    bytes.extend_from_slice(&[5, 1, 0]);
    assert_eq!(closed_after(s.proxy.addr, &bytes, false).await, [6]);
    assert!(!s.proxy.logged("client=192.0.2.99"));

    // The plain listener still speaks SOCKS without a header.
    let t = tunnel(s.proxy.addr, b"", s.echo).await.expect("plain");
    assert_eq!(echo_roundtrip(t, b"plain").await, b"plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_count_the_real_client() {
    let s = setup(&["--max-tunnels-per-client", "1"]).await;
    let a = encode_v2(&proxied("192.0.2.11:1000", s.pp));
    let first = tunnel(s.pp, &a, s.echo).await.expect("first");
    // Same real client, although every connection comes from the balancer's address.
    let a2 = encode_v2(&proxied("192.0.2.11:1001", s.pp));
    assert_eq!(
        tunnel(s.pp, &a2, s.echo).await.err(),
        Some(ReplyCode::GeneralFailure)
    );
    // Another client through the same balancer is not affected.
    let b = encode_v1("192.0.2.12:1000".parse().unwrap(), s.pp);
    let other = tunnel(s.pp, &b, s.echo).await.expect("other client");
    assert_eq!(echo_roundtrip(other, b"b").await, b"b");
    assert_eq!(echo_roundtrip(first, b"a").await, b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_headers_close_the_connection_and_the_worker_lives() {
    let s = setup(&["--metrics", "127.0.0.1:0", "--handshake-timeout", "1s"]).await;
    let socks5 = [5u8, 1, 0];
    // No header at all: a SOCKS client that bypassed the balancer, turned away at once (not
    // at the 1 s handshake timeout).
    let t = std::time::Instant::now();
    assert!(closed_after(s.pp, &socks5, false).await.is_empty());
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // Garbage.
    assert!(closed_after(s.pp, b"GET / HTTP/1.1\r\n\r\n", false)
        .await
        .is_empty());
    // v1 with a bad address, and one too long.
    assert!(
        closed_after(s.pp, b"PROXY TCP4 300.1.1.1 1.2.3.4 1 2\r\n", false)
            .await
            .is_empty()
    );
    let long = format!("PROXY UNKNOWN {}", "x".repeat(120));
    assert!(closed_after(s.pp, long.as_bytes(), false).await.is_empty());
    // v2 announcing UDP.
    let mut udp = encode_v2(&proxied("192.0.2.1:1", s.pp));
    udp[13] = 0x12;
    assert!(closed_after(s.pp, &udp, false).await.is_empty());
    // Truncated, then the client closes; truncated and silent: the handshake timeout.
    let v2 = encode_v2(&proxied("192.0.2.1:1", s.pp));
    assert!(closed_after(s.pp, &v2[..20], true).await.is_empty());
    assert!(closed_after(s.pp, &v2[..20], false).await.is_empty());

    // The workers are fine: a good header still works.
    let t = tunnel(s.pp, &v2, s.echo).await.expect("after the bad ones");
    assert_eq!(echo_roundtrip(t, b"ok").await, b"ok");

    let text = scrape(s.proxy.metrics_addr().await).await;
    for reason in [
        "not-proxy-protocol",
        "malformed",
        "too-long",
        "unsupported-family",
    ] {
        let line = format!("ringsocks_proxy_header_failures_total{{reason=\"{reason}\"}}");
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_proxy_from_networks_may_connect() {
    let s = setup(&["--proxy-from", "10.0.0.0/8"]).await;
    let h = encode_v2(&proxied("192.0.2.10:1", s.pp));
    let mut bytes = h.clone();
    bytes.extend_from_slice(&[5, 1, 0]);
    assert!(closed_after(s.pp, &bytes, false).await.is_empty());
    assert!(
        s.proxy
            .wait_logged("PROXY protocol listener reached from an address outside --proxy-from")
            .await
    );
}
