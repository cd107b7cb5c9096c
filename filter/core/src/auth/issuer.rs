//! One trusted issuer: its keys, audiences and token settings, as the filter configuration and
//! policy-sync's documents carry them.

use serde::{Deserialize, Serialize};

use crate::auth::jwks::JwkSetWire;
use crate::duration::ConfigDuration;

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; empty (the default) accepts any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The issuer's public keys, as a JWK Set (RSA, EC P-256/P-384, OKP Ed25519). Exactly one
    /// of `jwks` and `sharedSecrets` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSetWire>,
    /// Shared secrets for HS256/384/512, as a JWK Set of `kty: "oct"` keys (`k` base64url, at
    /// least 32 bytes; 48 for HS384, 64 for HS512). HMAC tokens are accepted only from an
    /// issuer configured this way, and such an issuer accepts nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_secrets: Option<JwkSetWire>,
    /// Claims copied into request headers for the upstream (`"claim"` may be a dotted path
    /// into nested objects). Client-sent copies of these headers are always removed.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<ClaimToHeader>,
    /// Header that carries the token's payload segment (base64url JSON) upstream.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_header: Option<String>,
    /// Claims every token of this issuer must carry (non-null). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    /// Longest accepted token lifetime (`exp - iat`, e.g. `"24h"`); tokens without `iat` are
    /// then refused. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<ConfigDuration>,
    /// Keep the `Authorization` header in the request to the upstream. Default true.
    #[serde(default = "default_true")]
    pub forward: bool,
}

/// An issuer's token settings: everything of [`IssuerConfig`] but its name, audiences and
/// keys. `policy-sync` stores these per issuer and publishes them with the keys
/// (`IssuerKeys` in its signed documents); defaults as in [`IssuerConfig`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<ConfigDuration>,
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub forward: bool,
}

impl Default for IssuerSettings {
    fn default() -> Self {
        Self {
            claim_to_headers: Vec::new(),
            payload_header: None,
            required_claims: Vec::new(),
            max_lifetime: None,
            forward: true,
        }
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_true(b: &bool) -> bool {
    *b
}

impl IssuerConfig {
    /// An issuer with public keys (`jwks`) and the given token settings.
    #[must_use]
    pub fn with_keys(
        issuer: String,
        audiences: Vec<String>,
        jwks: JwkSetWire,
        settings: IssuerSettings,
    ) -> Self {
        let IssuerSettings {
            claim_to_headers,
            payload_header,
            required_claims,
            max_lifetime,
            forward,
        } = settings;
        Self {
            issuer,
            audiences,
            jwks: Some(jwks),
            shared_secrets: None,
            claim_to_headers,
            payload_header,
            required_claims,
            max_lifetime,
            forward,
        }
    }
}

/// One claim → header mapping.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub claim: String,
    pub header: String,
}

fn default_true() -> bool {
    true
}
