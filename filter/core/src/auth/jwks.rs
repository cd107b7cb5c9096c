//! JSON Web Key Sets (RFC 7517): parsed once at configuration time into verifying keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Hmac;
use p256::ecdsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

use crate::auth::host_crypto::{Digest, HostCrypto, ec_spki};
use crate::auth::token::Algorithm;

/// Smallest RSA modulus accepted (RFC 7518 §3.3 and NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;

/// Smallest shared secret accepted, in bytes: the HS256 output size (RFC 7518 §3.2 asks for a
/// key at least as long as the hash output; HS384 and HS512 need 48 and 64 bytes).
pub const MIN_SECRET_BYTES: usize = 32;

/// A JWK Set as it appears on the wire. Unknown members (x5c, key_ops, ...) are ignored, as
/// RFC 7517 requires; keys are never taken from tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JwkSetWire {
    pub keys: Vec<JwkWire>,
}

/// One JWK on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JwkWire {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Shared secret of an `oct` key (HMAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
}

/// Why a key set was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("key {kid:?}: missing member {member:?}")]
    Missing { kid: String, member: &'static str },
    #[error("key {kid:?}: member {member:?} is not valid base64url")]
    Base64 { kid: String, member: &'static str },
    #[error("key {kid:?}: RSA modulus of {bits} bits is below the {MIN_RSA_BITS}-bit minimum")]
    WeakRsa { kid: String, bits: usize },
    #[error("key {kid:?}: invalid {what} key")]
    Invalid { kid: String, what: &'static str },
    #[error("key {kid:?}: unsupported key type or curve {kty:?}")]
    Unsupported { kid: String, kty: String },
    #[error("key {kid:?}: algorithm {alg:?} is not supported or does not fit the key type")]
    Algorithm { kid: String, alg: String },
    #[error(
        "key {kid:?}: a shared secret of {bytes} bytes is shorter than the {min} bytes {alg} needs"
    )]
    WeakSecret {
        kid: String,
        bytes: usize,
        min: usize,
        alg: &'static str,
    },
    #[error("the key set holds no signing key")]
    Empty,
    #[error("shared secrets (kty \"oct\") and public keys cannot be mixed in one issuer's key set")]
    Mixed,
}

/// What verifies a signature: a public key, or a shared secret for HMAC.
#[derive(Clone)]
pub enum KeyMaterial {
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    Secret(Vec<u8>),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rsa(k) => write!(f, "Rsa({} bits)", k.size() * 8),
            Self::P256(_) => f.write_str("P256"),
            Self::P384(_) => f.write_str("P384"),
            Self::Ed25519(_) => f.write_str("Ed25519"),
            // Never print a secret.
            Self::Secret(k) => write!(f, "Secret({} bytes)", k.len()),
        }
    }
}

impl KeyMaterial {
    fn is_secret(&self) -> bool {
        matches!(self, Self::Secret(_))
    }
}

/// The minimum secret length for an HMAC algorithm (its output size).
fn secret_min(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => MIN_SECRET_BYTES,
    }
}

fn hmac_ok<M: hmac::Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    <M as hmac::Mac>::new_from_slice(key).is_ok_and(|mut m| {
        m.update(message);
        // Constant-time comparison of the full-length tag.
        m.verify_slice(tag).is_ok()
    })
}

/// A verifying key with the JWK metadata that restricts its use.
#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// When the JWK names an algorithm, only that one is accepted.
    pub alg: Option<Algorithm>,
    pub key: KeyMaterial,
    /// SubjectPublicKeyInfo DER of RSA and EC keys, for hosts that verify natively
    /// ([`HostCrypto`]); empty for the others.
    pub spki: Vec<u8>,
}

impl Key {
    /// Whether this key may verify a token signed with `alg` (RFC 8725 §3.1: the algorithm
    /// must fit the key, never the other way round).
    #[must_use]
    pub fn accepts(&self, alg: Algorithm) -> bool {
        let fits = match (&self.key, alg) {
            (
                KeyMaterial::Rsa(_),
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
            )
            | (KeyMaterial::P256(_), Algorithm::ES256)
            | (KeyMaterial::P384(_), Algorithm::ES384)
            | (KeyMaterial::Ed25519(_), Algorithm::EdDSA) => true,
            (KeyMaterial::Secret(k), Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                k.len() >= secret_min(alg)
            }
            _ => false,
        };
        fits && self.alg.is_none_or(|a| a == alg)
    }

    /// Checks `signature` over `message`, on the host when it can (RSASSA-PKCS1-v1_5 and
    /// ECDSA), in Rust otherwise. The caller has checked [`Key::accepts`].
    #[must_use]
    pub fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
        host: Option<&dyn HostCrypto>,
    ) -> bool {
        if let Some(host) = host
            && let Some(valid) = self.verify_on_host(host, alg, message, signature)
        {
            return valid;
        }
        self.verify_here(alg, message, signature)
    }

    /// `None` when the host cannot check this one.
    fn verify_on_host(
        &self,
        host: &dyn HostCrypto,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Option<bool> {
        if self.spki.is_empty() {
            return None;
        }
        match (&self.key, alg) {
            (KeyMaterial::Rsa(_), Algorithm::RS256) => {
                host.verify(Digest::Sha256, &self.spki, signature, message)
            }
            (KeyMaterial::Rsa(_), Algorithm::RS384) => {
                host.verify(Digest::Sha384, &self.spki, signature, message)
            }
            (KeyMaterial::Rsa(_), Algorithm::RS512) => {
                host.verify(Digest::Sha512, &self.spki, signature, message)
            }
            // The host takes DER; the token carries r||s, checked here for length and range
            // (1 ≤ r, s < n) before it is re-encoded, so the host sees only well-formed values.
            (KeyMaterial::P256(_), Algorithm::ES256) => {
                if signature.len() != 64 {
                    return Some(false);
                }
                let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                    return Some(false);
                };
                host.verify(Digest::Sha256, &self.spki, sig.to_der().as_bytes(), message)
            }
            (KeyMaterial::P384(_), Algorithm::ES384) => {
                if signature.len() != 96 {
                    return Some(false);
                }
                let Ok(sig) = p384::ecdsa::Signature::from_slice(signature) else {
                    return Some(false);
                };
                host.verify(Digest::Sha384, &self.spki, sig.to_der().as_bytes(), message)
            }
            _ => None,
        }
    }

    /// The pure-Rust check.
    #[must_use]
    pub fn verify_here(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match (&self.key, alg) {
            (KeyMaterial::Rsa(k), Algorithm::RS256) => k
                .verify(
                    Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(message),
                    signature,
                )
                .is_ok(),
            (KeyMaterial::Rsa(k), Algorithm::RS384) => k
                .verify(
                    Pkcs1v15Sign::new::<Sha384>(),
                    &Sha384::digest(message),
                    signature,
                )
                .is_ok(),
            (KeyMaterial::Rsa(k), Algorithm::RS512) => k
                .verify(
                    Pkcs1v15Sign::new::<Sha512>(),
                    &Sha512::digest(message),
                    signature,
                )
                .is_ok(),
            // RSASSA-PSS with MGF1 and a salt as long as the hash (RFC 7518 §3.5).
            (KeyMaterial::Rsa(k), Algorithm::PS256) => k
                .verify(Pss::new::<Sha256>(), &Sha256::digest(message), signature)
                .is_ok(),
            (KeyMaterial::Rsa(k), Algorithm::PS384) => k
                .verify(Pss::new::<Sha384>(), &Sha384::digest(message), signature)
                .is_ok(),
            (KeyMaterial::Rsa(k), Algorithm::PS512) => k
                .verify(Pss::new::<Sha512>(), &Sha512::digest(message), signature)
                .is_ok(),
            (KeyMaterial::P256(k), Algorithm::ES256) => {
                // JWS ECDSA signatures are raw r||s (RFC 7518 §3.4); DER is refused, and
                // `from_slice` refuses r or s equal to zero or not below the group order.
                signature.len() == 64
                    && p256::ecdsa::Signature::from_slice(signature)
                        .is_ok_and(|sig| k.verify(message, &sig).is_ok())
            }
            (KeyMaterial::P384(k), Algorithm::ES384) => {
                signature.len() == 96
                    && p384::ecdsa::Signature::from_slice(signature)
                        .is_ok_and(|sig| k.verify(message, &sig).is_ok())
            }
            (KeyMaterial::Ed25519(k), Algorithm::EdDSA) => {
                ed25519_dalek::Signature::from_slice(signature)
                    .is_ok_and(|sig| k.verify_strict(message, &sig).is_ok())
            }
            (KeyMaterial::Secret(k), Algorithm::HS256) => {
                hmac_ok::<Hmac<Sha256>>(k, message, signature)
            }
            (KeyMaterial::Secret(k), Algorithm::HS384) => {
                hmac_ok::<Hmac<Sha384>>(k, message, signature)
            }
            (KeyMaterial::Secret(k), Algorithm::HS512) => {
                hmac_ok::<Hmac<Sha512>>(k, message, signature)
            }
            _ => false,
        }
    }
}

/// The keys of one issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// The keys that may verify a token with this `kid` and `alg`: the key named by `kid`, or
    /// without a kid every key that fits the algorithm.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> impl Iterator<Item = &Key> {
        self.keys.iter().filter(move |k| {
            k.accepts(alg) && kid.is_none_or(|want| k.kid.as_deref() == Some(want))
        })
    }

    /// Number of usable keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the set holds shared secrets (it then holds nothing else).
    #[must_use]
    pub fn is_shared_secret(&self) -> bool {
        self.keys.first().is_some_and(|k| k.key.is_secret())
    }
}

fn b64(kid: &str, member: &'static str, v: Option<&String>) -> Result<Vec<u8>, JwksError> {
    let v = v.ok_or_else(|| JwksError::Missing {
        kid: kid.to_owned(),
        member,
    })?;
    URL_SAFE_NO_PAD.decode(v).map_err(|_| JwksError::Base64 {
        kid: kid.to_owned(),
        member,
    })
}

/// The uncompressed SEC1 point (`0x04 || x || y`) of an EC JWK whose coordinates are `len`
/// bytes each.
fn ec_point(
    kid: &str,
    jwk: &JwkWire,
    len: usize,
    what: &'static str,
) -> Result<Vec<u8>, JwksError> {
    let x = b64(kid, "x", jwk.x.as_ref())?;
    let y = b64(kid, "y", jwk.y.as_ref())?;
    if x.len() != len || y.len() != len {
        return Err(JwksError::Invalid {
            kid: kid.to_owned(),
            what,
        });
    }
    let mut sec1 = Vec::with_capacity(1 + 2 * len);
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    Ok(sec1)
}

impl TryFrom<&JwkWire> for Key {
    type Error = JwksError;

    fn try_from(jwk: &JwkWire) -> Result<Self, Self::Error> {
        let kid = jwk.kid.clone().unwrap_or_default();
        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(a) => Some(Algorithm::from_name(a).ok_or_else(|| JwksError::Algorithm {
                kid: kid.clone(),
                alg: a.to_owned(),
            })?),
        };
        let key = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => {
                let n = BigUint::from_bytes_be(&b64(&kid, "n", jwk.n.as_ref())?);
                let e = BigUint::from_bytes_be(&b64(&kid, "e", jwk.e.as_ref())?);
                let bits = n.bits();
                if bits < MIN_RSA_BITS {
                    return Err(JwksError::WeakRsa { kid, bits });
                }
                let k = RsaPublicKey::new(n, e).map_err(|_| JwksError::Invalid {
                    kid: kid.clone(),
                    what: "RSA",
                })?;
                debug_assert!(k.size() * 8 >= MIN_RSA_BITS);
                KeyMaterial::Rsa(k)
            }
            ("EC", Some("P-256")) => {
                let sec1 = ec_point(&kid, jwk, 32, "P-256")?;
                KeyMaterial::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(
                    |_| JwksError::Invalid {
                        kid: kid.clone(),
                        what: "P-256",
                    },
                )?)
            }
            ("EC", Some("P-384")) => {
                let sec1 = ec_point(&kid, jwk, 48, "P-384")?;
                KeyMaterial::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(
                    |_| JwksError::Invalid {
                        kid: kid.clone(),
                        what: "P-384",
                    },
                )?)
            }
            ("oct", _) => {
                let k = b64(&kid, "k", jwk.k.as_ref())?;
                let (min, alg_name) = match alg {
                    Some(a) => (secret_min(a), a.name()),
                    None => (MIN_SECRET_BYTES, "HS256"),
                };
                if k.len() < min {
                    return Err(JwksError::WeakSecret {
                        kid,
                        bytes: k.len(),
                        min,
                        alg: alg_name,
                    });
                }
                KeyMaterial::Secret(k)
            }
            ("OKP", Some("Ed25519")) => {
                let x = b64(&kid, "x", jwk.x.as_ref())?;
                let bytes: [u8; 32] = x.try_into().map_err(|_| JwksError::Invalid {
                    kid: kid.clone(),
                    what: "Ed25519",
                })?;
                KeyMaterial::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(
                    |_| JwksError::Invalid {
                        kid: kid.clone(),
                        what: "Ed25519",
                    },
                )?)
            }
            (kty, crv) => {
                return Err(JwksError::Unsupported {
                    kid,
                    kty: crv.map_or_else(|| kty.to_owned(), |c| format!("{kty}/{c}")),
                });
            }
        };
        let spki = match &key {
            KeyMaterial::Rsa(k) => {
                use rsa::pkcs8::EncodePublicKey as _;
                k.to_public_key_der()
                    .map(|d| d.as_bytes().to_vec())
                    .unwrap_or_default()
            }
            KeyMaterial::P256(k) => {
                ec_spki(k.to_encoded_point(false).as_bytes()).unwrap_or_default()
            }
            KeyMaterial::P384(k) => {
                ec_spki(k.to_encoded_point(false).as_bytes()).unwrap_or_default()
            }
            KeyMaterial::Ed25519(_) | KeyMaterial::Secret(_) => Vec::new(),
        };
        let key = Key {
            kid: jwk.kid.clone(),
            alg,
            key,
            spki,
        };
        if let Some(a) = alg
            && !key.accepts(a)
        {
            return Err(JwksError::Algorithm {
                kid,
                alg: a.name().to_owned(),
            });
        }
        Ok(key)
    }
}

impl TryFrom<&JwkSetWire> for KeySet {
    type Error = JwksError;

    fn try_from(set: &JwkSetWire) -> Result<Self, Self::Error> {
        let keys = set
            .keys
            .iter()
            // Encryption keys are not for us (RFC 7517 §4.2).
            .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
            .map(Key::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(JwksError::Empty);
        }
        // RFC 8725 §2.1: a verifier that holds both kinds can be tricked into checking an HMAC
        // made with a public key as the secret; one issuer uses one kind.
        if keys.iter().any(|k| k.key.is_secret()) != keys.iter().all(|k| k.key.is_secret()) {
            return Err(JwksError::Mixed);
        }
        Ok(Self { keys })
    }
}
