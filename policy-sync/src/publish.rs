//! Publishing: source state → validated, signed documents under a new version.
//!
//! Every replica may try to publish at any time. The work happens in one transaction holding a
//! Postgres advisory lock, so attempts are serialised across replicas: the first builds the
//! new version from the committed state, the others find nothing changed. Version numbers
//! come from that same transaction, so replicas never fork the sequence.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_postgres::{GenericClient, Pool, Transaction};
use portcullis_core::BundleWire;
use portcullis_core::bundle::signed::{BundleDocument, IssuerKeys};
use sha2::{Digest as _, Sha256};

use crate::db::{DbError, hex};
use crate::diagnostics::Problem;
use crate::metrics::Metrics;
use crate::signing::Signer;
use crate::source::{self, Source};

/// Serialises publishing (and rollback) across replicas.
const PUBLISH_LOCK: i64 = 0x706f_7274_7075_6273;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the source state is invalid: {}", crate::diagnostics::summary(.0))]
    Invalid(Vec<Problem>),
    #[error("version {0} does not exist")]
    NoSuchVersion(i64),
}

impl From<tokio_postgres::Error> for PublishError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

/// What a publishing attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A new version, with the tenants whose documents changed.
    New { version: i64, tenants: Vec<String> },
    /// Nothing changed since the latest version (0 when none was ever published).
    Unchanged { version: i64 },
}

impl Published {
    pub fn version(&self) -> i64 {
        match self {
            Self::New { version, .. } | Self::Unchanged { version } => *version,
        }
    }
}

/// Builds every tenant's bundle from the committed state and publishes a version if any
/// tenant's content changed.
pub async fn publish(
    pool: &Pool,
    signer: &Signer,
    reason: &str,
) -> Result<Published, PublishError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await?;
    lock(&tx).await?;
    let out = publish_in(&tx, signer, reason, None).await?;
    tx.commit().await?;
    Ok(out)
}

/// One publishing attempt ([`publish`]), with its metrics and log lines; `None` when nothing
/// could be published (invalid source state, kept out and logged; or Postgres failing).
pub async fn attempt(
    pool: &Pool,
    signer: &Signer,
    metrics: &Metrics,
    reason: &str,
) -> Option<Published> {
    let started = std::time::Instant::now();
    let result = publish(pool, signer, reason).await;
    metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(p) => {
            if let Published::New { version, tenants } = &p {
                tracing::info!(version, ?tenants, "published");
            }
            Some(p)
        }
        Err(PublishError::Invalid(problems)) => {
            metrics.publish_refused.inc();
            tracing::warn!(
                problems = %crate::diagnostics::summary(&problems),
                "the source state is invalid; the last good version stays served"
            );
            None
        }
        Err(e) => {
            metrics.publish_errors.inc();
            tracing::warn!(error = %e, "publishing failed; retrying");
            None
        }
    }
}

/// Restores the policies, schemas and entities of every tenant as they were at `to`, and
/// publishes that as a new version (versions only grow). Tenants created after `to` are left
/// as they are; issuers and keys are not rolled back (they follow the issuers).
pub async fn rollback(pool: &Pool, signer: &Signer, to: i64) -> Result<Published, PublishError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await?;
    lock(&tx).await?;
    let row = tx
        .query_opt("SELECT source FROM versions WHERE version = $1", &[&to])
        .await?
        .ok_or(PublishError::NoSuchVersion(to))?;
    let snapshot: Source = serde_json::from_value(row.get(0))
        .map_err(|e| PublishError::Invalid(vec![Problem::plain("snapshot", e.to_string())]))?;
    for (tenant, src) in &snapshot.tenants {
        tx.execute(
            "INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[tenant],
        )
        .await?;
        tx.execute("DELETE FROM policies WHERE tenant = $1", &[tenant])
            .await?;
        tx.execute("DELETE FROM schemas WHERE tenant = $1", &[tenant])
            .await?;
        tx.execute("DELETE FROM entities WHERE tenant = $1", &[tenant])
            .await?;
        for p in &src.policies {
            tx.execute(
                "INSERT INTO policies (tenant, id, text, enabled) VALUES ($1, $2, $3, $4)",
                &[tenant, &p.id, &p.text, &p.enabled],
            )
            .await?;
        }
        if let Some(schema) = &src.schema {
            tx.execute(
                "INSERT INTO schemas (tenant, text) VALUES ($1, $2)",
                &[tenant, schema],
            )
            .await?;
        }
        for e in &src.entities {
            let uid = source::entity_uid(e)
                .map_err(|m| PublishError::Invalid(vec![Problem::plain("entity", m)]))?;
            tx.execute(
                "INSERT INTO entities (tenant, uid, entity) VALUES ($1, $2, $3)",
                &[tenant, &uid, e],
            )
            .await?;
        }
    }
    let out = publish_in(&tx, signer, &format!("rollback to version {to}"), Some(to)).await?;
    tx.commit().await?;
    Ok(out)
}

async fn lock(tx: &Transaction<'_>) -> Result<(), PublishError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PUBLISH_LOCK])
        .await?;
    Ok(())
}

/// The content digest of a tenant's document, version excluded.
fn digest(bundle: &BundleWire, issuers: &[IssuerKeys]) -> String {
    let mut unversioned = bundle.clone();
    unversioned.version = 0;
    let text = serde_json::json!({"bundle": unversioned, "issuers": issuers}).to_string();
    hex(&Sha256::digest(text.as_bytes()))
}

/// Checks the whole source state as publishing would (used by writes before they commit).
pub fn check(source: &Source) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    for (tenant, src) in &source.tenants {
        if let Err(p) = src.bundle(0) {
            problems.extend(p.into_iter().map(|mut p| {
                if tenant != "default" {
                    p.source = format!("tenant {tenant:?}: {}", p.source);
                }
                p
            }));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

async fn publish_in(
    tx: &Transaction<'_>,
    signer: &Signer,
    reason: &str,
    rollback_of: Option<i64>,
) -> Result<Published, PublishError> {
    let started = std::time::Instant::now();
    let source = source::load(tx, None).await?;
    let issuers = source::load_issuers(tx).await?;
    let latest: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM versions", &[])
        .await?
        .get(0);
    let version = latest + 1;
    let mut documents: BTreeMap<String, (BundleWire, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (tenant, src) in &source.tenants {
        match src.bundle_for_publishing(u64::try_from(version).unwrap_or(0)) {
            Ok(b) => {
                let d = digest(&b, &issuers);
                documents.insert(tenant.clone(), (b, d));
            }
            Err(p) => problems.extend(p.into_iter().map(|mut p| {
                p.source = format!("tenant {tenant:?}: {}", p.source);
                p
            })),
        }
    }
    let built = started.elapsed();
    // Every tenant was just built: parses no tenant uses any more can go.
    source::sweep_parse_cache();
    if !problems.is_empty() {
        return Err(PublishError::Invalid(problems));
    }
    let current: BTreeMap<String, String> = tx
        .query(
            "SELECT DISTINCT ON (tenant) tenant, digest FROM bundles ORDER BY tenant, version DESC",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let changed: Vec<String> = documents
        .iter()
        .filter(|(t, (_, d))| current.get(*t) != Some(d))
        .map(|(t, _)| t.clone())
        .collect();
    if changed.is_empty() {
        return Ok(Published::Unchanged { version: latest });
    }
    let snapshot = serde_json::to_value(&source)
        .map_err(|e| PublishError::Invalid(vec![Problem::plain("snapshot", e.to_string())]))?;
    tx.execute(
        "INSERT INTO versions (version, reason, rollback_of, source) VALUES ($1, $2, $3, $4)",
        &[&version, &reason, &rollback_of, &snapshot],
    )
    .await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for tenant in &changed {
        let Some((bundle, digest)) = documents.remove(tenant) else {
            continue;
        };
        let doc = BundleDocument {
            tenant: tenant.clone(),
            version: u64::try_from(version).unwrap_or(0),
            published_at: now,
            bundle,
            issuers: issuers.clone(),
        };
        let payload = serde_json::to_string(&doc)
            .map_err(|e| PublishError::Invalid(vec![Problem::plain("document", e.to_string())]))?;
        let signed = signer.sign(payload);
        tx.execute(
            "INSERT INTO bundles (tenant, version, digest, payload, signature, key_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                tenant,
                &version,
                &digest,
                &signed.payload,
                &signed.signature,
                &signed.key_id,
            ],
        )
        .await?;
    }
    tracing::debug!(
        version,
        read_and_built_ms = built.as_millis(),
        total_ms = started.elapsed().as_millis(),
        "version written"
    );
    Ok(Published::New {
        version,
        tenants: changed,
    })
}

/// The latest published document of a tenant, if any: (version, signed bundle).
pub async fn latest(
    c: &impl GenericClient,
    tenant: &str,
) -> Result<Option<(i64, portcullis_core::bundle::signed::SignedBundle)>, DbError> {
    Ok(c.query_opt(
        "SELECT version, payload, signature, key_id FROM bundles
             WHERE tenant = $1 ORDER BY version DESC LIMIT 1",
        &[&tenant],
    )
    .await?
    .map(|r| {
        (
            r.get(0),
            portcullis_core::bundle::signed::SignedBundle {
                payload: r.get(1),
                signature: r.get(2),
                key_id: r.get(3),
            },
        )
    }))
}
