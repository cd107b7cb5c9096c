//! Verified-token cache: a token seen before skips parsing and signature verification.
//!
//! Keyed by the whole token string with full equality ([`crate::cache::key`]), so a token an attacker chooses can only
//! hit an entry for that exact token (never a colliding one). Entries keep the token's `exp`
//! and are refused (and dropped) once it passes, so a cached token is never valid for longer
//! than it would be without the cache. Bounded: when full, expired entries go first, then an
//! eighth of the entries, arbitrarily.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use hashbrown::HashMap;
use serde_json::{Map, Value};

use crate::cache::decisions::Decisions;
use crate::cache::key::{Key, Lookup};
use crate::cache::make_room;

/// What a verified token left behind.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Rc<Map<String, Value>>,
    /// The issuer entry it verified against.
    pub issuer: Rc<str>,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// The claims as a Cedar record, built on first use and then reused by every request
    /// that carries the same token.
    pub cedar_claims: Rc<OnceCell<cedar_policy_core::ast::Value>>,
    /// Decisions taken for requests carrying this token (the decision cache).
    pub decisions: Rc<RefCell<Decisions>>,
}

/// Hit and miss counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

/// The cache. Capacity 0 disables it.
#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<Key, Verified>,
    capacity: usize,
    hits: u64,
    misses: u64,
}

impl TokenCache {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(capacity.min(4096)),
            capacity,
            hits: 0,
            misses: 0,
        }
    }

    /// The entry for `token` if it is still within `exp + leeway` at `now`.
    pub fn get(&mut self, token: &str, now: u64, leeway: u64) -> Option<Verified> {
        if self.capacity == 0 {
            return None;
        }
        let key = Lookup(token.as_bytes());
        match self.entries.get(&key) {
            Some(v) if now <= v.exp.saturating_add(leeway) => {
                self.hits += 1;
                Some(v.clone())
            }
            Some(_) => {
                self.entries.remove(&key);
                self.misses += 1;
                None
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Remembers a verified token.
    pub fn insert(&mut self, token: &str, verified: Verified, now: u64, leeway: u64) {
        if self.capacity == 0 {
            return;
        }
        make_room(&mut self.entries, self.capacity, |v| {
            now <= v.exp.saturating_add(leeway)
        });
        self.entries.insert(Key::new(token.as_bytes()), verified);
    }

    #[must_use]
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            entries: self.entries.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(exp: u64) -> Verified {
        Verified {
            cedar_claims: Rc::default(),
            decisions: Rc::default(),
            claims: Rc::new(Map::new()),
            issuer: "i".into(),
            exp,
        }
    }

    #[test]
    fn hits_until_expiry_plus_leeway() {
        let mut c = TokenCache::new(4);
        assert!(c.get("a", 100, 10).is_none());
        c.insert("a", v(200), 100, 10);
        assert!(c.get("a", 210, 10).is_some());
        assert!(c.get("a", 211, 10).is_none(), "expired entries are refused");
        assert!(c.get("a", 100, 10).is_none(), "and dropped");
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 1,
                misses: 3,
                entries: 0
            }
        );
    }

    #[test]
    fn only_exact_tokens_hit() {
        let mut c = TokenCache::new(4);
        c.insert("token", v(200), 100, 0);
        assert!(c.get("token ", 100, 0).is_none());
        assert!(c.get("toke", 100, 0).is_none());
        assert!(c.get("token", 100, 0).is_some());
    }

    #[test]
    fn stays_bounded() {
        let mut c = TokenCache::new(16);
        for i in 0..1000 {
            c.insert(&format!("t{i}"), v(10_000), 100, 0);
            assert!(c.stats().entries <= 16);
        }
        // Expired entries are the first to go.
        let mut c = TokenCache::new(2);
        c.insert("old", v(50), 40, 0);
        c.insert("new", v(500), 40, 0);
        c.insert("newer", v(500), 100, 0);
        assert!(c.get("new", 100, 0).is_some());
        assert!(c.get("newer", 100, 0).is_some());
    }

    #[test]
    fn capacity_zero_disables() {
        let mut c = TokenCache::new(0);
        c.insert("a", v(200), 100, 0);
        assert!(c.get("a", 100, 0).is_none());
        assert_eq!(c.stats().entries, 0);
    }
}
