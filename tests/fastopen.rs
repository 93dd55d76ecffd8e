//! TCP Fast Open on outbound connects (`--upstream-fastopen`): the client's first bytes ride
//! in the SYN once the destination has handed out a cookie, and nothing changes for the bytes.
//!
//! Fast Open needs `net.ipv4.tcp_fastopen` to allow both the client (1) and the server (2)
//! side; where it does not, these tests check only that the bytes are carried. With
//! `RINGSOCKS_TEST_REQUIRE_TFO=1` (as `.ci/run` sets inside a network namespace with
//! `tcp_fastopen=3`) the SYN data is required to be seen.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    closed_port, fastopen_both_ways, fastopen_listener, socks5_connect, syn_carried_data, Proxy,
};
use ringsocks::proto::{ReplyCode, TargetAddr};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn required() -> bool {
    std::env::var("RINGSOCKS_TEST_REQUIRE_TFO").is_ok_and(|v| v == "1")
}

/// A destination that accepts Fast Open: it answers each line with `pong:` and the line (or,
/// when `banner` is set, speaks first), and counts the connections whose SYN carried data.
fn destination(banner: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = fastopen_listener();
    let addr = l.local_addr().unwrap();
    let with_data = Arc::new(AtomicUsize::new(0));
    let count = with_data.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            if syn_carried_data(s.as_raw_fd()) {
                count.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::spawn(move || {
                if banner {
                    let _ = s.write_all(b"220 banner\r\n");
                    return;
                }
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while let Ok(1) = s.read(&mut b) {
                    line.push(b[0]);
                    if b[0] == b'\n' {
                        break;
                    }
                }
                let _ = s.write_all(b"pong:");
                let _ = s.write_all(&line);
            });
        }
    });
    (addr, with_data)
}

async fn ping(proxy: SocketAddr, dest: SocketAddr, i: usize) {
    let (mut s, _) = socks5_connect(proxy, &TargetAddr::Ip(dest), None)
        .await
        .expect("connected");
    let msg = format!("ping {i}\n");
    s.write_all(msg.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the answer arrives")
        .unwrap();
    assert_eq!(got, format!("pong:{msg}").into_bytes());
}

async fn first_bytes_ride_in_the_syn(runtime: &str) {
    let (dest, with_data) = destination(false);
    let proxy = Proxy::start(&["--runtime", runtime, "--upstream-fastopen"]);
    // The first connection fetches the cookie; the later ones use it.
    for i in 0..4 {
        ping(proxy.addr, dest, i).await;
    }
    let seen = with_data.load(Ordering::SeqCst);
    if fastopen_both_ways() {
        assert!(seen >= 2, "SYN data on {seen} of 4 connections");
    } else {
        assert!(
            !required(),
            "net.ipv4.tcp_fastopen does not allow Fast Open both ways"
        );
        eprintln!("Fast Open not allowed both ways here: checked the bytes only");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_ride_in_the_syn_io_uring() {
    first_bytes_ride_in_the_syn("uring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_ride_in_the_syn_epoll() {
    first_bytes_ride_in_the_syn("epoll").await;
}

/// Without the flag, no SYN carries data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default() {
    let (dest, with_data) = destination(false);
    let proxy = Proxy::start(&[]);
    for i in 0..3 {
        ping(proxy.addr, dest, i).await;
    }
    assert_eq!(with_data.load(Ordering::SeqCst), 0);
}

/// A destination that speaks first still gets its SYN (after the short wait for client
/// bytes) when the connect was deferred, and its banner arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_speaks_first_is_still_reached() {
    let (dest, _) = destination(true);
    let proxy = Proxy::start(&["--upstream-fastopen"]);
    for _ in 0..3 {
        let (mut s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(dest), None)
            .await
            .expect("connected");
        let mut b = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .expect("the banner arrives without the client sending anything")
            .unwrap();
        assert_eq!(&b, b"220 banner\r\n");
    }
}

/// A refused connect ends the tunnel without a byte from the destination: as the refusal
/// reply when the connect was an ordinary one, or (a cookie cached for the address, so the
/// success reply went first) as the end of the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_ends_the_tunnel() {
    let (dest, _) = destination(false);
    let proxy = Proxy::start(&["--upstream-fastopen"]);
    ping(proxy.addr, dest, 0).await;
    let closed = closed_port();
    for _ in 0..2 {
        match socks5_connect(proxy.addr, &TargetAddr::Ip(closed), None).await {
            Err(code) => assert_eq!(code, ReplyCode::ConnectionRefused),
            Ok((mut s, _)) => {
                let _ = s.write_all(b"ping\n").await;
                let mut got = Vec::new();
                let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
                    .await
                    .expect("the tunnel ends");
                assert!(got.is_empty(), "{got:?}");
                assert!(r.is_err(), "a refused connect resets the client");
            }
        }
    }
}

/// One SOCKS5 CONNECT whose greeting and request ride in the client's SYN (MSG_FASTOPEN);
/// returns whether the SYN's data was taken (TCPI_OPT_SYN_DATA on the client's socket), after
/// checking the tunnel carries a ping.
fn fast_open_client(proxy: SocketAddr, dest: SocketAddr) -> bool {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let std::net::SocketAddr::V4(d) = dest else {
        unreachable!()
    };
    let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
    hello.extend_from_slice(&d.ip().octets());
    hello.extend_from_slice(&d.port().to_be_bytes());
    let n = sock
        .send_to_with_flags(&hello, &proxy.into(), libc::MSG_FASTOPEN)
        .unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.write_all(&hello[n..]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &[5, 0, 5, 0], "method selection and success");
    s.write_all(b"ping\n").unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"pong:ping\n");
    syn_carried_data(s.as_raw_fd())
}

/// `--listen-fastopen`: a client's greeting and request may ride in its SYN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_may_send_their_request_in_the_syn() {
    let (dest, _) = destination(false);
    let proxy = Proxy::start(&["--listen-fastopen", "64"]);
    let addr = proxy.addr;
    let took = tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|_| fast_open_client(addr, dest))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    if fastopen_both_ways() {
        // The first connection fetches the cookie.
        assert!(took[1..].iter().all(|&t| t), "{took:?}");
    } else {
        assert!(
            !required(),
            "net.ipv4.tcp_fastopen does not allow Fast Open both ways"
        );
    }
}
