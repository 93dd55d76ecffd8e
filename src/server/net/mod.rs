//! The small interface the server needs from an I/O runtime, with two implementations:
//! [`uring`] (tokio-uring, io_uring) and [`epoll`] (tokio). Sessions, the connector and the
//! relay are generic over [`Net`], so neither runtime leaks into them and a third (compio,
//! monoio) could be added here alone.
//!
//! Buffers are owned and passed by value, as io_uring requires: the kernel may write into a
//! buffer after the future that submitted the read was dropped, so the buffer travels with the
//! operation and comes back with its result.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::rc::Rc;

use socket2::{SockAddr, Socket};

use super::pool::Pipe;

pub mod epoll;
pub mod uring;

/// A connected TCP stream on one worker.
#[allow(async_fn_in_trait)]
pub trait Stream: 'static {
    /// Reads into the spare capacity of `buf` (`len..capacity`), extending its length by the
    /// bytes read. `Ok(0)` is end of stream. `buf` must have spare capacity.
    async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);

    /// Writes all of `buf[..len]`.
    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);

    /// Waits until a read would not block (data, end of stream, an error or a hang-up),
    /// holding no buffer meanwhile: this is how an idle tunnel costs nothing but its sockets.
    /// Returns whether the peer hung up (there may still be data before the end).
    async fn readable(&self) -> io::Result<Readable>;

    /// Reads what is there now into the spare capacity of `buf` with one non-blocking
    /// `recv(2)` on the worker thread; `WouldBlock` when nothing is. For small, latency-bound
    /// reads (the handshake, small relay messages) this saves a trip through the runtime.
    fn try_read(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        recv_now(self.raw_fd(), buf)
    }

    /// Writes what fits now with one non-blocking `send(2)`; `WouldBlock` when nothing does.
    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        send_now(self.raw_fd(), data)
    }

    /// Makes `f`, a direct non-blocking syscall on this socket reading (`Dir::Read`) or
    /// writing (`Dir::Write`), and tells the runtime when it would block: epoll forgets its
    /// cached readiness, so that the next wait really waits. Layers that make their own
    /// syscalls on the socket (TLS) go through this.
    fn direct<R>(&self, dir: Dir, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let _ = dir;
        f()
    }

    /// Ends the write side once everything queued is out: a TLS stream sends close_notify
    /// first (waiting for room if it must), a plain one just `shutdown(SHUT_WR)`s.
    async fn close_write(&self) {
        self.shutdown(Shutdown::Write)
    }

    /// Sends what an earlier write left queued in user space (a TLS stream's records); `Ok`
    /// once nothing is, `WouldBlock` when the socket is full. Plain sockets queue nothing.
    fn try_flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Whether bytes can be spliced to and from this stream (not through user-space TLS).
    fn can_splice(&self) -> bool {
        true
    }

    /// Whether the stream is at its end right now (nothing left to read, peer closed), asked
    /// without a buffer: `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte.
    fn at_eof(&self) -> io::Result<bool> {
        peek_eof(self.raw_fd())
    }

    /// Reads what is there now into the spare capacity of `buf`; `WouldBlock` when nothing is.
    async fn read_now(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);

    /// Waits until a write would not block (room in the send buffer, or an error).
    async fn writable(&self) -> io::Result<()>;

    /// Waits until the peer closes its side or the connection fails, leaving any data that
    /// arrives meanwhile unread (a BIND watches its control connection this way).
    async fn closed(&self);

    /// Puts the socket in non-blocking mode for the relay, which moves bytes with direct
    /// syscalls on the worker thread ([`Stream::try_read`], [`Stream::try_write`],
    /// [`Stream::try_splice_in`], [`Stream::try_splice_out`]) and waits with
    /// [`Stream::readable`] and [`Stream::writable`] when they would block.
    fn set_nonblocking(&self) -> io::Result<()> {
        let raw = self.raw_fd();
        // Safety: the descriptor belongs to this live stream; the borrow ends with the call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        socket2::SockRef::from(&fd).set_nonblocking(true)
    }

    /// Moves what is there now, up to `len` bytes, from this socket into `pipe` with one
    /// non-blocking `splice(2)`. `Ok(0)` is end of stream; `WouldBlock` when nothing is there.
    fn try_splice_in(&self, pipe: &Pipe, len: usize) -> io::Result<usize> {
        splice_now(self.raw_fd(), pipe.writer(), len)
    }

    /// Moves up to `len` bytes from `pipe` to this socket with one non-blocking `splice(2)`;
    /// `WouldBlock` when the send buffer is full.
    fn try_splice_out(&self, pipe: &Pipe, len: usize) -> io::Result<usize> {
        splice_now(pipe.reader(), self.raw_fd(), len)
    }

    /// `shutdown(2)`. Completes pending reads on this socket, which is how a timed-out
    /// operation is ended before its future is dropped (io_uring operations are not cancelled by
    /// dropping them). Errors (the peer already gone) are ignored.
    fn shutdown(&self, how: Shutdown);

    /// Resets the connection now: `connect(AF_UNSPEC)` makes the kernel disconnect the socket
    /// (`tcp_disconnect`), which sends a RST at once and completes pending operations on it
    /// with an error. If that fails, falls back to SO_LINGER 0 and `shutdown(2)` (a FIN now,
    /// the reset at close).
    ///
    /// A broken tunnel is reported to both ends as a reset: a FIN would let a truncated
    /// download look complete, and a peer whose window is closed on a socket we drained (a
    /// splice took the bytes) would otherwise only learn of the close from a zero-window probe,
    /// tens of seconds later.
    fn abort(&self) {
        let raw = self.raw_fd();
        // Safety: a zeroed sockaddr with family AF_UNSPEC, valid for the call; the descriptor
        // belongs to this live stream.
        let r = unsafe {
            let mut addr: libc::sockaddr = std::mem::zeroed();
            addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
            libc::connect(
                raw,
                &addr,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
        if r != 0 {
            // Safety: as above; the borrow ends with the call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
            let _ = socket2::SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
        }
        shutdown_fd(raw, Shutdown::Both);
    }

    /// The file descriptor, for socket options and logging.
    fn raw_fd(&self) -> RawFd;

    /// Hands operations queued on the runtime to the kernel now (io_uring; see
    /// [`uring::flush`]). Nothing to do on epoll.
    fn flush_submissions(&self) {}

    /// The local address of the socket.
    fn local_addr(&self) -> io::Result<SocketAddr> {
        local_addr_of(self.raw_fd())
    }
}

/// Writes all of `buf` during the handshake (the socket is in the runtime's own mode): first
/// with a non-blocking `send(2)` (which takes the whole of a small message when the socket has
/// room, as it almost always does), then through the runtime for whatever is left.
pub async fn send_all<S: Stream>(s: &S, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    match s.try_write(&buf) {
        Ok(n) if n == buf.len() => match s.try_flush() {
            Ok(()) => return (Ok(()), buf),
            // Queued in user space (TLS): a write of nothing sends it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.clear(),
            Err(e) => return (Err(e), buf),
        },
        Ok(n) => {
            buf.drain(..n);
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return (Err(e), buf),
    }
    Box::pin(s.write_all(buf)).await
}

/// Writes all of `data` to a socket in non-blocking mode (the relay's): direct `send(2)`s,
/// waiting for room between them, until nothing is left queued (see [`Stream::try_flush`]).
pub async fn write_ready<S: Stream>(s: &S, mut data: &[u8]) -> io::Result<()> {
    loop {
        let r = if data.is_empty() {
            match s.try_flush() {
                Ok(()) => return Ok(()),
                Err(e) => Err(e),
            }
        } else {
            s.try_write(data)
        };
        match r {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Box::pin(s.writable()).await?,
            Err(e) => return Err(e),
        }
    }
}

/// Which way a direct syscall moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// recv, splice from the socket.
    Read,
    /// send, splice to the socket.
    Write,
}

/// Calls `f`, a non-blocking write step on `s`'s socket, until it does not return
/// `WouldBlock`, waiting for room between calls (a TLS layer's last records and alerts).
pub async fn retry_writable<S: Stream>(
    s: &S,
    mut f: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable().await?,
            r => return r,
        }
    }
}

/// What a readability wait saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readable {
    /// The peer closed its side (or the socket has an error): check [`Stream::at_eof`] before
    /// taking a buffer or a pipe, so that a wave of closing tunnels takes none.
    pub hangup: bool,
}

/// A UDP socket on one worker, in non-blocking mode: datagrams move with direct syscalls on
/// the worker thread, and the runtime only waits for readiness.
#[allow(async_fn_in_trait)]
pub trait Datagram: 'static {
    /// Waits until a datagram can be read (or the socket was shut down).
    async fn readable(&self) -> io::Result<()>;

    /// Waits until a datagram can be sent.
    async fn writable(&self) -> io::Result<()>;

    /// The file descriptor.
    fn raw_fd(&self) -> RawFd;

    /// Receives one datagram into the spare capacity of `buf` with one non-blocking
    /// `recvmsg(2)`; returns the datagram's full length (more than the spare capacity when it
    /// did not fit: the rest was cut off) and its source. `WouldBlock` when none is waiting.
    fn try_recv_from(&self, buf: &mut Vec<u8>) -> io::Result<(usize, SocketAddr)> {
        recv_from_now(self.raw_fd(), buf)
    }

    /// Sends one datagram with one non-blocking `sendto(2)`.
    fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        send_to_now(self.raw_fd(), data, to)
    }

    /// Sends one datagram on a connected socket with one non-blocking `send(2)`.
    fn try_send(&self, data: &[u8]) -> io::Result<usize> {
        send_now(self.raw_fd(), data)
    }
}

/// A runtime: how to accept, connect and wrap sockets.
#[allow(async_fn_in_trait)]
pub trait Net: 'static {
    /// Name for logs: "io_uring" or "epoll".
    const NAME: &'static str;
    /// Connected stream type.
    type Stream: Stream;
    /// Listener type.
    type Listener: 'static;

    /// Wraps a bound, listening, non-blocking socket built by [`crate::server::listener`].
    fn listener(l: std::net::TcpListener) -> io::Result<Self::Listener>;

    /// Accepts one connection.
    async fn accept(l: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)>;

    /// Whether a pending [`Net::accept`] may simply be dropped (epoll: nothing is in flight).
    /// An io_uring accept stays in the kernel when dropped and could take a connection
    /// nobody will serve.
    const ACCEPT_CANCEL_SAFE: bool;

    /// Ends the pending accepts on `fd` without touching the socket itself (for sockets that
    /// outlive this process, such as systemd's): io_uring cancels them, which fails them with
    /// ECANCELED (Linux 5.19 and later; an error before). Runtimes whose accepts are
    /// cancel-safe do nothing.
    async fn cancel_accepts(fd: RawFd) -> io::Result<()>;

    /// Whether sockets handed to this runtime are in non-blocking mode.
    const NONBLOCKING: bool;

    /// Connects a fresh socket (blocking mode per [`Net::NONBLOCKING`]) to `addr`. The caller
    /// keeps its own reference to the socket so that it can abort the attempt with `shutdown` (which completes the
    /// operation) before dropping this future.
    async fn connect(sock: Rc<Socket>, addr: SockAddr) -> io::Result<()>;

    /// Wraps a connected socket.
    fn stream(sock: Socket) -> io::Result<Self::Stream>;

    /// UDP socket type.
    type Datagram: Datagram;

    /// Wraps a bound, non-blocking UDP socket.
    fn datagram(sock: Socket) -> io::Result<Self::Datagram>;
}

/// `recvmsg(MSG_DONTWAIT | MSG_TRUNC)` into the spare capacity of `buf`: the full length of
/// the datagram (which may exceed what was stored) and its source.
pub(crate) fn recv_from_now(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<(usize, SocketAddr)> {
    let len = buf.len();
    // Safety: the descriptor belongs to a live socket for the duration of this borrow.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let (n, from) = socket2::SockRef::from(&bfd).recv_from_with_flags(
        buf.spare_capacity_mut(),
        libc::MSG_DONTWAIT | libc::MSG_TRUNC,
    )?;
    let stored = n.min(buf.capacity() - len);
    // Safety: recvmsg initialised `stored` bytes of the spare capacity.
    unsafe { buf.set_len(len + stored) };
    let from = from
        .as_socket()
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
    Ok((n, from))
}

/// `sendto(MSG_DONTWAIT | MSG_NOSIGNAL)`.
pub(crate) fn send_to_now(fd: RawFd, data: &[u8], to: SocketAddr) -> io::Result<usize> {
    // Safety: the descriptor belongs to a live socket for the duration of this borrow.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&bfd).send_to_with_flags(
        data,
        &SockAddr::from(to),
        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
    )
}

/// `shutdown(2)` on a raw descriptor, ignoring errors.
pub(crate) fn shutdown_fd(fd: RawFd, how: Shutdown) {
    let how = match how {
        Shutdown::Read => libc::SHUT_RD,
        Shutdown::Write => libc::SHUT_WR,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // Safety: shutdown(2) takes no pointers; on a descriptor that is not a connected socket it
    // fails with an error code, which is ignored.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Whether a connect on `fd` has completed: `Ok` once it has, its error (SO_ERROR) if it
/// failed, `WouldBlock` while the handshake is under way (or a Fast Open connect is deferred).
pub(crate) fn established(fd: RawFd) -> io::Result<()> {
    // Safety: callers pass the descriptor of a socket they hold, so it stays open for the
    // duration of this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&fd);
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => Err(e),
    }
}

/// Whether the socket has a peer: its connect completed (a deferred Fast Open one, or one
/// under way, has not).
pub(crate) fn is_connected(fd: RawFd) -> bool {
    // Safety: as for `established`.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).peer_addr().is_ok()
}

/// Whether the data a connection's SYN carried was acknowledged (TCPI_OPT_SYN_DATA): it went
/// by TCP Fast Open.
pub(crate) fn syn_data_acked(fd: RawFd) -> bool {
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
    // struct tcp_info: state, ca_state, retransmits, probes, backoff, options.
    r == 0 && len >= 6 && info[5] & 0x20 != 0
}

/// `getsockname(2)` on a descriptor owned by a live stream.
pub(crate) fn local_addr_of(fd: RawFd) -> io::Result<SocketAddr> {
    // Safety: callers pass the descriptor of a stream they hold, so it stays open for the
    // duration of this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// `setsockopt(2)` with an integer value, for options socket2 does not wrap
/// (TCP_DEFER_ACCEPT, IP_BIND_ADDRESS_NO_PORT).
pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // Safety: a pointer to a c_int that lives across the call, with its size; an invalid
    // descriptor or option is reported as an error.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte: `Ok(true)` at end of stream, `Ok(false)` when
/// data is waiting or nothing is (yet).
pub(crate) fn peek_eof(fd: RawFd) -> io::Result<bool> {
    let mut byte = 0u8;
    // Safety: a one-byte buffer on the stack that outlives the call.
    let r = unsafe {
        libc::recv(
            fd,
            &mut byte as *mut u8 as *mut libc::c_void,
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match r {
        0 => Ok(true),
        r if r > 0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// `splice(2)` between a socket and a pipe without waiting (SPLICE_F_NONBLOCK for the pipe;
/// the socket is in non-blocking mode). SPLICE_F_MOVE is a hint the kernel may ignore.
pub(crate) fn splice_now(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // Safety: no pointers (null offsets: both ends are streams); invalid descriptors are
    // reported as errors.
    let r = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `recv(MSG_DONTWAIT)` into the spare capacity of `buf`.
pub(crate) fn recv_now(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let (len, cap) = (buf.len(), buf.capacity());
    if len == cap {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // Safety: the pointer and length describe the Vec's spare capacity, which recv may write;
    // the length is raised only by what the kernel reports it wrote.
    unsafe {
        let r = libc::recv(
            fd,
            buf.as_mut_ptr().add(len) as *mut libc::c_void,
            cap - len,
            libc::MSG_DONTWAIT,
        );
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.set_len(len + r as usize);
        Ok(r as usize)
    }
}

/// `send(MSG_DONTWAIT | MSG_NOSIGNAL)`.
pub(crate) fn send_now(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // Safety: a pointer and length of a live slice.
    let r = unsafe {
        libc::send(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
