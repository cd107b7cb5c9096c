//! `GET /v1/bundles/{tenant}`: the tenant's latest signed document, long-polled.
//!
//! `?after=N` (or `If-None-Match: "N"`) answers at once when a version newer than N exists;
//! otherwise the request waits (up to `?wait=` seconds, bounded by the server's maximum) and
//! answers the moment a newer version is published, on any replica. At the end of the wait
//! it answers 304 Not Modified. The ETag is the version.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, FilterCaller};
use crate::publish;
use crate::source::valid_tenant_id;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleQuery {
    after: Option<i64>,
    /// Seconds to wait for a newer version (default and maximum: the server's `--max-wait`).
    wait: Option<u64>,
}

/// Decrements the waiter gauge however the wait ends (including a client going away).
struct Waiting<'a>(&'a prometheus::IntGauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn etag_version(headers: &HeaderMap) -> Option<i64> {
    let v = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

pub async fn get_bundle(
    State(state): State<AppState>,
    caller: FilterCaller,
    Path(tenant): Path<String>,
    query: Result<Query<BundleQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !valid_tenant_id(&tenant) {
        return Err(ApiError::BadRequest(format!(
            "invalid tenant id {tenant:?}"
        )));
    }
    let after = query.after.or_else(|| etag_version(&headers)).unwrap_or(0);
    if after < 0 {
        return Err(ApiError::BadRequest("after must be 0 or more".into()));
    }
    let wait = query
        .wait
        .map_or(state.settings.max_wait, std::time::Duration::from_secs)
        .min(state.settings.max_wait);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before reading, so a version published in between is not missed.
    let mut announced = state.hub.subscribe(&tenant);
    {
        let c = state.pool.get().await?;
        if c.query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&tenant])
            .await?
            .is_none()
        {
            return Err(ApiError::NotFound(format!("tenant {tenant:?} not found")));
        }
    }
    loop {
        let known = *announced.borrow_and_update();
        if let Some((version, json)) = read_latest(&state, &tenant, known).await?
            && version > after
        {
            state.metrics.bundles_served.inc();
            let mut response = (StatusCode::OK, json).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
                h.insert(header::ETAG, v);
            }
            h.insert(
                "x-portcullis-version",
                HeaderValue::from(u64::try_from(version).unwrap_or(0)),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return Ok(response);
        }
        let _parked = state.parking.park(&caller.name)?;
        state.metrics.waiters.inc();
        let _waiting = Waiting(&state.metrics.waiters);
        let woke = tokio::time::timeout_at(deadline, announced.wait_for(|v| *v > after)).await;
        match woke {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return Err(ApiError::Internal),
            Err(_) => {
                let mut response = StatusCode::NOT_MODIFIED.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("\"{after}\"")) {
                    response.headers_mut().insert(header::ETAG, v);
                }
                return Ok(response);
            }
        }
    }
}

/// The latest document as JSON: the cached one when it is as new as what was announced, else
/// from the read replica when there is one and it has caught up, else from the primary.
async fn read_latest(
    state: &AppState,
    tenant: &str,
    announced: i64,
) -> Result<Option<(i64, Bytes)>, ApiError> {
    if announced > 0
        && let Some(cached) = state.hub.document(tenant, announced)
    {
        return Ok(Some(cached));
    }
    // Every request a version wakes arrives here at once: the first reads, the others find
    // its document in the cache once it is done.
    let lock = state.hub.read_lock(tenant);
    let _reading = lock.lock().await;
    if announced > 0
        && let Some(cached) = state.hub.document(tenant, announced)
    {
        return Ok(Some(cached));
    }
    let mut found = None;
    if let Some(replica) = &state.read_pool {
        match replica.get().await {
            Ok(c) => match publish::latest(&c, tenant).await {
                Ok(Some(doc)) if doc.0 >= announced => found = Some(doc),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "read replica failed; using the primary"),
            },
            Err(e) => tracing::warn!(error = %e, "read replica unreachable; using the primary"),
        }
    }
    if found.is_none() {
        let c = state.pool.get().await?;
        found = publish::latest(&c, tenant).await?;
    }
    let Some((version, signed)) = found else {
        return Ok(None);
    };
    let json = Bytes::from(serde_json::to_vec(&signed).map_err(|_| ApiError::Internal)?);
    state.hub.keep_document(tenant, version, json.clone());
    Ok(Some((version, json)))
}
