//! SOCKS5 over TLS and parent proxies, against the real binary, with independent clients:
//! tokio-rustls for TLS and tokio-socks for SOCKS5 (our own codec only where a test needs
//! to see reply codes). Certificates are made per test with rcgen.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{
    echo_server, recv_all, scrape, send_pattern, socks5_connect, temp_file, value, Proxy, TempPath,
};
use ringsocks::proto::{ReplyCode, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_socks::tcp::Socks5Stream;

const MIB: u64 = 1 << 20;

/// The big transfers' size: 256 MiB, or `RINGSOCKS_TEST_MIB` (the kernel TLS run in an
/// emulated VM uses less).
fn big() -> u64 {
    std::env::var("RINGSOCKS_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        * MIB
}

/// The carrier TLS tunnels must log here: `ktls` where the kernel's tls module is loaded (as
/// in `tests/ktls/`); elsewhere either (a kernel may load the module on demand).
fn expected_carrier() -> Option<&'static str> {
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    ulps.split_whitespace()
        .any(|u| u == "tls")
        .then_some("ktls")
}

/// Checks that the log names the expected carrier in `field`.
async fn assert_carrier(proxy: &Proxy, field: &str) {
    let logged = |c: &str| format!("{field}=\"{c}\"");
    match expected_carrier() {
        Some(c) => assert!(proxy.wait_logged(&logged(c)).await, "expected {field}={c}"),
        None => {
            assert!(proxy.wait_logged(&logged("user-space")).await || proxy.logged(&logged("ktls")))
        }
    }
}

/// A CA and what it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem: TempPath,
}

/// A certificate and key, as PEM files and as DER for rustls.
struct Leaf {
    cert: TempPath,
    key: TempPath,
    der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let pem = temp_file(&cert.pem());
        Ca { cert, key, pem }
    }

    /// A server certificate for localhost and 127.0.0.1; `expired` backdates it.
    fn server(&self, expired: bool) -> Leaf {
        let mut p =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.sign(p)
    }

    /// A client certificate whose subject CN is `user`.
    fn client(&self, user: &str) -> Leaf {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, user);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    fn sign(&self, p: rcgen::CertificateParams) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert: temp_file(&cert.pem()),
            key: temp_file(&key.serialize_pem()),
            der: cert.der().clone(),
            key_der: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client trusting `ca`, presenting `client` if given.
fn connector(ca: &Ca, client: Option<&Leaf>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(l) => b
            .with_client_auth_cert(vec![l.der.clone()], l.key_der.clone_key())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A SOCKS5 tunnel to `target` through the TLS listener at `proxy` (trusting `ca`).
async fn tunnel(proxy: SocketAddr, ca: &Ca, target: SocketAddr) -> Socks5Stream<Tls> {
    let tls = tls_connect(proxy, &connector(ca, None)).await.unwrap();
    Socks5Stream::connect_with_socket(tls, target)
        .await
        .unwrap()
}

async fn tls_connect(proxy: SocketAddr, c: &tokio_rustls::TlsConnector) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(proxy).await?;
    let name = ServerName::try_from("localhost").unwrap();
    c.connect(name, tcp).await
}

fn tls_args<'a>(leaf: &'a Leaf, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--tls-cert",
        leaf.cert.as_str(),
        "--tls-key",
        leaf.key.as_str(),
    ];
    v.extend_from_slice(extra);
    v
}

/// Sends `total` bytes of a pattern through `s` to an echo server while reading the echo
/// back, half-closing after sending: the echo must come back whole and in order, then the end.
async fn echo_hashed<S>(s: S, total: u64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(s);
    let send = async move {
        let h = send_pattern(&mut w, total, 0x3C).await;
        w.shutdown().await.unwrap();
        h
    };
    let both = async move { tokio::join!(send, recv_all(&mut r)) };
    let (sent, (got, received)) = tokio::time::timeout(Duration::from_secs(240), both)
        .await
        .expect("the transfer within 240 s");
    assert_eq!(got, total);
    assert_eq!(sent, received, "the echo came back intact, in order");
}

async fn big_transfer_over_tls_listener(runtime: &str) {
    let ca = Ca::new("test");
    let leaf = ca.server(false);
    let proxy = Proxy::start(&tls_args(&leaf, &["--runtime", runtime]));
    assert!(proxy.wait_logged("SOCKS over TLS").await);
    let echo = echo_server("127.0.0.1:0").await;
    echo_hashed(tunnel(proxy.addr, &ca, echo).await, big()).await;
    assert_carrier(&proxy, "tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_listener_carries_a_hashed_transfer_each_way_io_uring() {
    big_transfer_over_tls_listener("uring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_listener_carries_a_hashed_transfer_each_way_epoll() {
    big_transfer_over_tls_listener("epoll").await;
}

/// A client that does not trust the certificate is refused by its own TLS library; the
/// proxy logs the failed handshake and goes on serving.
#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_the_worker_lives() {
    let ca = Ca::new("test");
    let other = Ca::new("other");
    let leaf = ca.server(false);
    let proxy = Proxy::start(&tls_args(&leaf, &["--threads", "1"]));
    let echo = echo_server("127.0.0.1:0").await;
    let e = tls_connect(proxy.addr, &connector(&other, None))
        .await
        .expect_err("handshake must fail");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    assert!(proxy.wait_logged("TLS handshake").await);
    // Plain SOCKS5 on the TLS port: not TLS, refused.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain.write_all(&[5, 1, 0]).await.unwrap();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut b))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert!(
        n == 0 || b[0] == 0x15,
        "an alert or the close, got {:?}",
        &b[..n]
    );
    // The one worker still serves.
    let mut s = tunnel(proxy.addr, &ca, echo).await;
    s.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still here");
}

/// An expired listener certificate: warned about at start, refused by clients.
#[tokio::test]
async fn an_expired_certificate_is_reported_and_refused() {
    let ca = Ca::new("test");
    let leaf = ca.server(true);
    let proxy = Proxy::start(&tls_args(&leaf, &[]));
    assert!(proxy.wait_logged("certificate expired on 2021-01-01").await);
    let e = tls_connect(proxy.addr, &connector(&ca, None))
        .await
        .expect_err("an expired certificate must be refused");
    assert!(e.to_string().contains("certificate expired"), "{e}");
}

/// Mutual TLS: the client certificate's CN is the user (no password asked), access rules
/// apply to it, and clients without a certificate from the CA are refused.
#[tokio::test]
async fn client_certificates_name_the_user() {
    let ca = Ca::new("test");
    let leaf = ca.server(false);
    let carol = ca.client("carol");
    let mallory = Ca::new("other").client("mallory");
    let echo = echo_server("127.0.0.1:0").await;
    let blocked = echo_server("127.0.0.1:0").await;
    let config = temp_file(&format!(
        "[access]\ndefault = \"pass\"\n[[access.rule]]\nname = \"no carol\"\naction = \"block\"\nuser = [\"carol\"]\nport = [\"{}\"]\n",
        blocked.port()
    ));
    let args = tls_args(
        &leaf,
        &[
            "--tls-client-ca",
            ca.pem.as_str(),
            "--user",
            "dave:pw",
            "--config",
            config.as_str(),
        ],
    );
    let proxy = Proxy::start(&args);

    let tls = tls_connect(proxy.addr, &connector(&ca, Some(&carol)))
        .await
        .unwrap();
    let mut s = Socks5Stream::connect_with_socket(tls, echo).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    assert!(proxy.wait_logged("user=\"carol\"").await);

    let tls = tls_connect(proxy.addr, &connector(&ca, Some(&carol)))
        .await
        .unwrap();
    let e = Socks5Stream::connect_with_socket(tls, blocked)
        .await
        .expect_err("carol is blocked from that port");
    assert!(e.to_string().contains("not allowed"), "{e}");

    // Without a certificate, or with one from another CA: no session. (TLS 1.3 clients
    // finish their side first and learn of the refusal at their first read.)
    for c in [connector(&ca, None), connector(&ca, Some(&mallory))] {
        let refused = match tls_connect(proxy.addr, &c).await {
            Err(_) => true,
            Ok(tls) => Socks5Stream::connect_with_socket(tls, echo).await.is_err(),
        };
        assert!(refused);
    }
    assert!(proxy.wait_logged("TLS handshake").await);
}

/// SIGHUP reads the certificate again: new sessions get the new one.
#[tokio::test]
async fn sighup_replaces_the_certificate() {
    let first = Ca::new("first");
    let second = Ca::new("second");
    let a = first.server(false);
    let b = second.server(false);
    let cert = temp_file("");
    let key = temp_file("");
    std::fs::copy(a.cert.as_str(), cert.as_str()).unwrap();
    std::fs::copy(a.key.as_str(), key.as_str()).unwrap();
    let args = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let proxy = Proxy::start(&args);
    assert!(tls_connect(proxy.addr, &connector(&first, None))
        .await
        .is_ok());

    std::fs::copy(b.cert.as_str(), cert.as_str()).unwrap();
    std::fs::copy(b.key.as_str(), key.as_str()).unwrap();
    // Safety: signalling the child the harness owns.
    unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) };
    assert!(proxy.wait_logged("reloaded").await);
    assert!(tls_connect(proxy.addr, &connector(&second, None))
        .await
        .is_ok());
    assert!(tls_connect(proxy.addr, &connector(&first, None))
        .await
        .is_err());

    // A broken certificate is rejected and the current one stays.
    std::fs::write(cert.as_str(), "not a certificate").unwrap();
    unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) };
    assert!(proxy.wait_logged("configuration rejected").await);
    assert!(tls_connect(proxy.addr, &connector(&second, None))
        .await
        .is_ok());
}

/// ringsocks (plain) -> ringsocks (TLS, user/pass) -> target: the laptop mode. 256 MiB each
/// way through user-space TLS on both proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hop_chain_over_tls_carries_a_hashed_transfer() {
    let ca = Ca::new("test");
    let leaf = ca.server(false);
    let parent = Proxy::start(&tls_args(
        &leaf,
        &["--user", "bob:b0b pw", "--metrics", "127.0.0.1:0"],
    ));
    let url = format!(
        "socks5+tls://bob:b0b%20pw@localhost:{}?ca={}",
        parent.addr.port(),
        ca.pem.as_str()
    );
    let edge = Proxy::start(&["--upstream", &url, "--metrics", "127.0.0.1:0"]);
    let echo = echo_server("127.0.0.1:0").await;
    let s = Socks5Stream::connect(edge.addr, echo).await.unwrap();
    echo_hashed(s, big()).await;
    assert_carrier(&edge, "via_tls").await;
    assert_carrier(&parent, "tls").await;
    assert!(
        edge.wait_logged("via=\"socks5+tls://bob:***@localhost")
            .await
    );
    assert!(parent.wait_logged("user=\"bob\"").await);
    for p in [&edge, &parent] {
        assert!(!p.logged("b0b"), "the password was logged");
    }
    // Both ends count the TLS hop by how it was carried.
    let carrier = if parent.logged("tls=\"ktls\"") {
        "ktls"
    } else {
        "user-space"
    };
    let text = scrape(edge.metrics_addr().await).await;
    let series = format!("ringsocks_parent_tunnels_total{{tls=\"{carrier}\"}}");
    assert_eq!(value(&text, &series), Some(1.0), "{text}");
    let text = scrape(parent.metrics_addr().await).await;
    let series = format!("ringsocks_tls_sessions_total{{carrier=\"{carrier}\"}}");
    assert_eq!(value(&text, &series), Some(1.0), "{text}");
}

/// The parent's refusals reach the client as reply codes; a broken chain is a general
/// failure with the reason in the log.
#[tokio::test]
async fn parent_failures_map_to_reply_codes() {
    let ca = Ca::new("test");
    let parent = Proxy::start(&["--user", "bob:right"]);
    let closed = common::closed_port();
    let echo = echo_server("127.0.0.1:0").await;

    let edge = Proxy::start(&["--upstream", &format!("socks5://bob:right@{}", parent.addr)]);
    let r = socks5_connect(edge.addr, &TargetAddr::Ip(closed), None).await;
    assert_eq!(r.err(), Some(ReplyCode::ConnectionRefused));
    let (mut s, _) = socks5_connect(
        edge.addr,
        &TargetAddr::Domain("localhost".into(), echo.port()),
        None,
    )
    .await
    .expect("a name goes to the parent unresolved");
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();

    let wrong = Proxy::start(&["--upstream", &format!("socks5://bob:wrong@{}", parent.addr)]);
    let r = socks5_connect(wrong.addr, &TargetAddr::Ip(echo), None).await;
    assert_eq!(r.err(), Some(ReplyCode::GeneralFailure));
    assert!(wrong.wait_logged("parent").await);

    let down = Proxy::start(&[
        "--upstream",
        &format!("socks5://{closed}"),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let r = socks5_connect(down.addr, &TargetAddr::Ip(echo), None).await;
    assert_eq!(r.err(), Some(ReplyCode::GeneralFailure));
    assert!(down.wait_logged("cannot reach the parent proxy").await);
    let text = scrape(down.metrics_addr().await).await;
    let series = "ringsocks_parent_failures_total{reason=\"unreachable\"}";
    assert_eq!(value(&text, series), Some(1.0), "{text}");

    // A TLS parent whose certificate expired.
    let expired = ca.server(true);
    let tls_parent = Proxy::start(&tls_args(&expired, &[]));
    let url = format!(
        "socks5+tls://localhost:{}?ca={}",
        tls_parent.addr.port(),
        ca.pem.as_str()
    );
    let edge = Proxy::start(&["--upstream", &url]);
    let r = socks5_connect(edge.addr, &TargetAddr::Ip(echo), None).await;
    assert_eq!(r.err(), Some(ReplyCode::GeneralFailure));
    assert!(edge.wait_logged("certificate expired").await);
}

/// A minimal HTTP CONNECT proxy: checks Basic credentials when `auth` is set, answers 403
/// for port 9 and 200 otherwise, then copies both ways.
async fn http_connect_proxy(auth: Option<&'static str>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let target = head.split_whitespace().nth(1).unwrap().to_string();
                if let Some(a) = auth {
                    if !head.contains(&format!("Proxy-Authorization: Basic {a}\r\n")) {
                        let _ = s
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                            .await;
                        return;
                    }
                }
                if target.ends_with(":9") {
                    let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                    return;
                }
                let mut t = TcpStream::connect(&target).await.unwrap();
                s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut s, &mut t).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_connect_parent() {
    let echo = echo_server("127.0.0.1:0").await;
    // "Aladdin:open sesame"
    let parent = http_connect_proxy(Some("QWxhZGRpbjpvcGVuIHNlc2FtZQ==")).await;
    let edge = Proxy::start(&[
        "--upstream",
        &format!("http://Aladdin:open%20sesame@{parent}"),
    ]);
    let mut s = Socks5Stream::connect(edge.addr, echo).await.unwrap();
    echo_hashed(&mut s, 4 * MIB).await;
    let r = socks5_connect(edge.addr, &TargetAddr::Domain("localhost".into(), 9), None).await;
    assert_eq!(r.err(), Some(ReplyCode::NotAllowed));

    let no_auth = Proxy::start(&["--upstream", &format!("http://{parent}")]);
    let r = socks5_connect(no_auth.addr, &TargetAddr::Ip(echo), None).await;
    assert_eq!(r.err(), Some(ReplyCode::GeneralFailure));
    assert!(no_auth.wait_logged("407").await);
}

/// Routes: the first matching `[[route]]` picks the parent; other requests go direct. The
/// parent connects from 127.0.0.2, so the target sees which way each request came.
#[tokio::test]
async fn routes_pick_the_parent_per_destination() {
    let parent = Proxy::start(&["--egress-ip", "127.0.0.2"]);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let config = temp_file(&format!(
        "[[route]]\nname = \"via parent\"\ndest = [\"127.0.0.0/8\"]\nport = [\"{}\"]\nvia = \"socks5://{}\"\n",
        target.port(),
        parent.addr
    ));
    let edge = Proxy::start(&["--config", config.as_str()]);
    let (a, _) = socks5_connect(edge.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap();
    let (_, from) = l.accept().await.unwrap();
    assert_eq!(
        from.ip().to_string(),
        "127.0.0.2",
        "routed through the parent"
    );
    let (b, _) = socks5_connect(edge.addr, &TargetAddr::Ip(other_addr), None)
        .await
        .unwrap();
    let (_, from) = other.accept().await.unwrap();
    assert_eq!(from.ip().to_string(), "127.0.0.1", "direct");
    drop((a, b));
    assert!(edge.wait_logged("via=\"direct\"").await);
    assert!(
        edge.wait_logged(&format!("via=\"socks5://{}\"", parent.addr))
            .await
    );
}

/// CPU ticks (user + system) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// An idle TLS tunnel and a stalled TLS handshake wait without spinning, on both runtimes
/// (the TLS layer's own syscalls must tell epoll when they would block).
async fn idle_tls_costs_no_cpu(runtime: &str) {
    let ca = Ca::new("test");
    let leaf = ca.server(false);
    let proxy = Proxy::start(&tls_args(&leaf, &["--runtime", runtime, "--threads", "1"]));
    let echo = echo_server("127.0.0.1:0").await;
    let mut tunnel = tunnel(proxy.addr, &ca, echo).await;
    tunnel.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tunnel.read_exact(&mut b).await.unwrap();
    // A handshake that stops after a few bytes of its ClientHello.
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    stalled.write_all(&[22, 3, 1, 0, 200, 1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_ticks(proxy.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(proxy.pid()) - before;
    // 2 s of a spinning worker would be ~200 ticks; waiting costs next to nothing.
    assert!(used < 50, "{runtime}: {used} ticks in 2 s while idle");
    // Both still work after the wait.
    tunnel.write_all(b"pong").await.unwrap();
    tunnel.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"pong");
    drop(stalled);
}

#[tokio::test]
async fn idle_tls_costs_no_cpu_epoll() {
    idle_tls_costs_no_cpu("epoll").await;
}

#[tokio::test]
async fn idle_tls_costs_no_cpu_io_uring() {
    idle_tls_costs_no_cpu("uring").await;
}

/// A TLS client whose TCP connection ends without close_notify may have been truncated: the
/// target gets a reset, not a FIN that would make the data look complete. With close_notify
/// the end is a half-close, carried through.
#[tokio::test]
async fn tcp_end_without_close_notify_is_a_reset() {
    let ca = Ca::new("test");
    let leaf = ca.server(false);
    let proxy = Proxy::start(&tls_args(&leaf, &[]));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();

    // close_notify, then FIN: the target reads the data and a clean end.
    let mut s = tunnel(proxy.addr, &ca, target).await;
    let (mut t, _) = l.accept().await.unwrap();
    s.write_all(b"complete").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"complete");
    t.write_all(b"reply after half-close").await.unwrap();
    drop(t);
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"reply after half-close");

    // A bare FIN from under TLS: the target sees a reset.
    let mut s = tunnel(proxy.addr, &ca, target).await;
    let (mut t, _) = l.accept().await.unwrap();
    s.write_all(b"partial").await.unwrap();
    s.flush().await.unwrap();
    let mut tls = s.into_inner();
    tls.get_mut().0.shutdown().await.unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut got))
        .await
        .expect("ended promptly");
    assert!(
        r.is_err(),
        "a clean end after {got:?}: the truncation was hidden"
    );
    assert!(proxy.wait_logged("without a TLS close_notify").await);
}

/// A TLS 1.2 client through a tap that keeps what the proxy sends: the echo comes back, and
/// no application record reuses the explicit nonce of the handshake's Finished or of another
/// record (under kernel TLS, TLS 1.2 AES-GCM once did: the kernel adds to the nonce where
/// rustls XORs the sequence number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_records_never_repeat_a_nonce() {
    let ca = Ca::new("test");
    let leaf = ca.server(false);
    for runtime in ["uring", "epoll"] {
        let proxy = Proxy::start(&tls_args(&leaf, &["--runtime", runtime]));
        let echo = echo_server("127.0.0.1:0").await;
        let tap = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tap_addr = tap.local_addr().unwrap();
        let (to_proxy, seen) = (proxy.addr, Arc::new(std::sync::Mutex::new(Vec::new())));
        let keep = seen.clone();
        tokio::spawn(async move {
            let (client, _) = tap.accept().await.unwrap();
            let server = TcpStream::connect(to_proxy).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
                let _ = sw.shutdown().await;
            });
            let mut b = vec![0u8; 65536];
            while let Ok(n @ 1..) = sr.read(&mut b).await {
                keep.lock().unwrap().extend_from_slice(&b[..n]);
                if cw.write_all(&b[..n]).await.is_err() {
                    break;
                }
            }
            let _ = cw.shutdown().await;
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                ServerName::try_from("localhost").unwrap(),
                TcpStream::connect(tap_addr).await.unwrap(),
            )
            .await
            .unwrap();
        let mut s = Socks5Stream::connect_with_socket(tls, echo).await.unwrap();
        for i in 0..5u8 {
            s.write_all(&[i; 100]).await.unwrap();
            let mut back = [0u8; 100];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [i; 100]);
        }
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Records after the ChangeCipherSpec are encrypted; AES-GCM's carry an 8-byte
        // explicit nonce first (ChaCha20's carry none, and then there is nothing to check).
        let wire = seen.lock().unwrap().clone();
        let (mut at, mut encrypted, mut nonces) = (0, false, Vec::new());
        while at + 5 <= wire.len() {
            let (kind, len) = (
                wire[at],
                u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize,
            );
            if encrypted && at + 13 <= wire.len() {
                nonces.push(wire[at + 5..at + 13].to_vec());
            }
            encrypted |= kind == 20;
            at += 5 + len;
        }
        assert!(nonces.len() >= 6, "{runtime}: Finished and replies seen");
        let suite_has_explicit_nonce = !proxy.logged("WITH_CHACHA20");
        if suite_has_explicit_nonce {
            let mut unique = nonces.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                nonces.len(),
                "{runtime}: a nonce repeats: {nonces:02x?}"
            );
        }
    }
}

#[derive(Debug)]
struct BigTickets;

impl rustls::server::ProducesTickets for BigTickets {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        3600
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        Some(vec![0xab; 1800])
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// A SOCKS5-over-TLS parent (tokio-rustls) that sends 1.8 KB TLS 1.3 session tickets right
/// after the handshake: they arrive with or after its SOCKS replies and must be skipped
/// whole (under kernel TLS they come up as control records, in pieces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_sending_large_session_tickets() {
    let ca = Ca::new("test");
    let leaf = ca.server(false);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], leaf.key_der.clone_key())
        .unwrap();
    config.ticketer = Arc::new(BigTickets);
    config.send_tls13_tickets = 2;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let parent = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut t) = acceptor.accept(s).await else {
                    return;
                };
                // Greeting (no auth), then the request; the reply names 127.0.0.1:80.
                let mut b = [0u8; 512];
                let _ = t.read(&mut b).await;
                t.write_all(&[5, 0]).await.unwrap();
                let _ = t.read(&mut b).await;
                t.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 80])
                    .await
                    .unwrap();
                while let Ok(n @ 1..) = t.read(&mut b).await {
                    if t.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let url = format!(
        "socks5+tls://localhost:{}?ca={}",
        parent.port(),
        ca.pem.as_str()
    );
    for runtime in ["uring", "epoll"] {
        let edge = Proxy::start(&["--runtime", runtime, "--upstream", &url]);
        let mut s = Socks5Stream::connect(edge.addr, "192.0.2.1:80")
            .await
            .unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
            .await
            .expect("the echo through the parent")
            .unwrap();
        assert_eq!(&b, b"ping", "{runtime}");
    }
}
