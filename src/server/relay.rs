//! The relay: two directions moved concurrently, half-close carried through, bytes counted,
//! idle tunnels closed. One call, [`relay`], with two ways to move bytes behind it:
//!
//! - **copy**: read into a buffer, write it out. The buffer comes from the worker's pool and
//!   goes back as soon as it is written, and a direction with nothing to read waits for
//!   readability (a poll) holding no buffer at all.
//! - **splice**: socket -> pipe -> socket inside the kernel (no copy through user space), with
//!   a pipe taken from the worker's pool only while bytes move and returned empty.
//!
//! Both follow the same rules:
//! - Bytes move with direct non-blocking syscalls on the worker thread (`recv`, `send`,
//!   `splice`), which answer at once; a direction waits for readiness (an io_uring poll, or
//!   epoll) only when one would block. No kernel worker thread is involved, so nothing the
//!   relay started can outlive it.
//! - EOF from one side becomes `shutdown(Write)` on the other; the tunnel ends when both
//!   directions have ended (a client that half-closes still gets the whole response).
//! - An error on either side (a reset, a failed write) aborts both sockets: shut down in both
//!   directions, which completes the other direction's pending operation at once, and closed
//!   with a reset so each peer learns the tunnel broke (not a FIN that looks like a clean end).
//! - Idle timeouts are the worker's job ([`super::tunnels`]): the relay reports activity
//!   through `touch` and ends when the sweep shuts its sockets down.

use std::cell::Cell;
use std::io;

use super::bandwidth::Bucket;
use super::metrics::Counter;
use super::net::{write_ready, Stream};
use super::pool::Pools;

/// How bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through pooled user-space buffers.
    Copy,
    /// Through pooled pipes with splice(2).
    Splice,
    /// Per direction: copy while messages are small (one recv and one send, against splice's
    /// two splices and a pipe from the pool), splice once a read fills a small buffer (bulk
    /// data), and back to copy when splices come in small.
    Adaptive,
}

/// Which end of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The SOCKS client.
    Client,
    /// The destination.
    Target,
}

impl Side {
    /// Name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Target => "target",
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Target,
            Side::Target => Side::Client,
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Bytes from client to target.
    pub up: u64,
    /// Bytes from target to client.
    pub down: u64,
    /// The first error, and on which side it happened.
    pub error: Option<(Side, io::Error)>,
}

/// Bytes a direction moves before letting the worker's other tasks run.
const YIELD_EVERY: usize = 256 * 1024;

/// What a tunnel's bytes are counted by and paced by.
pub struct Meter<'a> {
    /// Called whenever bytes move (the idle sweep's clock).
    pub touch: &'a dyn Fn(),
    /// Client to target: the worker's byte counter and the user's bandwidth bucket, if any.
    pub up: (&'a Counter, Option<&'a Bucket>),
    /// Target to client.
    pub down: (&'a Counter, Option<&'a Bucket>),
}

/// Relays between `client` and `target` until both directions end. `pending` holds bytes
/// already read from the client (pipelined after its request); they go to the target first.
pub async fn relay<C: Stream, T: Stream>(
    client: &C,
    target: &T,
    pending: Vec<u8>,
    pools: &Pools,
    mode: Mode,
    meter: &Meter<'_>,
) -> RelayStats {
    let touch = meter.touch;
    let up = Cell::new(0u64);
    let down = Cell::new(0u64);
    let first_error: Cell<Option<(Side, io::Error)>> = Cell::new(None);
    // Both modes move bytes with direct non-blocking syscalls on this thread and wait for
    // readiness (an io_uring poll, or epoll) only when one would block: no kernel worker
    // threads, no operation outliving the tunnel, and nothing held while waiting.
    // Through user-space TLS bytes must pass through a buffer.
    let mode = if client.can_splice() && target.can_splice() {
        mode
    } else {
        Mode::Copy
    };
    for r in [client.set_nonblocking(), target.set_nonblocking()] {
        if let Err(e) = r {
            tracing::warn!("cannot make a socket non-blocking for the relay: {e}");
            client.abort();
            target.abort();
            return RelayStats {
                error: Some((Side::Client, e)),
                ..RelayStats::default()
            };
        }
    }

    let up_dir = Direction {
        from: client,
        to: target,
        from_side: Side::Client,
        bytes: &up,
        since_yield: Cell::new(0),
        counter: meter.up.0,
        bucket: meter.up.1,
        touch,
        error: &first_error,
        pools,
    };
    let down_dir = Direction {
        from: target,
        to: client,
        from_side: Side::Target,
        bytes: &down,
        since_yield: Cell::new(0),
        counter: meter.down.0,
        bucket: meter.down.1,
        touch,
        error: &first_error,
        pools,
    };
    tokio::join!(up_dir.run(pending, mode), down_dir.run(Vec::new(), mode));

    RelayStats {
        up: up.get(),
        down: down.get(),
        error: first_error.take(),
    }
}

struct Direction<'a, F, T> {
    from: &'a F,
    to: &'a T,
    from_side: Side,
    bytes: &'a Cell<u64>,
    /// Bytes moved since this direction last let the others run.
    since_yield: Cell<usize>,
    counter: &'a Counter,
    bucket: Option<&'a Bucket>,
    touch: &'a dyn Fn(),
    error: &'a Cell<Option<(Side, io::Error)>>,
    pools: &'a Pools,
}

/// Why a direction stopped.
enum End {
    /// End of stream from `from`; `to` was half-closed.
    Eof,
    /// An error on one side.
    Failed(Side, io::Error),
    /// (Adaptive mode) the traffic changed: move the other way.
    Switch,
}

impl<F: Stream, T: Stream> Direction<'_, F, T> {
    async fn run(&self, pending: Vec<u8>, mode: Mode) {
        if !pending.is_empty() {
            // Rare (a client that pipelines payload after its request): boxed, so that the
            // write's state does not enlarge every tunnel's future.
            if let Err(e) = Box::pin(write_ready(self.to, &pending)).await {
                return self.fail(self.from_side.other(), e);
            }
            self.count(pending.len() as u64).await;
        } else {
            drop(pending);
        }
        let adaptive = mode == Mode::Adaptive;
        let mut splicing = mode == Mode::Splice;
        loop {
            let end = if splicing {
                self.splice(adaptive).await
            } else {
                self.copy(adaptive).await
            };
            match end {
                End::Switch => splicing = !splicing,
                End::Eof => return self.to.close_write().await,
                End::Failed(side, e) => return self.fail(side, e),
            }
        }
    }

    /// Read what is there into a pooled buffer, write it, give the buffer back; when nothing
    /// is there, wait for readability without a buffer. A direction starts with a small
    /// buffer and moves to a large one once a read fills the small one (bulk data), and back
    /// when reads come in small again.
    async fn copy(&self, adaptive: bool) -> End {
        let mut large = false;
        loop {
            // Bytes that keep coming never make a direct syscall block: yield now and then so
            // that the worker's other tunnels and timers run.
            self.take_turns().await;
            // A user under a bandwidth limit moves small chunks, so pacing stays smooth.
            let pool = if large && self.bucket.is_none() {
                &self.pools.buffers
            } else {
                &self.pools.small
            };
            // Reads are one non-blocking recv(2); writes that do not fit at once are boxed: a
            // tunnel spends its idle life in `wait_readable`, and its task should be no bigger
            // than that state needs.
            let (r, buf) = self.from.read_now(pool.take()).await;
            match r {
                Ok(0) => {
                    pool.give(buf);
                    return End::Eof;
                }
                Ok(n) => {
                    large = n >= self.pools.small.size();
                    let w = write_ready(self.to, &buf).await;
                    pool.give(buf);
                    if let Err(e) = w {
                        return End::Failed(self.from_side.other(), e);
                    }
                    self.count(n as u64).await;
                    if adaptive && large {
                        return End::Switch;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pool.give(buf);
                    match self.wait_readable().await {
                        Ok(true) => return End::Eof,
                        Ok(false) => {}
                        Err(end) => return end,
                    }
                }
                Err(e) => {
                    pool.give(buf);
                    return End::Failed(self.from_side, e);
                }
            }
        }
    }

    /// Splice what is there into a pooled pipe and out to the other side; when nothing is
    /// there, give the (empty) pipe back and wait for readability holding nothing.
    async fn splice(&self, adaptive: bool) -> End {
        let pipes = &self.pools.pipes;
        loop {
            self.take_turns().await;
            let pipe = match pipes.take() {
                Ok(p) => p,
                Err(e) => {
                    // Out of descriptors for a pipe: move this chunk by copying instead.
                    tracing::debug!("no pipe for splice ({e}); copying");
                    match Box::pin(self.copy_once()).await {
                        Ok(true) => continue,
                        Ok(false) => return End::Eof,
                        Err(end) => return end,
                    }
                }
            };
            let chunk = self.bucket.map_or(usize::MAX, Bucket::chunk);
            let n = match self.from.try_splice_in(&pipe, pipes.size().min(chunk)) {
                Ok(0) => {
                    pipes.give(pipe);
                    return End::Eof;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pipes.give(pipe);
                    match self.wait_readable().await {
                        Ok(true) => return End::Eof,
                        Ok(false) => continue,
                        Err(end) => return end,
                    }
                }
                Err(e) => {
                    pipes.give(pipe);
                    return End::Failed(self.from_side, e);
                }
            };
            (self.touch)();
            let mut left = n;
            while left > 0 {
                match self.to.try_splice_out(&pipe, left) {
                    Ok(0) => {
                        pipes.discard(pipe);
                        let e = io::ErrorKind::WriteZero.into();
                        return End::Failed(self.from_side.other(), e);
                    }
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = Box::pin(self.to.writable()).await {
                            pipes.discard(pipe);
                            return End::Failed(self.from_side.other(), e);
                        }
                    }
                    Err(e) => {
                        // The pipe may still hold bytes: close it rather than pool it.
                        pipes.discard(pipe);
                        return End::Failed(self.from_side.other(), e);
                    }
                }
            }
            pipes.give(pipe);
            self.count(n as u64).await;
            if adaptive && n < self.pools.small.size() {
                return End::Switch;
            }
        }
    }

    /// One copy step through a small buffer (used when no pipe can be had): `Ok(false)` at end
    /// of stream.
    async fn copy_once(&self) -> Result<bool, End> {
        let buffers = &self.pools.small;
        let (r, buf) = self.from.read_now(buffers.take()).await;
        let r = match r {
            Ok(0) => Ok(false),
            Ok(n) => match write_ready(self.to, &buf).await {
                Ok(()) => {
                    self.count(n as u64).await;
                    Ok(true)
                }
                Err(e) => Err(End::Failed(self.from_side.other(), e)),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buffers.give(buf);
                return match self.wait_readable().await {
                    Ok(eof) => Ok(!eof),
                    Err(end) => Err(end),
                };
            }
            Err(e) => Err(End::Failed(self.from_side, e)),
        };
        buffers.give(buf);
        r
    }

    /// Waits for readability holding nothing; `Ok(true)` when the peer closed with nothing
    /// left to read, found without taking a buffer or a pipe.
    async fn wait_readable(&self) -> Result<bool, End> {
        let ready = self
            .from
            .readable()
            .await
            .map_err(|e| End::Failed(self.from_side, e))?;
        if !ready.hangup {
            return Ok(false);
        }
        self.from
            .at_eof()
            .map_err(|e| End::Failed(self.from_side, e))
    }

    /// Between chunks: bytes that keep coming never make a direct syscall block, so after a
    /// batch ([`YIELD_EVERY`] bytes) the direction hands the runtime's queued operations to the
    /// kernel and lets the worker's other tasks (accepts, handshakes, timers) run. tokio's own
    /// budget alone let one poll move up to 128 chunks (8 MiB), so the runtime looked at its
    /// I/O only every few hundred milliseconds under bulk load.
    async fn take_turns(&self) {
        tokio::task::consume_budget().await;
        if self.since_yield.get() >= YIELD_EVERY {
            self.since_yield.set(0);
            self.to.flush_submissions();
            tokio::task::yield_now().await;
        }
    }

    /// Counts `n` bytes moved; for a user with a bandwidth limit, waits until the user's
    /// bucket allows more.
    async fn count(&self, n: u64) {
        self.bytes.set(self.bytes.get() + n);
        self.since_yield.set(self.since_yield.get() + n as usize);
        self.counter.add(n);
        (self.touch)();
        if let Some(bucket) = self.bucket {
            let wait = bucket.charge(n as usize);
            if !wait.is_zero() {
                // Boxed: unlimited tunnels should not carry a timer in their state.
                Box::pin(tokio::time::sleep(wait)).await;
            }
        }
    }

    /// Records the first error and aborts both sockets: the other direction ends too, and both
    /// peers see a reset (see [`Stream::abort`]).
    fn fail(&self, side: Side, e: io::Error) {
        let prev = self.error.take();
        self.error.set(prev.or(Some((side, e))));
        self.from.abort();
        self.to.abort();
    }
}
