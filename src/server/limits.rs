//! Limits on concurrent tunnels: in total, per client address and per user, shared by all
//! workers (a client is its IPv4 address or its IPv6 /64). Checked once when a request has
//! passed the access rules, released when its session
//! ends; never touched while bytes move. The total is one atomic counter; the per-client and
//! per-user tables (a mutex each) are only used when those limits are set.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Which limit refused a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitHit {
    /// `--max-tunnels`.
    #[error("tunnel limit reached ({0} in total)")]
    Total(usize),
    /// `--max-tunnels-per-client`.
    #[error("tunnel limit per client reached ({0})")]
    Client(usize),
    /// `--max-tunnels-per-user`.
    #[error("tunnel limit per user reached ({0})")]
    User(usize),
}

/// The limits and the live counts (0 = unlimited).
#[derive(Debug, Default)]
pub struct Limits {
    max_total: usize,
    max_per_client: usize,
    max_per_user: usize,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    per_user: Mutex<HashMap<String, usize>>,
}

impl Limits {
    /// Limits with these maxima; 0 means none.
    pub fn new(max_total: usize, max_per_client: usize, max_per_user: usize) -> Self {
        Limits {
            max_total,
            max_per_client,
            max_per_user,
            ..Default::default()
        }
    }

    /// Counts a tunnel for `client` (and `user`), or says which limit is full. The count is
    /// released when the permit drops.
    pub fn acquire(
        self: &Arc<Self>,
        client: IpAddr,
        user: Option<&str>,
    ) -> Result<Permit, LimitHit> {
        let mut permit = Permit {
            limits: self.clone(),
            total: false,
            client: None,
            user: None,
        };
        if self.max_total > 0 {
            let n = self.total.fetch_add(1, Ordering::Relaxed);
            permit.total = true;
            if n >= self.max_total {
                return Err(LimitHit::Total(self.max_total));
            }
        }
        if self.max_per_client > 0 {
            let client = crate::auth::client_key(client);
            let mut map = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(client).or_insert(0);
            if *n >= self.max_per_client {
                return Err(LimitHit::Client(self.max_per_client));
            }
            *n += 1;
            permit.client = Some(client);
        }
        if let (true, Some(user)) = (self.max_per_user > 0, user) {
            let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(user.to_owned()).or_insert(0);
            if *n >= self.max_per_user {
                return Err(LimitHit::User(self.max_per_user));
            }
            *n += 1;
            permit.user = Some(user.to_owned());
        }
        Ok(permit)
    }
}

/// One counted tunnel; dropping it releases the counts.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    total: bool,
    client: Option<IpAddr>,
    user: Option<String>,
}

fn release<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.total {
            self.limits.total.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(c) = &self.client {
            release(&self.limits.per_client, c);
        }
        if let Some(u) = &self.user {
            release(&self.limits.per_user, u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_released_and_refusals_leave_nothing_behind() {
        let l = Arc::new(Limits::new(3, 2, 1));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let p1 = l.acquire(a, None).unwrap();
        let p2 = l.acquire(a, Some("u")).unwrap();
        assert_eq!(l.acquire(a, None).unwrap_err(), LimitHit::Client(2));
        assert_eq!(l.acquire(b, Some("u")).unwrap_err(), LimitHit::User(1));
        let p3 = l.acquire(b, None).unwrap();
        assert_eq!(
            l.acquire("192.0.2.3".parse().unwrap(), None).unwrap_err(),
            LimitHit::Total(3)
        );
        drop((p1, p2, p3));
        assert_eq!(l.total.load(Ordering::Relaxed), 0);
        assert!(l.per_client.lock().unwrap().is_empty());
        assert!(l.per_user.lock().unwrap().is_empty());
        let _again = l.acquire(b, Some("u")).unwrap();
    }
}
