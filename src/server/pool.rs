//! Per-worker pools of relay buffers and splice pipes. A tunnel takes one only while bytes are
//! moving and gives it back at once, so memory and descriptors scale with active traffic, not
//! with open tunnels. Single-threaded (`RefCell`), one pool per worker: no locks.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A worker's buffers and pipes.
pub struct Pools {
    /// Relay buffers for the copy mode (and for splice when no pipe can be had).
    pub buffers: BufferPool,
    /// Small buffers ([`SMALL_BUFFER`] bytes) for directions carrying small messages, so that
    /// a burst of thousands of tunnels each moving a few bytes does not take thousands of
    /// large buffers at once.
    pub small: BufferPool,
    /// Pipes for the splice mode.
    pub pipes: PipePool,
    /// Buffers for UDP datagrams ([`DATAGRAM_BUFFER`] bytes: any UDP datagram fits whole).
    pub datagrams: BufferPool,
}

impl Pools {
    /// Releases everything free if nothing was taken since the last call. Called every second
    /// or so by the worker, so that after a burst the memory and descriptors go back to the
    /// operating system instead of staying parked in the pool.
    pub fn trim_if_unused(&self) -> bool {
        let a = self.buffers.trim_if_unused();
        let b = self.small.trim_if_unused();
        let c = self.pipes.trim_if_unused();
        let d = self.datagrams.trim_if_unused();
        a || b || c || d
    }
}

/// Size of the datagram buffers: the largest UDP payload (65 535 bytes less the UDP header
/// for IPv6, 65 507 for IPv4) plus room for the longest SOCKS UDP header in front.
pub const DATAGRAM_BUFFER: usize = 65536 + 512;

/// Size of the small buffers.
pub const SMALL_BUFFER: usize = 4096;

/// Free buffers (each with the same capacity), at most `keep` of them kept.
pub struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    size: usize,
    keep: usize,
    used: Cell<bool>,
}

impl BufferPool {
    /// A pool of `size`-byte buffers keeping at most `keep` free ones.
    pub fn new(size: usize, keep: usize) -> Self {
        BufferPool {
            free: RefCell::new(Vec::new()),
            size,
            keep,
            used: Cell::new(false),
        }
    }

    /// An empty buffer with `size` bytes of capacity.
    pub fn take(&self) -> Vec<u8> {
        self.used.set(true);
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Returns a buffer; dropped if the pool is full or it is not one of ours.
    pub fn give(&self, mut buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep && buf.capacity() == self.size {
            buf.clear();
            free.push(buf);
        }
    }

    /// Capacity of the buffers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Free buffers held.
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }

    fn trim_if_unused(&self) -> bool {
        if self.used.replace(false) {
            return false;
        }
        let mut free = self.free.borrow_mut();
        let released = !free.is_empty();
        *free = Vec::new();
        released
    }
}

/// A pipe for splice: bytes go socket -> `w`, then `r` -> socket.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    /// A new pipe with (at least) `size` bytes of capacity. The kernel may round the size up
    /// to a power of two pages; it refuses sizes above `fs.pipe-max-size` for unprivileged
    /// processes, in which case the default (64 KiB) stays.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // Safety: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: both descriptors were just created and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Safety: fcntl on a descriptor we own; failure leaves the default size.
        unsafe {
            libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int);
        }
        Ok(Pipe { r, w })
    }

    /// The read end.
    pub fn reader(&self) -> RawFd {
        self.r.as_raw_fd()
    }

    /// The write end.
    pub fn writer(&self) -> RawFd {
        self.w.as_raw_fd()
    }
}

/// Free pipes, at most `keep` of them kept. A pipe is only returned empty: one that may
/// still hold bytes (its tunnel failed mid-move) is closed instead.
pub struct PipePool {
    free: RefCell<Vec<Pipe>>,
    size: usize,
    keep: usize,
    open: Cell<usize>,
    used: Cell<bool>,
}

impl PipePool {
    /// A pool of pipes of `size` bytes keeping at most `keep` free ones.
    pub fn new(size: usize, keep: usize) -> Self {
        PipePool {
            free: RefCell::new(Vec::new()),
            size,
            keep,
            open: Cell::new(0),
            used: Cell::new(false),
        }
    }

    /// Capacity asked for each pipe.
    pub fn size(&self) -> usize {
        self.size
    }

    /// An empty pipe, or the error that creating one met (EMFILE when out of descriptors).
    pub fn take(&self) -> io::Result<Pipe> {
        self.used.set(true);
        if let Some(p) = self.free.borrow_mut().pop() {
            return Ok(p);
        }
        let p = Pipe::new(self.size)?;
        self.open.set(self.open.get() + 1);
        Ok(p)
    }

    /// Returns an empty pipe.
    pub fn give(&self, pipe: Pipe) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            free.push(pipe);
        } else {
            self.discard(pipe);
        }
    }

    /// Closes a pipe that may not be empty.
    pub fn discard(&self, pipe: Pipe) {
        drop(pipe);
        self.open.set(self.open.get().saturating_sub(1));
    }

    /// Pipes open (in use or free).
    pub fn open(&self) -> usize {
        self.open.get()
    }

    fn trim_if_unused(&self) -> bool {
        if self.used.replace(false) {
            return false;
        }
        let freed = std::mem::take(&mut *self.free.borrow_mut());
        self.open.set(self.open.get().saturating_sub(freed.len()));
        !freed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_up_to_the_cap() {
        let pool = BufferPool::new(1024, 1);
        let a = pool.take();
        let b = pool.take();
        assert_eq!(a.capacity(), 1024);
        let ptr = a.as_ptr();
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.idle(), 1);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr);
    }

    #[test]
    fn pipes_are_reused_and_counted() {
        let pool = PipePool::new(1 << 16, 1);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!(pool.open(), 2);
        let fd = a.reader();
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.open(), 1);
        assert_eq!(pool.take().unwrap().reader(), fd);
    }

    #[test]
    fn unused_pools_are_emptied() {
        let pools = Pools {
            buffers: BufferPool::new(64, 8),
            small: BufferPool::new(16, 8),
            pipes: PipePool::new(4096, 8),
            datagrams: BufferPool::new(128, 8),
        };
        pools.buffers.give(pools.buffers.take());
        pools.datagrams.give(pools.datagrams.take());
        pools.pipes.give(pools.pipes.take().unwrap());
        assert!(!pools.trim_if_unused()); // used since the last tick: kept
        assert_eq!((pools.buffers.idle(), pools.pipes.open()), (1, 1));
        assert!(pools.trim_if_unused()); // idle for a whole tick: released
        assert_eq!((pools.buffers.idle(), pools.pipes.open()), (0, 0));
        assert_eq!(pools.datagrams.idle(), 0);
    }
}
