//! `POST /v1/decisions`: decision logs from filters, in batches. A batch is validated whole
//! (one bad entry refuses all of it, so a filter never wonders which rows were kept) and
//! written with one statement into the day's partition.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, FilterCaller, JsonBody};

/// One decision as a filter reports it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionEntry {
    /// When the decision was made, Unix seconds (fractions allowed).
    time: f64,
    #[serde(default = "default_tenant")]
    tenant: String,
    /// `allow`, `deny`, `unauthenticated` or `error`.
    decision: String,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    /// Determining policy ids.
    #[serde(default)]
    policies: Vec<String>,
    /// The bundle version that decided.
    #[serde(default)]
    version: Option<i64>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    filter_id: Option<String>,
    /// Anything else worth keeping (an object of at most 4 KiB).
    #[serde(default)]
    details: Option<serde_json::Value>,
}

fn default_tenant() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    decisions: Vec<DecisionEntry>,
}

/// Everything a batch is checked for before it is written (`now`: Unix seconds); the message
/// names the first entry at fault.
pub fn check_batch(
    batch: &Batch,
    now: f64,
    max_batch: usize,
    retention_days: i32,
) -> Result<(), String> {
    if batch.decisions.is_empty() {
        return Err("the batch is empty".into());
    }
    if batch.decisions.len() > max_batch {
        return Err(format!("at most {max_batch} decisions per batch"));
    }
    for (i, e) in batch.decisions.iter().enumerate() {
        check(e, i, now, retention_days)?;
    }
    Ok(())
}

const MAX_TEXT: usize = 1024;
const MAX_POLICIES: usize = 64;
const MAX_DETAILS: usize = 4096;
/// How far in the future a decision's time may be (clock skew between machines).
const MAX_FUTURE_S: f64 = 300.0;

fn check(e: &DecisionEntry, i: usize, now: f64, retention_days: i32) -> Result<(), String> {
    let at = |m: &str| format!("decisions[{i}]: {m}");
    if !e.time.is_finite()
        || e.time > now + MAX_FUTURE_S
        || e.time < now - f64::from(retention_days) * 86_400.0
    {
        return Err(at("time is outside the retention window or in the future"));
    }
    if !matches!(
        e.decision.as_str(),
        "allow" | "deny" | "unauthenticated" | "error"
    ) {
        return Err(at("decision must be allow, deny, unauthenticated or error"));
    }
    if !crate::source::valid_tenant_id(&e.tenant) {
        return Err(at("invalid tenant id"));
    }
    let texts = [&e.principal, &e.action, &e.resource, &e.filter_id];
    if texts
        .iter()
        .any(|t| t.as_ref().is_some_and(|t| t.len() > MAX_TEXT))
        || e.policies.len() > MAX_POLICIES
        || e.policies.iter().any(|p| p.len() > MAX_TEXT)
    {
        return Err(at("a field is too long"));
    }
    if let Some(d) = &e.details
        && (!d.is_object() || d.to_string().len() > MAX_DETAILS)
    {
        return Err(at("details must be an object of at most 4 KiB"));
    }
    Ok(())
}

pub async fn ingest(
    State(s): State<AppState>,
    _caller: FilterCaller,
    body: Result<JsonBody<Batch>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(batch) = body.inspect_err(|_| s.metrics.decision_batches_refused.inc())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    check_batch(
        &batch,
        now,
        s.settings.max_decision_batch,
        s.settings.decision_retention_days,
    )
    .map_err(|m| {
        s.metrics.decision_batches_refused.inc();
        ApiError::BadRequest(m)
    })?;
    let n = batch.decisions.len();
    let mut times = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut decisions = Vec::with_capacity(n);
    let mut principals = Vec::with_capacity(n);
    let mut actions = Vec::with_capacity(n);
    let mut resources = Vec::with_capacity(n);
    let mut policies = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut dry_runs = Vec::with_capacity(n);
    let mut filter_ids = Vec::with_capacity(n);
    let mut details = Vec::with_capacity(n);
    for e in batch.decisions {
        times.push(e.time);
        tenants.push(e.tenant);
        decisions.push(e.decision);
        principals.push(e.principal);
        actions.push(e.action);
        resources.push(e.resource);
        policies.push(serde_json::json!(e.policies));
        versions.push(e.version);
        dry_runs.push(e.dry_run);
        filter_ids.push(e.filter_id);
        details.push(e.details);
    }
    let mut c = s.pool.get().await?;
    let tx = c.transaction().await?;
    tx.execute(
        "SELECT portcullis_decision_partition(d)
         FROM (SELECT DISTINCT (to_timestamp(t) AT TIME ZONE 'UTC')::date AS d
               FROM unnest($1::float8[]) AS t) days",
        &[&times],
    )
    .await?;
    let written = tx
        .execute(
            "INSERT INTO decision_logs (ts, tenant, decision, principal, action, resource,
                                        policies, version, dry_run, filter_id, details)
             SELECT to_timestamp(t), tenant, decision, principal, action, resource,
                    ARRAY(SELECT jsonb_array_elements_text(p)), version, dry_run, filter_id, details
             FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::jsonb[], $8::int8[], $9::bool[], $10::text[], $11::jsonb[])
                  AS x(t, tenant, decision, principal, action, resource, p, version, dry_run,
                       filter_id, details)",
            &[
                &times,
                &tenants,
                &decisions,
                &principals,
                &actions,
                &resources,
                &policies,
                &versions,
                &dry_runs,
                &filter_ids,
                &details,
            ],
        )
        .await?;
    tx.commit().await?;
    s.metrics.decision_rows.inc_by(written);
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "accepted": written })),
    )
        .into_response())
}
