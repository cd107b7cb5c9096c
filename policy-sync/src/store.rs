//! Writes to the source of truth, shared by the admin API and the CLI. Every write runs in
//! one transaction and is checked before it commits: a change that would leave a tenant's
//! policies, schema or entities invalid is refused with positioned problems, and nothing of
//! it is kept. Committed changes wake the publisher through the tables' triggers.

use deadpool_postgres::{GenericClient, Pool, Transaction};
use portcullis_core::auth::jwks::{JwkSetWire, JwkWire, Key, KeySet};
use portcullis_core::config::IssuerSettings;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::db::DbError;
use crate::diagnostics::Problem;
use crate::publish;
use crate::source::{self, PolicyRow, valid_policy_id, valid_tenant_id};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the change is invalid: {}", crate::diagnostics::summary(.0))]
    Invalid(Vec<Problem>),
    #[error("{0}")]
    BadInput(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // Constraint violations are bad input that slipped past the checks here; say which
        // constraint, nothing else of Postgres' message.
        if let Some(db) = e.as_db_error() {
            use tokio_postgres::error::SqlState;
            let code = db.code();
            if *code == SqlState::CHECK_VIOLATION
                || *code == SqlState::FOREIGN_KEY_VIOLATION
                || *code == SqlState::NOT_NULL_VIOLATION
                || *code == SqlState::STRING_DATA_RIGHT_TRUNCATION
            {
                return Self::BadInput(format!(
                    "refused by the database constraint {}",
                    db.constraint().unwrap_or("(unnamed)")
                ));
            }
        }
        Self::Db(DbError::Query(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(e.into())
    }
}

type Result<T> = std::result::Result<T, StoreError>;

fn tenant_ok(tenant: &str) -> Result<()> {
    if valid_tenant_id(tenant) {
        Ok(())
    } else {
        Err(StoreError::BadInput(format!(
            "invalid tenant id {tenant:?} (letters, digits, `_ . -`, at most 63)"
        )))
    }
}

async fn tenant_exists(tx: &impl GenericClient, tenant: &str) -> Result<()> {
    tenant_ok(tenant)?;
    tx.query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&tenant])
        .await?
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("tenant {tenant:?}")))
}

/// Checks the tenant's state as it stands inside `tx`; refuses with its problems.
async fn check_tenant(tx: &Transaction<'_>, tenant: &str) -> Result<()> {
    let state = source::load(tx, Some(tenant)).await?;
    publish::check(&state).map_err(StoreError::Invalid)
}

pub async fn list_tenants(pool: &Pool) -> Result<Vec<String>> {
    let c = pool.get().await?;
    Ok(c.query("SELECT id FROM tenants ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Creates a tenant; returns false when it already existed.
pub async fn put_tenant(pool: &Pool, tenant: &str) -> Result<bool> {
    tenant_ok(tenant)?;
    let c = pool.get().await?;
    Ok(c.execute(
        "INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&tenant],
    )
    .await?
        == 1)
}

/// Deletes a tenant with its policies, schema and entities. The default tenant stays.
pub async fn delete_tenant(pool: &Pool, tenant: &str) -> Result<()> {
    tenant_ok(tenant)?;
    if tenant == "default" {
        return Err(StoreError::BadInput(
            "the default tenant cannot be deleted".into(),
        ));
    }
    let c = pool.get().await?;
    match c
        .execute("DELETE FROM tenants WHERE id = $1", &[&tenant])
        .await?
    {
        0 => Err(StoreError::NotFound(format!("tenant {tenant:?}"))),
        _ => Ok(()),
    }
}

pub async fn list_policies(pool: &Pool, tenant: &str) -> Result<Vec<PolicyRow>> {
    let c = pool.get().await?;
    tenant_exists(&c, tenant).await?;
    Ok(source::load(&c, Some(tenant))
        .await?
        .tenants
        .remove(tenant)
        .map(|t| t.policies)
        .unwrap_or_default())
}

pub async fn get_policy(pool: &Pool, tenant: &str, id: &str) -> Result<PolicyRow> {
    list_policies(pool, tenant)
        .await?
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| StoreError::NotFound(format!("policy {id:?}")))
}

/// The checks a write of `policies` gets before it reaches the database: ids, sizes, no id
/// twice. (What the policies mean is checked with the tenant's whole source, in the same
/// transaction as the write: [`crate::publish::check`].)
pub fn check_policy_rows(policies: &[PolicyRow]) -> Result<()> {
    for p in policies {
        if !valid_policy_id(&p.id) {
            return Err(StoreError::BadInput(format!(
                "invalid policy id {:?} (letters, digits, `_ . : -`, at most 128)",
                p.id
            )));
        }
        if p.text.trim().is_empty() || p.text.len() > 1 << 20 {
            return Err(StoreError::BadInput(format!(
                "policy {:?}: the text must be 1 byte to 1 MiB",
                p.id
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = policies.iter().find(|p| !seen.insert(p.id.as_str())) {
        return Err(StoreError::BadInput(format!(
            "policy id {:?} appears twice",
            dup.id
        )));
    }
    Ok(())
}

/// Creates or replaces policies (one transaction for all); returns whether anything changed.
pub async fn put_policies(pool: &Pool, tenant: &str, policies: &[PolicyRow]) -> Result<bool> {
    check_policy_rows(policies)?;
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tenant_exists(&tx, tenant).await?;
    let ids: Vec<&str> = policies.iter().map(|p| p.id.as_str()).collect();
    let texts: Vec<&str> = policies.iter().map(|p| p.text.as_str()).collect();
    let enabled: Vec<bool> = policies.iter().map(|p| p.enabled).collect();
    // One statement for the whole batch.
    let changed = tx
        .execute(
            "INSERT INTO policies (tenant, id, text, enabled)
             SELECT $1, id, text, enabled FROM unnest($2::text[], $3::text[], $4::bool[])
                 AS x(id, text, enabled)
             ON CONFLICT (tenant, id) DO UPDATE
                 SET text = excluded.text, enabled = excluded.enabled, updated_at = now()
                 WHERE policies.text IS DISTINCT FROM excluded.text
                    OR policies.enabled IS DISTINCT FROM excluded.enabled",
            &[&tenant, &ids, &texts, &enabled],
        )
        .await?
        > 0;
    check_tenant(&tx, tenant).await?;
    tx.commit().await?;
    Ok(changed)
}

pub async fn delete_policy(pool: &Pool, tenant: &str, id: &str) -> Result<()> {
    let c = pool.get().await?;
    tenant_exists(&c, tenant).await?;
    match c
        .execute(
            "DELETE FROM policies WHERE tenant = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?
    {
        0 => Err(StoreError::NotFound(format!("policy {id:?}"))),
        _ => Ok(()),
    }
}

pub async fn get_schema(pool: &Pool, tenant: &str) -> Result<Option<String>> {
    let c = pool.get().await?;
    tenant_exists(&c, tenant).await?;
    Ok(
        c.query_opt("SELECT text FROM schemas WHERE tenant = $1", &[&tenant])
            .await?
            .map(|r| r.get(0)),
    )
}

/// Sets (or with `None` removes) a tenant's schema; the tenant's policies and entities must
/// validate against it.
pub async fn put_schema(pool: &Pool, tenant: &str, schema: Option<&str>) -> Result<()> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tenant_exists(&tx, tenant).await?;
    match schema {
        Some(text) => {
            tx.execute(
                "INSERT INTO schemas (tenant, text) VALUES ($1, $2)
                 ON CONFLICT (tenant) DO UPDATE SET text = $2, updated_at = now()
                 WHERE schemas.text IS DISTINCT FROM $2",
                &[&tenant, &text],
            )
            .await?;
        }
        None => {
            tx.execute("DELETE FROM schemas WHERE tenant = $1", &[&tenant])
                .await?;
        }
    }
    check_tenant(&tx, tenant).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn list_entities(pool: &Pool, tenant: &str) -> Result<Vec<serde_json::Value>> {
    let c = pool.get().await?;
    tenant_exists(&c, tenant).await?;
    Ok(c.query(
        "SELECT entity FROM entities WHERE tenant = $1 ORDER BY uid",
        &[&tenant],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Creates or replaces entities (Cedar entity JSON) in one transaction.
pub async fn put_entities(
    pool: &Pool,
    tenant: &str,
    entities: &[serde_json::Value],
) -> Result<usize> {
    let mut uids = Vec::with_capacity(entities.len());
    for e in entities {
        uids.push(
            source::entity_uid(e)
                .map_err(|m| StoreError::Invalid(vec![Problem::plain("entity", m)]))?,
        );
    }
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tenant_exists(&tx, tenant).await?;
    for (uid, e) in uids.iter().zip(entities) {
        tx.execute(
            "INSERT INTO entities (tenant, uid, entity) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, uid) DO UPDATE SET entity = $3, updated_at = now()
             WHERE entities.entity IS DISTINCT FROM $3",
            &[&tenant, uid, e],
        )
        .await?;
    }
    check_tenant(&tx, tenant).await?;
    tx.commit().await?;
    Ok(entities.len())
}

/// Deletes an entity by its uid as Cedar prints it (`User::"alice"`).
pub async fn delete_entity(pool: &Pool, tenant: &str, uid: &str) -> Result<()> {
    let c = pool.get().await?;
    tenant_exists(&c, tenant).await?;
    match c
        .execute(
            "DELETE FROM entities WHERE tenant = $1 AND uid = $2",
            &[&tenant, &uid],
        )
        .await?
    {
        0 => Err(StoreError::NotFound(format!("entity {uid}"))),
        _ => Ok(()),
    }
}

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
