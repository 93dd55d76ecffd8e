//! The epoll runtime (tokio, current-thread), used where io_uring is unavailable or when asked
//! for with `--runtime epoll`. Same thread-per-core shape; readiness-based I/O underneath.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use socket2::{SockAddr, Socket};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{
    established, recv_from_now, recv_now, send_now, send_to_now, shutdown_fd, splice_now, Datagram,
    Dir, Net, Readable, Stream,
};
use crate::server::pool::Pipe;

/// epoll runtime marker.
pub struct Epoll;

/// A stream driven by readiness.
pub struct EpollStream(tokio::net::TcpStream);

impl EpollStream {
    /// Makes a direct syscall and, when it would block, forgets tokio's cached readiness for
    /// `interest`, so that the next wait really waits. The syscall is always made (tokio's own
    /// `try_io` skips it while its readiness is clear, which would strand bytes that arrived
    /// while [`Stream::closed`] had cleared it). Nothing can set the readiness between the
    /// syscall and the clearing: this worker's reactor only runs when the task yields, and a
    /// later arrival is a new edge that sets it again.
    fn direct_on<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let r = f();
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.forget(interest);
        }
        r
    }

    /// Clears tokio's cached readiness for `interest` without touching the socket.
    fn forget(&self, interest: Interest) {
        let _ = self
            .0
            .try_io(interest, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
    }
}

impl Stream for EpollStream {
    async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if buf.len() == buf.capacity() {
            return (Err(io::ErrorKind::InvalidInput.into()), buf);
        }
        loop {
            match self.try_read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                res => return (res, buf),
            }
            if let Err(e) = self.0.readable().await {
                return (Err(e), buf);
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut off = 0;
        while off < buf.len() {
            match self.try_write(&buf[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.0.writable().await {
                        return (Err(e), buf);
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    async fn readable(&self) -> io::Result<Readable> {
        let ready = self.0.ready(Interest::READABLE).await?;
        Ok(Readable {
            hangup: ready.is_read_closed() || ready.is_error(),
        })
    }

    async fn writable(&self) -> io::Result<()> {
        self.0.writable().await
    }

    async fn closed(&self) {
        loop {
            match self.0.ready(Interest::READABLE).await {
                Ok(r) if !r.is_read_closed() && !r.is_error() => {
                    // Data, not a hang-up: forget this readiness without reading, so that the
                    // next wait is for a new event (edge-triggered: more data or the close).
                    self.forget(Interest::READABLE);
                }
                _ => return,
            }
        }
    }

    fn direct<R>(&self, dir: Dir, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let interest = match dir {
            Dir::Read => Interest::READABLE,
            Dir::Write => Interest::WRITABLE,
        };
        EpollStream::direct_on(self, interest, f)
    }

    fn try_read(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        EpollStream::direct_on(self, Interest::READABLE, || {
            recv_now(self.0.as_raw_fd(), buf)
        })
    }

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        self.direct_on(Interest::WRITABLE, || send_now(self.0.as_raw_fd(), data))
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        Ok(()) // tokio's sockets always are
    }

    fn try_splice_in(&self, pipe: &Pipe, len: usize) -> io::Result<usize> {
        let fd = self.0.as_raw_fd();
        self.direct_on(Interest::READABLE, || splice_now(fd, pipe.writer(), len))
    }

    fn try_splice_out(&self, pipe: &Pipe, len: usize) -> io::Result<usize> {
        let fd = self.0.as_raw_fd();
        self.direct_on(Interest::WRITABLE, || splice_now(pipe.reader(), fd, len))
    }

    async fn read_now(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let r = self.try_read(&mut buf);
        (r, buf)
    }

    fn shutdown(&self, how: Shutdown) {
        shutdown_fd(self.0.as_raw_fd(), how);
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Net for Epoll {
    const NAME: &'static str = "epoll";
    const NONBLOCKING: bool = true;
    type Stream = EpollStream;
    type Listener = tokio::net::TcpListener;

    fn listener(l: std::net::TcpListener) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::from_std(l)
    }

    async fn accept(l: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, peer) = l.accept().await?;
        Ok((EpollStream(s), peer))
    }

    const ACCEPT_CANCEL_SAFE: bool = true;

    async fn cancel_accepts(_fd: RawFd) -> io::Result<()> {
        Ok(())
    }

    async fn connect(sock: Rc<Socket>, addr: SockAddr) -> io::Result<()> {
        match sock.connect(&addr) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        // Safety: `Held` owns a reference to the socket, so the descriptor stays open and
        // refers to the same socket for the whole life of the registration.
        let fd = unsafe { AsyncFd::register_with_interest(Held(sock.clone()), Interest::WRITABLE) }
            .map_err(io::Error::from)?;
        loop {
            let mut ready = fd.writable().await?;
            match established(sock.as_raw_fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                r => return r,
            }
        }
    }

    fn stream(sock: Socket) -> io::Result<Self::Stream> {
        tokio::net::TcpStream::from_std(sock.into()).map(EpollStream)
    }

    type Datagram = EpollDatagram;

    fn datagram(sock: Socket) -> io::Result<Self::Datagram> {
        tokio::net::UdpSocket::from_std(sock.into()).map(EpollDatagram)
    }
}

/// A UDP socket driven by readiness. Its syscalls go through tokio's `try_io` so that a
/// `WouldBlock` clears the cached readiness.
pub struct EpollDatagram(tokio::net::UdpSocket);

impl Datagram for EpollDatagram {
    async fn readable(&self) -> io::Result<()> {
        self.0.readable().await
    }

    async fn writable(&self) -> io::Result<()> {
        self.0.writable().await
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    // Direct syscalls, whatever tokio last saw: a fresh socket can send before the reactor has
    // reported it writable. A WouldBlock clears the cached readiness, so the next wait is for
    // a new event.
    fn try_recv_from(&self, buf: &mut Vec<u8>) -> io::Result<(usize, SocketAddr)> {
        let r = recv_from_now(self.0.as_raw_fd(), buf);
        self.forget_on_block(&r, Interest::READABLE);
        r
    }

    fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        let r = send_to_now(self.0.as_raw_fd(), data, to);
        self.forget_on_block(&r, Interest::WRITABLE);
        r
    }

    fn try_send(&self, data: &[u8]) -> io::Result<usize> {
        let r = send_now(self.0.as_raw_fd(), data);
        self.forget_on_block(&r, Interest::WRITABLE);
        r
    }
}

impl EpollDatagram {
    fn forget_on_block<T>(&self, r: &io::Result<T>, interest: Interest) {
        if matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            let _ = self
                .0
                .try_io(interest, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
        }
    }
}

/// A socket kept open by the readiness registration that watches it.
struct Held(Rc<Socket>);

impl AsRawFd for Held {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
