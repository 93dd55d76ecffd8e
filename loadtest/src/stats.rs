//! Latency histograms, per-thread counters, and open-loop pacing with coordinated-omission
//! correction (latency is measured from the *intended* start, as wrk2 does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::error::{Fail, FailKind};

/// Histograms hold microseconds, 3 significant digits, up to one hour.
pub const SIGFIG: u8 = 3;
pub const MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // Static, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, SIGFIG).expect("valid histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Record a latency, clamping to the histogram's range instead of failing.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(micros(d).min(MAX_US));
}

/// When each iteration of one connection slot is meant to start.
#[derive(Clone, Debug)]
pub enum Pacing {
    /// Closed loop: the next iteration starts when the previous one ends.
    Closed,
    /// Open loop: fixed schedule; see [`Schedule`].
    Open(Schedule),
}

/// Open-loop schedule of one slot out of `slots`, sharing a total `rate` per second:
/// iteration k of slot i is due at `i / rate + k * slots / rate` seconds after the base instant.
/// Times are offsets from a base so that the logic is testable with virtual time.
#[derive(Clone, Debug)]
pub struct Schedule {
    first_ns: f64,
    interval_ns: f64,
    k: u64,
}

impl Schedule {
    pub fn new(slot: usize, slots: usize, rate: f64) -> Self {
        let per_iter_ns = 1e9 / rate.max(1e-9);
        Schedule {
            first_ns: slot as f64 * per_iter_ns,
            interval_ns: slots.max(1) as f64 * per_iter_ns,
            k: 0,
        }
    }

    /// The intended start of the next iteration, as an offset from the base instant.
    pub fn next_offset(&mut self) -> Duration {
        let ns = self.first_ns + self.k as f64 * self.interval_ns;
        self.k += 1;
        Duration::from_nanos(ns as u64)
    }
}

impl Pacing {
    /// Wait (if open loop and ahead of schedule) and return the intended start instant.
    /// A slot that is behind schedule starts at once, and its latency still counts from the
    /// intended instant: a stall inflates every iteration that was due during it.
    pub async fn next_start(&mut self, base: Instant) -> Instant {
        match self {
            Pacing::Closed => Instant::now(),
            Pacing::Open(s) => {
                let due = base + s.next_offset();
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                due
            }
        }
    }
}

/// Errors counted by kind, with the first message seen for each kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorCounts {
    pub counts: BTreeMap<String, u64>,
    pub first: BTreeMap<String, String>,
}

impl ErrorCounts {
    pub fn add(&mut self, kind: FailKind, msg: impl FnOnce() -> String) {
        let key = kind.to_string();
        if !self.first.contains_key(&key) {
            self.first.insert(key.clone(), msg());
        }
        *self.counts.entry(key).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        for (k, v) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.first {
            self.first.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// Everything one worker thread measured; merged across threads at the end of a run.
#[derive(Clone, Debug)]
pub struct ThreadStats {
    /// Connect + handshake: from the intended start to the SOCKS success reply.
    pub handshake: Histogram<u64>,
    /// Whole iteration (cps), round trip (rps, udp, hold keepalives).
    pub iteration: Histogram<u64>,
    /// cps: from the intended start to the first byte of the target's response.
    pub ttfb: Histogram<u64>,
    pub successes: u64,
    pub errors: ErrorCounts,
    /// Payload bytes written / read by successful iterations (cps, rps, udp) or by all tunnels
    /// over the whole run (throughput).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Throughput: the target's own counts from each tunnel's trailer.
    pub peer_received: u64,
    pub peer_sent: u64,
    /// Throughput: tunnels whose counts matched byte for byte.
    pub verified: u64,
    /// Hold: tunnels established / still alive at the final check.
    pub established: u64,
    pub held: u64,
    /// UDP: datagrams sent, answered, unanswered in time, answered after their deadline.
    pub dgrams_sent: u64,
    pub dgrams_received: u64,
    pub dgrams_lost: u64,
    pub dgrams_late: u64,
}

impl Default for ThreadStats {
    fn default() -> Self {
        ThreadStats {
            handshake: new_histogram(),
            iteration: new_histogram(),
            ttfb: new_histogram(),
            successes: 0,
            errors: ErrorCounts::default(),
            bytes_sent: 0,
            bytes_received: 0,
            peer_received: 0,
            peer_sent: 0,
            verified: 0,
            established: 0,
            held: 0,
            dgrams_sent: 0,
            dgrams_received: 0,
            dgrams_lost: 0,
            dgrams_late: 0,
        }
    }
}

impl ThreadStats {
    pub fn fail(&mut self, f: &Fail) {
        self.errors.add(f.kind(), || f.to_string());
    }

    pub fn iterations(&self) -> u64 {
        self.successes + self.errors.total()
    }

    pub fn merge(&mut self, o: &ThreadStats) {
        // Both histograms have identical bounds, so adding cannot fail.
        let _ = self.handshake.add(&o.handshake);
        let _ = self.iteration.add(&o.iteration);
        let _ = self.ttfb.add(&o.ttfb);
        self.successes += o.successes;
        self.errors.merge(&o.errors);
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.peer_received += o.peer_received;
        self.peer_sent += o.peer_sent;
        self.verified += o.verified;
        self.established += o.established;
        self.held += o.held;
        self.dgrams_sent += o.dgrams_sent;
        self.dgrams_received += o.dgrams_received;
        self.dgrams_lost += o.dgrams_lost;
        self.dgrams_late += o.dgrams_late;
    }
}

/// Live counters shared by all workers, read by the progress bar and for window snapshots.
#[derive(Debug, Default)]
pub struct Live {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub established: AtomicU64,
    pub failed: AtomicU64,
    pub active: AtomicU64,
}

impl Live {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Virtual-time model of one open-loop slot, used to test the coordinated-omission correction:
/// iterations follow `Schedule`, each takes `service(actual_start)`; returns the corrected
/// histogram (from intended start) and the naive one (from actual start).
pub fn simulate_open_loop(
    rate: f64,
    run: Duration,
    service: impl Fn(Duration) -> Duration,
) -> (Histogram<u64>, Histogram<u64>) {
    let mut sched = Schedule::new(0, 1, rate);
    let mut corrected = new_histogram();
    let mut naive = new_histogram();
    let mut now = Duration::ZERO;
    loop {
        let intended = sched.next_offset();
        if intended >= run {
            break;
        }
        let start = now.max(intended);
        let done = start + service(start);
        record(&mut corrected, done - intended);
        record(&mut naive, done - start);
        now = done;
    }
    (corrected, naive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_above(h: &Histogram<u64>, us: u64) -> u64 {
        h.iter_recorded()
            .filter(|v| v.value_iterated_to() > us)
            .map(|v| v.count_at_value())
            .sum()
    }

    #[test]
    fn schedule_spreads_slots_evenly() {
        // 4 slots sharing 1000/s: slot 1 starts at 1 ms, then every 4 ms.
        let mut s = Schedule::new(1, 4, 1000.0);
        assert_eq!(s.next_offset(), Duration::from_millis(1));
        assert_eq!(s.next_offset(), Duration::from_millis(5));
        assert_eq!(s.next_offset(), Duration::from_millis(9));
    }

    #[test]
    fn coordinated_omission_is_corrected_on_a_synthetic_stall() {
        let rate = 1000.0;
        let stall = Duration::from_secs(1);
        // Service time much shorter than the interval, so the backlog drains almost at once
        // (with service time s, the count above stall/2 is R*stall/2 / (1 - R*s)).
        let base = Duration::from_micros(10);
        let stall_at = Duration::from_secs(3);
        // One iteration that starts at or after 3 s takes 1 s; all others 10 µs.
        let stalled = std::cell::Cell::new(false);
        let (corrected, naive) = simulate_open_loop(rate, Duration::from_secs(10), |start| {
            if start >= stall_at && !stalled.get() {
                stalled.set(true);
                stall
            } else {
                base
            }
        });
        // Every iteration was executed (the slot catches up after the stall).
        assert_eq!(corrected.len(), 10_000);
        assert_eq!(naive.len(), 10_000);
        // Naive measurement: the stall is one sample; the tail looks perfect.
        assert_eq!(count_above(&naive, 1_000), 1);
        assert!(naive.value_at_quantile(0.99) <= 11);
        // Corrected: the ~R*stall iterations due during the stall all waited, linearly from
        // 1 s down to 0, so ~R*stall/2 of them are above stall/2, and p50 stays at the base.
        let p50 = corrected.value_at_quantile(0.5);
        assert!(p50 <= 11, "p50 {p50}");
        let above_half = count_above(&corrected, 500_000);
        let expect = (rate * stall.as_secs_f64() / 2.0) as u64;
        assert!(
            above_half.abs_diff(expect) <= expect / 20,
            "{above_half} samples above stall/2, expected ~{expect}"
        );
        let above_base = count_above(&corrected, 2 * 11);
        let expect_all = (rate * stall.as_secs_f64()) as u64;
        assert!(
            above_base.abs_diff(expect_all) <= expect_all / 20,
            "{above_base}"
        );
        assert!(corrected.max() >= 999_000, "max {}", corrected.max());
        // And the percentiles show it: 10% of samples were delayed, so p99 is ~0.9 s.
        let p99 = corrected.value_at_quantile(0.99);
        assert!((850_000..=950_000).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn closed_loop_rate_is_bounded_by_service_time() {
        // A schedule faster than the service: the corrected latency grows without bound,
        // which is the honest answer for an overloaded server.
        let (corrected, _) =
            simulate_open_loop(2000.0, Duration::from_secs(2), |_| Duration::from_millis(1));
        assert!(corrected.max() > 900_000, "max {}", corrected.max());
    }

    #[test]
    fn merges_threads() {
        let mut a = ThreadStats::default();
        let mut b = ThreadStats::default();
        record(&mut a.iteration, Duration::from_micros(10));
        record(&mut b.iteration, Duration::from_micros(30));
        a.successes = 1;
        b.fail(&Fail::Timeout);
        b.fail(&Fail::Timeout);
        a.merge(&b);
        assert_eq!(a.iterations(), 3);
        assert_eq!(a.errors.counts.get("timeout"), Some(&2));
        let p = Percentiles::of(&a.iteration);
        assert_eq!(p.count, 2);
        assert_eq!(p.max, 30);
    }
}
