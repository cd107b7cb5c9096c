//! Vetting a fetched key set exactly as the filter will: only usable public signing keys are
//! taken, and only the members a filter reads are stored.

use std::collections::BTreeMap;

use portcullis_core::auth::jwks::{JwkSetWire, JwkWire, Key, KeySet};
use serde::Deserialize as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::error::{FetchError, InvalidResponse, MAX_ERROR_CHARS, truncate};
use crate::db::hex;

/// Most keys stored per issuer; a larger set is refused.
pub const MAX_KEYS: usize = 256;

/// Longest `kid` stored (the `keys.kid` column's limit).
const MAX_KID_CHARS: usize = 512;

/// A fetched key that passed the filter's checks, as stored.
#[derive(Debug)]
pub(super) struct UsableKey {
    pub(super) kid: String,
    pub(super) jwk: Value,
}

/// The keys of a JWK Set body that the filter accepts (public signing keys), as stored, and a
/// note on each key that was not taken. Errors when none is usable.
pub(super) fn usable_keys(body: &[u8]) -> Result<(Vec<UsableKey>, Vec<String>), FetchError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| FetchError::Invalid(InvalidResponse::KeySetNotJson))?;
    let members = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(FetchError::Invalid(InvalidResponse::NoKeysArray))?;
    let mut keys: Vec<UsableKey> = Vec::new();
    let mut wires: Vec<JwkWire> = Vec::new();
    let mut skipped = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let wire = match JwkWire::deserialize(member) {
            Ok(w) => w,
            Err(_) => {
                skipped.push(format!("key #{i}: not a JWK"));
                continue;
            }
        };
        let name = wire.kid.clone().unwrap_or_else(|| format!("#{i}"));
        // Encryption keys are not for us (the filter skips them too).
        if wire.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        if wire.kty == "oct" {
            skipped.push(format!(
                "key {name:?}: shared secrets are never taken from a fetched key set"
            ));
            continue;
        }
        if let Err(e) = Key::try_from(&wire) {
            skipped.push(e.to_string());
            continue;
        }
        let jwk = stored_jwk(&wire);
        let kid = match &wire.kid {
            Some(kid) if kid.is_empty() || kid.chars().count() > MAX_KID_CHARS => {
                skipped.push(format!("key #{i}: kid is empty or too long"));
                continue;
            }
            Some(kid) => kid.clone(),
            None => stable_kid(&jwk),
        };
        if keys.iter().any(|k| k.kid == kid) {
            skipped.push(format!("key {:?}: duplicate kid", truncate(&kid, 64)));
            continue;
        }
        if keys.len() >= MAX_KEYS {
            return Err(FetchError::Invalid(InvalidResponse::TooManyKeys));
        }
        keys.push(UsableKey { kid, jwk });
        wires.push(wire);
    }
    if keys.is_empty() {
        return Err(FetchError::Invalid(InvalidResponse::NoUsableKey(skipped)));
    }
    // The whole set as the filter will build it.
    KeySet::try_from(&JwkSetWire { keys: wires }).map_err(|e| {
        FetchError::Invalid(InvalidResponse::KeySet(truncate(
            &e.to_string(),
            MAX_ERROR_CHARS,
        )))
    })?;
    Ok((keys, skipped))
}

/// The JWK as stored: only the members a filter reads, so that nothing else an issuer
/// publishes (private members by mistake, certificates) reaches the bundles.
fn stored_jwk(wire: &JwkWire) -> Value {
    let members = stored_members(wire);
    let map: serde_json::Map<String, Value> = members
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    Value::Object(map)
}

fn stored_members(wire: &JwkWire) -> BTreeMap<&'static str, &str> {
    let mut m = BTreeMap::new();
    m.insert("kty", wire.kty.as_str());
    for (name, value) in [
        ("kid", &wire.kid),
        ("alg", &wire.alg),
        ("use", &wire.use_),
        ("n", &wire.n),
        ("e", &wire.e),
        ("crv", &wire.crv),
        ("x", &wire.x),
        ("y", &wire.y),
    ] {
        if let Some(v) = value {
            m.insert(name, v.as_str());
        }
    }
    m
}

/// The id of a key without a `kid`: `sha256:` and the hex of the first 16 bytes of the
/// SHA-256 of its canonical JSON (members sorted, no white space).
fn stable_kid(jwk: &Value) -> String {
    let canonical: BTreeMap<&str, &Value> = jwk
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default();
    let text = serde_json::to_string(&canonical).unwrap_or_default();
    let digest = Sha256::digest(text.as_bytes());
    format!("sha256:{}", hex(digest.get(..16).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_without_kid_get_a_stable_id() {
        let body = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","extra":"ignored"}]}"#;
        let (keys, skipped) = usable_keys(body).map_err(|e| e.to_string()).unwrap();
        assert!(skipped.is_empty());
        let kid = &keys.first().unwrap().kid;
        assert!(kid.starts_with("sha256:") && kid.len() == 7 + 32, "{kid}");
        let (again, _) = usable_keys(body).map_err(|e| e.to_string()).unwrap();
        assert_eq!(&again.first().unwrap().kid, kid);
        assert!(keys.first().unwrap().jwk.get("extra").is_none());
    }
}
