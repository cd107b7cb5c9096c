//! `POST /v1/keys/refresh?iss=...`: a filter saw a token with an unknown `kid`. The issuer's
//! JWKS is fetched now (concurrent asks share one fetch; asks are rate-limited per issuer);
//! changed keys are published like any other change.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, FilterCaller};
use crate::jwks_fetch::{FetchError, RefreshOutcome};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshQuery {
    iss: String,
}

pub async fn refresh(
    State(s): State<AppState>,
    _caller: FilterCaller,
    query: Result<Query<RefreshQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    match s.fetcher.refresh(&q.iss).await {
        Ok(RefreshOutcome::Changed { keys }) => {
            s.wake_publisher.notify_one();
            Ok(Json(serde_json::json!({"changed": true, "keys": keys})).into_response())
        }
        Ok(RefreshOutcome::Unchanged { keys }) => {
            Ok(Json(serde_json::json!({"changed": false, "keys": keys})).into_response())
        }
        Ok(RefreshOutcome::RateLimited { retry_after }) => Err(ApiError::TooMany {
            retry_after,
            message: "this issuer's keys were refreshed moments ago".into(),
        }),
        Err(FetchError::UnknownIssuer(_)) => {
            Err(ApiError::NotFound(format!("issuer {:?} not found", q.iss)))
        }
        Err(FetchError::NotFetched(_)) => Err(ApiError::BadRequest(format!(
            "issuer {:?} has no jwksUri or discoveryUrl; its keys are uploaded",
            q.iss
        ))),
        Err(FetchError::Db(e)) => Err(e.into()),
        Err(e) => {
            // The issuer could not be reached or sent something unusable: the filter learns
            // that the refresh failed (the last good keys stay), not the internals.
            tracing::warn!(issuer = %q.iss, error = %e, "on-demand JWKS refresh failed");
            Err(ApiError::BadGateway)
        }
    }
}
