//! Exact byte-string keys for the filter's caches, compared 16 bytes at a time.
//!
//! A cache hit compares the whole key with the stored one (a token is several hundred bytes).
//! `==` on byte slices calls `memcmp`, which wasi-libc implements one byte per step; in wasm
//! that made the token comparison the largest single cost of a repeated request in the
//! wasmtime host's profile (figures in docs/performance.md). [`eq`] instead XORs and ORs
//! 16-byte words (in the size-optimised wasm build: two 64-bit loads per word, not
//! vectorised). Once the lengths match it reads every byte, so the time a comparison takes
//! does not tell where the first difference is.

use std::hash::{Hash, Hasher};

use hashbrown::Equivalent;

/// True when `a` and `b` hold the same bytes.
#[must_use]
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, a_tail) = a.as_chunks::<16>();
    let (b_words, b_tail) = b.as_chunks::<16>();
    let mut diff = 0u128;
    for (x, y) in a_words.iter().zip(b_words) {
        diff |= u128::from_ne_bytes(*x) ^ u128::from_ne_bytes(*y);
    }
    for (x, y) in a_tail.iter().zip(b_tail) {
        diff |= u128::from(x ^ y);
    }
    diff == 0
}

/// A stored key.
#[derive(Debug, Clone)]
pub struct Key(Box<[u8]>);

impl Key {
    #[must_use]
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Self(bytes.into())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        eq(&self.0, &other.0)
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// A key looked up without copying it: hashes as the [`Key`] of the same bytes and compares
/// with [`eq`].
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a>(pub &'a [u8]);

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        eq(self.0, &key.0)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn equal_exactly_when_the_bytes_are() {
        let base: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 100, 700] {
            let a = base.get(..len).unwrap_or_default();
            assert!(eq(a, a), "len {len}");
            assert_eq!(eq(a, &base), len == base.len(), "len {len}");
            // A change in any one byte, at any position, in any bit, is seen.
            for i in 0..len {
                for bit in [0x01, 0x80] {
                    let mut b = a.to_vec();
                    if let Some(x) = b.get_mut(i) {
                        *x ^= bit;
                    }
                    assert!(!eq(a, &b), "len {len}, byte {i}, bit {bit:#x}");
                }
            }
        }
        assert!(!eq(b"abc", b"abcd"));
        assert!(!eq(b"", b"\0"));
    }

    #[test]
    fn a_lookup_hashes_and_compares_as_its_key() {
        let s = hashbrown::DefaultHashBuilder::default();
        for bytes in [
            &b""[..],
            b"a",
            b"eyJhbGciOiJSUzI1NiJ9.e30.sig-of-some-length",
        ] {
            let key = Key::new(bytes);
            assert_eq!(s.hash_one(&key), s.hash_one(Lookup(bytes)));
            assert!(Lookup(bytes).equivalent(&key));
            assert!(!Lookup(b"other").equivalent(&key));
        }
    }
}
