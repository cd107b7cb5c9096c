//! Issuers and the keys uploaded for them, as the admin API and the CLI write them.

use deadpool_postgres::{GenericClient, Pool};
use portcullis_core::auth::jwks::{JwkSetWire, JwkWire, Key, KeySet};
use portcullis_core::config::IssuerSettings;
use serde::{Deserialize, Serialize};

use super::{Result, StoreError};

/// An issuer as the admin API and CLI take it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSpec {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where to fetch the JWK Set; at most one of `jwksUri` and `discoveryUrl`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// An OpenID Connect discovery document (`.../.well-known/openid-configuration`).
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Bounds for the refresh interval taken from `Cache-Control: max-age` (seconds).
    #[serde(default = "default_min_refresh")]
    pub min_refresh_s: i32,
    #[serde(default = "default_max_refresh")]
    pub max_refresh_s: i32,
    /// How long fetched keys stay trusted while the issuer cannot be reached (seconds).
    #[serde(default = "default_max_staleness")]
    pub max_staleness_s: i32,
    /// Token settings for filters (`requiredClaims`, `maxLifetime`, `claimToHeaders`, ...).
    #[serde(default = "empty_object")]
    pub settings: serde_json::Value,
}

fn default_min_refresh() -> i32 {
    60
}
fn default_max_refresh() -> i32 {
    3600
}
fn default_max_staleness() -> i32 {
    86400
}
fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl IssuerSpec {
    /// Refuses what the filter would refuse, and bad URLs or bounds.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(StoreError::BadInput(m));
        if self.issuer.is_empty() || self.issuer.len() > 2048 {
            return bad("the issuer must be 1 to 2048 bytes".into());
        }
        if self.jwks_uri.is_some() && self.discovery_url.is_some() {
            return bad("give at most one of jwksUri and discoveryUrl".into());
        }
        for url in self.jwks_uri.iter().chain(&self.discovery_url) {
            let ok = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return bad(format!("{url:?} is not an http(s) URL"));
            }
        }
        if self.min_refresh_s < 1
            || self.max_refresh_s < self.min_refresh_s
            || self.max_staleness_s < 1
        {
            return bad(
                "refresh bounds must satisfy 1 <= minRefreshS <= maxRefreshS, and maxStalenessS >= 1"
                    .into(),
            );
        }
        let serde_json::Value::Object(settings) = &self.settings else {
            return bad("settings must be an object".into());
        };
        for reserved in ["issuer", "audiences", "jwks", "sharedSecrets"] {
            if settings.contains_key(reserved) {
                return bad(format!("settings cannot set {reserved:?}"));
            }
        }
        // The filter's own type decides what settings mean.
        serde_json::from_value::<IssuerSettings>(self.settings.clone())
            .map(|_| ())
            .map_err(|e| StoreError::BadInput(format!("settings: {e}")))
    }
}

pub async fn list_issuers(pool: &Pool) -> Result<Vec<IssuerSpec>> {
    let c = pool.get().await?;
    Ok(c.query(
        "SELECT issuer, audiences, jwks_uri, discovery_url, min_refresh_s, max_refresh_s,
                max_staleness_s, settings FROM issuers ORDER BY issuer",
        &[],
    )
    .await?
    .iter()
    .map(|r| IssuerSpec {
        issuer: r.get(0),
        audiences: r.get(1),
        jwks_uri: r.get(2),
        discovery_url: r.get(3),
        min_refresh_s: r.get(4),
        max_refresh_s: r.get(5),
        max_staleness_s: r.get(6),
        settings: r.get(7),
    })
    .collect())
}

/// Creates or replaces an issuer.
pub async fn put_issuer(pool: &Pool, spec: &IssuerSpec) -> Result<()> {
    spec.check()?;
    let c = pool.get().await?;
    c.execute(
        "INSERT INTO issuers (issuer, audiences, jwks_uri, discovery_url, min_refresh_s,
                              max_refresh_s, max_staleness_s, settings)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (issuer) DO UPDATE SET audiences = $2, jwks_uri = $3, discovery_url = $4,
             min_refresh_s = $5, max_refresh_s = $6, max_staleness_s = $7, settings = $8,
             updated_at = now()",
        &[
            &spec.issuer,
            &spec.audiences,
            &spec.jwks_uri,
            &spec.discovery_url,
            &spec.min_refresh_s,
            &spec.max_refresh_s,
            &spec.max_staleness_s,
            &spec.settings,
        ],
    )
    .await?;
    // A changed source invalidates the fetch schedule: fetch again now.
    c.execute(
        "UPDATE issuer_fetch_state SET next_fetch_at = NULL WHERE issuer = $1",
        &[&spec.issuer],
    )
    .await?;
    Ok(())
}

pub async fn delete_issuer(pool: &Pool, issuer: &str) -> Result<()> {
    let c = pool.get().await?;
    match c
        .execute("DELETE FROM issuers WHERE issuer = $1", &[&issuer])
        .await?
    {
        0 => Err(StoreError::NotFound(format!("issuer {issuer:?}"))),
        _ => Ok(()),
    }
}

/// A stored key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRow {
    pub issuer: String,
    pub kid: String,
    pub origin: String,
    pub jwk: serde_json::Value,
}

pub async fn list_keys(pool: &Pool, issuer: Option<&str>) -> Result<Vec<KeyRow>> {
    let c = pool.get().await?;
    Ok(c.query(
        "SELECT issuer, kid, origin, jwk FROM keys
         WHERE $1::text IS NULL OR issuer = $1 ORDER BY issuer, kid",
        &[&issuer],
    )
    .await?
    .iter()
    .map(|r| KeyRow {
        issuer: r.get(0),
        kid: r.get(1),
        origin: r.get(2),
        jwk: r.get(3),
    })
    .collect())
}

/// Uploads a key (a JWK with a `kid`) for an issuer; the issuer's whole key set must still be
/// one the filter accepts (no weak RSA, no mixing shared secrets with public keys).
pub async fn add_key(pool: &Pool, issuer: &str, jwk: &serde_json::Value) -> Result<String> {
    let wire: JwkWire = serde_json::from_value(jwk.clone())
        .map_err(|e| StoreError::BadInput(format!("not a JWK: {e}")))?;
    Key::try_from(&wire).map_err(|e| StoreError::BadInput(e.to_string()))?;
    let kid = wire
        .kid
        .clone()
        .filter(|k| !k.is_empty() && k.len() <= 512)
        .ok_or_else(|| {
            StoreError::BadInput("an uploaded key needs a kid (1 to 512 bytes)".into())
        })?;
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    if tx
        .query_opt("SELECT 1 FROM issuers WHERE issuer = $1", &[&issuer])
        .await?
        .is_none()
    {
        return Err(StoreError::NotFound(format!("issuer {issuer:?}")));
    }
    tx.execute(
        "INSERT INTO keys (issuer, kid, jwk, origin) VALUES ($1, $2, $3, 'uploaded')
         ON CONFLICT (issuer, kid) DO UPDATE SET jwk = $3, origin = 'uploaded', added_at = now()",
        &[&issuer, &kid, jwk],
    )
    .await?;
    let all: Vec<serde_json::Value> = tx
        .query("SELECT jwk FROM keys WHERE issuer = $1", &[&issuer])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let set: JwkSetWire = serde_json::from_value(serde_json::json!({ "keys": all }))
        .map_err(|e| StoreError::BadInput(e.to_string()))?;
    KeySet::try_from(&set).map_err(|e| StoreError::BadInput(e.to_string()))?;
    tx.commit().await?;
    Ok(kid)
}

pub async fn delete_key(pool: &Pool, issuer: &str, kid: &str) -> Result<()> {
    let c = pool.get().await?;
    match c
        .execute(
            "DELETE FROM keys WHERE issuer = $1 AND kid = $2",
            &[&issuer, &kid],
        )
        .await?
    {
        0 => Err(StoreError::NotFound(format!(
            "key {kid:?} of issuer {issuer:?}"
        ))),
        _ => Ok(()),
    }
}
