//! Relay integrity, the same for every relay mode (splice, adaptive and copy on io_uring;
//! splice and copy on epoll): 1 GiB each way with SHA-256 checks, half-close each way, the
//! target resetting mid-stream, the client vanishing mid-stream, and the proxy's descriptors
//! back at baseline afterwards.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringsocks::proto::TargetAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

macro_rules! every_mode {
    ($($name:ident),*) => {
        every_mode!(@mode splice_uring, ["--runtime", "uring", "--relay", "splice"], $($name),*);
        every_mode!(@mode adaptive_uring, ["--runtime", "uring", "--relay", "adaptive"], $($name),*);
        every_mode!(@mode copy_uring, ["--runtime", "uring", "--relay", "copy"], $($name),*);
        every_mode!(@mode splice_epoll, ["--runtime", "epoll", "--relay", "splice"], $($name),*);
        every_mode!(@mode copy_epoll, ["--runtime", "epoll", "--relay", "copy"], $($name),*);
    };
    (@mode $mode:ident, [$($arg:expr),*], $($name:ident),*) => {
        mod $mode {
            const ARGS: &[&str] = &[$($arg),*];
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(ARGS).await })*
        }
    };
}

every_mode!(
    one_gib_each_way,
    half_close_each_way,
    target_reset_mid_stream,
    client_vanishes_mid_stream
);

const GIB: u64 = 1 << 30;

async fn one_gib_each_way(args: &[&str]) {
    let proxy = Proxy::start(args);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let send = tokio::spawn(async move {
            let h = send_pattern(&mut w, GIB, 0x5A).await;
            w.shutdown().await.unwrap();
            h
        });
        let got = recv_all(&mut r).await;
        (got, send.await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = fd_count(proxy.pid());
    let (s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let up = tokio::spawn(async move {
        let h = send_pattern(&mut w, GIB, 0xA5).await;
        w.shutdown().await.unwrap();
        h
    });
    let down = recv_all(&mut r).await;
    let sent_up = up.await.unwrap();
    let (got_up, sent_down) = server.await.unwrap();
    assert_eq!(
        got_up,
        (GIB, sent_up),
        "client -> target: every byte, in order"
    );
    assert_eq!(
        down,
        (GIB, sent_down),
        "target -> client: every byte, in order"
    );
    assert!(proxy.wait_logged(&format!("up={GIB} down={GIB}")).await);
    drop(r);
    assert_fds_back(proxy.pid(), baseline).await;
}

async fn half_close_each_way(args: &[&str]) {
    let proxy = Proxy::start(args);
    // Client half-closes first: the target reads to EOF, then answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(format!("read {}", all.len()).as_bytes())
            .await
            .unwrap();
    });
    let (mut s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap();
    s.write_all(&vec![1u8; 300_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, "read 300000");

    // Target half-closes first: the client still gets to send afterwards.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(&vec![2u8; 200_000]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        all.len()
    });
    let (mut s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap();
    let mut first = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.len(), 200_000);
    s.write_all(&vec![3u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap(),
        100_000
    );
}

async fn target_reset_mid_stream(args: &[&str]) {
    let proxy = Proxy::start(args);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(&vec![9u8; 100_000]).await.unwrap();
        let mut b = vec![0u8; 1 << 16];
        let _ = s.read(&mut b).await;
        // Abort: RST instead of FIN.
        let std = s.into_std().unwrap();
        socket2::SockRef::from(&std)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(std);
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = fd_count(proxy.pid());
    let (mut s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap();
    // The client keeps streaming; the reset must reach it promptly as a close or an error.
    let t0 = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let chunk = vec![4u8; 64 * 1024];
        let mut b = vec![0u8; 1 << 16];
        let (mut rd, mut wr) = s.split();
        loop {
            tokio::select! {
                w = wr.write_all(&chunk) => if w.is_err() { return },
                r = rd.read(&mut b) => match r { Ok(0) | Err(_) => return, Ok(_) => {} },
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "client never saw the target's reset");
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(s);
    assert!(proxy.wait_logged("error_side=\"target\"").await);
    assert_fds_back(proxy.pid(), baseline).await;
}

async fn client_vanishes_mid_stream(args: &[&str]) {
    let proxy = Proxy::start(args);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        // Stream until the proxy closes the connection.
        let chunk = vec![5u8; 64 * 1024];
        let t0 = Instant::now();
        while s.write_all(&chunk).await.is_ok() {
            if t0.elapsed() > Duration::from_secs(20) {
                return None;
            }
        }
        Some(t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = fd_count(proxy.pid());
    let (mut s, _) = socks5_connect(proxy.addr, &TargetAddr::Ip(target), None)
        .await
        .unwrap();
    let mut b = vec![0u8; 1 << 16];
    s.read_exact(&mut b).await.unwrap();
    let std: std::net::TcpStream = s.into_std().unwrap();
    socket2::SockRef::from(&std)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(std);
    let took = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        took.is_some(),
        "the target was never told the client went away"
    );
    assert_fds_back(proxy.pid(), baseline).await;
    let _ = TcpStream::connect(proxy.addr).await.unwrap(); // still serving
}
