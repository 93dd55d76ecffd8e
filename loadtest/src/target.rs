//! Loopback target servers, run on their own threads inside the generator process.
//!
//! One TCP port speaks several protocols, chosen by the first byte a connection sends:
//! - `0x00..`/`0x80..` request/response ("rr"): an 8-byte header `[u32 BE request_len][u32 BE
//!   response_len]` (request_len counts the header; its top bit [`RR_CLOSE`] asks the server to
//!   close the connection after answering), then the rest of the request; the server answers with
//!   `response_len` bytes. Without the close bit and with equal lengths this is plain echo, so any
//!   echo server works as an external target for `cps --close client` and `rps`.
//! - `E`: plain echo of everything after the `E` (including the `E`), used by `hold`.
//! - `U`/`D`/`B`: framed bulk streaming up, down or both, used by `throughput` (see [`stream`]).
//! - `G`: a minimal HTTP/1.0 responder (`GET /N` returns N bytes and closes), for cross-checks
//!   with curl and other HTTP-through-SOCKS clients.
//!
//! The UDP port with the same number echoes datagrams.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::error::LoadError;

pub const RR_HEADER: usize = 8;
/// Largest request or response the rr protocol accepts (network-influenced values are bounded).
pub const RR_MAX: u32 = 64 << 20;
/// Flag in request_len: the server closes first after the response (so TIME_WAIT lands on the
/// server side, not on ephemeral ports of the client or the proxy).
pub const RR_CLOSE: u32 = 1 << 31;
/// Largest throughput frame payload.
pub const FRAME_MAX: u32 = 1 << 20;
pub const MODE_UP: u8 = b'U';
pub const MODE_DOWN: u8 = b'D';
pub const MODE_BOTH: u8 = b'B';
pub const MODE_ECHO: u8 = b'E';
static ZEROS: [u8; 64 * 1024] = [0x5a; 64 * 1024];

/// Build an rr request header.
pub fn rr_header(request_len: u32, response_len: u32) -> [u8; RR_HEADER] {
    let mut h = [0u8; RR_HEADER];
    h[..4].copy_from_slice(&request_len.to_be_bytes());
    h[4..].copy_from_slice(&response_len.to_be_bytes());
    h
}

/// Running target servers; stopped when dropped.
pub struct Targets {
    pub addr: SocketAddr,
    pub thread_ids: Arc<std::sync::Mutex<Vec<i32>>>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Targets {
    /// Start `threads` target threads sharing a TCP and a UDP port on `bind` via SO_REUSEPORT.
    pub fn start(bind: SocketAddr, threads: usize) -> Result<Targets, LoadError> {
        let threads = threads.max(1);
        let first = reuseport_tcp(bind)?;
        let addr = first
            .local_addr()
            .map_err(|e| LoadError::io("target local_addr", e))?;
        let mut tcp = vec![first];
        let mut udp = Vec::new();
        for i in 0..threads {
            if i > 0 {
                tcp.push(reuseport_tcp(addr)?);
            }
            udp.push(reuseport_udp(addr)?);
        }
        let (stop, stop_rx) = watch::channel(false);
        let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let mut handles = Vec::new();
        for (i, (t, u)) in tcp.into_iter().zip(udp).enumerate() {
            let mut stop_rx = stop_rx.clone();
            let ids = ids.clone();
            let ready = ready_tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("target-{i}"))
                .spawn(move || {
                    if let Ok(mut v) = ids.lock() {
                        v.push(crate::proc::gettid());
                    }
                    let _ = ready.send(());
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            eprintln!("target thread: cannot build runtime: {e}");
                            return;
                        }
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        let (Ok(tl), Ok(ul)) = (TcpListener::from_std(t), UdpSocket::from_std(u))
                        else {
                            eprintln!("target thread: cannot register sockets");
                            return;
                        };
                        tokio::task::spawn_local(udp_echo(ul));
                        tokio::select! {
                            _ = accept_loop(tl) => {}
                            _ = stop_rx.wait_for(|s| *s) => {}
                        }
                    });
                })
                .map_err(|e| LoadError::io("spawn target thread", e))?;
            handles.push(h);
        }
        // Wait until every thread has registered its id (for per-thread CPU readings).
        for _ in 0..threads {
            let _ = ready_rx.recv_timeout(std::time::Duration::from_secs(5));
        }
        Ok(Targets {
            addr,
            thread_ids: ids,
            stop,
            threads: handles,
        })
    }

    pub fn tids(&self) -> Vec<i32> {
        self.thread_ids
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

fn reuseport_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, LoadError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let ctx = |e| LoadError::io(format!("bind TCP target {addr}"), e);
    let s =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(ctx)?;
    s.set_reuse_address(true).map_err(ctx)?;
    s.set_reuse_port(true).map_err(ctx)?;
    s.set_nonblocking(true).map_err(ctx)?;
    s.bind(&addr.into()).map_err(ctx)?;
    s.listen(4096).map_err(ctx)?;
    Ok(s.into())
}

fn reuseport_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, LoadError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let ctx = |e| LoadError::io(format!("bind UDP target {addr}"), e);
    let s =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(ctx)?;
    s.set_reuse_port(true).map_err(ctx)?;
    s.set_nonblocking(true).map_err(ctx)?;
    // Room for bursts from many slots.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into()).map_err(ctx)?;
    Ok(s.into())
}

async fn accept_loop(l: TcpListener) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::task::spawn_local(async move {
                    let _ = serve(s).await;
                });
            }
            Err(_) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}

async fn udp_echo(s: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    }
}

/// Read at least `want` bytes into `buf[..]` starting at `*len`.
async fn fill<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    len: &mut usize,
    want: usize,
) -> std::io::Result<bool> {
    while *len < want {
        let n = r.read(&mut buf[*len..]).await?;
        if n == 0 {
            return Ok(false);
        }
        *len += n;
    }
    Ok(true)
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await?;
    if n == 0 {
        return Ok(());
    }
    match buf[0] {
        MODE_ECHO => echo(s, buf, n).await,
        MODE_UP | MODE_DOWN | MODE_BOTH => stream::serve(s, buf, n).await,
        b'G' => http(s, buf, n).await,
        _ => rr(s, buf, n).await,
    }
}

async fn echo(mut s: TcpStream, mut buf: Vec<u8>, mut n: usize) -> std::io::Result<()> {
    loop {
        s.write_all(&buf[..n]).await?;
        n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
    }
}

async fn write_filler<W: AsyncWrite + Unpin>(w: &mut W, mut n: usize) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len());
        w.write_all(&ZEROS[..k]).await?;
        n -= k;
    }
    Ok(())
}

async fn rr(mut s: TcpStream, mut buf: Vec<u8>, mut len: usize) -> std::io::Result<()> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    loop {
        if !fill(&mut s, &mut buf, &mut len, RR_HEADER).await? {
            return Ok(());
        }
        let req_flags = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let close = req_flags & RR_CLOSE != 0;
        let req = req_flags & !RR_CLOSE;
        let resp = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if (req as usize) < RR_HEADER || req > RR_MAX || resp > RR_MAX {
            return Err(bad("bad rr header"));
        }
        // Consume the request: what is buffered, then the rest from the socket.
        let mut left = req as usize;
        let take = left.min(len);
        buf.copy_within(take..len, 0);
        len -= take;
        left -= take;
        while left > 0 {
            let k = left.min(buf.len());
            let n = s.read(&mut buf[..k]).await?;
            if n == 0 {
                return Err(bad("eof inside request"));
            }
            left -= n;
        }
        write_filler(&mut s, resp as usize).await?;
        if close {
            return s.shutdown().await;
        }
    }
}

async fn http(mut s: TcpStream, mut buf: Vec<u8>, mut len: usize) -> std::io::Result<()> {
    let end = loop {
        if let Some(p) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let want = len + 1;
        if len == buf.len() || !fill(&mut s, &mut buf, &mut len, want).await? {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let size: usize = head
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.trim_start_matches('/').parse().ok())
        .unwrap_or(64)
        .min(RR_MAX as usize);
    let hdr = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(hdr.as_bytes()).await?;
    write_filler(&mut s, size).await?;
    s.shutdown().await
}

/// Framed bulk streaming with a byte-exact end-of-stream check.
///
/// The client sends a mode byte (`U`, `D` or `B`), then, if uploading, frames
/// `[u32 BE len (1..=FRAME_MAX)][payload]`, and finally an end frame `[u32 0]`. The server sends
/// frames downstream (modes `D`/`B`) until it has read the client's end frame, then its own end
/// frame `[u32 0][u64 BE payload bytes it sent][u64 BE payload bytes it received]`. Neither side
/// relies on half-close, so proxies that close both directions at once still work.
pub mod stream {
    use super::*;

    pub const TRAILER: usize = 4 + 16;

    /// Incremental frame parser; returns payload byte counts and detects the end frame.
    #[derive(Debug, Default)]
    pub struct FrameReader {
        /// Bytes of the current frame payload still to skip.
        left: u64,
        head: [u8; 4],
        head_len: usize,
        pub payload: u64,
        pub ended: bool,
    }

    impl FrameReader {
        /// Consume `data`; returns how many bytes were used (less than `data.len()` only when
        /// the end frame was reached: the rest is the trailer).
        pub fn feed(&mut self, data: &[u8]) -> Result<usize, &'static str> {
            let mut i = 0;
            while i < data.len() && !self.ended {
                if self.left > 0 {
                    let k = (self.left as usize).min(data.len() - i);
                    self.left -= k as u64;
                    self.payload += k as u64;
                    i += k;
                    continue;
                }
                let k = (4 - self.head_len).min(data.len() - i);
                self.head[self.head_len..self.head_len + k].copy_from_slice(&data[i..i + k]);
                self.head_len += k;
                i += k;
                if self.head_len == 4 {
                    self.head_len = 0;
                    let len = u32::from_be_bytes(self.head);
                    if len == 0 {
                        self.ended = true;
                    } else if len > FRAME_MAX {
                        return Err("frame longer than FRAME_MAX");
                    } else {
                        self.left = u64::from(len);
                    }
                }
            }
            Ok(i)
        }
    }

    /// A reusable frame: header + payload of `chunk` bytes.
    pub fn frame(chunk: usize) -> Vec<u8> {
        let chunk = chunk.clamp(1, FRAME_MAX as usize);
        let mut f = vec![0x5a; 4 + chunk];
        f[..4].copy_from_slice(&(chunk as u32).to_be_bytes());
        f
    }

    pub(super) async fn serve(s: TcpStream, buf: Vec<u8>, n: usize) -> std::io::Result<()> {
        let mode = buf[0];
        let (mut r, mut w) = s.into_split();
        let done = Cell::new(false);
        let reader = async {
            let mut fr = FrameReader::default();
            let mut buf = buf;
            let mut data_len = n;
            let mut start = 1;
            loop {
                fr.feed(&buf[start..data_len])
                    .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidData, m))?;
                if fr.ended {
                    break;
                }
                start = 0;
                data_len = r.read(&mut buf).await?;
                if data_len == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            done.set(true);
            Ok::<u64, std::io::Error>(fr.payload)
        };
        let writer = async {
            let mut sent = 0u64;
            if mode != MODE_UP {
                let f = frame(64 * 1024);
                let payload = (f.len() - 4) as u64;
                while !done.get() {
                    w.write_all(&f).await?;
                    sent += payload;
                }
            }
            Ok::<u64, std::io::Error>(sent)
        };
        // The writer may block on a full socket; it stops at a frame boundary once the reader
        // has seen the end frame (the client keeps reading until our end frame).
        let (received, sent) = tokio::join!(reader, writer);
        let (received, sent) = (received?, sent?);
        let mut t = [0u8; TRAILER];
        t[4..12].copy_from_slice(&sent.to_be_bytes());
        t[12..20].copy_from_slice(&received.to_be_bytes());
        w.write_all(&t).await?;
        w.shutdown().await
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_frames_split_anywhere() {
            let mut wire = Vec::new();
            for len in [3u32, 1, 5] {
                wire.extend_from_slice(&len.to_be_bytes());
                wire.extend(std::iter::repeat(7).take(len as usize));
            }
            wire.extend_from_slice(&0u32.to_be_bytes());
            wire.extend_from_slice(b"TRAILER");
            for split in 1..wire.len() {
                let mut fr = FrameReader::default();
                let mut used = 0;
                for part in wire.chunks(split) {
                    if fr.ended {
                        break;
                    }
                    used += fr.feed(part).unwrap();
                }
                assert!(fr.ended);
                assert_eq!(fr.payload, 9);
                assert_eq!(&wire[used..], b"TRAILER");
            }
            let mut fr = FrameReader::default();
            assert!(fr.feed(&(FRAME_MAX + 1).to_be_bytes()).is_err());
        }
    }
}
