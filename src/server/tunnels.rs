//! A worker's table of live tunnels, for the timers that act on many tunnels at once: the idle
//! timeout (one sweep per worker instead of a timer per tunnel, which keeps an idle tunnel's
//! memory down) and the forced close at the end of a shutdown drain.
//!
//! The table holds raw descriptor numbers. That is sound because a tunnel removes its entry
//! (the [`Registration`] drops) before its sockets close, and everything runs on one thread.

use std::cell::RefCell;
use std::net::Shutdown;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use slab::Slab;

use super::net::shutdown_fd;

struct Entry {
    fds: [RawFd; 2],
    last_activity: Instant,
    idle_fired: bool,
}

/// Live tunnels of one worker.
#[derive(Default)]
pub struct Tunnels {
    slots: RefCell<Slab<Entry>>,
}

impl Tunnels {
    /// Registers a tunnel's two sockets; the entry lives as long as the returned handle.
    pub fn register(&self, client: RawFd, target: RawFd) -> Registration<'_> {
        let id = self.slots.borrow_mut().insert(Entry {
            fds: [client, target],
            last_activity: Instant::now(),
            idle_fired: false,
        });
        Registration { table: self, id }
    }

    /// Number of live tunnels.
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shuts down both sockets of every tunnel silent for `idle` or longer. Their relays then
    /// end on their own; the tunnel's registration reports the idle timeout.
    pub fn sweep_idle(&self, idle: Duration) {
        let now = Instant::now();
        for (_, e) in self.slots.borrow_mut().iter_mut() {
            if !e.idle_fired && now.saturating_duration_since(e.last_activity) >= idle {
                e.idle_fired = true;
                e.fds.iter().for_each(|&fd| shutdown_fd(fd, Shutdown::Both));
            }
        }
    }

    /// Gives back the table's memory once it is empty after a burst.
    pub fn shrink_if_empty(&self) {
        let mut slots = self.slots.borrow_mut();
        if slots.is_empty() && slots.capacity() > 1024 {
            *slots = Slab::new();
        }
    }

    /// Shuts down every tunnel (end of a shutdown drain).
    pub fn close_all(&self) {
        for (_, e) in self.slots.borrow().iter() {
            e.fds.iter().for_each(|&fd| shutdown_fd(fd, Shutdown::Both));
        }
    }
}

/// A tunnel's entry in [`Tunnels`]; removed on drop.
pub struct Registration<'a> {
    table: &'a Tunnels,
    id: usize,
}

impl Registration<'_> {
    /// Notes that bytes moved (a vDSO clock read, no system call).
    pub fn touch(&self) {
        if let Some(e) = self.table.slots.borrow_mut().get_mut(self.id) {
            e.last_activity = Instant::now();
        }
    }

    /// Whether the idle sweep closed this tunnel.
    pub fn idle_fired(&self) -> bool {
        self.table
            .slots
            .borrow()
            .get(self.id)
            .is_some_and(|e| e.idle_fired)
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.table.slots.borrow_mut().try_remove(self.id);
    }
}
