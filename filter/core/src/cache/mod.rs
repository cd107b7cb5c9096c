//! The filter's bounded caches and their exact keys.
//!
//! - [`key`]: byte-string keys compared in full.
//! - [`tokens`]: verified tokens, so a token seen before skips its signature check.
//! - [`decisions`]: decisions per principal and request, kept beside each cached token.
//!
//! Both caches evict the same way ([`make_room`]).

use hashbrown::HashMap;

pub(crate) mod decisions;
pub(crate) mod key;
pub(crate) mod tokens;

/// Makes room for one more entry in a bounded cache: when it is full, the entries `keep` refuses
/// go first, then an eighth of the entries, arbitrarily.
pub(crate) fn make_room<K, V>(
    entries: &mut HashMap<K, V>,
    capacity: usize,
    keep: impl Fn(&V) -> bool,
) where
    K: Clone + Eq + std::hash::Hash,
{
    if entries.len() < capacity {
        return;
    }
    entries.retain(|_, v| keep(v));
    if entries.len() >= capacity {
        let drop: Vec<K> = entries
            .keys()
            .take((capacity / 8).max(1))
            .cloned()
            .collect();
        for k in drop {
            entries.remove(&k);
        }
    }
}
