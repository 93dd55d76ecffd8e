//! Per-user bandwidth limits: one token bucket per user and direction, shared by that user's
//! tunnels on every worker.
//!
//! The bucket is a GCRA (generic cell rate algorithm): a single atomic "theoretical arrival
//! time". Charging `n` bytes moves it forward by `n / rate`; when it runs more than the burst
//! allowance ahead of now, the tunnel sleeps for the difference before moving more bytes.
//! Only tunnels of limited users ever touch a bucket, so unlimited traffic pays nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How far ahead of its rate a user may burst: this much time's worth of bytes.
const BURST: Duration = Duration::from_millis(100);

/// One direction's bucket.
#[derive(Debug)]
pub struct Bucket {
    /// Bytes per second.
    rate: u64,
    /// Nanoseconds since `epoch` at which the bucket is empty again.
    tat: AtomicU64,
    epoch: Instant,
}

impl Bucket {
    /// A bucket allowing `rate` bytes per second (at least 1).
    pub fn new(rate: u64) -> Self {
        Bucket {
            rate: rate.max(1),
            tat: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The most bytes worth moving in one step: a tenth of a second's worth (at least 1 KiB),
    /// so that a slow limit is met smoothly rather than in large bursts and pauses.
    pub fn chunk(&self) -> usize {
        (self.rate / 10).clamp(1024, usize::MAX as u64) as usize
    }

    /// Charges `n` bytes moved now; returns how long to wait before moving more.
    pub fn charge(&self, n: usize) -> Duration {
        self.charge_at(n, self.epoch.elapsed())
    }

    fn charge_at(&self, n: usize, now: Duration) -> Duration {
        let now = now.as_nanos().min(u64::MAX as u128) as u64;
        let cost = (n as u128 * 1_000_000_000 / self.rate as u128).min(u64::MAX as u128) as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new = tat.max(now).saturating_add(cost);
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let ahead = new - now;
                    let burst = BURST.as_nanos() as u64;
                    return Duration::from_nanos(ahead.saturating_sub(burst));
                }
                Err(t) => tat = t,
            }
        }
    }
}

/// A user's buckets: client to target, and target to client.
#[derive(Debug)]
pub struct UserBandwidth {
    /// Upload (client to target).
    pub up: Bucket,
    /// Download (target to client).
    pub down: Bucket,
}

impl UserBandwidth {
    /// Both directions at `rate` bytes per second.
    pub fn new(rate: u64) -> Self {
        UserBandwidth {
            up: Bucket::new(rate),
            down: Bucket::new(rate),
        }
    }
}

/// The limits in force: a default for every user and per-user overrides (bytes per second
/// each way; 0 = unlimited).
#[derive(Debug, Default)]
pub struct Bandwidth {
    /// Users with a limit of their own.
    buckets: HashMap<String, Arc<UserBandwidth>>,
    /// Users exempted from the default by an explicit 0.
    unlimited: HashSet<String>,
    /// The default limit (0 = none).
    default: u64,
    /// Buckets of users under the default limit, made on first use.
    defaults: Mutex<HashMap<String, Arc<UserBandwidth>>>,
}

impl Bandwidth {
    /// Builds the table from the default limit and per-user overrides.
    pub fn new(default: u64, per_user: &[(String, u64)]) -> Self {
        Self::reusing(default, per_user, None)
    }

    /// The same, keeping `previous` buckets whose rate did not change (a reload): a user's
    /// tunnels from before and after it keep drawing from one bucket, and a reload hands out
    /// no fresh burst.
    pub fn reusing(default: u64, per_user: &[(String, u64)], previous: Option<&Bandwidth>) -> Self {
        let mut bw = Bandwidth {
            default,
            ..Bandwidth::default()
        };
        let old = |name: &str, rate: u64| -> Option<Arc<UserBandwidth>> {
            let p = previous?;
            let b = p.buckets.get(name).cloned().or_else(|| {
                let d = p.defaults.lock().unwrap_or_else(|e| e.into_inner());
                d.get(name).cloned()
            })?;
            (b.up.rate() == rate).then_some(b)
        };
        for (name, rate) in per_user {
            if *rate == 0 {
                bw.unlimited.insert(name.clone());
            } else {
                let b = old(name, *rate).unwrap_or_else(|| Arc::new(UserBandwidth::new(*rate)));
                bw.buckets.insert(name.clone(), b);
            }
        }
        if let Some(p) = previous.filter(|p| p.default == default && default > 0) {
            let d = p.defaults.lock().unwrap_or_else(|e| e.into_inner());
            let mut mine = bw.defaults.lock().unwrap_or_else(|e| e.into_inner());
            for (name, b) in d.iter() {
                if !bw.buckets.contains_key(name) && !bw.unlimited.contains(name) {
                    mine.insert(name.clone(), b.clone());
                }
            }
        }
        bw
    }

    /// Whether any limit is configured.
    pub fn is_empty(&self) -> bool {
        self.default == 0 && self.buckets.is_empty()
    }

    /// The buckets for `user`, if that user is limited. Users under the default limit share
    /// one bucket per name, created on first use (a lock, taken once per tunnel set-up of a
    /// limited user, never while bytes move).
    pub fn for_user(&self, user: &str) -> Option<Arc<UserBandwidth>> {
        if let Some(b) = self.buckets.get(user) {
            return Some(b.clone());
        }
        if self.default == 0 || self.unlimited.contains(user) {
            return None;
        }
        let mut d = self.defaults.lock().unwrap_or_else(|p| p.into_inner());
        let b = d
            .entry(user.to_owned())
            .or_insert_with(|| Arc::new(UserBandwidth::new(self.default)));
        Some(b.clone())
    }
}

/// Parses a rate: bytes per second, with an optional suffix k, M or G (powers of 1000) and an
/// optional `B/s` or `/s` (e.g. `1048576`, `500k`, `10M`, `10MB/s`).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("B/s")
        .or_else(|| t.strip_suffix("/s"))
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000u64),
        Some((i, 'M')) => (&t[..i], 1_000_000),
        Some((i, 'G')) => (&t[..i], 1_000_000_000),
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid rate {s:?}: expected bytes per second like 500k or 10M"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("invalid rate {s:?}"));
    }
    Ok((n * mult as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("1048576").unwrap(), 1048576);
        assert_eq!(parse_rate("500k").unwrap(), 500_000);
        assert_eq!(parse_rate("10M").unwrap(), 10_000_000);
        assert_eq!(parse_rate("10MB/s").unwrap(), 10_000_000);
        assert_eq!(parse_rate("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("0").unwrap(), 0);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-5k").is_err());
    }

    #[test]
    fn bucket_allows_the_burst_then_paces_at_the_rate() {
        let b = Bucket::new(1_000_000); // 1 MB/s: 100 ms burst = 100 kB
        let t0 = Duration::from_secs(1);
        // 100 kB at once fit in the burst.
        assert_eq!(b.charge_at(100_000, t0), Duration::ZERO);
        // The next 50 kB put the bucket 50 ms beyond the burst.
        assert_eq!(b.charge_at(50_000, t0), Duration::from_millis(50));
        // A second later it has drained: the burst is available again.
        assert_eq!(
            b.charge_at(100_000, t0 + Duration::from_secs(1)),
            Duration::ZERO
        );
        // Sustained: 10 MB over 10 s of charges never runs more than the burst ahead.
        let b = Bucket::new(1_000_000);
        let mut now = Duration::from_secs(5);
        let mut sent = 0u64;
        while sent < 10_000_000 {
            let wait = b.charge_at(65536, now);
            sent += 65536;
            now += wait;
        }
        let elapsed = now - Duration::from_secs(5);
        // 10 MB at 1 MB/s: about 10 s minus the 100 ms burst.
        assert!(
            elapsed >= Duration::from_millis(9_800) && elapsed <= Duration::from_millis(10_100),
            "{elapsed:?}"
        );
    }

    #[test]
    fn per_user_overrides_and_default() {
        let bw = Bandwidth::new(1000, &[("fast".into(), 1_000_000), ("free".into(), 0)]);
        assert_eq!(bw.for_user("fast").unwrap().up.rate(), 1_000_000);
        assert!(bw.for_user("free").is_none());
        let a = bw.for_user("alice").unwrap();
        assert_eq!(a.down.rate(), 1000);
        // The same user on two tunnels shares one bucket.
        assert!(Arc::ptr_eq(&a, &bw.for_user("alice").unwrap()));
        assert!(Bandwidth::new(0, &[]).for_user("alice").is_none());
    }

    #[test]
    fn a_reload_keeps_unchanged_buckets() {
        let old = Bandwidth::new(1000, &[("fast".into(), 5000), ("slow".into(), 10)]);
        let alice = old.for_user("alice").unwrap();
        let fast = old.for_user("fast").unwrap();
        let slow = old.for_user("slow").unwrap();
        let new = Bandwidth::reusing(
            1000,
            &[("fast".into(), 5000), ("slow".into(), 20)],
            Some(&old),
        );
        assert!(Arc::ptr_eq(&alice, &new.for_user("alice").unwrap()));
        assert!(Arc::ptr_eq(&fast, &new.for_user("fast").unwrap()));
        // A changed rate gets a bucket of its own.
        assert!(!Arc::ptr_eq(&slow, &new.for_user("slow").unwrap()));
        assert_eq!(new.for_user("slow").unwrap().up.rate(), 20);
        // A changed default starts afresh.
        let other = Bandwidth::reusing(2000, &[], Some(&old));
        assert_eq!(other.for_user("alice").unwrap().up.rate(), 2000);
    }
}
