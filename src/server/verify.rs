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

/// One worker's verifier.
pub struct Verifier {
    key: [u8; 32],
    cache: RefCell<HashMap<Box<[u8]>, [u8; 32]>>,
    slots: Semaphore,
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
            slots: Semaphore::new(SLOTS),
        }
    }
}

impl Verifier {
    /// Forgets every remembered credential (users were reloaded).
    pub fn clear(&self) {
        self.cache.borrow_mut().clear();
    }

    /// Whether `password` is `user`'s, checked against `hash`.
    pub async fn verify(&self, user: &[u8], password: &[u8], hash: Arc<PasswordHash>) -> bool {
        let tag = self.tag(user, password);
        if let Some(known) = self.cache.borrow().get(user) {
            if constant_time_eq(known, &tag) {
                return true;
            }
        }
        let ok = {
            let Ok(_slot) = self.slots.acquire().await else {
                return false;
            };
            let password = password.to_vec();
            tokio::task::spawn_blocking(move || hash.verify(&password))
                .await
                .unwrap_or(false)
        };
        if ok {
            self.cache.borrow_mut().insert(user.into(), tag);
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
            assert!(!v.verify(b"alice", b"wrong", hash.clone()).await);
            assert!(v.cache.borrow().is_empty());
            assert!(v.verify(b"alice", b"right", hash.clone()).await);
            assert_eq!(v.cache.borrow().len(), 1);
            // Remembered: a hash that would refuse everything is not consulted again.
            let other = crate::passwd::hash_password(b"other").unwrap();
            let other = Arc::new(PasswordHash::parse(&other).unwrap());
            assert!(v.verify(b"alice", b"right", other.clone()).await);
            // But a different password still goes to the (refusing) hash.
            assert!(!v.verify(b"alice", b"wrong", other.clone()).await);
            v.clear();
            assert!(!v.verify(b"alice", b"right", other).await);
        });
        assert_ne!(v.tag(b"ab", b"c"), v.tag(b"a", b"bc"));
    }
}
