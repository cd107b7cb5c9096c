//! [`HostCrypto`] natively: ring's RSA (PKCS #1 v1.5) and ECDSA checks (BoringSSL's code, in
//! Rust and assembly) instead of the core's pure-Rust arithmetic.
//!
//! The same contract as the Wasm build's `verify_signature`: only a clear "valid" is taken
//! from ring; anything else (a bad signature, a key or algorithm ring does not take, such as
//! RSA under 2,048 bits) returns `None` and the core checks the signature itself, so ring can
//! make acceptance faster but never changes a decision.

use crate::auth::host_crypto::{Digest, HostCrypto};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use spki::der::Decode as _;
use spki::der::asn1::ObjectIdentifier;

/// rsaEncryption (RFC 8017).
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-ecPublicKey (RFC 5480), with the curve as the algorithm's parameter.
const EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Signature checks with ring; `counted` is told whether each check was ring's (`true`) or
/// left to the core (`false`), for the host-verify counters.
pub struct RingCrypto {
    counted: Box<dyn Fn(bool)>,
}

impl std::fmt::Debug for RingCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingCrypto")
    }
}

impl RingCrypto {
    #[must_use]
    pub fn new(counted: Box<dyn Fn(bool)>) -> Self {
        Self { counted }
    }
}

/// ring's algorithm for a key of this SubjectPublicKeyInfo and `digest`, and the key bytes it
/// takes (the RSAPublicKey DER, or the EC point): `None` for anything else.
fn algorithm(
    spki_der: &[u8],
    digest: Digest,
) -> Option<(&'static dyn VerificationAlgorithm, &[u8])> {
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der).ok()?;
    let key = spki.subject_public_key.as_bytes()?;
    let oid = spki.algorithm.oid;
    let alg: &'static dyn VerificationAlgorithm = if oid == RSA {
        match digest {
            Digest::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Digest::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Digest::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        }
    } else if oid == EC {
        let curve: ObjectIdentifier = spki.algorithm.parameters?.decode_as().ok()?;
        match (curve, digest) {
            (c, Digest::Sha256) if c == P256 => &signature::ECDSA_P256_SHA256_ASN1,
            (c, Digest::Sha384) if c == P256 => &signature::ECDSA_P256_SHA384_ASN1,
            (c, Digest::Sha256) if c == P384 => &signature::ECDSA_P384_SHA256_ASN1,
            (c, Digest::Sha384) if c == P384 => &signature::ECDSA_P384_SHA384_ASN1,
            _ => return None,
        }
    } else {
        return None;
    };
    Some((alg, key))
}

/// ring's verdict: `Some(true)` only when ring checked the signature and it holds.
#[must_use]
pub fn ring_verify(digest: Digest, spki_der: &[u8], sig: &[u8], message: &[u8]) -> Option<bool> {
    let (alg, key) = algorithm(spki_der, digest)?;
    UnparsedPublicKey::new(alg, key)
        .verify(message, sig)
        .is_ok()
        .then_some(true)
}

impl HostCrypto for RingCrypto {
    fn verify(
        &self,
        digest: Digest,
        spki_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool> {
        let valid = ring_verify(digest, spki_der, signature, message);
        (self.counted)(valid.is_some());
        valid
    }
}
