//! Shared harness for the integration tests: start the real `ringsocks` binary on an ephemeral
//! port, loopback target servers, and a small SOCKS client built on the crate's own codec.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringsocks::proto::{rfc1929, socks4, socks5, Command as Cmd, ReplyCode, TargetAddr};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; killed on drop.
pub struct Proxy {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every line it logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts `ringsocks serve --listen 127.0.0.1:0 ARGS...` and waits until it listens.
    pub fn start(args: &[&str]) -> Proxy {
        Self::start_on("127.0.0.1:0", args)
    }

    /// Same, with RLIMIT_NOFILE (soft and hard) set to `nofile` for the proxy.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> Proxy {
        Self::spawn("127.0.0.1:0", args, Some(nofile))
    }

    /// Same, on a given listen address.
    pub fn start_on(listen: &str, args: &[&str]) -> Proxy {
        Self::spawn(listen, args, None)
    }

    fn spawn(listen: &str, args: &[&str], nofile: Option<u64>) -> Proxy {
        // Two workers unless the test asks for another number.
        let threads: &[&str] = if args.contains(&"--threads") {
            &[]
        } else {
            &["--threads", "2"]
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringsocks"));
        cmd.args(["serve", "--listen", listen, "--log-level", "debug"])
            .args(threads)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // Safety: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start ringsocks");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let (Some(t), Ok(a)) = (tx.take(), rest.trim().parse::<SocketAddr>()) {
                        let _ = t.send(a);
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("ringsocks did not start: {:?}", log.lock().unwrap());
            }
        };
        Proxy { child, addr, log }
    }

    /// Every address it logged "listening on" for, in order (plain listeners, then PROXY
    /// protocol listeners).
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.split("listening on ").nth(1))
            .filter_map(|a| a.trim().parse().ok())
            .collect()
    }

    /// The metrics listener's address (started with `--metrics 127.0.0.1:0`).
    pub async fn metrics_addr(&self) -> SocketAddr {
        for _ in 0..100 {
            let found = self.log.lock().unwrap().iter().find_map(|l| {
                let rest = l.split("metrics on http://").nth(1)?;
                rest.split('/').next()?.parse().ok()
            });
            if let Some(a) = found {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no metrics listener logged");
    }

    /// Whether any log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// How many log lines contain `needle`.
    pub fn count_logged(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits up to 5 s for a log line containing `needle`.
    pub async fn wait_logged(&self, needle: &str) -> bool {
        for _ in 0..100 {
            if self.logged(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Sends SIGTERM and waits for exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // Safety: signalling a child we spawned and still own.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait")
    }

    /// The proxy's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log.lock().unwrap();
            let tail = &log[log.len().saturating_sub(40)..];
            eprintln!(
                "--- ringsocks log (last {} lines) ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An echo server on `bind` (e.g. "127.0.0.1:0" or "[::1]:0"): every connection echoes until
/// EOF, then half-closes.
pub async fn echo_server(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).await.expect("bind echo");
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// The number of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits up to 10 s for a process's open descriptors to come back to `baseline`; returns the
/// count at the end, and on failure prints what is still open.
pub async fn fds_return_to(pid: u32, baseline: usize) -> usize {
    let mut now = fd_count(pid);
    for _ in 0..200 {
        if now <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = fd_count(pid);
    }
    if now > baseline {
        let links: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        eprintln!("open descriptors of {pid}: {links:?}");
    }
    now
}

/// Fails unless a process's descriptors come back to `baseline` within 10 s.
pub async fn assert_fds_back(pid: u32, baseline: usize) {
    let now = fds_return_to(pid, baseline).await;
    assert!(
        now <= baseline,
        "proxy descriptors: {baseline} before, {now} after"
    );
}

/// A UDP echo server on `bind`: every datagram goes back to its sender.
pub async fn udp_echo(bind: &str) -> SocketAddr {
    let s = tokio::net::UdpSocket::bind(bind)
        .await
        .expect("bind udp echo");
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A port on loopback with nothing listening.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Our own SOCKS5 client: greeting (with credentials if given), request. Returns the stream
/// after a success reply, or the reply code.
pub async fn socks5_connect(
    proxy: SocketAddr,
    target: &TargetAddr,
    creds: Option<(&str, &str)>,
) -> Result<(TcpStream, TargetAddr), ReplyCode> {
    socks5_request(proxy, Cmd::Connect, target, creds).await
}

/// Our own SOCKS5 client for any command: greeting, optional RFC 1929 auth, request, first
/// reply. Returns the stream and BND after a success reply, or the reply code.
pub async fn socks5_request(
    proxy: SocketAddr,
    cmd: Cmd,
    target: &TargetAddr,
    creds: Option<(&str, &str)>,
) -> Result<(TcpStream, TargetAddr), ReplyCode> {
    let s = TcpStream::connect(proxy).await.expect("connect proxy");
    socks5_request_on(s, b"", cmd, target, creds).await
}

/// The same on a connected stream, sending `prefix` (e.g. a PROXY protocol header) together
/// with the greeting.
pub async fn socks5_request_on(
    mut s: TcpStream,
    prefix: &[u8],
    cmd: Cmd,
    target: &TargetAddr,
    creds: Option<(&str, &str)>,
) -> Result<(TcpStream, TargetAddr), ReplyCode> {
    let mut out = prefix.to_vec();
    match creds {
        Some(_) => socks5::encode_greeting(&[socks5::METHOD_USERPASS], &mut out),
        None => socks5::encode_greeting(&[socks5::METHOD_NO_AUTH], &mut out),
    }
    s.write_all(&out).await.unwrap();
    let mut sel = [0u8; 2];
    s.read_exact(&mut sel).await.expect("method selection");
    assert_eq!(sel[0], 5);
    if let Some((u, p)) = creds {
        assert_eq!(sel[1], socks5::METHOD_USERPASS);
        out.clear();
        rfc1929::encode_request(u.as_bytes(), p.as_bytes(), &mut out);
        s.write_all(&out).await.unwrap();
        let mut st = [0u8; 2];
        s.read_exact(&mut st).await.expect("auth status");
        if st != [1, 0] {
            return Err(ReplyCode::NotAllowed);
        }
    }
    out.clear();
    socks5::encode_request(cmd, target, &mut out);
    s.write_all(&out).await.unwrap();
    let reply = read_socks5_reply(&mut s).await;
    match reply.code {
        ReplyCode::Succeeded => Ok((s, reply.bound)),
        c => Err(c),
    }
}

/// Reads one whole SOCKS5 reply.
pub async fn read_socks5_reply(s: &mut TcpStream) -> socks5::Reply {
    let mut buf = Vec::new();
    loop {
        if let Some((r, _)) = socks5::parse_reply(&buf).expect("well-formed reply") {
            return r;
        }
        let mut b = [0u8; 1];
        let n = s.read(&mut b).await.expect("read reply");
        assert!(n > 0, "proxy closed before a complete reply; got {buf:?}");
        buf.push(b[0]);
    }
}

/// Our own SOCKS4/4a client. Returns the stream on 90, else the reply code byte.
pub async fn socks4_connect(
    proxy: SocketAddr,
    target: &TargetAddr,
    userid: &str,
) -> Result<TcpStream, u8> {
    let mut s = TcpStream::connect(proxy).await.expect("connect proxy");
    let mut out = Vec::new();
    socks4::encode_request(Cmd::Connect, target, userid.as_bytes(), &mut out);
    s.write_all(&out).await.unwrap();
    let mut r = [0u8; 8];
    s.read_exact(&mut r).await.expect("socks4 reply");
    assert_eq!(r[0], 0);
    if r[1] == 90 {
        Ok(s)
    } else {
        Err(r[1])
    }
}

/// Writes `msg`, half-closes, and reads everything back.
pub async fn echo_roundtrip(mut s: TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    back
}

/// Sends raw bytes and reads until the proxy closes (bounded by 5 s).
pub async fn raw_exchange(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "proxy did not close the connection; got {got:?}");
    got
}

/// A file removed on drop.
pub struct TempPath(String);

impl TempPath {
    /// Its path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `text` to a fresh file in the temp directory.
pub fn temp_file(text: &str) -> TempPath {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "ringsocks-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, text).unwrap();
    TempPath(p.display().to_string())
}

/// `GET /metrics`.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample named exactly `series` (name with labels).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sum of every sample whose series starts with `prefix`.
pub fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Streams `total` bytes of a position-dependent pattern, returning their hash.
pub async fn send_pattern<W: AsyncWriteExt + Unpin>(w: &mut W, total: u64, seed: u8) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    let mut chunk = vec![0u8; 256 * 1024 + 13];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(chunk.len() as u64) as usize;
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            let pos = sent + i as u64;
            *b = (pos as u8).wrapping_mul(31).wrapping_add((pos >> 8) as u8) ^ seed;
        }
        h.update(&chunk[..n]);
        w.write_all(&chunk[..n]).await.unwrap();
        sent += n as u64;
    }
    h.finalize().into()
}

/// Reads to EOF, returning the byte count and hash.
pub async fn recv_all<R: AsyncReadExt + Unpin>(r: &mut R) -> (u64, [u8; 32]) {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n_total = 0u64;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return (n_total, h.finalize().into());
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
}

/// Whether this network namespace lets loopback connections use TCP Fast Open both ways
/// (`net.ipv4.tcp_fastopen` has bits 1 and 2).
pub fn fastopen_both_ways() -> bool {
    let v = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen").unwrap_or_default();
    v.trim().parse::<u32>().map(|v| v & 3 == 3).unwrap_or(false)
}

/// A blocking listener on 127.0.0.1 that accepts TCP Fast Open (TCP_FASTOPEN, queue 64).
pub fn fastopen_listener() -> std::net::TcpListener {
    use std::os::fd::AsRawFd;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let qlen: libc::c_int = 64;
    // Safety: a live descriptor and an int.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            &qlen as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "TCP_FASTOPEN");
    sock.listen(64).unwrap();
    sock.into()
}

/// Whether a connection's SYN carried data that was taken (TCPI_OPT_SYN_DATA in tcp_info): on
/// an accepted socket, the client's SYN; on a connected one, its own.
pub fn syn_carried_data(fd: std::os::fd::RawFd) -> bool {
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // Safety: a live descriptor and a buffer of `len` bytes (the kernel copies at most that).
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO");
    // struct tcp_info: state, ca_state, retransmits, probes, backoff, options.
    info[5] & 0x20 != 0
}
