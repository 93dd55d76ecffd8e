//! Kernel TLS: once rustls has finished a handshake, the traffic keys go to the kernel
//! (`TCP_ULP` "tls", then `TLS_TX` and `TLS_RX`), and the socket reads and writes plaintext
//! while the kernel encrypts and decrypts, so the relay moves bytes with the same `recv`,
//! `send` and `splice` calls as for a plain socket.
//!
//! What the kernel hands up that is not application data comes with a record type in a
//! control message, and [`KtlsStream`] deals with it: the peer's close_notify is the end of
//! the stream (a half-close, carried through like a FIN), a session ticket is skipped, and
//! anything else (a key update, a fatal alert) ends the tunnel with a log line. A write
//! shutdown sends close_notify.
//!
//! Which versions and ciphers the kernel takes is probed once per process on a loopback
//! connection ([`support`]); a connection whose cipher the kernel lacks stays in user space.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;

use rustls::{CipherSuite, ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};

use super::net::{retry_writable, splice_now, Dir, Readable, Stream};
use super::pool::Pipe;

const TCP_ULP: libc::c_int = 31;
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const TLS_GET_RECORD_TYPE: libc::c_int = 2;
const TLS_1_2: u16 = 0x0303;
const TLS_1_3: u16 = 0x0304;
const AES_GCM_128: u16 = 51;
const AES_GCM_256: u16 = 52;
const CHACHA20_POLY1305: u16 = 54;
const RECORD_ALERT: u8 = 21;
const RECORD_HANDSHAKE: u8 = 22;
const RECORD_DATA: u8 = 23;
/// Handshake message types after the handshake.
const NEW_SESSION_TICKET: u8 = 4;

#[repr(C)]
#[derive(Clone, Copy)]
struct CryptoInfo {
    version: u16,
    cipher: u16,
}

#[repr(C)]
struct AesGcm128 {
    info: CryptoInfo,
    iv: [u8; 8],
    key: [u8; 16],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

#[repr(C)]
struct AesGcm256 {
    info: CryptoInfo,
    iv: [u8; 8],
    key: [u8; 32],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

#[repr(C)]
struct Chacha20Poly1305 {
    info: CryptoInfo,
    iv: [u8; 12],
    key: [u8; 32],
    rec_seq: [u8; 8],
}

/// What this kernel's TLS offload takes.
#[derive(Debug)]
pub struct Support {
    /// Why there is none, if there is none.
    pub unavailable: Option<String>,
    /// (TLS version, cipher) pairs the kernel accepted for both directions.
    ciphers: Vec<(u16, u16)>,
}

impl Support {
    /// Whether a connection with this version and cipher suite can be offloaded.
    pub fn takes(&self, version: ProtocolVersion, suite: CipherSuite) -> bool {
        let v = match version {
            ProtocolVersion::TLSv1_2 => TLS_1_2,
            ProtocolVersion::TLSv1_3 => TLS_1_3,
            _ => return false,
        };
        let c = match suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => AES_GCM_128,
            CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => AES_GCM_256,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => CHACHA20_POLY1305,
            _ => return false,
        };
        self.ciphers.contains(&(v, c))
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        if let Some(why) = &self.unavailable {
            return format!("kernel TLS unavailable ({why}): TLS is relayed in user space");
        }
        let names: Vec<String> = self
            .ciphers
            .iter()
            .map(|(v, c)| {
                let v = if *v == TLS_1_3 { "1.3" } else { "1.2" };
                let c = match *c {
                    AES_GCM_128 => "AES-128-GCM",
                    AES_GCM_256 => "AES-256-GCM",
                    _ => "CHACHA20-POLY1305",
                };
                format!("TLS{v} {c}")
            })
            .collect();
        format!(
            "kernel TLS available for {}: TLS tunnels relay with splice",
            names.join(", ")
        )
    }
}

/// The kernel's TLS offload, probed on first use.
pub fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(probe)
}

fn probe() -> Support {
    let none = |why: String| Support {
        unavailable: Some(why),
        ciphers: Vec::new(),
    };
    let mut ciphers = Vec::new();
    // TLS 1.2 AES-GCM is never offloaded: its explicit nonce is E + n in the kernel and
    // E XOR n in rustls, so the kernel's first record would reuse the nonce of rustls's last
    // (the Finished), under the same key. TLS 1.3 and ChaCha20 derive nonces the same way in
    // both.
    let pairs = [
        (TLS_1_3, AES_GCM_128),
        (TLS_1_3, AES_GCM_256),
        (TLS_1_3, CHACHA20_POLY1305),
        (TLS_1_2, CHACHA20_POLY1305),
    ];
    for (version, cipher) in pairs {
        {
            let pair = match loopback_pair() {
                Ok(p) => p,
                Err(e) => return none(format!("cannot probe on loopback: {e}")),
            };
            let fd = pair.0.as_raw_fd();
            if let Err(e) = set_ulp(fd) {
                let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
                    .unwrap_or_default();
                return none(match e.raw_os_error() {
                    Some(libc::ENOENT) => format!(
                        "the kernel has no tls module; tcp_available_ulp: {:?}",
                        ulps.trim()
                    ),
                    _ => format!("TCP_ULP tls: {e}"),
                });
            }
            let key = [0u8; 32];
            let key = &key[..if cipher == AES_GCM_128 { 16 } else { 32 }];
            let ok = [TLS_TX, TLS_RX]
                .iter()
                .all(|&dir| set_key_raw(fd, dir, (version, cipher), key, &[0; 12], 0).is_ok());
            if ok {
                ciphers.push((version, cipher));
            }
        }
    }
    if ciphers.is_empty() {
        return none("the kernel took none of the AEAD ciphers rustls uses".into());
    }
    Support {
        unavailable: None,
        ciphers,
    }
}

fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let c = TcpStream::connect(l.local_addr()?)?;
    let (s, _) = l.accept()?;
    Ok((c, s))
}

/// Hands a finished handshake's keys to the kernel for both directions of `fd`.
pub fn enable(fd: RawFd, version: ProtocolVersion, secrets: ExtractedSecrets) -> io::Result<()> {
    let v = match version {
        ProtocolVersion::TLSv1_2 => TLS_1_2,
        ProtocolVersion::TLSv1_3 => TLS_1_3,
        _ => return Err(io::ErrorKind::Unsupported.into()),
    };
    set_ulp(fd)?;
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    set_key(fd, TLS_TX, v, tx_seq, &tx)?;
    set_key(fd, TLS_RX, v, rx_seq, &rx)
}

fn set_ulp(fd: RawFd) -> io::Result<()> {
    // Safety: a pointer to a 3-byte string and its length, valid for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            TCP_ULP,
            b"tls".as_ptr() as *const libc::c_void,
            3,
        )
    };
    check(r)
}

fn set_key(
    fd: RawFd,
    dir: libc::c_int,
    version: u16,
    seq: u64,
    s: &ConnectionTrafficSecrets,
) -> io::Result<()> {
    let (cipher, key, iv) = match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (AES_GCM_128, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (AES_GCM_256, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (CHACHA20_POLY1305, key, iv),
        _ => return Err(io::ErrorKind::Unsupported.into()),
    };
    let iv: &[u8; 12] = iv.as_ref().try_into().map_err(|_| bad_len())?;
    set_key_raw(fd, dir, (version, cipher), key.as_ref(), iv, seq)
}

/// One direction's key: `iv` is the 12-byte IV rustls gives, of which AES-GCM takes the
/// first 4 bytes as the kernel's salt and the other 8 as its IV; ChaCha20-Poly1305 takes
/// all 12.
fn set_key_raw(
    fd: RawFd,
    dir: libc::c_int,
    (version, cipher): (u16, u16),
    key: &[u8],
    iv: &[u8; 12],
    seq: u64,
) -> io::Result<()> {
    let info = CryptoInfo { version, cipher };
    let rec_seq = seq.to_be_bytes();
    let (salt, iv8) = iv.split_at(4);
    match cipher {
        AES_GCM_128 => setsockopt_struct(
            fd,
            dir,
            &AesGcm128 {
                info,
                iv: iv8.try_into().map_err(|_| bad_len())?,
                key: key.try_into().map_err(|_| bad_len())?,
                salt: salt.try_into().map_err(|_| bad_len())?,
                rec_seq,
            },
        ),
        AES_GCM_256 => setsockopt_struct(
            fd,
            dir,
            &AesGcm256 {
                info,
                iv: iv8.try_into().map_err(|_| bad_len())?,
                key: key.try_into().map_err(|_| bad_len())?,
                salt: salt.try_into().map_err(|_| bad_len())?,
                rec_seq,
            },
        ),
        _ => setsockopt_struct(
            fd,
            dir,
            &Chacha20Poly1305 {
                info,
                iv: *iv,
                key: key.try_into().map_err(|_| bad_len())?,
                rec_seq,
            },
        ),
    }
}

fn bad_len() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "unexpected key or IV length")
}

fn setsockopt_struct<T>(fd: RawFd, dir: libc::c_int, value: &T) -> io::Result<()> {
    // Safety: a pointer to a live `repr(C)` struct and its exact size, as the kernel's
    // `tls12_crypto_info_*` layouts require.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TLS,
            dir,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(r)
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A stream whose TLS records the kernel encrypts and decrypts.
pub struct KtlsStream<S> {
    io: S,
    /// The peer's close_notify was read.
    eof: Cell<bool>,
    /// Our close_notify was sent.
    closed: Cell<bool>,
    /// A control record's bytes read so far (type, bytes), when it came in pieces.
    control: RefCell<(u8, Vec<u8>)>,
}

impl<S: Stream> KtlsStream<S> {
    /// Wraps a stream whose keys [`enable`] handed to the kernel.
    pub fn new(io: S) -> Self {
        KtlsStream {
            io,
            eof: Cell::new(false),
            closed: Cell::new(false),
            control: RefCell::new((0, Vec::new())),
        }
    }

    /// One `recvmsg(2)` at a time with room for the record type, until there is application
    /// data (returned), the end, or nothing more now (`WouldBlock`). Records that are not data
    /// may come in pieces (the kernel splits one larger than the buffer over several reads) and
    /// may hold several messages: their bytes are gathered in `control` and handled whole. A
    /// close_notify is the end; a warning alert and a session ticket are skipped; anything else
    /// (a fatal alert, a key update) ends the tunnel. The TCP end without a close_notify is an
    /// error (a possible truncation).
    fn recv_record(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let len = buf.len();
            if len == buf.capacity() {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            let fd = self.io.raw_fd();
            let (n, kind) = self.io.direct(Dir::Read, || recvmsg_record(fd, buf))?;
            let kind = kind.unwrap_or(RECORD_DATA);
            if n == 0 {
                return Err(super::tls::truncated());
            }
            let mut control = self.control.borrow_mut();
            if kind == RECORD_DATA {
                if !control.1.is_empty() {
                    return Err(io::Error::other(
                        "application data inside a split TLS control message",
                    ));
                }
                return Ok(n);
            }
            if !control.1.is_empty() && control.0 != kind {
                return Err(io::Error::other("interleaved TLS control records"));
            }
            control.0 = kind;
            control.1.extend_from_slice(&buf[len..len + n]);
            buf.truncate(len);
            match kind {
                RECORD_ALERT => {
                    while control.1.len() >= 2 {
                        let (level, desc) = (control.1[0], control.1[1]);
                        control.1.drain(..2);
                        if desc == 0 {
                            self.eof.set(true);
                            return Ok(0);
                        }
                        if level != 1 {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!("fatal TLS alert {desc} from the peer"),
                            ));
                        }
                        tracing::debug!("kernel TLS: warning alert {desc} from the peer ignored");
                    }
                }
                RECORD_HANDSHAKE => {
                    while control.1.len() >= 4 {
                        let body =
                            u32::from_be_bytes([0, control.1[1], control.1[2], control.1[3]]);
                        let whole = 4 + body as usize;
                        if control.1.len() < whole {
                            break;
                        }
                        let t = control.1[0];
                        control.1.drain(..whole);
                        if t != NEW_SESSION_TICKET {
                            return Err(io::Error::other(format!(
                                "TLS handshake message {t} after the handshake (a key update?): kernel TLS cannot follow it"
                            )));
                        }
                    }
                }
                kind => {
                    return Err(io::Error::other(format!(
                        "unexpected TLS record type {kind}"
                    )))
                }
            }
        }
    }

    /// Sends close_notify once; `WouldBlock` when the socket has no room now.
    fn try_close_notify(&self) -> io::Result<()> {
        if self.closed.get() {
            return Ok(());
        }
        let fd = self.io.raw_fd();
        self.io.direct(Dir::Write, || send_alert(fd, &[1, 0]))?;
        self.closed.set(true);
        Ok(())
    }
}

impl<S: Stream> Stream for KtlsStream<S> {
    async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            match self.try_read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.io.readable().await {
                        return (Err(e), buf);
                    }
                }
                r => return (r, buf),
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.io.write_all(buf).await
    }

    async fn readable(&self) -> io::Result<Readable> {
        if self.eof.get() {
            return Ok(Readable { hangup: true });
        }
        self.io.readable().await
    }

    fn try_read(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if self.eof.get() {
            return Ok(0);
        }
        self.recv_record(buf)
    }

    fn at_eof(&self) -> io::Result<bool> {
        // A peek without a control buffer fails on a control record: read to find out.
        Ok(self.eof.get())
    }

    async fn read_now(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let r = self.try_read(&mut buf);
        (r, buf)
    }

    async fn writable(&self) -> io::Result<()> {
        self.io.writable().await
    }

    async fn closed(&self) {
        self.io.closed().await
    }

    /// A splice stops at a record that is not application data (EINVAL, the record left in
    /// place): read it with its type instead, and put any data it turns out to hold into
    /// the pipe by hand.
    fn try_splice_in(&self, pipe: &Pipe, len: usize) -> io::Result<usize> {
        if self.eof.get() {
            return Ok(0);
        }
        let fd = self.io.raw_fd();
        match self
            .io
            .direct(Dir::Read, || splice_now(fd, pipe.writer(), len))
        {
            Ok(0) => Err(super::tls::truncated()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EIO)) => {
                let mut buf = Vec::with_capacity(len.min(16 * 1024));
                let n = self.recv_record(&mut buf)?;
                write_all_fd(pipe.writer(), &buf[..n])?;
                Ok(n)
            }
            r => r,
        }
    }

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        self.io.try_write(data)
    }

    fn try_splice_out(&self, pipe: &Pipe, len: usize) -> io::Result<usize> {
        self.io.try_splice_out(pipe, len)
    }

    fn direct<R>(&self, dir: Dir, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.io.direct(dir, f)
    }

    /// close_notify if the socket takes it now, then the shutdown (the relay's end of a
    /// direction uses [`Stream::close_write`], which waits for room).
    fn shutdown(&self, how: Shutdown) {
        if how != Shutdown::Read {
            if let Err(e) = self.try_close_notify() {
                tracing::debug!("kernel TLS: close_notify not sent: {e}");
            }
        }
        self.io.shutdown(how)
    }

    async fn close_write(&self) {
        if let Err(e) = retry_writable(&self.io, || self.try_close_notify()).await {
            tracing::debug!("kernel TLS: close_notify not sent: {e}");
        }
        self.io.shutdown(Shutdown::Write)
    }

    fn abort(&self) {
        self.io.abort()
    }

    fn raw_fd(&self) -> RawFd {
        self.io.raw_fd()
    }

    fn flush_submissions(&self) {
        self.io.flush_submissions()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

/// `recvmsg(MSG_DONTWAIT)` into the spare capacity of `buf`, with the TLS record type when
/// the kernel reports one.
fn recvmsg_record(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<(usize, Option<u8>)> {
    let len = buf.len();
    let spare = buf.capacity() - len;
    // Room for one cmsghdr with a one-byte payload, aligned.
    let mut control = [0u64; 8];
    // Safety: the iovec points at the Vec's spare capacity and `control` at a local buffer,
    // both valid for the call; lengths are raised only by what the kernel reports.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().add(len) as *mut libc::c_void,
            iov_len: spare,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let r = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.set_len(len + r as usize);
        let mut kind = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_TLS && (*c).cmsg_type == TLS_GET_RECORD_TYPE {
                kind = Some(*libc::CMSG_DATA(c));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((r as usize, kind))
    }
}

/// Sends one alert record (`TLS_SET_RECORD_TYPE` 21).
fn send_alert(fd: RawFd, alert: &[u8; 2]) -> io::Result<()> {
    let mut control = [0u64; 8];
    // Safety: as in `recvmsg_record`; the cmsg is built inside `control`, which is large
    // enough for one header and a one-byte payload.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: alert.as_ptr() as *mut libc::c_void,
            iov_len: alert.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(1) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_TLS;
        (*c).cmsg_type = TLS_SET_RECORD_TYPE;
        (*c).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(c) = RECORD_ALERT;
        let r = libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn write_all_fd(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // Safety: a pointer and length of a live slice.
        let r = unsafe { libc::write(fd, data.as_ptr() as *const libc::c_void, data.len()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        data = &data[r as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_structs_have_the_kernel_sizes() {
        // include/uapi/linux/tls.h
        assert_eq!(std::mem::size_of::<AesGcm128>(), 40);
        assert_eq!(std::mem::size_of::<AesGcm256>(), 56);
        assert_eq!(std::mem::size_of::<Chacha20Poly1305>(), 56);
    }

    #[test]
    fn the_probe_gives_an_answer_either_way() {
        let s = support();
        assert_eq!(s.unavailable.is_some(), s.ciphers.is_empty());
        assert!(!s.describe().is_empty());
    }
}
