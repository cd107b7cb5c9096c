//! [`HostCrypto`] on Envoy: the `verify_signature` foreign function (Envoy ≥ 1.30), which
//! checks a signature with Envoy's BoringSSL instead of wasm-compiled arithmetic.
//!
//! Arguments are Envoy's `VerifySignatureArguments` protobuf message, encoded here by hand
//! (five length-delimited fields); the answer is a `VerifySignatureResult` whose field 1 is
//! the verdict. Only a clear "valid" is taken from the host: anything else (an invalid
//! signature, a key the host cannot read, an error) falls back to the core's Rust check, so the
//! host can make acceptance faster but never changes a decision. A host without the function
//! answers `NotFound` once and is not asked again.

use std::cell::{Cell, RefCell};

use log::info;
use portcullis_core::{Digest, HostCrypto};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

const FUNCTION: &str = "verify_signature";

/// `VerifySignatureArguments` field tags (field number << 3 | wire type 2).
const TAG_HASH_FUNCTION: u8 = 0x0a;
const TAG_PUBLIC_KEY: u8 = 0x12;
const TAG_SIGNATURE: u8 = 0x1a;
const TAG_TEXT: u8 = 0x22;

/// `VerifySignatureResult { bool result = 1; }` with result true.
const VALID: [u8; 2] = [0x08, 0x01];

#[derive(Debug)]
pub struct EnvoyCrypto {
    unavailable: Cell<bool>,
    buf: RefCell<Vec<u8>>,
    /// Counters: signatures the host verified, and those left to the filter's own code.
    verified: u32,
    fallback: u32,
    /// Histogram: nanoseconds per host call, as the filter sees it (encoding excluded).
    timing: u32,
}

impl EnvoyCrypto {
    pub fn new(verified: u32, fallback: u32, timing: u32) -> Self {
        Self {
            unavailable: Cell::new(false),
            buf: RefCell::new(Vec::with_capacity(1024)),
            verified,
            fallback,
            timing,
        }
    }

    fn count(&self, valid: Option<bool>) -> Option<bool> {
        let id = if valid.is_some() {
            self.verified
        } else {
            self.fallback
        };
        crate::Metrics::add(id, 1);
        valid
    }
}

fn put_field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    let mut n = bytes.len();
    while n >= 0x80 {
        // Low seven bits with the continuation bit; the cast keeps exactly those bits.
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(bytes);
}

impl HostCrypto for EnvoyCrypto {
    fn verify(
        &self,
        digest: Digest,
        spki_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool> {
        if self.unavailable.get() {
            return self.count(None);
        }
        let Ok(mut buf) = self.buf.try_borrow_mut() else {
            return self.count(None);
        };
        buf.clear();
        put_field(&mut buf, TAG_HASH_FUNCTION, digest.name().as_bytes());
        put_field(&mut buf, TAG_PUBLIC_KEY, spki_der);
        put_field(&mut buf, TAG_SIGNATURE, signature);
        put_field(&mut buf, TAG_TEXT, message);
        let started = hostcalls::get_current_time().ok();
        let called = hostcalls::call_foreign_function(FUNCTION, Some(&buf));
        if self.timing != 0
            && let (Some(started), Ok(ended)) = (started, hostcalls::get_current_time())
        {
            let ns = ended.duration_since(started).map_or(0, |d| d.as_nanos());
            let _ = hostcalls::record_metric(self.timing, u64::try_from(ns).unwrap_or(u64::MAX));
        }
        let answer = match called {
            Ok(Some(answer)) if answer == VALID => Some(true),
            Ok(_) => None,
            Err(Status::NotFound) => {
                info!("portcullis: host has no {FUNCTION} function; verifying signatures in wasm");
                self.unavailable.set(true);
                None
            }
            Err(_) => None,
        };
        self.count(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_varints() {
        let mut out = Vec::new();
        put_field(&mut out, TAG_SIGNATURE, &[0u8; 256]);
        assert_eq!(&out[..3], &[0x1a, 0x80, 0x02]);
        assert_eq!(out.len(), 259);
        let mut out = Vec::new();
        put_field(&mut out, TAG_HASH_FUNCTION, b"sha256");
        assert_eq!(out, b"\x0a\x06sha256");
        let mut out = Vec::new();
        put_field(&mut out, TAG_PUBLIC_KEY, &[1u8; 294]);
        assert_eq!(&out[..3], &[0x12, 0xa6, 0x02]);
    }
}
