//! The io_uring runtime (tokio-uring). This file and [`crate::server::worker`]'s runtime start
//! are the only places that name tokio-uring or io-uring.
//!
//! tokio-uring 0.5 lacks a connect on a socket we built ourselves (we need TCP_NODELAY and
//! IP_BIND_ADDRESS_NO_PORT before connecting) and a way to abort an in-flight operation, so
//! connect is submitted here as an `IORING_OP_CONNECT` through its public
//! [`UnsubmittedOneshot`]; the operation holds an `Rc` of the socket so the descriptor cannot be
//! closed and reused while the kernel still refers to it.
//!
//! Sockets given to io_uring are in blocking mode during the handshake: on an O_NONBLOCK socket
//! the kernel returns EAGAIN for a read or write that cannot proceed instead of waiting for
//! readiness itself. The relay then switches them to non-blocking mode and moves bytes with
//! direct syscalls, using io_uring only for readiness polls ([`Stream::readable`],
//! [`Stream::writable`]); an IORING_OP_SPLICE would run on a kernel worker thread (splice has no
//! non-blocking path in io_uring), costing two thread hand-offs per chunk and able to outlive
//! its tunnel.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use std::marker::PhantomData;

use io_uring::{cqueue, opcode, squeue, types};
use socket2::{SockAddr, Socket};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

use super::{Datagram, Net, Readable, Stream};

/// io_uring runtime marker.
pub struct Uring;

/// A stream whose reads and writes are io_uring operations. The `Rc` lets operations this file
/// submits itself (poll, connect) keep the socket open until the kernel is done with it.
pub struct UringStream(Rc<tokio_uring::net::TcpStream>);

impl Stream for UringStream {
    async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let (start, cap) = (buf.len(), buf.capacity());
        if start == cap {
            return (Err(io::ErrorKind::InvalidInput.into()), buf);
        }
        let (res, slice) = self.0.read(buf.slice(start..cap)).await;
        (res, slice.into_inner())
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.0.write_all(buf).await
    }

    async fn readable(&self) -> io::Result<Readable> {
        let mask = self
            .poll(libc::POLLIN | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP)
            .await?;
        let hangup = (libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;
        Ok(Readable {
            hangup: mask & hangup != 0,
        })
    }

    async fn writable(&self) -> io::Result<()> {
        self.poll(libc::POLLOUT | libc::POLLERR | libc::POLLHUP)
            .await
            .map(drop)
    }

    async fn closed(&self) {
        let _ = self
            .poll(libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP)
            .await;
    }

    async fn read_now(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // A non-blocking recv(2) answers at once either way; as an io_uring operation it would
        // cost a trip through the runtime before the answer is seen.
        let r = self.try_read(&mut buf);
        (r, buf)
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = self.0.shutdown(how);
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn flush_submissions(&self) {
        flush();
    }
}

impl UringStream {
    async fn poll(&self, events: libc::c_short) -> io::Result<u32> {
        poll(self.0.clone(), self.0.as_raw_fd(), events).await
    }
}

/// One IORING_OP_POLL_ADD on `fd`, which `hold` keeps open until the kernel is done: waits for
/// any of `events`, returns the events seen.
async fn poll<D: Unpin + 'static>(hold: D, fd: RawFd, events: libc::c_short) -> io::Result<u32> {
    let entry = opcode::PollAdd::new(types::Fd(fd), events as u32).build();
    submit(hold, entry).await.0
}

/// A UDP socket polled through io_uring.
pub struct UringDatagram(Rc<Socket>);

impl Datagram for UringDatagram {
    async fn readable(&self) -> io::Result<()> {
        let events = libc::POLLIN | libc::POLLERR | libc::POLLHUP;
        poll(self.0.clone(), self.0.as_raw_fd(), events)
            .await
            .map(drop)
    }

    async fn writable(&self) -> io::Result<()> {
        let events = libc::POLLOUT | libc::POLLERR | libc::POLLHUP;
        poll(self.0.clone(), self.0.as_raw_fd(), events)
            .await
            .map(drop)
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Net for Uring {
    const NAME: &'static str = "io_uring";
    const NONBLOCKING: bool = false;
    type Stream = UringStream;
    type Listener = tokio_uring::net::TcpListener;

    fn listener(l: std::net::TcpListener) -> io::Result<Self::Listener> {
        l.set_nonblocking(false)?;
        Ok(tokio_uring::net::TcpListener::from_std(l))
    }

    async fn accept(l: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, peer) = l.accept().await?;
        Ok((UringStream(Rc::new(s)), peer))
    }

    const ACCEPT_CANCEL_SAFE: bool = false;

    async fn cancel_accepts(fd: RawFd) -> io::Result<()> {
        // IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_FD | _ALL (Linux 5.19): every
        // operation on this descriptor in this worker's ring.
        let entry =
            opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
        match submit((), entry).await.0 {
            Ok(_) => Ok(()),
            // Nothing pending (the loop was between accepts): it sees the stop flag.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn connect(sock: Rc<Socket>, addr: SockAddr) -> io::Result<()> {
        let addr = Box::new(addr);
        let entry =
            opcode::Connect::new(types::Fd(sock.as_raw_fd()), addr.as_ptr(), addr.len()).build();
        submit((sock, addr), entry).await.0.map(drop)
    }

    fn stream(sock: Socket) -> io::Result<Self::Stream> {
        // Created in blocking mode by the connector (NONBLOCKING is false).
        let s = tokio_uring::net::TcpStream::from_std(sock.into());
        Ok(UringStream(Rc::new(s)))
    }

    type Datagram = UringDatagram;

    fn datagram(sock: Socket) -> io::Result<Self::Datagram> {
        Ok(UringDatagram(Rc::new(sock)))
    }
}

/// Submits one operation. `data` is everything the kernel may touch while the operation is in
/// flight (the socket, the buffer, the pipe, the address); it comes back with the result,
/// and stays alive even if the future is dropped first.
async fn submit<D: Unpin + 'static>(data: D, entry: squeue::Entry) -> (io::Result<u32>, D) {
    UnsubmittedOneshot::new(data, ResultOf(PhantomData), entry)
        .submit()
        .await
}

struct ResultOf<D>(PhantomData<D>);

impl<D> OneshotOutputTransform for ResultOf<D> {
    type Output = (io::Result<u32>, D);
    type StoredData = D;

    fn transform_oneshot_output(self, data: D, cqe: cqueue::Entry) -> Self::Output {
        let r = cqe.result();
        let r = if r < 0 {
            Err(io::Error::from_raw_os_error(-r))
        } else {
            Ok(r as u32)
        };
        (r, data)
    }
}

/// Why io_uring cannot be used here, or `None` when it can.
pub fn unavailable_reason() -> Option<String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match v.trim() {
            "2" => {
                return Some("kernel.io_uring_disabled = 2 (io_uring disabled system-wide)".into())
            }
            "1" => {
                // 1: only processes in kernel.io_uring_group (or with CAP_SYS_ADMIN) may use
                // it; the probe below tells whether that includes us.
            }
            _ => {}
        }
    }
    // The workers' own ring sizes: on kernels before 5.12 rings count against RLIMIT_MEMLOCK,
    // and a small probe ring could pass where the real ones fail.
    let ring = io_uring::IoUring::<squeue::Entry, cqueue::Entry>::builder()
        .setup_cqsize(crate::server::CQ_ENTRIES)
        .build(crate::server::SQ_ENTRIES);
    let ring = match ring {
        Ok(r) => r,
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) => {
                    "io_uring_setup is not implemented (kernel too old or disabled)"
                }
                Some(libc::EPERM) => {
                    "io_uring_setup not permitted (seccomp or kernel.io_uring_disabled)"
                }
                Some(libc::ENOMEM) => {
                    "io_uring_setup out of memory (RLIMIT_MEMLOCK too low for the rings on kernels before 5.12?)"
                }
                _ => "io_uring_setup failed",
            };
            return Some(format!("{why}: {e}"));
        }
    };
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return Some(format!("io_uring opcode probe failed: {e}"));
    }
    for (code, name) in [
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
    ] {
        if !probe.is_supported(code) {
            return Some(format!("kernel io_uring lacks IORING_OP_{name}"));
        }
    }
    None
}

/// Runs `fut` on a new tokio-uring runtime on this thread, with `sq_entries` submission and
/// `cq_entries` completion queue entries (see `CQ_ENTRIES` in [`crate::server`] for the
/// sizing).
pub fn block_on<F: std::future::Future>(
    sq_entries: u32,
    cq_entries: u32,
    fut: F,
) -> io::Result<F::Output> {
    let mut ring = io_uring::IoUring::builder();
    ring.setup_cqsize(cq_entries);
    let mut builder = tokio_uring::builder();
    builder.entries(sq_entries).uring_builder(&ring);
    // Find this runtime's ring descriptor (tokio-uring keeps it private): the io_uring
    // descriptor that appears while it is created, one worker at a time.
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let rt = {
        let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        let before = ring_fds();
        let rt = tokio_uring::Runtime::new(&builder)?;
        let new: Vec<RawFd> = ring_fds().difference(&before).copied().collect();
        RING_FD.set(match new[..] {
            [fd] => Some(fd),
            _ => None,
        });
        rt
    };
    Ok(rt.block_on(fut))
}

thread_local! {
    /// This worker's ring descriptor, for [`flush`].
    static RING_FD: std::cell::Cell<Option<RawFd>> = const { std::cell::Cell::new(None) };
}

/// The process's io_uring descriptors.
fn ring_fds() -> std::collections::HashSet<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Default::default();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[io_uring]")
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Hands the operations queued on this worker's ring to the kernel now.
///
/// tokio-uring submits queued operations only when its thread parks (runs out of ready tasks)
/// or the queue fills. A worker kept busy by bulk tunnels, whose relays move bytes with direct
/// syscalls and rarely wait, may not park for a long time, and meanwhile every accept, read and
/// poll it queued waits: measured, new tunnels' handshakes took 480 ms at p99 next to two bulk
/// tunnels (28 ms on epoll). The relay calls this between batches; `io_uring_enter` with
/// nothing queued returns at once.
pub fn flush() {
    if let Some(fd) = RING_FD.get() {
        // Safety: io_uring_enter on our own ring with no argument pointers.
        unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                crate::server::SQ_ENTRIES,
                0u32,
                0u32,
                std::ptr::null::<libc::c_void>(),
                0usize,
            );
        }
    }
}
