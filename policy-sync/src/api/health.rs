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

pub async fn readyz(State(s): State<AppState>) -> Response {
    let check = async {
        let c = s.pool.get().await.ok()?;
        let row = c
            .query_one("SELECT coalesce(max(version), 0) FROM versions", &[])
            .await
            .ok()?;
        Some(row.get::<_, i64>(0))
    };
    match check.await {
        Some(v) if v > 0 => Json(serde_json::json!({"ready": true, "version": v})).into_response(),
        Some(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": "no version published yet"})),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": "database unavailable"})),
        )
            .into_response(),
    }
}

pub async fn metrics(State(s): State<AppState>) -> Response {
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
