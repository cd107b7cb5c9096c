//! Writes to the source of truth, shared by the admin API and the CLI. Every write runs in
//! one transaction and is checked before it commits: a change that would leave a tenant's
//! policies, schema or entities invalid is refused with positioned problems, and nothing of
//! it is kept. Committed changes wake the publisher through the tables' triggers.
//!
//! Tenants, policies, schemas and entities are here; issuers and their keys in `issuers`;
//! published versions and API tokens in `access` (all re-exported here).

use deadpool_postgres::{GenericClient, Pool, Transaction};

use crate::db::DbError;
use crate::diagnostics::Problem;
use crate::publish;
use crate::source::{self, PolicyRow, valid_policy_id, valid_tenant_id};

mod access;
mod issuers;

pub use access::{
    Role, VersionRow, authenticate, create_token, list_versions, revoke_token, token_hash,
};
pub use issuers::{
    IssuerSpec, KeyRow, add_key, delete_issuer, delete_key, list_issuers, list_keys, put_issuer,
};

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

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

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
