//! `policy-sync dev-token`: tokens from a development issuer, for demos and tests only.
//!
//! The issuer's Ed25519 key lives in a local file (created on first use, mode 0600); its public
//! half is registered as an uploaded key of the dev issuer, which is created when missing, so
//! the token verifies in every filter once that change is published.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_postgres::Pool;
use ed25519_dalek::Signer as _;
use portcullis_core::auth::token;

use crate::signing::Signer;
use crate::store::{self, IssuerSpec, StoreError};

/// The dev issuer's default `iss`.
pub const DEV_ISSUER: &str = "https://dev-issuer.portcullis.invalid";

/// What to mint.
#[derive(Debug, Clone)]
pub struct DevTokenRequest {
    pub issuer: String,
    pub key_file: PathBuf,
    pub sub: String,
    pub groups: Vec<String>,
    pub aud: String,
    pub ttl: Duration,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Mints a token (EdDSA), registering the dev issuer and key first when needed.
pub async fn mint(pool: &Pool, req: &DevTokenRequest) -> Result<String, StoreError> {
    let key = if req.key_file.exists() {
        Signer::from_file(&req.key_file).map_err(|e| StoreError::BadInput(e.to_string()))?
    } else {
        let k = Signer::generate();
        k.write_new(&req.key_file)
            .map_err(|e| StoreError::BadInput(e.to_string()))?;
        k
    };
    let kid = format!("dev-{}", key.key_id());
    if !store::list_issuers(pool)
        .await?
        .iter()
        .any(|i| i.issuer == req.issuer)
    {
        store::put_issuer(
            pool,
            &IssuerSpec {
                issuer: req.issuer.clone(),
                audiences: vec![req.aud.clone()],
                jwks_uri: None,
                discovery_url: None,
                min_refresh_s: 60,
                max_refresh_s: 3600,
                max_staleness_s: 86400,
                settings: serde_json::json!({}),
            },
        )
        .await?;
    }
    let jwk = serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(key.public_key().as_bytes()),
    });
    if !store::list_keys(pool, Some(&req.issuer))
        .await?
        .iter()
        .any(|k| k.kid == kid && k.jwk == jwk)
    {
        store::add_key(pool, &req.issuer, &jwk).await?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = req.extra.clone();
    claims.insert("iss".into(), req.issuer.clone().into());
    claims.insert("sub".into(), req.sub.clone().into());
    claims.insert("aud".into(), req.aud.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + req.ttl.as_secs()).into());
    if !req.groups.is_empty() {
        claims.insert("groups".into(), serde_json::json!(req.groups));
    }
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string();
    let payload = serde_json::Value::Object(claims).to_string();
    let Ok(token) = token::assemble::<Infallible>(header.as_bytes(), payload.as_bytes(), |input| {
        Ok(key.signing_key().sign(input).to_bytes().to_vec())
    });
    Ok(token)
}
