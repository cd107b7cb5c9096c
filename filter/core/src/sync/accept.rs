//! What a received answer must pass before it can replace the bundle in force, in this order,
//! refused whole at the first failure: the signature (before the document is parsed), the
//! tenant, a version strictly newer than the one in force, the format, the policies.

use crate::bundle::Bundle;
use crate::bundle::chunks::Chunks;
use crate::bundle::signed::{BundleDocument, SignedBundle, SignedBundleError};
use crate::snapshot::Issuers;
use crate::sync::config::SigningKey;

/// Largest answer accepted from policy-sync, checked before anything is read. The 10,000
/// policy documents policy-sync publishes are a few MiB; anything far past that is refused.
pub const MAX_DOCUMENT_BYTES: usize = 64 << 20;

/// Why a poll did not bring a new bundle. Each is counted under [`SyncFailure::cause`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SyncFailure {
    #[error("policy-sync could not be reached: {0}")]
    Unreachable(String),
    #[error("policy-sync did not answer in time")]
    Timeout,
    #[error("policy-sync answered with status {0}")]
    Status(u16),
    #[error("the answer is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("the answer is not a signed document: {0}")]
    Malformed(String),
    #[error("signed by key {0:?}, which is not among the configured signing keys")]
    UnknownKey(String),
    #[error("the signature does not match the document")]
    BadSignature,
    #[error("the document is for tenant {got:?}, not {want:?}")]
    WrongTenant { got: String, want: String },
    #[error("version {got} is not newer than version {in_force} in force")]
    NotNewer { got: u64, in_force: u64 },
    #[error("the document is not valid: {0}")]
    Format(String),
    #[error("the document's policies were refused: {0}")]
    Policies(String),
}

impl SyncFailure {
    /// A short label for metrics and logs.
    #[must_use]
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Timeout => "timeout",
            Self::Status(_) => "status",
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::WrongTenant { .. } => "wrong_tenant",
            Self::NotNewer { .. } => "not_newer",
            Self::Format(_) => "format",
            Self::Policies(_) => "policies",
        }
    }

    /// Every cause label, for defining the counters up front.
    pub const CAUSES: [&'static str; 11] = [
        "unreachable",
        "timeout",
        "status",
        "too_large",
        "malformed",
        "unknown_key",
        "bad_signature",
        "wrong_tenant",
        "not_newer",
        "format",
        "policies",
    ];
}

/// A document that passed every check, with its bundle as the check compiled it (the worker
/// that checked it builds its snapshot from this instead of compiling the bundle again).
#[derive(Debug)]
pub struct Accepted {
    pub doc: BundleDocument,
    pub bundle: Bundle,
}

/// Checks an answer's body for `tenant`, given the version in force (if any); `previous` holds
/// the policies parsed for the last document accepted (not parsed again).
pub fn accept(
    body: &[u8],
    tenant: &str,
    in_force: Option<u64>,
    keys: &[SigningKey],
    previous: &Chunks,
) -> Result<Accepted, SyncFailure> {
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(SyncFailure::TooLarge);
    }
    let signed: SignedBundle =
        serde_json::from_slice(body).map_err(|e| SyncFailure::Malformed(e.to_string()))?;
    let key = keys
        .iter()
        .find(|k| k.id == signed.key_id)
        .ok_or_else(|| SyncFailure::UnknownKey(signed.key_id.clone()))?;
    let doc = signed.verify(&key.key).map_err(|e| match e {
        SignedBundleError::Document(m) => SyncFailure::Format(m),
        SignedBundleError::UnknownKey { found, .. } => SyncFailure::UnknownKey(found),
        SignedBundleError::Encoding | SignedBundleError::BadSignature => SyncFailure::BadSignature,
    })?;
    if doc.tenant != tenant {
        return Err(SyncFailure::WrongTenant {
            got: doc.tenant,
            want: tenant.to_owned(),
        });
    }
    if let Some(in_force) = in_force
        && doc.version <= in_force
    {
        return Err(SyncFailure::NotNewer {
            got: doc.version,
            in_force,
        });
    }
    if doc.bundle.version != doc.version {
        return Err(SyncFailure::Format(format!(
            "the bundle says version {}, the document {}",
            doc.bundle.version, doc.version
        )));
    }
    if !doc.issuers.is_empty() {
        Issuers::try_from(doc.issuer_configs())
            .map_err(|e| SyncFailure::Format(format!("issuers: {e}")))?;
    }
    let bundle =
        Bundle::compile(&doc.bundle, previous).map_err(|e| SyncFailure::Policies(e.to_string()))?;
    Ok(Accepted { doc, bundle })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleWire;
    use crate::bundle::signed::key_id;

    fn doc(tenant: &str, version: u64, policies: &str) -> BundleDocument {
        BundleDocument {
            tenant: tenant.into(),
            version,
            published_at: 1,
            bundle: BundleWire {
                version,
                policies: policies.into(),
                ..BundleWire::default()
            },
            issuers: Vec::new(),
        }
    }

    fn sign(secret: &ed25519_dalek::SigningKey, payload: &str) -> Vec<u8> {
        serde_json::to_vec(&SignedBundle::sign(secret, payload.to_owned())).unwrap()
    }

    fn keys(secrets: &[&ed25519_dalek::SigningKey]) -> Vec<SigningKey> {
        secrets
            .iter()
            .map(|s| SigningKey {
                id: key_id(&s.verifying_key()),
                key: s.verifying_key(),
            })
            .collect()
    }

    #[test]
    fn refuses_in_order() {
        let old = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let new = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let trusted = keys(&[&old, &new]);
        let good =
            serde_json::to_string(&doc("default", 5, "permit(principal, action, resource);"))
                .unwrap();
        // Either of the rotating keys is accepted.
        for k in [&old, &new] {
            assert_eq!(
                accept(
                    &sign(k, &good),
                    "default",
                    Some(4),
                    &trusted,
                    &Chunks::default()
                )
                .unwrap()
                .doc
                .version,
                5
            );
        }
        assert_eq!(
            accept(
                &sign(&old, &good),
                "default",
                None,
                &trusted,
                &Chunks::default()
            )
            .unwrap()
            .doc
            .version,
            5
        );
        let cause = |body: &[u8], tenant: &str, in_force| {
            accept(body, tenant, in_force, &trusted, &Chunks::default())
                .map(|_| ())
                .unwrap_err()
                .cause()
        };
        assert_eq!(cause(b"{\"payload\":", "default", None), "malformed");
        assert_eq!(
            cause(&vec![b' '; MAX_DOCUMENT_BYTES + 1], "default", None),
            "too_large"
        );
        assert_eq!(
            cause(&sign(&stranger, &good), "default", None),
            "unknown_key"
        );
        // A tampered payload with a valid key id: the signature fails before anything is read,
        // even when the payload is not JSON at all.
        let mut tampered: SignedBundle = serde_json::from_slice(&sign(&old, &good)).unwrap();
        tampered.payload = "not json".into();
        assert_eq!(
            cause(&serde_json::to_vec(&tampered).unwrap(), "default", None),
            "bad_signature"
        );
        tampered.signature = "!!".into();
        assert_eq!(
            cause(&serde_json::to_vec(&tampered).unwrap(), "default", None),
            "bad_signature"
        );
        assert_eq!(cause(&sign(&old, &good), "acme", None), "wrong_tenant");
        assert_eq!(cause(&sign(&old, &good), "default", Some(5)), "not_newer");
        assert_eq!(cause(&sign(&old, &good), "default", Some(9)), "not_newer");
        assert_eq!(cause(&sign(&old, "{\"x\":1}"), "default", None), "format");
        let mut skewed = doc("default", 6, "permit(principal, action, resource);");
        skewed.bundle.version = 7;
        assert_eq!(
            cause(
                &sign(&old, &serde_json::to_string(&skewed).unwrap()),
                "default",
                None
            ),
            "format"
        );
        let broken = serde_json::to_string(&doc("default", 6, "permit(principal,")).unwrap();
        assert_eq!(cause(&sign(&old, &broken), "default", None), "policies");
        assert!(SyncFailure::CAUSES.contains(&"policies"));
    }
}
