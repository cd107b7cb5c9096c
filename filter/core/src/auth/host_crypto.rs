//! Signature checks the host can do natively, with the pure-Rust path as the fallback.
//!
//! Inside Envoy, public-key arithmetic compiled to wasm runs several times slower than the
//! same code natively (docs/performance.md). Envoy offers its own BoringSSL through the
//! `verify_signature` foreign function; the glue implements [`HostCrypto`] with it. The core
//! only hands over what any host would need: a digest name, the key as SubjectPublicKeyInfo
//! DER, the signature in the form OpenSSL-style APIs take, and the signed bytes.

/// The digest the host applies to the message before checking the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    /// The name hosts use (`sha256`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }
}

/// A host that verifies signatures itself.
pub trait HostCrypto: std::fmt::Debug {
    /// Checks `signature` over `message` (hashed with `digest`) under the key `spki_der`:
    /// RSASSA-PKCS1-v1_5 for RSA keys, ECDSA with a DER-encoded signature for EC keys.
    /// `Some(valid)` when the host checked it; `None` when it cannot (no such function, an
    /// error it reports): the core then verifies in Rust.
    fn verify(
        &self,
        digest: Digest,
        spki_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool>;
}

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, 65-byte point).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER prefix of a P-384 SubjectPublicKeyInfo (id-ecPublicKey, secp384r1, 97-byte point).
const P384_SPKI_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// SubjectPublicKeyInfo DER of an uncompressed P-256 (65 bytes) or P-384 (97 bytes) point.
#[must_use]
pub fn ec_spki(sec1_uncompressed: &[u8]) -> Option<Vec<u8>> {
    let prefix: &[u8] = match sec1_uncompressed.len() {
        65 => &P256_SPKI_PREFIX,
        97 => &P384_SPKI_PREFIX,
        _ => return None,
    };
    let mut out = Vec::with_capacity(prefix.len() + sec1_uncompressed.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(sec1_uncompressed);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePublicKey as _;

    #[test]
    fn ec_spki_matches_the_pkcs8_encoder() {
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let vk = sk.verifying_key();
        let point = vk.to_encoded_point(false);
        let ours = ec_spki(point.as_bytes()).unwrap();
        let theirs = p256::PublicKey::from(vk).to_public_key_der().unwrap();
        assert_eq!(ours, theirs.as_bytes());

        let sk = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap();
        let vk = sk.verifying_key();
        let point = vk.to_encoded_point(false);
        let ours = ec_spki(point.as_bytes()).unwrap();
        let theirs = p384::PublicKey::from(vk).to_public_key_der().unwrap();
        assert_eq!(ours, theirs.as_bytes());
        assert_eq!(ec_spki(&[4u8; 64]), None);
    }
}
