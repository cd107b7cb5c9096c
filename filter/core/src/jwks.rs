//! JSON Web Key Sets (RFC 7517): parsed once at configuration time into verifying keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};
use serde::Deserialize;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

use crate::token::Algorithm;

/// Smallest RSA modulus accepted (RFC 7518 §3.3 and NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;

/// A JWK Set as it appears on the wire. Unknown members (x5c, key_ops, ...) are ignored, as
/// RFC 7517 requires; keys are never taken from tokens.
#[derive(Debug, Clone, Deserialize)]
pub struct JwkSetWire {
    pub keys: Vec<JwkWire>,
}

/// One JWK on the wire.
#[derive(Debug, Clone, Deserialize)]
pub struct JwkWire {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
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
    #[error("the key set holds no signing key")]
    Empty,
}

/// A verifying key.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A verifying key with the JWK metadata that restricts its use.
#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// When the JWK names an algorithm, only that one is accepted.
    pub alg: Option<Algorithm>,
    pub key: PublicKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg` (RFC 8725 §3.1: the algorithm
    /// must fit the key, never the other way round).
    #[must_use]
    pub fn accepts(&self, alg: Algorithm) -> bool {
        let fits = matches!(
            (&self.key, alg),
            (
                PublicKey::Rsa(_),
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (PublicKey::P256(_), Algorithm::ES256)
                | (PublicKey::Ed25519(_), Algorithm::EdDSA)
        );
        fits && self.alg.is_none_or(|a| a == alg)
    }

    /// Checks `signature` over `message`. The caller has checked [`Key::accepts`].
    #[must_use]
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match (&self.key, alg) {
            (PublicKey::Rsa(k), Algorithm::RS256) => k
                .verify(
                    Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(message),
                    signature,
                )
                .is_ok(),
            (PublicKey::Rsa(k), Algorithm::RS384) => k
                .verify(
                    Pkcs1v15Sign::new::<Sha384>(),
                    &Sha384::digest(message),
                    signature,
                )
                .is_ok(),
            (PublicKey::Rsa(k), Algorithm::RS512) => k
                .verify(
                    Pkcs1v15Sign::new::<Sha512>(),
                    &Sha512::digest(message),
                    signature,
                )
                .is_ok(),
            // RSASSA-PSS with MGF1 and a salt as long as the hash (RFC 7518 §3.5).
            (PublicKey::Rsa(k), Algorithm::PS256) => k
                .verify(Pss::new::<Sha256>(), &Sha256::digest(message), signature)
                .is_ok(),
            (PublicKey::Rsa(k), Algorithm::PS384) => k
                .verify(Pss::new::<Sha384>(), &Sha384::digest(message), signature)
                .is_ok(),
            (PublicKey::Rsa(k), Algorithm::PS512) => k
                .verify(Pss::new::<Sha512>(), &Sha512::digest(message), signature)
                .is_ok(),
            (PublicKey::P256(k), Algorithm::ES256) => {
                // JWS ECDSA signatures are raw r||s (RFC 7518 §3.4); DER is refused, and
                // `from_slice` refuses r or s equal to zero.
                signature.len() == 64
                    && p256::ecdsa::Signature::from_slice(signature)
                        .is_ok_and(|sig| k.verify(message, &sig).is_ok())
            }
            (PublicKey::Ed25519(k), Algorithm::EdDSA) => {
                ed25519_dalek::Signature::from_slice(signature)
                    .is_ok_and(|sig| k.verify_strict(message, &sig).is_ok())
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
                PublicKey::Rsa(k)
            }
            ("EC", Some("P-256")) => {
                let x = b64(&kid, "x", jwk.x.as_ref())?;
                let y = b64(&kid, "y", jwk.y.as_ref())?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwksError::Invalid { kid, what: "P-256" });
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(0x04);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                PublicKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(
                    |_| JwksError::Invalid {
                        kid: kid.clone(),
                        what: "P-256",
                    },
                )?)
            }
            ("OKP", Some("Ed25519")) => {
                let x = b64(&kid, "x", jwk.x.as_ref())?;
                let bytes: [u8; 32] = x.try_into().map_err(|_| JwksError::Invalid {
                    kid: kid.clone(),
                    what: "Ed25519",
                })?;
                PublicKey::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(
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
        let key = Key {
            kid: jwk.kid.clone(),
            alg,
            key,
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
        Ok(Self { keys })
    }
}
