//! TLS in user space over a worker's stream: rustls's sans-I/O connection driven by the same
//! direct non-blocking `recv(2)`/`send(2)` calls and readiness waits as the plain relay, so a
//! TLS tunnel runs on either runtime and holds nothing while idle but rustls's state.
//!
//! [`TlsStream`] is a [`Stream`]: the session, the handshake and the relay's copy mode use it
//! exactly as a plain socket (splice is impossible through user-space TLS, so the relay copies
//! for it). Reads decrypt what the socket holds; writes encrypt and send, and a write that the
//! socket cannot take at once stays queued in rustls until [`Stream::try_flush`] sends it.

use std::cell::RefCell;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::ktls::{self, KtlsStream};
use super::net::{retry_writable, send_now, Dir, Readable, Stream};
use super::pool::Pipe;

/// Most plaintext encrypted per write: rustls queues the records until they are sent.
const WRITE_CHUNK: usize = 64 * 1024;

/// A stream carrying TLS, decrypted and encrypted in user space.
pub struct TlsStream<S> {
    io: S,
    conn: RefCell<Connection>,
}

/// Runs the server side of a TLS handshake on `io` (which stays the caller's, so that a
/// timed-out handshake can be ended with `shutdown` before its future is dropped). With
/// `for_kernel`, the socket is read one record at a time, so that nothing past the
/// handshake is taken from it and the kernel can take over (see [`offload`]).
pub async fn accept<S: Stream>(
    io: &S,
    config: Arc<ServerConfig>,
    for_kernel: bool,
) -> io::Result<Connection> {
    let conn = ServerConnection::new(config).map_err(invalid)?;
    handshake(io, conn.into(), for_kernel).await
}

/// Runs the client side of a TLS handshake with a parent proxy named `name`.
pub async fn connect<S: Stream>(
    io: &S,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    for_kernel: bool,
) -> io::Result<Connection> {
    let conn = ClientConnection::new(config, name).map_err(invalid)?;
    handshake(io, conn.into(), for_kernel).await
}

/// The protocol version and cipher suite agreed, for logs.
pub fn describe(conn: &Connection) -> String {
    let version = conn
        .protocol_version()
        .map_or("?".into(), |v| format!("{v:?}"));
    let suite = conn
        .negotiated_cipher_suite()
        .map_or("?".into(), |s| format!("{:?}", s.suite()));
    format!("{version} {suite}")
}

/// The subject common name of the certificate the peer presented (verified by the
/// handshake), if any.
pub fn peer_identity(conn: &Connection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    crate::tls::client_identity(cert)
}

/// What carries a connection's TLS once its handshake is done.
pub enum Carrier<S> {
    /// The kernel (kTLS): the socket reads and writes plaintext.
    Kernel(KtlsStream<S>),
    /// rustls, in user space.
    User(Box<TlsStream<S>>),
}

impl<S> Carrier<S> {
    /// For the access log.
    pub fn name(&self) -> &'static str {
        match self {
            Carrier::Kernel(_) => "ktls",
            Carrier::User(_) => "user-space",
        }
    }
}

/// Hands a finished handshake's keys to the kernel when it takes this version and cipher
/// (and the handshake was read for it: `for_kernel`), else keeps TLS in user space. An
/// error means the kernel refused the keys after the connection gave them up: it cannot go
/// on, and the caller closes it.
pub fn offload<S: Stream>(
    io: S,
    mut conn: Connection,
    for_kernel: bool,
) -> Result<Carrier<S>, (S, io::Error)> {
    let support = ktls::support();
    let (Some(version), Some(suite)) = (conn.protocol_version(), conn.negotiated_cipher_suite())
    else {
        return Ok(Carrier::User(Box::new(TlsStream::new(io, conn))));
    };
    let quiet = match conn.process_new_packets() {
        Ok(state) => state.plaintext_bytes_to_read() == 0 && !conn.wants_write(),
        Err(_) => false,
    };
    if !for_kernel || !quiet || !support.takes(version, suite.suite()) {
        if for_kernel && support.unavailable.is_none() {
            tracing::debug!(
                "kernel TLS not used for {version:?} {:?}: {}",
                suite.suite(),
                if quiet {
                    "cipher not taken by the kernel"
                } else {
                    "data already buffered"
                }
            );
        }
        return Ok(Carrier::User(Box::new(TlsStream::new(io, conn))));
    }
    let secrets = match conn.dangerous_extract_secrets() {
        Ok(s) => s,
        Err(e) => return Err((io, invalid(e))),
    };
    match ktls::enable(io.raw_fd(), version, secrets) {
        Ok(()) => Ok(Carrier::Kernel(KtlsStream::new(io))),
        Err(e) => Err((io, e)),
    }
}

async fn handshake<S: Stream>(
    io: &S,
    mut conn: Connection,
    for_kernel: bool,
) -> io::Result<Connection> {
    let fd = io.raw_fd();
    let mut records = Records {
        fd,
        bounded: for_kernel,
        header: [0; 5],
        have: 0,
        left: 0,
    };
    loop {
        while conn.wants_write() {
            match io.direct(Dir::Write, || conn.write_tls(&mut Fd(fd))) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => io.writable().await?,
                Err(e) => return Err(e),
            }
        }
        if !conn.is_handshaking() {
            return Ok(conn);
        }
        match io.direct(Dir::Read, || conn.read_tls(&mut records)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                ))
            }
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // The alert rustls queued tells the peer why; sent if it fits now.
                    let _ = conn.write_tls(&mut Fd(fd));
                    return Err(invalid(e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.readable().await?;
            }
            Err(e) => return Err(e),
        }
    }
}

impl<S: Stream> TlsStream<S> {
    /// Wraps `io` and a connection whose handshake is done.
    pub fn new(io: S, conn: Connection) -> Self {
        TlsStream {
            io,
            conn: RefCell::new(conn),
        }
    }

    /// Sends queued TLS records until none are left (`Ok`) or the socket is full
    /// (`WouldBlock`).
    fn flush(&self, conn: &mut Connection) -> io::Result<()> {
        let fd = self.io.raw_fd();
        while conn.wants_write() {
            self.io.direct(Dir::Write, || conn.write_tls(&mut Fd(fd)))?;
        }
        Ok(())
    }

    /// Plaintext already decrypted, copied into the spare capacity of `buf` straight from
    /// rustls's buffer (no zeroing of the spare capacity first). `Ok(0)` after close_notify.
    fn read_plain(conn: &mut Connection, buf: &mut Vec<u8>) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let room = buf.capacity() - buf.len();
            if room == 0 {
                return Ok(total);
            }
            let mut reader = conn.reader();
            match reader.fill_buf() {
                Ok([]) => return Ok(total),
                Ok(chunk) => {
                    let n = chunk.len().min(room);
                    buf.extend_from_slice(&chunk[..n]);
                    reader.consume(n);
                    total += n;
                }
                Err(_) if total > 0 => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S: Stream> Stream for TlsStream<S> {
    async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            match self.try_read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.readable().await {
                        return (Err(e), buf);
                    }
                }
                r => return (r, buf),
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut data = &buf[..];
        loop {
            let r = if data.is_empty() {
                self.try_flush().map(|()| 0)
            } else {
                self.try_write(data)
            };
            match r {
                Ok(n) => {
                    data = &data[n..];
                    if data.is_empty() && n == 0 {
                        return (Ok(()), buf);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.io.writable().await {
                        return (Err(e), buf);
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn readable(&self) -> io::Result<Readable> {
        {
            let mut conn = self.conn.borrow_mut();
            let state = conn.process_new_packets().map_err(invalid)?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                return Ok(Readable {
                    hangup: state.peer_has_closed(),
                });
            }
        }
        self.io.readable().await
    }

    /// Decrypted bytes: those rustls holds, else what the socket has now. End of stream is the
    /// peer's close_notify (the relay carries it as a half-close). The TCP end without one is
    /// an error: it may be a truncation, and a FIN passed on would make it look complete.
    fn try_read(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if buf.len() == buf.capacity() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let mut conn = self.conn.borrow_mut();
        let mut eof = false;
        loop {
            match Self::read_plain(&mut conn, buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && eof => return Err(truncated()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(truncated()),
                Err(e) => return Err(e),
            }
            let fd = self.io.raw_fd();
            eof = self.io.direct(Dir::Read, || conn.read_tls(&mut Fd(fd)))? == 0;
            if let Err(e) = conn.process_new_packets() {
                let _ = self.flush(&mut conn);
                return Err(invalid(e));
            }
            // A post-handshake message may want an answer (a key update).
            match self.flush(&mut conn) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }

    /// Encrypts up to [`WRITE_CHUNK`] bytes of `data` once earlier records are sent, and sends
    /// what the socket takes now; the rest of those records waits in rustls for the next
    /// write or [`Stream::try_flush`].
    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        self.flush(&mut conn)?;
        let n = conn.writer().write(&data[..data.len().min(WRITE_CHUNK)])?;
        match self.flush(&mut conn) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    fn try_flush(&self) -> io::Result<()> {
        self.flush(&mut self.conn.borrow_mut())
    }

    fn at_eof(&self) -> io::Result<bool> {
        // The socket's own end says nothing about records still to decrypt: read to find out.
        Ok(false)
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

    fn set_nonblocking(&self) -> io::Result<()> {
        self.io.set_nonblocking()
    }

    fn can_splice(&self) -> bool {
        false
    }

    fn try_splice_in(&self, _pipe: &Pipe, _len: usize) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn try_splice_out(&self, _pipe: &Pipe, _len: usize) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// A write shutdown sends close_notify first if the socket takes it now (the relay's end
    /// of a direction uses [`Stream::close_write`], which waits for room).
    fn shutdown(&self, how: Shutdown) {
        if how != Shutdown::Read {
            let mut conn = self.conn.borrow_mut();
            conn.send_close_notify();
            let _ = self.flush(&mut conn);
        }
        self.io.shutdown(how)
    }

    async fn close_write(&self) {
        self.conn.borrow_mut().send_close_notify();
        let _ = retry_writable(&self.io, || self.try_flush()).await;
        self.io.shutdown(Shutdown::Write)
    }

    fn direct<R>(&self, dir: Dir, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.io.direct(dir, f)
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

/// The socket during a handshake, as rustls's `Read`: one non-blocking `recv(2)` per read,
/// which when `bounded` never reads past the end of the current TLS record (5-byte header,
/// then the length it gives), so that records after the handshake stay in the socket for
/// the kernel.
struct Records {
    fd: RawFd,
    bounded: bool,
    header: [u8; 5],
    /// Header bytes read so far.
    have: usize,
    /// Body bytes left in the current record.
    left: usize,
}

impl Read for Records {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.bounded {
            return Fd(self.fd).read(buf);
        }
        let want = if self.have < 5 {
            5 - self.have
        } else {
            self.left
        };
        let len = want.min(buf.len());
        let n = Fd(self.fd).read(&mut buf[..len])?;
        if self.have < 5 {
            self.header[self.have..self.have + n].copy_from_slice(&buf[..n]);
            self.have += n;
            if self.have == 5 {
                self.left = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
            }
        } else {
            self.left -= n;
        }
        if self.have == 5 && self.left == 0 {
            self.have = 0;
        }
        Ok(n)
    }
}

/// A socket as rustls's `Read` and `Write`: one non-blocking syscall each.
struct Fd(RawFd);

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Safety: the pointer and length describe `buf`, which recv may fill.
        let r = unsafe {
            libc::recv(
                self.0,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_now(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The TCP connection ended without the peer's close_notify.
pub(crate) fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed the TCP connection without a TLS close_notify (possible truncation)",
    )
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Reads everything `Records` gives from a stream holding `bytes`, with reads of at most
    /// `chunk` bytes, noting where each read ended.
    fn bounded_reads(bytes: &[u8], chunk: usize) -> (Vec<u8>, Vec<usize>) {
        let (a, b) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut &a, bytes).unwrap();
        drop(a);
        let mut r = Records {
            fd: b.as_raw_fd(),
            bounded: true,
            header: [0; 5],
            have: 0,
            left: 0,
        };
        let (mut got, mut ends) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; chunk];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                return (got, ends);
            }
            got.extend_from_slice(&buf[..n]);
            ends.push(got.len());
        }
    }

    #[test]
    fn handshake_reads_never_cross_a_record_boundary() {
        // Two records (handshake, 7 bytes; change cipher spec, 1 byte) and an application
        // data record that must stay for the kernel.
        let mut bytes = vec![22, 3, 3, 0, 7, 1, 2, 3, 4, 5, 6, 7];
        bytes.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        bytes.extend_from_slice(&[23, 3, 3, 0, 3, 9, 9, 9]);
        let boundaries = [12, 18, 26];
        for chunk in [1, 2, 3, 5, 64] {
            let (got, ends) = bounded_reads(&bytes, chunk);
            assert_eq!(got, bytes, "chunk {chunk}");
            for b in boundaries {
                assert!(
                    ends.contains(&b),
                    "chunk {chunk}: no read ended at {b}: {ends:?}"
                );
            }
            // Every read stays within one record (header and body count as one).
            let mut start = 0;
            for e in &ends {
                let record = boundaries.iter().find(|&&b| b > start).unwrap();
                assert!(
                    e <= record,
                    "chunk {chunk}: read {start}..{e} crosses {record}"
                );
                start = *e;
            }
        }
    }
}
