//! Parsing a compact JWS (RFC 7515) into its parts, before any signature check.
//!
//! Every length and shape is checked before decoding; nothing here can panic on any input.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a token could not be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("token is not three base64url segments separated by dots")]
    Malformed,
    #[error("token {0} is not valid base64url")]
    Base64(&'static str),
    #[error("token {0} is not a JSON object")]
    Json(&'static str),
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("token header names critical extensions this filter does not understand")]
    Crit,
    #[error("token {0} has duplicate member names")]
    Duplicate(&'static str),
}

/// Signature algorithms (RFC 7518 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    /// HMAC algorithms: only for issuers configured with shared secrets.
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    /// Parses an `alg` value; `none` and anything unsupported are refused.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "EdDSA" => Self::EdDSA,
            "HS256" => Self::HS256,
            "HS384" => Self::HS384,
            "HS512" => Self::HS512,
            _ => return None,
        })
    }

    /// The RFC 7518 name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
        }
    }
}

#[derive(Deserialize)]
struct HeaderWire {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// A JSON object whose member names are unique (`None` when one repeats): RFC 7519 §4 lets
/// a parser reject duplicates, and a claim read twice two ways is an attack surface.
struct UniqueMap(Option<Map<String, Value>>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UniqueMap, A::Error> {
                let mut m = Map::new();
                let mut duplicate = false;
                while let Some((k, v)) = a.next_entry::<String, Value>()? {
                    duplicate |= m.insert(k, v).is_some();
                }
                Ok(UniqueMap((!duplicate).then_some(m)))
            }
        }
        d.deserialize_map(Members)
    }
}

/// A parsed, not yet verified, token.
#[derive(Debug)]
pub struct UnverifiedToken<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `base64url(header) '.' base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

/// Splits, decodes and parses a compact JWS of at most `max_len` bytes.
pub fn parse(token: &str, max_len: usize) -> Result<UnverifiedToken<'_>, TokenError> {
    if token.len() > max_len {
        return Err(TokenError::TooLarge { max: max_len });
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| TokenError::Base64("header"))?;
    let header: HeaderWire =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Json("header"))?;
    let alg = Algorithm::from_name(&header.alg).ok_or(TokenError::Algorithm(header.alg))?;
    if header.crit.is_some() {
        return Err(TokenError::Crit);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| TokenError::Base64("payload"))?;
    let claims = match serde_json::from_slice::<UniqueMap>(&payload) {
        Ok(UniqueMap(Some(m))) => m,
        Ok(UniqueMap(None)) => return Err(TokenError::Duplicate("payload")),
        Err(_) => return Err(TokenError::Json("payload")),
    };
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Base64("signature"))?;
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .ok_or(TokenError::Malformed)?
        .as_bytes();
    Ok(UnverifiedToken {
        alg,
        kid: header.kid,
        claims,
        signing_input,
        signature,
    })
}

/// Assembles a compact JWS (RFC 7515 §7.1) of `header` and `payload` (the JSON texts, encoded
/// here), signed by `sign` over the signing input. The filter only reads tokens; this is
/// [`parse`]'s inverse for policy-sync's `dev-token` and for the tests' issuers.
pub fn assemble<E>(
    header: &[u8],
    payload: &[u8],
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<String, E> {
    let input = signing_input(header, payload);
    let signature = sign(input.as_bytes())?;
    Ok(with_signature(&input, &signature))
}

/// `base64url(header) '.' base64url(payload)`: what a JWS signature covers.
#[must_use]
pub fn signing_input(header: &[u8], payload: &[u8]) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// The compact JWS of a signing input and its signature.
#[must_use]
pub fn with_signature(input: &str, signature: &[u8]) -> String {
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn parses_parts() {
        let t = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64(r#"{"sub":"a"}"#),
            b64("sig")
        );
        let u = parse(&t, 8192).unwrap();
        assert_eq!(u.alg, Algorithm::RS256);
        assert_eq!(u.kid.as_deref(), Some("k1"));
        assert_eq!(u.claims["sub"], "a");
        assert_eq!(u.signature, b"sig");
        assert_eq!(u.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
    }

    #[test]
    fn refuses_bad_shapes() {
        let h = b64(r#"{"alg":"RS256"}"#);
        let p = b64(r#"{"sub":"a"}"#);
        let cases = [
            (String::new(), TokenError::Malformed),
            ("a.b".to_owned(), TokenError::Malformed),
            (format!("{h}.{p}.c.d"), TokenError::Malformed),
            (format!("{h}..c"), TokenError::Malformed),
            (format!("{h}.{p}.@@"), TokenError::Base64("signature")),
            (format!("{h}=.{p}.c2ln"), TokenError::Base64("header")),
            (
                format!("{}.{p}.c2ln", b64("[1]")),
                TokenError::Json("header"),
            ),
            (
                format!("{h}.{}.c2ln", b64("not json")),
                TokenError::Json("payload"),
            ),
            (
                format!("{}.{p}.c2ln", b64(r#"{"alg":"none"}"#)),
                TokenError::Algorithm("none".into()),
            ),
            (
                format!("{}.{p}.c2ln", b64(r#"{"alg":"ES512"}"#)),
                TokenError::Algorithm("ES512".into()),
            ),
            (
                format!("{}.{p}.c2ln", b64(r#"{"alg":"RS256","crit":["exp"]}"#)),
                TokenError::Crit,
            ),
            ("x".repeat(9000), TokenError::TooLarge { max: 8192 }),
            (
                format!("{h}.{}.c2ln", b64(r#"{"sub":"a","sub":"b"}"#)),
                TokenError::Duplicate("payload"),
            ),
        ];
        for (token, want) in cases {
            assert_eq!(parse(&token, 8192).unwrap_err(), want, "token {token:.40}");
        }
    }
}
