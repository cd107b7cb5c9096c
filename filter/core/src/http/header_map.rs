//! The request headers as a host hands them over in one piece, read in place.
//!
//! The encoding (the one proxy-wasm hosts use for a whole header map): a little-endian `u32`
//! count; then, per header, its name length and value length (`u32` each); then each name and
//! each value in that order, every one followed by a NUL byte.
//!
//! Header values are bytes, not text: HTTP lets a client send any byte above 0x7F in a value
//! (obs-text), and Envoy passes such values on. Nothing here assumes UTF-8 until a header is
//! asked for, and a value that is not UTF-8 is read with each invalid sequence replaced by
//! U+FFFD: the header stays present (a malformed token is still a malformed token, not a
//! missing one) and can never equal configured text that was valid UTF-8.

use std::cell::OnceCell;

use crate::http::request::RequestView;

/// Why a header map could not be read (a host fault: the filter fails closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderMapError {
    #[error("header map of {0} byte(s) is too short for its header count")]
    NoCount(usize),
    #[error("header map of {len} bytes is too short for its {count} header(s)")]
    Truncated { len: usize, count: usize },
    #[error("header {index} of the header map is not NUL-terminated")]
    Unterminated { index: usize },
    #[error("header map has {0} byte(s) after its last header")]
    Trailing(usize),
}

/// One header: name and value borrowed from the encoded map.
#[derive(Debug)]
struct Pair<'a> {
    name: &'a [u8],
    value: &'a [u8],
    /// The value with invalid UTF-8 replaced, made the first time a non-UTF-8 value is read.
    replaced: OnceCell<Box<str>>,
}

/// Request headers read in place from the host's encoding (no copy of any name or value).
#[derive(Debug, Default)]
pub struct HeaderMap<'a> {
    pairs: Vec<Pair<'a>>,
}

impl<'a> HeaderMap<'a> {
    /// Reads an encoded header map; empty input is an empty map (a host may hand over nothing
    /// for a map without headers).
    ///
    /// # Errors
    /// When the lengths do not match the bytes given.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, HeaderMapError> {
        let Some((count, rest)) = split_u32(bytes) else {
            return if bytes.is_empty() {
                Ok(Self::default())
            } else {
                Err(HeaderMapError::NoCount(bytes.len()))
            };
        };
        let truncated = HeaderMapError::Truncated {
            len: bytes.len(),
            count,
        };
        // Check the size table fits before trusting the count with an allocation.
        let (mut sizes, mut data) = count
            .checked_mul(8)
            .and_then(|n| rest.split_at_checked(n))
            .ok_or_else(|| truncated.clone())?;
        let mut pairs = Vec::with_capacity(count);
        for index in 0..count {
            let (name_len, after) = split_u32(sizes).ok_or_else(|| truncated.clone())?;
            let (value_len, after) = split_u32(after).ok_or_else(|| truncated.clone())?;
            sizes = after;
            let (name, after) = take_terminated(data, name_len, index, &truncated)?;
            let (value, after) = take_terminated(after, value_len, index, &truncated)?;
            data = after;
            pairs.push(Pair {
                name,
                value,
                replaced: OnceCell::new(),
            });
        }
        if !data.is_empty() {
            return Err(HeaderMapError::Trailing(data.len()));
        }
        Ok(Self { pairs })
    }

    /// A map over headers a host hands over as separate (name, value) slices (Envoy's
    /// dynamic-module ABI), read exactly as [`HeaderMap::parse`] reads the encoded form.
    #[must_use]
    pub fn from_pairs(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        Self {
            pairs: pairs
                .into_iter()
                .map(|(name, value)| Pair {
                    name,
                    value,
                    replaced: OnceCell::new(),
                })
                .collect(),
        }
    }

    /// The first value of header `name` (compared byte for byte: hosts hand over names in
    /// lower case, as the core asks for them).
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        let pair = self.pairs.iter().find(|p| p.name == name.as_bytes())?;
        Some(match std::str::from_utf8(pair.value) {
            Ok(text) => text,
            Err(_) => pair
                .replaced
                .get_or_init(|| String::from_utf8_lossy(pair.value).into()),
        })
    }

    /// Whether the request carries header `name` (whatever its value).
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.pairs.iter().any(|p| p.name == name.as_bytes())
    }

    /// Every header as the host gave it, in order (names and values as bytes).
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.pairs.iter().map(|p| (p.name, p.value))
    }

    /// How many headers (repeated names counted each time).
    #[must_use]
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no headers at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl RequestView for HeaderMap<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// The encoding of `pairs`, as a host hands it over (what [`HeaderMap::parse`] reads).
#[must_use]
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = len(pairs.len()).to_vec();
    for (k, v) in pairs {
        out.extend(len(k.as_ref().len()));
        out.extend(len(v.as_ref().len()));
    }
    for (k, v) in pairs {
        for text in [k.as_ref(), v.as_ref()] {
            out.extend_from_slice(text);
            out.push(0);
        }
    }
    out
}

fn split_u32(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((usize::try_from(u32::from_le_bytes(*head)).ok()?, rest))
}

/// `len` bytes, then the NUL after them.
fn take_terminated<'a>(
    bytes: &'a [u8],
    len: usize,
    index: usize,
    truncated: &HeaderMapError,
) -> Result<(&'a [u8], &'a [u8]), HeaderMapError> {
    let (text, rest) = bytes
        .split_at_checked(len)
        .ok_or_else(|| truncated.clone())?;
    match rest.split_first() {
        Some((0, rest)) => Ok((text, rest)),
        Some(_) => Err(HeaderMapError::Unterminated { index }),
        None => Err(truncated.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_headers_in_place() -> Result<(), HeaderMapError> {
        let bytes = encode::<&[u8], &[u8]>(&[
            (b":method", b"GET"),
            (b":path", b"/api/hello"),
            (b"authorization", b"Bearer abc"),
            (b"x-empty", b""),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ]);
        let map = HeaderMap::parse(&bytes)?;
        assert_eq!(map.len(), 6);
        assert_eq!(map.get(":path"), Some("/api/hello"));
        assert_eq!(map.get("authorization"), Some("Bearer abc"));
        assert_eq!(map.get("x-empty"), Some(""));
        assert!(map.contains("x-empty"));
        // The first of repeated headers, as before.
        assert_eq!(map.get("cookie"), Some("a=1"));
        assert_eq!(map.get("Authorization"), None);
        assert!(!map.contains("x-user"));
        // The value is borrowed from the encoded bytes, not copied.
        let value = map.get(":method").map(str::as_ptr);
        assert_eq!(
            value,
            bytes
                .windows(3)
                .position(|w| w == b"GET")
                .map(|i| bytes[i..].as_ptr())
        );
        Ok(())
    }

    #[test]
    fn empty_input_is_an_empty_map() -> Result<(), HeaderMapError> {
        assert!(HeaderMap::parse(&[])?.is_empty());
        assert!(HeaderMap::parse(&encode::<&str, &str>(&[]))?.is_empty());
        Ok(())
    }

    /// A client may send bytes above 0x7F in a value (Envoy passes them on): the header is
    /// present, reads with U+FFFD in place of each invalid sequence, and the other headers are
    /// unaffected.
    #[test]
    fn values_that_are_not_utf8_read_with_replacement_characters() -> Result<(), HeaderMapError> {
        let bytes = encode::<&[u8], &[u8]>(&[
            (b"x-weird", b"caf\xe9\xff"),
            (b"authorization", b"Bearer \xff.\xfe.\xfd"),
            (b"x-fine", "café".as_bytes()),
        ]);
        let map = HeaderMap::parse(&bytes)?;
        assert_eq!(map.get("x-weird"), Some("caf\u{fffd}\u{fffd}"));
        assert_eq!(map.get("x-weird"), Some("caf\u{fffd}\u{fffd}"));
        assert_eq!(
            map.get("authorization"),
            Some("Bearer \u{fffd}.\u{fffd}.\u{fffd}")
        );
        assert_eq!(map.get("x-fine"), Some("café"));
        assert!(map.contains("x-weird"));
        Ok(())
    }

    #[test]
    fn encodes_what_it_reads() -> Result<(), HeaderMapError> {
        let pairs: [(&[u8], &[u8]); 3] = [(b":path", b"/"), (b"x-bin", b"\xff\x00z"), (b"e", b"")];
        let bytes = encode(&pairs);
        let map = HeaderMap::parse(&bytes)?;
        assert_eq!(map.iter().collect::<Vec<_>>(), pairs);
        Ok(())
    }

    #[test]
    fn refuses_maps_whose_lengths_do_not_match() {
        let good = encode(&[("a", "bc"), ("d", "")]);
        // Every strict prefix is too short (or, cut inside the count, not a count at all).
        for cut in 1..good.len() {
            assert!(
                HeaderMap::parse(&good[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        let mut trailing = good.clone();
        trailing.push(7);
        assert_eq!(
            HeaderMap::parse(&trailing).err(),
            Some(HeaderMapError::Trailing(1))
        );
        let mut unterminated = good.clone();
        // The NUL after the first value ("bc").
        let nul = 4 + 2 * 8 + 2 + 2;
        assert_eq!(unterminated[nul], 0);
        unterminated[nul] = b'x';
        assert_eq!(
            HeaderMap::parse(&unterminated).err(),
            Some(HeaderMapError::Unterminated { index: 0 })
        );
        // A count the bytes cannot hold is refused before anything is allocated for it.
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            HeaderMap::parse(&huge),
            Err(HeaderMapError::Truncated { count, .. }) if count == u32::MAX as usize
        ));
        // Lengths that overflow when added up.
        let mut bogus = 1u32.to_le_bytes().to_vec();
        bogus.extend(u32::MAX.to_le_bytes());
        bogus.extend(u32::MAX.to_le_bytes());
        bogus.extend(b"a\0b\0");
        assert!(HeaderMap::parse(&bogus).is_err());
    }
}
