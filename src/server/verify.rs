//! Slow password checks (argon2id hashes) for one worker: verified once per credential on the
//! blocking-thread pool, then remembered, so that steady-state logins cost one keyed BLAKE2b
//! and a constant-time comparison on the worker thread.
//!
//! The cache holds, per user, a tag of the last password that verified: BLAKE2b keyed with a
//! random per-worker key, so the tags reveal nothing without the key. Only successes are
//! remembered (a wrong password always pays the slow check, which the login throttle bounds),
//! and the cache is dropped when users are reloaded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use blake2::digest::consts::U32;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::Blake2bMac;

/// Keyed BLAKE2b with a 256-bit tag.
type Blake2bMac256 = Blake2bMac<U32>;
use tokio::sync::Semaphore;

use crate::auth::constant_time_eq;
use crate::passwd::PasswordHash;

/// Slow verifications one worker runs at once; more wait their turn (each takes tens of
/// milliseconds of CPU and m KiB of memory).
const SLOTS: usize = 2;

/// Logins one worker lets wait for a slot; beyond that a login is refused at once.
const MAX_WAITING: usize = 64;

/// A password tag and the hash it verified against.
type Remembered = ([u8; 32], Arc<PasswordHash>);

/// One worker's verifier.
pub struct Verifier {
    key: [u8; 32],
    /// Per user: the tag of the password that verified, and the hash it verified against
    /// (a remembered password only counts for that very hash: a reload that changes or
    /// removes the user makes it useless, even if a login still in flight adds it later).
    cache: RefCell<HashMap<Box<[u8]>, Remembered>>,
    slots: Arc<Semaphore>,
    waiting: std::cell::Cell<usize>,
}

impl Default for Verifier {
    fn default() -> Self {
        let mut key = [0u8; 32];
        argon2::password_hash::rand_core::RngCore::fill_bytes(
            &mut argon2::password_hash::rand_core::OsRng,
            &mut key,
        );
        Verifier {
            key,
            cache: RefCell::default(),
            slots: Arc::new(Semaphore::new(SLOTS)),
            waiting: std::cell::Cell::new(0),
        }
    }
}

impl Verifier {
    /// Forgets every remembered credential (users were reloaded).
    pub fn clear(&self) {
        self.cache.borrow_mut().clear();
    }

    /// Whether `password` is `user`'s, checked against `hash`. `locked` is asked again once
    /// a slot is free (the client may have been locked out while it waited); a locked client
    /// or a full queue gets `false` without a check.
    pub async fn verify(
        &self,
        user: &[u8],
        password: &[u8],
        hash: Arc<PasswordHash>,
        locked: impl Fn() -> bool,
    ) -> bool {
        let tag = self.tag(user, password);
        if let Some((known, for_hash)) = self.cache.borrow().get(user) {
            if Arc::ptr_eq(for_hash, &hash) && constant_time_eq(known, &tag) {
                return true;
            }
        }
        if self.waiting.get() >= MAX_WAITING {
            return false;
        }
        self.waiting.set(self.waiting.get() + 1);
        let slot = self.slots.clone().acquire_owned().await;
        self.waiting.set(self.waiting.get() - 1);
        let Ok(slot) = slot else {
            return false;
        };
        if locked() {
            return false;
        }
        let password = password.to_vec();
        let checked = hash.clone();
        // The slot goes with the check: a session that gives up (its handshake timed out)
        // does not free it before the hashing thread is done.
        let ok = tokio::task::spawn_blocking(move || {
            let ok = checked.verify(&password);
            drop(slot);
            ok
        })
        .await
        .unwrap_or(false);
        if ok {
            self.cache.borrow_mut().insert(user.into(), (tag, hash));
        }
        ok
    }

    fn tag(&self, user: &[u8], password: &[u8]) -> [u8; 32] {
        let mut mac = <Blake2bMac256 as KeyInit>::new_from_slice(&self.key).expect("32-byte key");
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        Update::update(&mut mac, &(user.len() as u64).to_le_bytes());
        Update::update(&mut mac, user);
        Update::update(&mut mac, password);
        mac.finalize_fixed().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_once_then_from_memory() {
        let phc = crate::passwd::hash_password(b"right").unwrap();
        let hash = Arc::new(PasswordHash::parse(&phc).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let v = Verifier::default();
        rt.block_on(async {
            let open = || false;
            assert!(!v.verify(b"alice", b"wrong", hash.clone(), open).await);
            assert!(v.cache.borrow().is_empty());
            assert!(v.verify(b"alice", b"right", hash.clone(), open).await);
            assert_eq!(v.cache.borrow().len(), 1);
            // Remembered for this hash: the same hash object is not consulted again.
            assert!(v.verify(b"alice", b"right", hash.clone(), || true).await);
            // Not for another hash (the user's password was changed by a reload).
            let other = crate::passwd::hash_password(b"other").unwrap();
            let other = Arc::new(PasswordHash::parse(&other).unwrap());
            assert!(!v.verify(b"alice", b"right", other.clone(), open).await);
            assert!(v.verify(b"alice", b"other", other.clone(), open).await);
            // A locked-out client gets no check.
            v.clear();
            assert!(!v.verify(b"alice", b"other", other, || true).await);
        });
        assert_ne!(v.tag(b"ab", b"c"), v.tag(b"a", b"bc"));
    }
}
