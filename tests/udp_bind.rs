//! UDP ASSOCIATE and BIND against the real binary, on both runtimes, with the crate's own
//! client: round trips to IPv4, IPv6 and domain destinations, strangers dropped, fragments
//! dropped, the association ending with its control connection, 1000 datagrams without loss,
//! the largest IPv4 datagram whole; BIND from the expected peer, a stranger reset, the
//! timeout, the control connection closing, and SOCKS4 BIND.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ringsocks::proto::udp::{encode_header, parse_header};
use ringsocks::proto::{socks4, socks5, Command as Cmd, ReplyCode, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(&["--runtime", "uring"]).await })*
        }
        mod epoll {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(&["--runtime", "epoll"]).await })*
        }
    };
}

both_runtimes!(
    udp_round_trips_ipv4_ipv6_domain,
    udp_reply_names_a_reachable_address,
    udp_strangers_are_dropped,
    udp_first_datagram_fixes_the_port,
    udp_fragments_and_garbage_are_dropped,
    udp_association_ends_with_its_control_connection,
    udp_thousand_datagrams_no_loss,
    udp_largest_ipv4_datagram_arrives_whole,
    udp_with_auth,
    bind_accepts_the_expected_peer,
    bind_resets_other_peers,
    bind_times_out,
    bind_ends_when_the_client_leaves,
    socks4_bind,
);

const WAIT: Duration = Duration::from_secs(5);

/// An association: its control connection, the relay address from the reply, and a client
/// UDP socket on loopback.
struct Assoc {
    control: TcpStream,
    relay: SocketAddr,
    sock: UdpSocket,
}

async fn associate(proxy: &Proxy, requested: SocketAddr) -> Assoc {
    associate_as(proxy, requested, None).await
}

async fn associate_as(proxy: &Proxy, requested: SocketAddr, creds: Option<(&str, &str)>) -> Assoc {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (control, bound) = socks5_request(
        proxy.addr,
        Cmd::UdpAssociate,
        &TargetAddr::Ip(requested),
        creds,
    )
    .await
    .expect("UDP ASSOCIATE accepted");
    let TargetAddr::Ip(relay) = bound else {
        panic!("BND is an IP address")
    };
    Assoc {
        control,
        relay,
        sock,
    }
}

impl Assoc {
    async fn send(&self, to: &TargetAddr, payload: &[u8]) {
        let mut d = Vec::new();
        encode_header(to, &mut d);
        d.extend_from_slice(payload);
        self.sock.send_to(&d, self.relay).await.unwrap();
    }

    /// The next datagram from the relay: its source (from the header) and payload.
    async fn recv(&self, within: Duration) -> Option<(TargetAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 70000];
        let (n, from) = tokio::time::timeout(within, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        assert_eq!(from, self.relay, "datagrams come from the relay address");
        let (h, off) = parse_header(&buf[..n]).unwrap().expect("whole header");
        Some((h.addr, buf[off..n].to_vec()))
    }
}

async fn udp_round_trips_ipv4_ipv6_domain(args: &[&str]) {
    let proxy = Proxy::start(args);
    let a = associate(&proxy, "0.0.0.0:0".parse().unwrap()).await;
    let v4 = udp_echo("127.0.0.1:0").await;
    let v6 = udp_echo("[::1]:0").await;
    let any = udp_echo("[::]:0").await; // dual-stack: "localhost" may resolve either way

    a.send(&TargetAddr::Ip(v4), b"over ipv4").await;
    let (src, p) = a.recv(WAIT).await.expect("IPv4 echo");
    assert_eq!((src, p.as_slice()), (TargetAddr::Ip(v4), &b"over ipv4"[..]));

    a.send(&TargetAddr::Ip(v6), b"over ipv6").await;
    let (src, p) = a.recv(WAIT).await.expect("IPv6 echo");
    assert_eq!((src, p.as_slice()), (TargetAddr::Ip(v6), &b"over ipv6"[..]));

    let name = TargetAddr::Domain("localhost".into(), any.port());
    a.send(&name, b"by name").await;
    let (src, p) = a.recv(WAIT).await.expect("echo by name");
    assert_eq!(p, b"by name");
    let TargetAddr::Ip(src) = src else {
        panic!("replies name an IP source")
    };
    assert!(src.ip().is_loopback() && src.port() == any.port(), "{src}");
    // Again, from the association's name cache.
    a.send(&name, b"cached").await;
    assert_eq!(a.recv(WAIT).await.expect("cached name").1, b"cached");
}

async fn udp_reply_names_a_reachable_address(args: &[&str]) {
    let proxy = Proxy::start_on("[::1]:0", args);
    let (_control, bound) = socks5_request(
        proxy.addr,
        Cmd::UdpAssociate,
        &TargetAddr::Ip("[::]:0".parse().unwrap()),
        None,
    )
    .await
    .unwrap();
    // The control connection reached [::1]; so must the relay address, never [::] or 0.0.0.0.
    let TargetAddr::Ip(relay) = bound else {
        panic!("IP BND")
    };
    assert_eq!(relay.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    assert_ne!(relay.port(), 0);
    let sock = UdpSocket::bind("[::1]:0").await.unwrap();
    let echo = udp_echo("127.0.0.1:0").await;
    let mut d = Vec::new();
    encode_header(&TargetAddr::Ip(echo), &mut d);
    d.extend_from_slice(b"v6 client, v4 destination");
    sock.send_to(&d, relay).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("reply over IPv6")
        .unwrap();
    let (h, off) = parse_header(&buf[..n]).unwrap().unwrap();
    assert_eq!(h.addr, TargetAddr::Ip(echo));
    assert_eq!(&buf[off..n], b"v6 client, v4 destination");
}

/// A UDP target that reports every payload it receives.
async fn udp_recorder() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = tx.send(buf[..n].to_vec());
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    (addr, rx)
}

async fn udp_strangers_are_dropped(args: &[&str]) {
    let proxy = Proxy::start(args);
    let (target, mut seen) = udp_recorder().await;
    // The client names the port it will send from.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (control, bound) = socks5_request(
        proxy.addr,
        Cmd::UdpAssociate,
        &TargetAddr::Ip(sock.local_addr().unwrap()),
        None,
    )
    .await
    .unwrap();
    let TargetAddr::Ip(relay) = bound else {
        panic!()
    };
    let a = Assoc {
        control,
        relay,
        sock,
    };
    // Same IP, another port: a stranger.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut d = Vec::new();
    encode_header(&TargetAddr::Ip(target), &mut d);
    d.extend_from_slice(b"from a stranger");
    stranger.send_to(&d, relay).await.unwrap();
    a.send(&TargetAddr::Ip(target), b"from the client").await;
    let got = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"from the client");
    assert_eq!(a.recv(WAIT).await.unwrap().1, b"from the client");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        seen.try_recv().is_err(),
        "the stranger's datagram was relayed"
    );
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_millis(200), stranger.recv_from(&mut buf)).await;
    assert!(r.is_err(), "the stranger got an answer");
    drop(a);
    assert!(proxy.wait_logged("dropped_stranger=1").await);
}

async fn udp_first_datagram_fixes_the_port(args: &[&str]) {
    let proxy = Proxy::start(args);
    let (target, mut seen) = udp_recorder().await;
    let a = associate(&proxy, "0.0.0.0:0".parse().unwrap()).await;
    a.send(&TargetAddr::Ip(target), b"first").await;
    assert_eq!(a.recv(WAIT).await.unwrap().1, b"first");
    assert_eq!(seen.recv().await.unwrap(), b"first");
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut d = Vec::new();
    encode_header(&TargetAddr::Ip(target), &mut d);
    d.extend_from_slice(b"second port");
    other.send_to(&d, a.relay).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.try_recv().is_err(), "a second source port was relayed");
}

async fn udp_fragments_and_garbage_are_dropped(args: &[&str]) {
    let proxy = Proxy::start(args);
    let (target, mut seen) = udp_recorder().await;
    let a = associate(&proxy, "0.0.0.0:0".parse().unwrap()).await;
    let mut frag = Vec::new();
    encode_header(&TargetAddr::Ip(target), &mut frag);
    frag[2] = 1; // FRAG = 1
    frag.extend_from_slice(b"fragment");
    a.sock.send_to(&frag, a.relay).await.unwrap();
    a.sock.send_to(&[0, 0, 0, 9, 1], a.relay).await.unwrap(); // bad ATYP
    a.sock.send_to(&[0, 0], a.relay).await.unwrap(); // too short
    a.send(&TargetAddr::Ip(target), b"whole").await;
    assert_eq!(a.recv(WAIT).await.unwrap().1, b"whole");
    assert_eq!(seen.recv().await.unwrap(), b"whole");
    assert!(seen.try_recv().is_err());
    drop(a);
    assert!(proxy.wait_logged("dropped_fragment=1").await);
    assert!(proxy.logged("dropped_malformed=2"));
}

async fn udp_association_ends_with_its_control_connection(args: &[&str]) {
    let proxy = Proxy::start(args);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = fd_count(proxy.pid());
    let echo = udp_echo("127.0.0.1:0").await;
    let a = associate(&proxy, "0.0.0.0:0".parse().unwrap()).await;
    a.send(&TargetAddr::Ip(echo), b"alive").await;
    assert_eq!(a.recv(WAIT).await.unwrap().1, b"alive");
    assert!(
        fd_count(proxy.pid()) >= baseline + 3,
        "control + two UDP sockets"
    );
    let Assoc {
        control,
        relay,
        sock,
    } = a;
    drop(control);
    assert_fds_back(proxy.pid(), baseline).await;
    assert!(proxy.wait_logged("cmd=\"udp\"").await || proxy.logged("cmd=udp"));
    // The relay port is closed: nothing comes back.
    let a = Assoc {
        control: TcpStream::connect(proxy.addr).await.unwrap(),
        relay,
        sock,
    };
    a.send(&TargetAddr::Ip(echo), b"too late").await;
    assert!(a.recv(Duration::from_millis(300)).await.is_none());
}

async fn udp_thousand_datagrams_no_loss(args: &[&str]) {
    let proxy = Proxy::start(args);
    let echo = udp_echo("127.0.0.1:0").await;
    let a = associate(&proxy, "0.0.0.0:0".parse().unwrap()).await;
    let to = TargetAddr::Ip(echo);
    let mut got = vec![false; 1000];
    let mut received = 0;
    // 32 in flight at a time, each datagram numbered.
    let mut next = 0u32;
    while next < 32 {
        a.send(&to, &next.to_be_bytes()).await;
        next += 1;
    }
    while received < 1000 {
        let (_, p) = a.recv(WAIT).await.expect("a datagram was lost");
        let i = u32::from_be_bytes(p[..4].try_into().unwrap()) as usize;
        assert!(!got[i], "duplicate {i}");
        got[i] = true;
        received += 1;
        if next < 1000 {
            a.send(&to, &next.to_be_bytes()).await;
            next += 1;
        }
    }
    assert!(got.iter().all(|&g| g));
}

async fn udp_largest_ipv4_datagram_arrives_whole(args: &[&str]) {
    let proxy = Proxy::start(args);
    let echo = udp_echo("127.0.0.1:0").await;
    let a = associate(&proxy, "0.0.0.0:0".parse().unwrap()).await;
    // 65 507 bytes is the largest IPv4 UDP datagram: a 10-byte header and the payload.
    let payload: Vec<u8> = (0..65507 - 10).map(|i| (i % 251) as u8).collect();
    a.send(&TargetAddr::Ip(echo), &payload).await;
    let (_, back) = a.recv(WAIT).await.expect("the large datagram");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "payload changed");
}

async fn udp_with_auth(args: &[&str]) {
    let mut args = args.to_vec();
    args.extend(["--user", "alice:wonder"]);
    let proxy = Proxy::start(&args);
    let echo = udp_echo("127.0.0.1:0").await;
    let a = associate_as(
        &proxy,
        "0.0.0.0:0".parse().unwrap(),
        Some(("alice", "wonder")),
    )
    .await;
    a.send(&TargetAddr::Ip(echo), b"authenticated").await;
    assert_eq!(a.recv(WAIT).await.unwrap().1, b"authenticated");
    let bad = socks5_request(
        proxy.addr,
        Cmd::UdpAssociate,
        &TargetAddr::Ip("0.0.0.0:0".parse().unwrap()),
        Some(("alice", "wrong")),
    )
    .await;
    assert!(bad.is_err());
}

/// Sends a BIND request; returns the control connection and the first reply's address.
async fn bind_request(proxy: &Proxy, expected: SocketAddr) -> (TcpStream, SocketAddr) {
    let (s, bound) = socks5_request(proxy.addr, Cmd::Bind, &TargetAddr::Ip(expected), None)
        .await
        .expect("BIND accepted");
    let TargetAddr::Ip(at) = bound else {
        panic!("IP BND")
    };
    assert_ne!(at.port(), 0);
    assert!(
        !at.ip().is_unspecified(),
        "first reply names a reachable address"
    );
    (s, at)
}

async fn try_connect_from(local: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{local}:0").parse().unwrap()).unwrap();
    s.connect(to).await
}

async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    try_connect_from(local, to).await.unwrap()
}

async fn bind_accepts_the_expected_peer(args: &[&str]) {
    let proxy = Proxy::start(args);
    let (mut control, at) = bind_request(&proxy, "127.0.0.1:0".parse().unwrap()).await;
    let mut inbound = connect_from("127.0.0.1", at).await;
    let second = tokio::time::timeout(WAIT, read_socks5_reply(&mut control))
        .await
        .expect("second reply");
    assert_eq!(second.code, ReplyCode::Succeeded);
    assert_eq!(second.bound, TargetAddr::Ip(inbound.local_addr().unwrap()));
    // Relayed both ways, half-close carried through.
    inbound.write_all(b"hello from the peer").await.unwrap();
    let mut b = [0u8; 19];
    control.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hello from the peer");
    control.write_all(b"and back").await.unwrap();
    control.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, inbound.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"and back");
    // A second connection to the BIND port is not taken: the listener is gone.
    assert!(TcpStream::connect(at).await.is_err());
}

async fn bind_resets_other_peers(args: &[&str]) {
    let proxy = Proxy::start(args);
    let (mut control, at) = bind_request(&proxy, "127.0.0.2:0".parse().unwrap()).await;
    // The proxy resets the unexpected peer, possibly before its connect has even returned.
    if let Ok(mut wrong) = try_connect_from("127.0.0.1", at).await {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(WAIT, wrong.read(&mut b))
            .await
            .unwrap();
        assert!(r.is_err(), "the unexpected peer was not reset: {r:?}");
    }
    assert!(proxy.wait_logged("unexpected address").await);
    let right = connect_from("127.0.0.2", at).await;
    let second = tokio::time::timeout(WAIT, read_socks5_reply(&mut control))
        .await
        .expect("second reply");
    assert_eq!(second.code, ReplyCode::Succeeded);
    assert_eq!(second.bound, TargetAddr::Ip(right.local_addr().unwrap()));
}

async fn bind_times_out(args: &[&str]) {
    let mut args = args.to_vec();
    args.extend(["--bind-timeout", "500ms"]);
    let proxy = Proxy::start(&args);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = fd_count(proxy.pid());
    let (mut control, at) = bind_request(&proxy, "0.0.0.0:0".parse().unwrap()).await;
    let second = tokio::time::timeout(WAIT, read_socks5_reply(&mut control))
        .await
        .expect("a failure reply after the bind timeout");
    assert_eq!(second.code, ReplyCode::GeneralFailure);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, control.read_to_end(&mut rest)).await;
    drop(control);
    assert_fds_back(proxy.pid(), baseline).await;
    assert!(TcpStream::connect(at).await.is_err(), "listener closed");
}

async fn bind_ends_when_the_client_leaves(args: &[&str]) {
    let proxy = Proxy::start(args);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = fd_count(proxy.pid());
    let (control, at) = bind_request(&proxy, "0.0.0.0:0".parse().unwrap()).await;
    drop(control);
    assert_fds_back(proxy.pid(), baseline).await;
    assert!(TcpStream::connect(at).await.is_err(), "listener closed");
}

async fn socks4_bind(args: &[&str]) {
    let proxy = Proxy::start(args);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = Vec::new();
    let expected: SocketAddr = "127.0.0.1:21".parse().unwrap();
    socks4::encode_request(Cmd::Bind, &TargetAddr::Ip(expected), b"ftp", &mut out);
    s.write_all(&out).await.unwrap();
    let mut r = [0u8; 8];
    s.read_exact(&mut r).await.unwrap();
    let first = socks4::parse_reply(&r).unwrap().unwrap().0;
    assert_eq!(first.code, socks4::ReplyCode4::Granted);
    let at = SocketAddr::V4(first.bound);
    let at = if at.ip().is_unspecified() {
        SocketAddr::new(proxy.addr.ip(), at.port())
    } else {
        at
    };
    let mut inbound = connect_from("127.0.0.1", at).await;
    s.read_exact(&mut r).await.unwrap();
    let second = socks4::parse_reply(&r).unwrap().unwrap().0;
    assert_eq!(second.code, socks4::ReplyCode4::Granted);
    assert_eq!(SocketAddr::V4(second.bound), inbound.local_addr().unwrap());
    inbound.write_all(b"data connection").await.unwrap();
    let mut b = [0u8; 15];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"data connection");
    let _ = socks5::METHOD_NO_AUTH;
}
