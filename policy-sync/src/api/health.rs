//! `/healthz` (the process answers), `/readyz` (Postgres reachable and a version published),
//! `/metrics` (Prometheus text format).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The version in force when policy-sync is ready, or why it is not.
async fn readiness(s: &AppState) -> Result<i64, &'static str> {
    let c = s.pool.get().await.map_err(|_| "database unavailable")?;
    let row = c
        .query_one("SELECT coalesce(max(version), 0) FROM versions", &[])
        .await
        .map_err(|_| "database unavailable")?;
    match row.get::<_, i64>(0) {
        v if v > 0 => Ok(v),
        _ => Err("no version published yet"),
    }
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    match readiness(&s).await {
        Ok(v) => Json(serde_json::json!({"ready": true, "version": v})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

/// The metrics page; `policy_sync_ready` is checked as `/readyz` checks, at each scrape.
pub async fn metrics(State(s): State<AppState>) -> Response {
    s.metrics.ready.set(i64::from(readiness(&s).await.is_ok()));
    let status = s.pool.status();
    s.metrics
        .pool_size
        .set(i64::try_from(status.size).unwrap_or(i64::MAX));
    s.metrics
        .pool_available
        .set(i64::try_from(status.available).unwrap_or(0));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
