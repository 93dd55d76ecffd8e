//! SOCKS 6 (draft-olteanu-intarea-socks-6) on the SOCKS port, with the project's own client
//! codec: one message carries the request, the credentials and the first data; SOCKS5 clients
//! on the same port are unaffected; other versions get the version mismatch reply.

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{
    closed_port, echo_server, fastopen_both_ways, fastopen_listener, syn_carried_data, temp_file,
    Proxy,
};
use ringsocks::proto::socks6::{
    self, AuthReply, Command6, OperationReply, ReplyCode6, RequestOptions,
};
use ringsocks::proto::{Command, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one message with `parse` from `s`, byte by byte (so nothing after it is taken).
async fn read_msg<T>(s: &mut TcpStream, parse: impl Fn(&[u8]) -> ringsocks::proto::Parsed<T>) -> T {
    let mut buf = Vec::new();
    loop {
        if let Some((m, n)) = parse(&buf).expect("well-formed reply") {
            assert_eq!(n, buf.len());
            return m;
        }
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("reply in time")
            .expect("read reply");
        assert!(n > 0, "proxy closed before a whole reply; got {buf:?}");
        buf.push(b[0]);
    }
}

/// Sends a CONNECT with `initial` as initial data, all in one write, and reads both replies.
async fn connect6(
    proxy: SocketAddr,
    target: &TargetAddr,
    initial: &[u8],
    userpass: Option<(&str, &str)>,
    fast_open: bool,
) -> (TcpStream, AuthReply, Option<OperationReply>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut out = Vec::new();
    let opts = RequestOptions {
        initial_data: initial.len() as u16,
        methods: if userpass.is_some() { &[2] } else { &[] },
        userpass: userpass.map(|(u, p)| (u.as_bytes(), p.as_bytes())),
        fast_open: fast_open.then_some(0),
    };
    socks6::encode_request(Command6::Op(Command::Connect), target, &opts, &mut out);
    out.extend_from_slice(initial);
    s.write_all(&out).await.unwrap();
    let auth = read_msg(&mut s, socks6::parse_auth_reply).await;
    if !auth.success {
        return (s, auth, None);
    }
    let op = read_msg(&mut s, socks6::parse_operation_reply).await;
    (s, auth, Some(op))
}

/// A destination that answers each connection's first bytes with `got:` and those bytes,
/// and reports whether they came in the SYN (TCP Fast Open).
async fn first_bytes_destination() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<bool>) {
    let sock = fastopen_listener();
    sock.set_nonblocking(true).unwrap();
    let l = TcpListener::from_std(sock).unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = tx.send(syn_carried_data(s.as_raw_fd()));
            tokio::spawn(async move {
                let mut b = vec![0u8; 65536];
                let n = s.read(&mut b).await.unwrap_or(0);
                let mut reply = b"got:".to_vec();
                reply.extend_from_slice(&b[..n]);
                let _ = s.write_all(&reply).await;
            });
        }
    });
    (addr, rx)
}

async fn initial_data_reaches_the_destination(runtime: &str) {
    let (dest, mut syn) = first_bytes_destination().await;
    let proxy = Proxy::start(&["--runtime", runtime]);
    for round in 0..3 {
        let initial = format!("GET /{round} HTTP/1.0\r\n\r\n");
        let target = TargetAddr::Ip(dest);
        let (mut s, auth, op) = connect6(proxy.addr, &target, initial.as_bytes(), None, true).await;
        assert!(auth.success);
        let op = op.unwrap();
        assert_eq!(op.code, ReplyCode6::Succeeded);
        let TargetAddr::Ip(bound) = op.bound else {
            panic!("bound {:?}", op.bound)
        };
        assert_eq!(bound.ip().to_string(), "127.0.0.1");
        let in_syn = syn.recv().await.unwrap();
        // The reply reports Fast Open exactly when the SYN carried the data.
        assert_eq!(op.fast_open.is_some(), in_syn, "round {round}");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, format!("got:{initial}").into_bytes());
        if round > 0 && fastopen_both_ways() {
            // With a cookie, the initial data came with the SYN: before the connection was
            // even established, so before any reply.
            assert!(in_syn, "round {round}: initial data not in the SYN");
        }
    }
    if std::env::var("RINGSOCKS_TEST_REQUIRE_TFO").is_ok_and(|v| v == "1") {
        assert!(fastopen_both_ways());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_data_reaches_the_destination_io_uring() {
    initial_data_reaches_the_destination("uring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_data_reaches_the_destination_epoll() {
    initial_data_reaches_the_destination("epoll").await;
}

/// A tunnel opened with initial data relays byte-exact both ways afterwards, with half-close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_relays_after_the_initial_data() {
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start(&[]);
    let initial: Vec<u8> = (0..16384u32).map(|i| (i * 7) as u8).collect();
    let target = TargetAddr::Ip(echo);
    let (s, _, op) = connect6(proxy.addr, &target, &initial, None, false).await;
    assert_eq!(op.unwrap().code, ReplyCode6::Succeeded);
    let (mut r, mut w) = s.into_split();
    let rest: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let expect: Vec<u8> = initial.iter().chain(&rest).copied().collect();
    let send = async move {
        w.write_all(&rest).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(send, recv);
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "byte-exact, initial data first");
}

/// Credentials ride in the request: right ones open the tunnel in the same round trip, wrong
/// ones get a failed Authentication Reply; SOCKS5 clients on the same port log in as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_request() {
    let echo = echo_server("127.0.0.1:0").await;
    let users = temp_file("alice:wonderland\n");
    let proxy = Proxy::start(&["--users", users.as_str()]);
    let target = TargetAddr::Ip(echo);
    let creds = Some(("alice", "wonderland"));
    let (mut s, auth, op) = connect6(proxy.addr, &target, b"hello", creds, false).await;
    assert!(auth.success);
    assert_eq!(op.unwrap().code, ReplyCode6::Succeeded);
    let mut b = [0u8; 5];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hello");

    let bad = Some(("alice", "looking-glass"));
    let (mut s, auth, op) = connect6(proxy.addr, &target, b"hello", bad, false).await;
    assert!(!auth.success && op.is_none());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "closed after the failure: {rest:?}");
    assert!(proxy.wait_logged("authentication failed").await);
    assert!(!proxy.logged("looking-glass"), "a password in the log");

    // No credentials at all while users are configured: refused.
    let (_, auth, _) = connect6(proxy.addr, &target, b"", None, false).await;
    assert!(!auth.success);

    // A SOCKS5 client on the same port.
    let mut s = tokio_socks::tcp::Socks5Stream::connect_with_password(
        proxy.addr,
        echo,
        "alice",
        "wonderland",
    )
    .await
    .unwrap();
    s.write_all(b"five").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"five");
}

/// A request with options well past the handshake buffer (a 4 KiB option of a kind the
/// server does not know, which it must skip) is still read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_is_read_whole() {
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start(&[]);
    let mut out = Vec::new();
    let opts = RequestOptions {
        initial_data: 4,
        ..Default::default()
    };
    let target = TargetAddr::Ip(echo);
    socks6::encode_request(Command6::Op(Command::Connect), &target, &opts, &mut out);
    // An unknown option (kind 0xFDE9), 4096 bytes with its header; Options Length updated.
    out.extend_from_slice(&[0xFD, 0xE9, 0x10, 0x00]);
    out.extend_from_slice(&[0u8; 4092]);
    let opts_len = u16::from_be_bytes([out[2], out[3]]) + 4096;
    out[2..4].copy_from_slice(&opts_len.to_be_bytes());
    out.extend_from_slice(b"ping");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&out).await.unwrap();
    assert!(read_msg(&mut s, socks6::parse_auth_reply).await.success);
    let op = read_msg(&mut s, socks6::parse_operation_reply).await;
    assert_eq!(op.code, ReplyCode6::Succeeded);
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
}

/// A refused destination is the Operation Reply's code; the tunnel never opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_operation_replies() {
    let proxy = Proxy::start(&[]);
    let target = TargetAddr::Ip(closed_port());
    let (_, auth, op) = connect6(proxy.addr, &target, b"data", None, false).await;
    assert!(auth.success);
    assert_eq!(op.unwrap().code, ReplyCode6::ConnectionRefused);
}

/// SOCKS 6 BIND and UDP ASSOCIATE are refused as not supported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_udp_are_not_supported() {
    let proxy = Proxy::start(&[]);
    for cmd in [Command::Bind, Command::UdpAssociate] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let mut out = Vec::new();
        let any = TargetAddr::Ip("0.0.0.0:0".parse().unwrap());
        socks6::encode_request(
            Command6::Op(cmd),
            &any,
            &RequestOptions::default(),
            &mut out,
        );
        s.write_all(&out).await.unwrap();
        assert!(read_msg(&mut s, socks6::parse_auth_reply).await.success);
        let op = read_msg(&mut s, socks6::parse_operation_reply).await;
        assert_eq!(op.code, ReplyCode6::CommandNotSupported, "{cmd:?}");
    }
}

/// A NOOP is answered and closed; another version gets the one-byte mismatch reply; with
/// `--no-socks6`, a SOCKS 6 request is not answered at all, as by a SOCKS5-only server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_and_version_negotiation() {
    let proxy = Proxy::start(&[]);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = Vec::new();
    let any = TargetAddr::Ip("0.0.0.0:0".parse().unwrap());
    let opts = RequestOptions::default();
    socks6::encode_request(Command6::Noop, &any, &opts, &mut out);
    s.write_all(&out).await.unwrap();
    assert!(read_msg(&mut s, socks6::parse_auth_reply).await.success);
    let op = read_msg(&mut s, socks6::parse_operation_reply).await;
    assert_eq!(op.code, ReplyCode6::Succeeded);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[7, 1, 0, 0]).await.unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    assert_eq!(got, [6], "version mismatch reply");

    let v5only = Proxy::start(&["--no-socks6"]);
    let mut s = TcpStream::connect(v5only.addr).await.unwrap();
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(v5only.wait_logged("unsupported SOCKS version 0x06").await);
}

/// Initial data announced but cut short: the handshake deadline ends it, nothing connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_initial_data_must_arrive() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dest = l.local_addr().unwrap();
    let proxy = Proxy::start(&["--handshake-timeout", "1s"]);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = Vec::new();
    let opts = RequestOptions {
        initial_data: 100,
        ..Default::default()
    };
    socks6::encode_request(
        Command6::Op(Command::Connect),
        &TargetAddr::Ip(dest),
        &opts,
        &mut out,
    );
    out.extend_from_slice(&[b'x'; 40]);
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("closed at the handshake deadline");
    assert!(proxy.wait_logged("handshake timed out").await);
    let accepted = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
    assert!(
        accepted.is_err(),
        "connected without the whole initial data"
    );
}
