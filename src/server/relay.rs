//! The relay: two directions copied concurrently through owned buffers, half-close carried
//! through, bytes counted, idle tunnels closed. One call, [`relay`], so that a zero-copy
//! (splice) implementation can stand behind the same signature.
//!
//! - EOF from one side becomes `shutdown(Write)` on the other; the tunnel ends when both
//!   directions have ended (a client that half-closes still gets the whole response).
//! - An error on either side (a reset, a failed write) shuts both sockets down in both
//!   directions, which completes the other direction's pending read at once.
//! - With an idle timeout, a tunnel with no bytes moving either way for that long is shut
//!   down the same way.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::net::Stream;

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
    /// The idle timeout ended the tunnel.
    pub idle_timeout: bool,
}

/// Relays between `client` and `target` until both directions end. `up_buf` and `down_buf`
/// are the per-direction buffers (their capacity is the read size); `up_buf` may arrive
/// holding bytes already read from the client (pipelined after the handshake), which are
/// written to the target first.
pub async fn relay<S: Stream>(
    client: &S,
    target: &S,
    up_buf: Vec<u8>,
    down_buf: Vec<u8>,
    idle_timeout: Option<Duration>,
) -> RelayStats {
    let activity = Cell::new(Instant::now());
    let up = Cell::new(0u64);
    let down = Cell::new(0u64);
    let first_error: Cell<Option<(Side, io::Error)>> = Cell::new(None);

    let up_dir = Direction {
        from: client,
        to: target,
        from_side: Side::Client,
        bytes: &up,
        activity: &activity,
        error: &first_error,
    };
    let down_dir = Direction {
        from: target,
        to: client,
        from_side: Side::Target,
        bytes: &down,
        activity: &activity,
        error: &first_error,
    };
    let both = async { tokio::join!(up_dir.run(up_buf), down_dir.run(down_buf)) };

    let mut idle_fired = false;
    match idle_timeout {
        None => {
            both.await;
        }
        Some(idle) => {
            tokio::pin!(both);
            tokio::select! {
                biased;
                _ = &mut both => {}
                _ = idle_watch(&activity, idle) => {
                    idle_fired = true;
                    client.shutdown(Shutdown::Both);
                    target.shutdown(Shutdown::Both);
                    // Both directions now end promptly; their buffers come back with them.
                    both.await;
                }
            }
        }
    }

    RelayStats {
        up: up.get(),
        down: down.get(),
        error: first_error.take(),
        idle_timeout: idle_fired,
    }
}

struct Direction<'a, S> {
    from: &'a S,
    to: &'a S,
    from_side: Side,
    bytes: &'a Cell<u64>,
    activity: &'a Cell<Instant>,
    error: &'a Cell<Option<(Side, io::Error)>>,
}

impl<S: Stream> Direction<'_, S> {
    async fn run(&self, mut buf: Vec<u8>) {
        let to_side = match self.from_side {
            Side::Client => Side::Target,
            Side::Target => Side::Client,
        };
        if !buf.is_empty() {
            let n = buf.len() as u64;
            let (r, b) = self.to.write_all(buf).await;
            buf = b;
            if let Err(e) = r {
                return self.fail(to_side, e);
            }
            self.bytes.set(self.bytes.get() + n);
        }
        loop {
            buf.clear();
            let (r, b) = self.from.read(buf).await;
            buf = b;
            let n = match r {
                Ok(0) => {
                    self.to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => n,
                Err(e) => return self.fail(self.from_side, e),
            };
            self.activity.set(Instant::now());
            let (r, b) = self.to.write_all(buf).await;
            buf = b;
            if let Err(e) = r {
                return self.fail(to_side, e);
            }
            self.bytes.set(self.bytes.get() + n as u64);
        }
    }

    /// Records the first error and shuts both sockets down so the other direction ends too.
    fn fail(&self, side: Side, e: io::Error) {
        let prev = self.error.take();
        self.error.set(prev.or(Some((side, e))));
        self.from.shutdown(Shutdown::Both);
        self.to.shutdown(Shutdown::Both);
    }
}

/// Resolves once no byte has moved for `idle`.
async fn idle_watch(activity: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = activity.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}
