//! Published versions, and the API tokens with their roles.

use deadpool_postgres::{GenericClient, Pool};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Result, StoreError};

/// A published version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRow {
    pub version: i64,
    pub published_at: String,
    pub reason: String,
    pub rollback_of: Option<i64>,
    pub tenants: Vec<String>,
}

pub async fn list_versions(pool: &Pool, limit: i64) -> Result<Vec<VersionRow>> {
    let c = pool.get().await?;
    Ok(c.query(
        "SELECT v.version, to_char(v.published_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                v.reason, v.rollback_of,
                coalesce(array_agg(b.tenant ORDER BY b.tenant) FILTER (WHERE b.tenant IS NOT NULL), '{}')
         FROM versions v LEFT JOIN bundles b ON b.version = v.version
         GROUP BY v.version ORDER BY v.version DESC LIMIT $1",
        &[&limit.clamp(1, 10_000)],
    )
    .await?
    .iter()
    .map(|r| VersionRow {
        version: r.get(0),
        published_at: r.get(1),
        reason: r.get(2),
        rollback_of: r.get(3),
        tenants: r.get(4),
    })
    .collect())
}

/// Role of an API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including all writes.
    Admin,
    /// What a filter needs: read bundles, send decision logs, ask for a key refresh.
    Filter,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Filter => "filter",
        }
    }
}

/// The stored form of a token: its SHA-256. Tokens are 256 random bits, so a fast hash is
/// enough; the token itself is never stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Creates a token and returns it (shown once).
pub async fn create_token(pool: &Pool, name: &str, role: Role) -> Result<String> {
    if name.is_empty() || name.len() > 128 {
        return Err(StoreError::BadInput(
            "a token name is 1 to 128 bytes".into(),
        ));
    }
    use base64::Engine as _;
    let secret: [u8; 32] = rand::random();
    let token = format!(
        "pcs_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let c = pool.get().await?;
    let inserted = c
        .execute(
            "INSERT INTO admin_tokens (name, role, token_hash) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
            &[&name, &role.as_str(), &token_hash(&token)],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::BadInput(format!(
            "a token named {name:?} exists already"
        )));
    }
    Ok(token)
}

pub async fn revoke_token(pool: &Pool, name: &str) -> Result<()> {
    let c = pool.get().await?;
    match c
        .execute(
            "UPDATE admin_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
            &[&name],
        )
        .await?
    {
        0 => Err(StoreError::NotFound(format!("active token {name:?}"))),
        _ => Ok(()),
    }
}

/// The caller a token belongs to: (name, role), if it is valid and not revoked.
pub async fn authenticate(pool: &Pool, token: &str) -> Result<Option<(String, Role)>> {
    let c = pool.get().await?;
    let row = c
        .query_opt(
            "SELECT name, role FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
            &[&token_hash(token)],
        )
        .await?;
    Ok(row.map(|r| {
        let role = if r.get::<_, &str>(1) == "admin" {
            Role::Admin
        } else {
            Role::Filter
        };
        (r.get(0), role)
    }))
}
