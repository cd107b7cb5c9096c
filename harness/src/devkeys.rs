//! A development issuer: an RSA-2048 key generated in memory at start (never written to disk
//! or committed), its public JWK Set, and RS256 tokens minted with it.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::Sha256;

use portcullis_core::auth::token;

use crate::Result;

/// Issuer URL the demo and tests trust.
pub const DEV_ISSUER: &str = "https://dev.portcullis.local";
/// Audience the demo and tests require.
pub const DEV_AUDIENCE: &str = "portcullis-demo";

/// A signing key with its issuer identity.
#[derive(Debug, Clone)]
pub struct DevIssuer {
    pub issuer: String,
    pub audience: String,
    pub kid: String,
    key: RsaPrivateKey,
}

impl DevIssuer {
    /// Generates a fresh RSA-2048 key.
    pub fn generate() -> Result<Self> {
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?;
        let fingerprint: String = URL_SAFE_NO_PAD
            .encode(sha2_of(&key.n().to_bytes_be()))
            .chars()
            .take(12)
            .collect();
        let kid = format!("dev-{fingerprint}");
        Ok(Self {
            issuer: DEV_ISSUER.to_owned(),
            audience: DEV_AUDIENCE.to_owned(),
            kid,
            key,
        })
    }

    /// The public key as a JWK Set.
    #[must_use]
    pub fn jwks(&self) -> Value {
        json!({ "keys": [{
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(self.key.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.key.e().to_bytes_be()),
        }]})
    }

    /// The public key as a JWK Set whose key names no `alg` (usable for every RSA algorithm).
    #[must_use]
    pub fn jwks_any_rsa_alg(&self) -> Value {
        let mut set = self.jwks();
        if let Some(k) = set
            .get_mut("keys")
            .and_then(|keys| keys.get_mut(0))
            .and_then(Value::as_object_mut)
        {
            k.remove("alg");
        }
        set
    }

    /// Signs `claims` with an RSA algorithm (RS256/384/512, PS256/384/512), this key's `kid`.
    pub fn sign_alg(&self, alg: &str, claims: &Value) -> Result<String> {
        use rsa::pss::BlindedSigningKey;
        use rsa::signature::RandomizedSigner as _;
        use sha2::{Sha384, Sha512};
        let header = json!({"alg": alg, "typ": "JWT", "kid": self.kid}).to_string();
        let k = self.key.clone();
        let rng = &mut rand::rngs::OsRng;
        token::assemble(header.as_bytes(), claims.to_string().as_bytes(), |input| {
            Ok(match alg {
                "RS256" => SigningKey::<Sha256>::new(k).sign(input).to_vec(),
                "RS384" => SigningKey::<Sha384>::new(k).sign(input).to_vec(),
                "RS512" => SigningKey::<Sha512>::new(k).sign(input).to_vec(),
                "PS256" => BlindedSigningKey::<Sha256>::new(k)
                    .sign_with_rng(rng, input)
                    .to_vec(),
                "PS384" => BlindedSigningKey::<Sha384>::new(k)
                    .sign_with_rng(rng, input)
                    .to_vec(),
                "PS512" => BlindedSigningKey::<Sha512>::new(k)
                    .sign_with_rng(rng, input)
                    .to_vec(),
                other => return Err(crate::Error::Missing(format!("no RSA algorithm {other}"))),
            })
        })
    }

    /// Signs an arbitrary payload text (RS256), for tokens no JSON serializer would produce.
    #[must_use]
    pub fn sign_raw_payload(&self, payload: &str) -> String {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}).to_string();
        rs256(&self.key, header.as_bytes(), payload.as_bytes())
    }

    /// Signs `claims` as an RS256 JWS with this key's `kid`.
    #[must_use]
    pub fn sign(&self, claims: &Value) -> String {
        sign_with(
            &self.key,
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// A token for `sub` in `groups`, valid for an hour from now, with iss/aud of this issuer.
    #[must_use]
    pub fn token(&self, sub: &str, groups: &[&str]) -> String {
        let now = now();
        self.sign(&json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "groups": groups,
            "iat": now,
            "exp": now + 3600,
        }))
    }
}

/// Signs a JWS with any header (tests use this for malformed or hostile tokens).
#[must_use]
pub fn sign_with(key: &RsaPrivateKey, header: &Value, claims: &Value) -> String {
    rs256(
        key,
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    )
}

/// An RS256 compact JWS of `header` and `payload` (JSON texts).
fn rs256(key: &RsaPrivateKey, header: &[u8], payload: &[u8]) -> String {
    let Ok(token) = token::assemble::<Infallible>(header, payload, |input| {
        Ok(SigningKey::<Sha256>::new(key.clone()).sign(input).to_vec())
    });
    token
}

/// Signs `claims` with a fixed, public test key of a non-RSA algorithm (`ES256`, `ES384`,
/// `EdDSA`, or `HS256`/`HS384`/`HS512` with a 64-byte secret), header `{"alg", "kid": "fixed"}`.
/// Returns the token and the issuer's key configuration: `("jwks", set)` for public keys,
/// `("sharedSecrets", set)` for HMAC. Deterministic keys: for tests and benchmarks only.
pub fn sign_fixed(alg: &str, claims: &Value) -> Result<(String, &'static str, Value)> {
    let header = json!({"alg": alg, "kid": "fixed"}).to_string();
    let input = token::signing_input(header.as_bytes(), claims.to_string().as_bytes());
    let (sig, source, key) = fixed_signature(alg, input.as_bytes())?;
    Ok((
        token::with_signature(&input, &sig),
        source,
        json!({"keys": [key]}),
    ))
}

/// The signature of `input` by the fixed key of `alg`, where its key goes in an issuer's
/// configuration, and the key as a JWK.
fn fixed_signature(alg: &str, input: &[u8]) -> Result<(Vec<u8>, &'static str, Value)> {
    use p256::ecdsa::signature::Signer as _;
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let bad = |e: &dyn std::fmt::Display| crate::Error::Missing(format!("fixed {alg} key: {e}"));
    Ok(match alg {
        "ES256" => {
            let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).map_err(|e| bad(&e))?;
            let sig: p256::ecdsa::Signature = sk.sign(input);
            let p = sk.verifying_key().to_encoded_point(false);
            let (x, y) = (
                p.x().ok_or_else(|| bad(&"x"))?,
                p.y().ok_or_else(|| bad(&"y"))?,
            );
            let k = json!({"kty": "EC", "crv": "P-256", "kid": "fixed", "x": b64(x), "y": b64(y)});
            (sig.to_bytes().to_vec(), "jwks", k)
        }
        "ES384" => {
            let sk = p384::ecdsa::SigningKey::from_slice(&[5u8; 48]).map_err(|e| bad(&e))?;
            let sig: p384::ecdsa::Signature = sk.sign(input);
            let p = sk.verifying_key().to_encoded_point(false);
            let (x, y) = (
                p.x().ok_or_else(|| bad(&"x"))?,
                p.y().ok_or_else(|| bad(&"y"))?,
            );
            let k = json!({"kty": "EC", "crv": "P-384", "kid": "fixed", "x": b64(x), "y": b64(y)});
            (sig.to_bytes().to_vec(), "jwks", k)
        }
        "EdDSA" => {
            let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
            let sig = sk.sign(input);
            let x = b64(sk.verifying_key().as_bytes());
            let k = json!({"kty": "OKP", "crv": "Ed25519", "kid": "fixed", "x": x});
            (sig.to_bytes().to_vec(), "jwks", k)
        }
        "HS256" | "HS384" | "HS512" => {
            let secret = [0x42u8; 64];
            let tag = hmac_tag(alg, &secret, input).map_err(|e| bad(&e))?;
            let k = json!({"kty": "oct", "kid": "fixed", "k": b64(&secret)});
            (tag, "sharedSecrets", k)
        }
        other => return Err(crate::Error::Missing(format!("no fixed key for {other}"))),
    })
}

/// HMAC tag of `input` (`HS256`, `HS384` or `HS512`).
pub fn hmac_tag(alg: &str, secret: &[u8], input: &[u8]) -> std::result::Result<Vec<u8>, String> {
    use hmac::Hmac;
    fn tag<M: hmac::Mac + hmac::digest::KeyInit>(
        secret: &[u8],
        input: &[u8],
    ) -> std::result::Result<Vec<u8>, String> {
        let mut m = <M as hmac::Mac>::new_from_slice(secret).map_err(|e| e.to_string())?;
        m.update(input);
        Ok(m.finalize().into_bytes().to_vec())
    }
    match alg {
        "HS256" => tag::<Hmac<Sha256>>(secret, input),
        "HS384" => tag::<Hmac<sha2::Sha384>>(secret, input),
        "HS512" => tag::<Hmac<sha2::Sha512>>(secret, input),
        other => Err(format!("{other} is not an HMAC algorithm")),
    }
}

/// Unix time in seconds.
#[must_use]
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha2_of(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    Sha256::digest(bytes).to_vec()
}
