//! One poller per Envoy: the workers' VMs share a lease in shared data, taken and renewed by
//! compare-and-swap, with an expiry so that a stopped or wedged holder is replaced within one
//! lease time. Only the holder polls policy-sync; the others read what it stores.

use std::time::Duration;

/// The host's shared data (one store per Envoy process, shared by every worker's VM).
pub trait SharedStore {
    /// The value under `key` and its compare-and-swap token, if there is one.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` if the key's token is still `cas` (0: unconditionally). `false` when
    /// another writer came first.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool;
}

/// Who holds the lease, until when (milliseconds of the host clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub id: u64,
    pub until_ms: u64,
}

impl Holder {
    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.id.to_le_bytes());
        b.copy_from_slice(&self.until_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let id = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let until_ms = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16).then_some(Self { id, until_ms })
    }
}

/// What one look at the lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// This VM holds the lease (renewed now). `took_over`: it replaced a holder whose lease
    /// had expired.
    Holder { took_over: bool },
    /// Another VM holds it.
    Follower,
}

/// A VM's side of the lease.
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    me: u64,
    ttl_ms: u64,
}

impl Lease {
    /// The lease under `key`, as seen by the VM `me` (unique within the Envoy process).
    #[must_use]
    pub fn new(key: String, me: u64, ttl: Duration) -> Self {
        Self {
            key,
            me,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Takes, renews or leaves the lease at `now_ms`.
    pub fn tick(&self, store: &dyn SharedStore, now_ms: u64) -> LeaseState {
        let mine = Holder {
            id: self.me,
            until_ms: now_ms.saturating_add(self.ttl_ms),
        };
        let (current, cas) = match store.get(&self.key) {
            Some((bytes, cas)) => (Holder::decode(&bytes), cas),
            None => {
                // Absent: created by whoever writes first; the read that follows decides.
                if store.set(&self.key, &Holder { id: 0, until_ms: 0 }.encode(), 0) {
                    return self.tick_existing(store, now_ms, mine);
                }
                return LeaseState::Follower;
            }
        };
        self.decide(store, current, cas, now_ms, mine)
    }

    fn tick_existing(&self, store: &dyn SharedStore, now_ms: u64, mine: Holder) -> LeaseState {
        match store.get(&self.key) {
            Some((bytes, cas)) => self.decide(store, Holder::decode(&bytes), cas, now_ms, mine),
            None => LeaseState::Follower,
        }
    }

    fn decide(
        &self,
        store: &dyn SharedStore,
        current: Option<Holder>,
        cas: u32,
        now_ms: u64,
        mine: Holder,
    ) -> LeaseState {
        let took_over = match current {
            Some(h) if h.id == self.me => false,
            Some(h) if h.until_ms > now_ms => return LeaseState::Follower,
            // Expired (or never held: id 0), or unreadable: free to take.
            Some(h) => h.id != 0,
            None => false,
        };
        if store.set(&self.key, &mine.encode(), cas) {
            LeaseState::Holder { took_over }
        } else {
            LeaseState::Follower
        }
    }

    /// Gives the lease up (a VM that stops), so another takes over at its next tick.
    pub fn release(&self, store: &dyn SharedStore) {
        if let Some((bytes, cas)) = store.get(&self.key)
            && Holder::decode(&bytes).is_some_and(|h| h.id == self.me)
        {
            let _ = store.set(&self.key, &Holder { id: 0, until_ms: 0 }.encode(), cas);
        }
    }
}

/// A process-wide unique id for a VM: a counter in shared data, incremented by
/// compare-and-swap (`None` if the store keeps refusing, which only contention causes).
pub fn unique_id(store: &dyn SharedStore, key: &str) -> Option<u64> {
    for _ in 0..64 {
        let (next, cas) = match store.get(key) {
            Some((bytes, cas)) => {
                let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
                (n.checked_add(1)?, cas)
            }
            None => {
                // Created once; a concurrent creation is caught by the CAS that follows.
                let _ = store.set(key, &0u64.to_le_bytes(), 0);
                continue;
            }
        };
        if store.set(key, &next.to_le_bytes(), cas) {
            return Some(next);
        }
    }
    None
}

/// An in-memory [`SharedStore`] with the host's semantics (tests and native tools).
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>,
    next_cas: std::cell::Cell<u32>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.entries.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        let mut entries = self.entries.borrow_mut();
        if let Some((_, current)) = entries.get(key)
            && cas != 0
            && cas != *current
        {
            return false;
        }
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        entries.insert(key.to_owned(), (value.to_vec(), next));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_and_takeover_after_expiry() {
        let store = MemoryStore::default();
        let ttl = Duration::from_secs(10);
        let a = Lease::new("lease".into(), 1, ttl);
        let b = Lease::new("lease".into(), 2, ttl);
        assert_eq!(
            a.tick(&store, 1_000),
            LeaseState::Holder { took_over: false }
        );
        assert_eq!(b.tick(&store, 1_000), LeaseState::Follower);
        // A keeps renewing: B never gets it.
        for t in (2_000..60_000).step_by(1_000) {
            assert_eq!(a.tick(&store, t), LeaseState::Holder { took_over: false });
            assert_eq!(b.tick(&store, t), LeaseState::Follower);
        }
        // A stops: B takes over once the lease has run out, not before.
        assert_eq!(b.tick(&store, 68_999), LeaseState::Follower);
        assert_eq!(
            b.tick(&store, 69_001),
            LeaseState::Holder { took_over: true }
        );
        assert_eq!(a.tick(&store, 69_002), LeaseState::Follower);
        // B releases: A takes it at once, as a fresh holder.
        b.release(&store);
        assert_eq!(
            a.tick(&store, 69_003),
            LeaseState::Holder { took_over: false }
        );
    }

    #[test]
    fn a_stale_cas_loses() {
        let store = MemoryStore::default();
        store.set("k", b"x", 0);
        let (_, cas) = store.get("k").unwrap();
        assert!(store.set("k", b"y", cas));
        assert!(!store.set("k", b"z", cas));
        assert_eq!(store.get("k").unwrap().0, b"y");
    }

    #[test]
    fn ids_are_unique() {
        let store = MemoryStore::default();
        let ids: Vec<u64> = (0..100).filter_map(|_| unique_id(&store, "ids")).collect();
        let mut sorted = ids.clone();
        sorted.dedup();
        assert_eq!(ids.len(), 100);
        assert_eq!(sorted, (1..=100).collect::<Vec<_>>());
    }
}
