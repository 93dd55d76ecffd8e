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
#[cfg_attr(
    not(debug_assertions),
    ignore = "failpoints exist only in debug builds"
)]
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
#[cfg_attr(
    not(debug_assertions),
    ignore = "failpoints exist only in debug builds"
)]
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

/// Hostile clients all at once: silent connections, greetings cut short, resets mid-handshake,
/// garbage after a valid handshake and a flood of failing logins. Good clients are served
/// throughout, and once the attackers are gone the descriptors come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn good_clients_are_served_during_an_attack() {
    use tokio::net::TcpStream;
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start(&[
        "--user",
        "alice:right",
        "--handshake-timeout",
        "3s",
        "--max-auth-failures",
        "5",
    ]);
    let baseline = fd_count(proxy.pid());
    let addr = proxy.addr;

    // 600 silent or half-greeting connections, held open.
    let mut held = Vec::new();
    for i in 0..600 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(&[5]).await.unwrap();
        }
        held.push(s);
    }
    // Resets mid-handshake (SO_LINGER 0 then close).
    for _ in 0..200 {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut s = s.into_std().unwrap();
        std::io::Write::write_all(&mut s, &[5, 2, 0, 2]).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    // A flood of wrong passwords from one address, then the right one is refused too (locked).
    for _ in 0..20 {
        let r = socks5_connect(addr, &TargetAddr::Ip(echo), Some(("alice", "wrong"))).await;
        assert_eq!(r.err(), Some(ReplyCode::NotAllowed));
    }
    // Garbage after a valid handshake and request: relayed as data (it is the client's
    // payload), the tunnel works.
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let s = s.connect(addr).await.unwrap();
    let cmd = ringsocks::proto::Command::Connect;
    let creds = Some(("alice", "right"));
    let (mut s, _) = socks5_request_on(s, b"", cmd, &TargetAddr::Ip(echo), creds)
        .await
        .unwrap();
    s.write_all(&[0xff; 100]).await.unwrap();
    let mut back = [0u8; 100];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, [0xff; 100]);
    drop(s);

    // Good clients, meanwhile, from another address (127.0.0.2 is not locked out).
    let good = |i: u32| async move {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let s = s.connect(addr).await.unwrap();
        let target = TargetAddr::Ip(echo);
        let (s, _) = socks5_request_on(
            s,
            b"",
            ringsocks::proto::Command::Connect,
            &target,
            Some(("alice", "right")),
        )
        .await
        .unwrap();
        let msg = format!("good {i}");
        assert_eq!(echo_roundtrip(s, msg.as_bytes()).await, msg.as_bytes());
    };
    let mut tasks = Vec::new();
    for i in 0..100 {
        tasks.push(tokio::spawn(good(i)));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("a good client was not served in time")
            .unwrap();
    }
    drop(held);
    assert_fds_back(proxy.pid(), baseline).await;
}

/// CPU time (user + system) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Out of descriptors: new tunnels are refused (or wait in the backlog) without the accept loop
/// spinning, tunnels already open keep flowing, and service comes back when descriptors free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_refuses_cleanly_and_recovers() {
    use tokio::net::TcpStream;
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = Proxy::start_with_nofile(&["--handshake-timeout", "2s"], 64);
    let target = TargetAddr::Ip(echo);

    // Fill the table: tunnels until one fails.
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..64 {
        // In a task of its own: our client panics on a connection reset mid-handshake.
        let (addr, t) = (proxy.addr, target.clone());
        let attempt = tokio::spawn(async move { socks5_connect(addr, &t, None).await });
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(Ok((s, _)))) => open.push(s),
            Ok(Ok(Err(code))) => {
                refused = Some(format!("reply {code:?}"));
                break;
            }
            Ok(Err(_)) => {
                refused = Some("connection reset".into());
                break;
            }
            Err(_) => {
                refused = Some("left waiting".into());
                break;
            }
        }
    }
    let refused = refused.expect("64 descriptors cannot hold 64 tunnels");
    assert!(open.len() >= 10, "only {} tunnels fit", open.len());
    eprintln!("{} tunnels open, then: {refused}", open.len());

    // Exhausted: the accept loop backs off instead of spinning (a spinning worker burns a core:
    // 2 s would cost ~200 ticks; allow a tenth of that).
    let before = cpu_ticks(proxy.pid());
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(proxy.pid()) - before;
    assert!(
        spent < 20,
        "proxy used {spent} ticks in 2 s while out of descriptors"
    );
    assert!(
        proxy.logged("Too many open files"),
        "no log line for EMFILE"
    );
    // New clients get an answer promptly (refused with a reset, or served if a descriptor
    // came free meanwhile) rather than being left waiting in the backlog.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = s.write_all(&[5, 1, 0]).await;
    let mut buf = [0u8; 2];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        r.is_ok(),
        "a client was left waiting while out of descriptors"
    );
    assert!(
        proxy
            .wait_logged("out of descriptors: connection refused")
            .await
    );

    // Tunnels already open keep flowing.
    let first = open.remove(0);
    assert_eq!(
        echo_roundtrip(first, b"still flowing").await,
        b"still flowing"
    );

    // Free descriptors: service comes back (the dropped waiting connections included).
    drop(waiting);
    drop(open);
    let mut back = false;
    for _ in 0..100 {
        let (addr, t) = (proxy.addr, target.clone());
        let attempt = tokio::spawn(async move { socks5_connect(addr, &t, None).await });
        if let Ok(Ok(Ok((s, _)))) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            assert_eq!(echo_roundtrip(s, b"recovered").await, b"recovered");
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "no tunnel after descriptors were freed");
}
