//! Decision cache: the same request from the same principal gets the decision it got before,
//! without evaluating the policies again.
//!
//! A decision is a function of the token's claims, the policy sets in force and the request
//! fields the engine reads: method, path (query included), host, the context headers, the
//! client address (only read when a policy can reach `context.source`) and the time (only when
//! a policy can reach `context.time`). The key is those fields, each length-prefixed, so two
//! different requests never share a key; a token's decisions live in its token-cache entry
//! (they expire and are evicted with it, and no other token can reach them), requests without a
//! token share one map. Every entry carries the policy generation it was decided under: a
//! replaced bundle makes all earlier decisions misses.

use std::rc::Rc;

use hashbrown::HashMap;

use crate::cache::key::{Key, Lookup};
use crate::cache::make_room;
use crate::decision::Outcome;

/// The request fields a decision depends on, as one byte string.
#[derive(Debug, Default)]
pub struct DecisionKey(Vec<u8>);

impl DecisionKey {
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Appends one field (its length first, so fields cannot run into each other).
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends a field that may be absent (absent and empty differ).
    pub fn optional(&mut self, bytes: Option<&[u8]>) -> &mut Self {
        match bytes {
            Some(b) => {
                self.0.push(1);
                self.field(b)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }

    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Bounded map of decisions. Capacity 0 disables it.
#[derive(Debug, Default)]
pub struct Decisions {
    entries: HashMap<Key, (u64, Rc<Outcome>)>,
}

impl Decisions {
    /// The decision for `key` taken under `generation`, if any.
    #[must_use]
    pub fn get(&self, key: &DecisionKey, generation: u64) -> Option<Rc<Outcome>> {
        match self.entries.get(&Lookup(key.as_bytes())) {
            Some((g, outcome)) if *g == generation => Some(outcome.clone()),
            _ => None,
        }
    }

    /// Remembers a decision. When full, decisions of older generations go first, then an
    /// eighth of the entries, arbitrarily.
    pub fn insert(
        &mut self,
        key: DecisionKey,
        outcome: Rc<Outcome>,
        generation: u64,
        capacity: usize,
    ) {
        if capacity == 0 {
            return;
        }
        make_room(&mut self.entries, capacity, |(g, _)| *g == generation);
        self.entries.insert(Key::new(key.0), (generation, outcome));
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Hit and miss counts of the decision cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecisionStats {
    pub hits: u64,
    pub misses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Verdict;

    fn outcome(set: &str) -> Rc<Outcome> {
        Rc::new(Outcome {
            verdict: Verdict::Allow,
            principal: None,
            policies: Vec::new(),
            errors: Vec::new(),
            bundle_version: 1,
            policy_set: set.to_owned(),
            dry_run: None,
            shadow: None,
            remove_headers: Vec::new(),
            set_headers: Vec::new(),
        })
    }

    fn key(fields: &[&str]) -> DecisionKey {
        let mut k = DecisionKey::default();
        for f in fields {
            k.field(f.as_bytes());
        }
        k
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        assert_ne!(key(&["ab", "c"]).as_bytes(), key(&["a", "bc"]).as_bytes());
        let mut absent = DecisionKey::default();
        absent.optional(None);
        let mut empty = DecisionKey::default();
        empty.optional(Some(b""));
        assert_ne!(absent.as_bytes(), empty.as_bytes());
    }

    #[test]
    fn a_new_generation_misses_and_is_bounded() {
        let mut d = Decisions::default();
        d.insert(key(&["GET", "/a"]), outcome("x"), 1, 8);
        assert!(d.get(&key(&["GET", "/a"]), 1).is_some());
        assert!(d.get(&key(&["GET", "/a"]), 2).is_none(), "older policies");
        assert!(d.get(&key(&["GET", "/b"]), 1).is_none());
        for i in 0..100 {
            d.insert(key(&["GET", &i.to_string()]), outcome("x"), 2, 8);
            assert!(d.len() <= 8);
        }
        assert!(d.get(&key(&["GET", "99"]), 2).is_some());
        d.insert(key(&["GET", "/a"]), outcome("x"), 2, 0);
        assert!(
            d.get(&key(&["GET", "/a"]), 2).is_none(),
            "capacity 0 keeps nothing"
        );
    }
}
