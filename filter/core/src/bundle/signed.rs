//! Signed bundle documents, as `policy-sync` serves them to filters.
//!
//! A document carries one tenant's bundle at one published version together with the signing
//! keys of every issuer policy-sync knows. `policy-sync` signs the exact bytes of the document
//! with Ed25519; a filter holding the public key checks the signature before it parses
//! anything, so a document altered on the way (or served by something else) is refused whole.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::auth::issuer::{IssuerConfig, IssuerSettings};
use crate::auth::jwks::JwkSetWire;
use crate::bundle::BundleWire;

/// One tenant's bundle at one version, with the issuers' keys.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleDocument {
    /// The tenant (policy set) this document is for; `default` for the default set.
    pub tenant: String,
    /// The published version; versions only ever grow, also across a rollback.
    pub version: u64,
    /// When the version was published, Unix seconds.
    pub published_at: u64,
    /// The policies, schema and entities (its `version` equals the document's).
    pub bundle: BundleWire,
    /// Every issuer with its current keys (uploaded and fetched), as JWK Sets.
    #[serde(default)]
    pub issuers: Vec<IssuerKeys>,
}

/// An issuer's keys and token settings at the time of publishing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerKeys {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The issuer's public keys (uploaded and fetched).
    pub jwks: JwkSetWire,
    /// Token settings (`requiredClaims`, `maxLifetime`, `claimToHeaders`, ...); absent for
    /// the defaults.
    #[serde(default)]
    pub settings: IssuerSettings,
}

impl From<&IssuerKeys> for IssuerConfig {
    fn from(k: &IssuerKeys) -> Self {
        Self::with_keys(
            k.issuer.clone(),
            k.audiences.clone(),
            k.jwks.clone(),
            k.settings.clone(),
        )
    }
}

impl BundleDocument {
    /// The filter configuration of the document's issuers: their keys with their token
    /// settings, in the document's order.
    #[must_use]
    pub fn issuer_configs(&self) -> Vec<IssuerConfig> {
        self.issuers.iter().map(IssuerConfig::from).collect()
    }
}

/// What travels: the document's bytes and their signature.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedBundle {
    /// The [`BundleDocument`] as JSON text; the signature covers exactly these bytes.
    pub payload: String,
    /// Ed25519 signature of `payload`, base64url without padding.
    pub signature: String,
    /// [`key_id`] of the signing key, so a filter can tell which key signed during rotation.
    pub key_id: String,
}

/// Why a signed bundle was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignedBundleError {
    #[error("the signature is not base64url-encoded Ed25519")]
    Encoding,
    #[error("signed by key {found:?}, not by the configured key {expected:?}")]
    UnknownKey { found: String, expected: String },
    #[error("the signature does not match the document")]
    BadSignature,
    #[error("the signed document is not a bundle document: {0}")]
    Document(String),
}

/// A short, stable name for a public key: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Parses a public key given as base64 (standard or url-safe, padding optional) of its 32 bytes.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let text = text.trim().trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .ok()?;
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

impl SignedBundle {
    /// Signs `payload` (a [`BundleDocument`] as JSON) with `key`: what policy-sync publishes.
    #[must_use]
    pub fn sign(key: &ed25519_dalek::SigningKey, payload: String) -> Self {
        use ed25519_dalek::Signer as _;
        Self {
            signature: URL_SAFE_NO_PAD.encode(key.sign(payload.as_bytes()).to_bytes()),
            key_id: key_id(&key.verifying_key()),
            payload,
        }
    }

    /// Checks the signature with `key` (strict Ed25519: no malleable or small-order forms),
    /// then parses the document. Nothing is parsed before the signature holds.
    pub fn verify(&self, key: &VerifyingKey) -> Result<BundleDocument, SignedBundleError> {
        let expected = key_id(key);
        if self.key_id != expected {
            return Err(SignedBundleError::UnknownKey {
                found: self.key_id.clone(),
                expected,
            });
        }
        let raw = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| SignedBundleError::Encoding)?;
        let raw: [u8; 64] = raw.try_into().map_err(|_| SignedBundleError::Encoding)?;
        key.verify_strict(self.payload.as_bytes(), &Signature::from_bytes(&raw))
            .map_err(|_| SignedBundleError::BadSignature)?;
        serde_json::from_str(&self.payload).map_err(|e| SignedBundleError::Document(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn signed(key: &SigningKey, payload: &str) -> SignedBundle {
        SignedBundle::sign(key, payload.to_owned())
    }

    fn doc() -> BundleDocument {
        BundleDocument {
            tenant: "default".into(),
            version: 4,
            published_at: 1_700_000_000,
            bundle: BundleWire {
                version: 4,
                policies: "permit(principal, action, resource);".into(),
                ..BundleWire::default()
            },
            issuers: vec![],
        }
    }

    #[test]
    fn verifies_and_refuses() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let payload = serde_json::to_string(&doc()).unwrap();
        let good = signed(&key, &payload);
        assert_eq!(good.verify(&key.verifying_key()), Ok(doc()));
        assert!(matches!(
            good.verify(&other.verifying_key()),
            Err(SignedBundleError::UnknownKey { .. })
        ));
        let mut tampered = good.clone();
        tampered.payload = payload.replace("permit", "forbid");
        assert_eq!(
            tampered.verify(&key.verifying_key()),
            Err(SignedBundleError::BadSignature)
        );
        let mut garbled = good.clone();
        garbled.signature = "!!".into();
        assert_eq!(
            garbled.verify(&key.verifying_key()),
            Err(SignedBundleError::Encoding)
        );
        let not_doc = signed(&key, "{\"x\":1}");
        assert!(matches!(
            not_doc.verify(&key.verifying_key()),
            Err(SignedBundleError::Document(_))
        ));
        let b64 = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        assert_eq!(parse_public_key(&b64), Some(key.verifying_key()));
        assert_eq!(parse_public_key("short"), None);
    }
}
