//! The user table for RFC 1929 username/password authentication.
//!
//! Loaded at start-up (and on SIGHUP) and shared read-only by every worker (no lock). A
//! password is given in plaintext or as an argon2id hash (`ringsocks passwd` writes one).
//! Plaintext checks run in constant time with respect to the password bytes; a hash is
//! verified slowly ([`Check::Slow`]), off the worker thread, by the caller. An unknown user
//! costs what a known one costs, so timing does not reveal which names exist.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::passwd::{self, PasswordHash};

/// Why a user definition was rejected.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// A `NAME:PASS` entry without a colon or with an empty name.
    #[error("{origin}: expected NAME:PASSWORD with a non-empty name")]
    Malformed {
        /// Where the entry came from (`--user` or `FILE:LINE`).
        origin: String,
    },
    /// A name or password longer than RFC 1929 can carry (255 bytes).
    #[error("{origin}: name and password must be at most 255 bytes (RFC 1929)")]
    TooLong {
        /// Where the entry came from.
        origin: String,
    },
    /// A password field that looks like a hash but is not a valid one.
    #[error("{origin}: {source}")]
    BadHash {
        /// Where the entry came from.
        origin: String,
        /// What is wrong with it (never quotes it).
        source: passwd::PasswdError,
    },
    /// The users file could not be read.
    #[error("cannot read users file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A user's password as configured.
#[derive(Clone)]
enum Secret {
    Plain(Box<[u8]>),
    Hashed(Arc<PasswordHash>),
}

/// The outcome of [`Users::check`].
#[derive(Debug)]
pub enum Check {
    /// The password is right.
    Ok,
    /// It is wrong (or the user is unknown).
    Failed,
    /// Only a slow hash verification can tell: run `hash.verify(password)` off the worker
    /// thread. For an unknown user this is a dummy hash that never matches.
    Slow(Arc<PasswordHash>),
}

/// Usernames and their passwords. `Debug` never prints passwords.
#[derive(Clone, Default)]
pub struct Users {
    table: HashMap<Box<[u8]>, Secret>,
    /// When any entry is hashed: a dummy hash that unknown users and wrong plaintext
    /// passwords are checked against, so every failure costs what a hashed user's does.
    dummy: Option<Arc<PasswordHash>>,
}

/// A hash of a random password nobody knows, with the default parameters: what an unknown
/// user is checked against, so that it costs as long as a known one.
fn dummy_hash() -> Arc<PasswordHash> {
    static DUMMY: OnceLock<Arc<PasswordHash>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let mut secret = [0u8; 32];
            argon2::password_hash::rand_core::RngCore::fill_bytes(
                &mut argon2::password_hash::rand_core::OsRng,
                &mut secret,
            );
            let phc = passwd::hash_password(&secret).expect("hashing a random password");
            Arc::new(PasswordHash::parse(&phc).expect("a hash we just made"))
        })
        .clone()
}

impl Users {
    /// No users: the proxy is open (no authentication).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether any user is configured.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Adds or replaces a user from a `NAME:PASSWORD` string (the password may contain colons).
    pub fn add_entry(&mut self, entry: &str, origin: &str) -> Result<(), UsersError> {
        let (name, pass) = entry.split_once(':').ok_or_else(|| UsersError::Malformed {
            origin: origin.to_owned(),
        })?;
        if name.is_empty() {
            return Err(UsersError::Malformed {
                origin: origin.to_owned(),
            });
        }
        // A hash may be longer than RFC 1929's 255 bytes; the password it stands for is not.
        let secret = if passwd::is_hash(pass) {
            let hash = PasswordHash::parse(pass).map_err(|source| UsersError::BadHash {
                origin: origin.to_owned(),
                source,
            })?;
            if self.dummy.is_none() {
                // Built now, at load time (never on a worker thread at a login).
                self.dummy = Some(dummy_hash());
            }
            Secret::Hashed(Arc::new(hash))
        } else {
            Secret::Plain(pass.as_bytes().into())
        };
        if name.len() > 255 || matches!(&secret, Secret::Plain(p) if p.len() > 255) {
            return Err(UsersError::TooLong {
                origin: origin.to_owned(),
            });
        }
        self.table.insert(name.as_bytes().into(), secret);
        Ok(())
    }

    /// Loads a users file: one `NAME:PASSWORD` per line; blank lines and lines starting with
    /// `#` are ignored.
    pub fn load_file(&mut self, path: &Path) -> Result<(), UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.display().to_string(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            self.add_entry(line, &format!("{}:{}", path.display(), i + 1))?;
        }
        Ok(())
    }

    /// Checks a username and password as far as it can be checked at once: plaintext
    /// entries in constant time in the password; hashed entries (and unknown users, when any
    /// entry is hashed) need a slow verification by the caller.
    pub fn check(&self, username: &[u8], password: &[u8]) -> Check {
        const DUMMY: &[u8] = &[0u8; 32];
        match self.table.get(username) {
            Some(Secret::Plain(expected)) => {
                match (constant_time_eq(expected, password), &self.dummy) {
                    (true, _) => Check::Ok,
                    (false, Some(dummy)) => Check::Slow(dummy.clone()),
                    (false, None) => Check::Failed,
                }
            }
            Some(Secret::Hashed(hash)) => Check::Slow(hash.clone()),
            None if self.dummy.is_some() => Check::Slow(self.dummy.clone().expect("checked")),
            None => {
                let _ = constant_time_eq(DUMMY, password);
                Check::Failed
            }
        }
    }

    /// [`Users::check`] to the end, verifying a hash on this thread (slow for hashed users).
    pub fn verify(&self, username: &[u8], password: &[u8]) -> bool {
        match self.check(username, password) {
            Check::Ok => true,
            Check::Failed => false,
            Check::Slow(hash) => hash.verify(password),
        }
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self
            .table
            .keys()
            .map(|k| String::from_utf8_lossy(k))
            .collect();
        f.debug_struct("Users")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Fold over the longer length so a short guess does not return early; the length
    // difference is folded in too.
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    // Keep the compiler from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

/// Failed logins counted per client address: after `max` failures within `window`, further
/// attempts from that address are refused without checking the password until the window
/// has passed since the first of them. Shared by the workers (one mutex, taken only during
/// RFC 1929 authentication); the table is pruned of expired entries when it grows.
#[derive(Debug)]
pub struct LoginThrottle {
    max: u32,
    window: std::time::Duration,
    failures: std::sync::Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    by_client: HashMap<std::net::IpAddr, (u32, std::time::Instant)>,
    last_prune: Option<std::time::Instant>,
}

/// Addresses tracked at most; beyond, expired entries are pruned (at most once a second) and
/// new addresses are not tracked until there is room, so a flood cannot grow the table.
const THROTTLE_MAX: usize = 65536;

/// The key one client is counted under: its IPv4 address, or its IPv6 /64 (one host usually
/// has a whole /64, and could otherwise take a new address per attempt).
pub fn client_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            std::net::IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl LoginThrottle {
    /// At most `max` failures per `window` and client address; `max == 0` disables it.
    pub fn new(max: u32, window: std::time::Duration) -> Self {
        LoginThrottle {
            max,
            window,
            failures: Default::default(),
        }
    }

    /// Whether `client` is locked out at `now`.
    pub fn locked(&self, client: std::net::IpAddr, now: std::time::Instant) -> bool {
        self.locked_besides(client, now, 0)
    }

    /// Whether `client` would be locked out at `now` without `own` failures counted in
    /// advance for logins still being checked.
    pub fn locked_besides(
        &self,
        client: std::net::IpAddr,
        now: std::time::Instant,
        own: u32,
    ) -> bool {
        if self.max == 0 {
            return false;
        }
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match f.by_client.get(&client_key(client)) {
            Some(&(n, since)) => {
                n.saturating_sub(own) >= self.max && now.duration_since(since) < self.window
            }
            None => false,
        }
    }

    /// Records a failed login; returns whether this failure locks the client out.
    pub fn failed(&self, client: std::net::IpAddr, now: std::time::Instant) -> bool {
        if self.max == 0 {
            return false;
        }
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let key = client_key(client);
        if f.by_client.len() >= THROTTLE_MAX && !f.by_client.contains_key(&key) {
            let due = match f.last_prune {
                None => true,
                Some(t) => now.duration_since(t) >= std::time::Duration::from_secs(1),
            };
            if due {
                let window = self.window;
                f.by_client
                    .retain(|_, &mut (_, since)| now.duration_since(since) < window);
                f.last_prune = Some(now);
            }
            if f.by_client.len() >= THROTTLE_MAX {
                return false;
            }
        }
        let e = f.by_client.entry(key).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 += 1;
        e.0 == self.max
    }

    /// Takes back one failure counted for `client` (a login counted as failed before its
    /// slow check, which then succeeded).
    pub fn forgive(&self, client: std::net::IpAddr) {
        if self.max == 0 {
            return;
        }
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = f.by_client.get_mut(&client_key(client)) {
            e.0 = e.0.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_throttle_locks_out_and_expires() {
        use std::time::{Duration, Instant};
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(!t.failed(ip, t0));
        assert!(!t.failed(mapped, t0));
        assert!(!t.locked(ip, t0));
        assert!(t.failed(ip, t0), "the third failure locks");
        assert!(t.locked(mapped, t0 + Duration::from_secs(59)));
        assert!(!t.locked("192.0.2.2".parse().unwrap(), t0));
        assert!(!t.locked(ip, t0 + Duration::from_secs(60)));
        assert!(!LoginThrottle::new(0, Duration::from_secs(1)).failed(ip, t0));
        // IPv6 counts per /64: a new address per guess does not help.
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        assert!(!t.failed("2001:db8::1".parse().unwrap(), t0));
        assert!(t.failed("2001:db8::2".parse().unwrap(), t0));
        assert!(t.locked("2001:db8::ffff".parse().unwrap(), t0));
        assert!(!t.locked("2001:db8:0:1::1".parse().unwrap(), t0));
    }

    #[test]
    fn verify() {
        let mut u = Users::new();
        u.add_entry("alice:pa:ss", "test").unwrap();
        assert!(u.verify(b"alice", b"pa:ss"));
        assert!(!u.verify(b"alice", b"pa:s"));
        assert!(!u.verify(b"alice", b"pa:sss"));
        assert!(!u.verify(b"alice", b""));
        assert!(!u.verify(b"bob", b"pa:ss"));
        assert!(!format!("{u:?}").contains("pa:ss"));
    }

    #[test]
    fn malformed_entries() {
        let mut u = Users::new();
        assert!(matches!(
            u.add_entry("nocolon", "x"),
            Err(UsersError::Malformed { .. })
        ));
        assert!(matches!(
            u.add_entry(":pw", "x"),
            Err(UsersError::Malformed { .. })
        ));
        let long = format!("a:{}", "p".repeat(256));
        assert!(matches!(
            u.add_entry(&long, "x"),
            Err(UsersError::TooLong { .. })
        ));
        assert!(u.is_empty());
    }

    #[test]
    fn file_with_comments_and_line_numbers() {
        let dir = std::env::temp_dir().join(format!("ringsocks-users-{}", std::process::id()));
        std::fs::write(&dir, "# users\n\nalice:one\r\nbad line\n").unwrap();
        let mut u = Users::new();
        let err = u.load_file(&dir).unwrap_err().to_string();
        assert!(
            err.ends_with(":4: expected NAME:PASSWORD with a non-empty name"),
            "{err}"
        );
        assert!(u.verify(b"alice", b"one"));
        std::fs::remove_file(&dir).unwrap();
    }
}
