//! The HTTP API (axum): bundles for filters (long-poll), decision-log ingest, on-demand key
//! refresh, the admin API, health and metrics. [`app`] builds the router for `serve` and for
//! the tests alike.

mod admin;
mod auth;
mod bundles;
mod decisions;
mod health;
mod keys;
mod parking;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use deadpool_postgres::Pool;
use serde::Serialize;
use tokio::sync::Notify;
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

use crate::db::DbError;
use crate::diagnostics::Problem;
use crate::hub::Hub;
use crate::jwks_fetch::Fetcher;
use crate::metrics::Metrics;
use crate::signing::Signer;
use crate::store::StoreError;

pub use auth::{AdminCaller, FilterCaller};
pub use decisions::{Batch, check_batch};
pub use parking::Parking;

/// Limits and timings of the API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Longest long-poll wait; `?wait=` asks for less.
    pub max_wait: Duration,
    /// Largest request body the admin API takes.
    pub max_admin_body: usize,
    /// Largest decision-log batch body, and most entries in one batch.
    pub max_decision_body: usize,
    pub max_decision_batch: usize,
    /// Decision logs older than this are neither accepted nor kept.
    pub decision_retention_days: i32,
    /// Most long-polls waiting at once, in all and per token ([`Parking`]).
    pub max_waiters: usize,
    pub max_waiters_per_token: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(30),
            max_admin_body: 4 << 20,
            max_decision_body: 1 << 20,
            max_decision_batch: 1000,
            decision_retention_days: 7,
            max_waiters: 20_000,
            max_waiters_per_token: 10_000,
        }
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The primary: every write, and reads that must be current.
    pub pool: Pool,
    /// An optional read replica for bundle reads (falls back to the primary when it lags).
    pub read_pool: Option<Pool>,
    pub signer: Arc<Signer>,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    /// Wakes the publisher (a write through the API publishes at once, without waiting for
    /// the NOTIFY round trip).
    pub wake_publisher: Arc<Notify>,
    pub fetcher: Arc<Fetcher>,
    pub settings: ApiSettings,
    /// The parked long-polls, bounded by `settings`.
    pub parking: Arc<Parking>,
}

impl AppState {
    /// One publishing attempt ([`crate::publish::attempt`]: its metrics and log lines), a new
    /// version recorded here; `None` when nothing could be published.
    pub async fn publish(&self, reason: &str) -> Option<crate::publish::Published> {
        let published =
            crate::publish::attempt(&self.pool, &self.signer, &self.metrics, reason).await?;
        self.record(&published);
        Some(published)
    }

    /// Records a publishing result: counts a new version and wakes its waiters here at once
    /// (other replicas learn of it through NOTIFY).
    pub fn record(&self, published: &crate::publish::Published) {
        if let crate::publish::Published::New { version, tenants } = published {
            self.metrics.published.inc();
            for t in tenants {
                self.hub.announce(t, *version);
            }
            self.metrics.latest_version.set(self.hub.latest());
        }
    }
}

/// Health and metrics alone (`serve --metrics-listen`): a port that Prometheus and probes can
/// reach where the API's port is only for filters and admins (in Istio, a port left out of
/// strict mutual TLS).
pub fn operations(state: AppState) -> Router {
    health_routes()
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(CompressionLayer::new().gzip(true))
        .with_state(state)
}

/// `/healthz`, `/readyz` and `/metrics`, the same on the API's port and the operations port.
fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
}

/// The whole API.
pub fn app(state: AppState) -> Router {
    let admin = Router::new()
        .route("/tenants", get(admin::list_tenants))
        .route(
            "/tenants/{tenant}",
            put(admin::put_tenant).delete(admin::delete_tenant),
        )
        .route(
            "/tenants/{tenant}/policies",
            get(admin::list_policies).post(admin::put_policies),
        )
        .route(
            "/tenants/{tenant}/policies/{id}",
            get(admin::get_policy)
                .put(admin::put_policy)
                .delete(admin::delete_policy),
        )
        .route(
            "/tenants/{tenant}/schema",
            get(admin::get_schema)
                .put(admin::put_schema)
                .delete(admin::delete_schema),
        )
        .route(
            "/tenants/{tenant}/entities",
            get(admin::list_entities)
                .post(admin::put_entities)
                .delete(admin::delete_entity),
        )
        .route(
            "/issuers",
            get(admin::list_issuers)
                .post(admin::put_issuer)
                .delete(admin::delete_issuer),
        )
        .route(
            "/keys",
            get(admin::list_keys)
                .post(admin::add_key)
                .delete(admin::delete_key),
        )
        .route("/versions", get(admin::list_versions))
        .route("/rollback", post(admin::rollback))
        .route("/validate", post(admin::validate))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.settings.max_admin_body,
        ));
    Router::new()
        .route("/v1/bundles/{tenant}", get(bundles::get_bundle))
        .route(
            "/v1/decisions",
            post(decisions::ingest).layer(axum::extract::DefaultBodyLimit::max(
                state.settings.max_decision_body,
            )),
        )
        .route("/v1/keys/refresh", post(keys::refresh))
        .nest("/v1/admin", admin)
        .merge(health_routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(CompressionLayer::new().gzip(true))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|r: &axum::http::Request<axum::body::Body>| {
                    crate::telemetry::request_span(r)
                })
                .on_response(|r: &Response, _: Duration, span: &tracing::Span| {
                    span.record("http.response.status_code", r.status().as_u16());
                })
                // Errors are logged where they happen (ApiError), with their cause.
                .on_failure(()),
        )
        .with_state(state)
}

/// An error answer. Internal errors are logged here and reach the client only as
/// "internal error" / "database unavailable".
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    Forbidden,
    NotFound(String),
    Invalid(Vec<Problem>),
    TooMany {
        retry_after: Duration,
        message: String,
    },
    Unavailable,
    /// The service is at a limit it keeps (parked long-polls, database connections, statement
    /// time): 503 with `Retry-After`, so that the client comes back rather than piles up.
    Overloaded(&'static str),
    /// An upstream (an issuer's JWKS endpoint) failed.
    BadGateway,
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "<[Problem]>::is_empty")]
    problems: &'a [Problem],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, problems): (StatusCode, String, Vec<Problem>) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m, vec![]),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required".into(),
                vec![],
            ),
            Self::Forbidden => (
                StatusCode::FORBIDDEN,
                "this token may not do that".into(),
                vec![],
            ),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m, vec![]),
            Self::Invalid(p) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "the change is invalid; nothing was changed".into(),
                p,
            ),
            Self::TooMany {
                retry_after,
                message,
            } => return retry_later(StatusCode::TOO_MANY_REQUESTS, &message, retry_after),
            Self::Unavailable => {
                return retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable",
                    RETRY_AFTER,
                );
            }
            Self::Overloaded(message) => {
                return retry_later(StatusCode::SERVICE_UNAVAILABLE, message, RETRY_AFTER);
            }
            Self::BadGateway => (
                StatusCode::BAD_GATEWAY,
                "the issuer's keys could not be fetched; the last good keys stay".into(),
                vec![],
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".into(),
                vec![],
            ),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: &message,
                problems: &problems,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// What an unavailable or overloaded service asks a client to wait before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A refusal the client should retry after `retry_after`.
fn retry_later(status: StatusCode, message: &str, retry_after: Duration) -> Response {
    let mut r = (
        status,
        Json(ErrorBody {
            error: message,
            problems: &[],
        }),
    )
        .into_response();
    if let Ok(v) = retry_after.as_secs().max(1).to_string().parse() {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::PoolBusy => {
                tracing::warn!("every database connection is busy; answering 503");
                Self::Overloaded("the database is busy")
            }
            DbError::Query(ref q)
                if q.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
            {
                tracing::warn!(error = %e, "a statement ran past the statement timeout");
                Self::Overloaded("the database is busy")
            }
            DbError::Connect(_) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::Unavailable
            }
            DbError::Query(ref q) if q.is_closed() || q.as_db_error().is_none() => {
                tracing::warn!(error = %e, "database unavailable");
                Self::Unavailable
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Self::Internal
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(p) => Self::Invalid(p),
            StoreError::BadInput(m) => Self::BadRequest(m),
            StoreError::NotFound(m) => Self::NotFound(format!("{m} not found")),
            StoreError::Db(e) => e.into(),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::from(e).into()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Query(e).into()
    }
}

/// JSON bodies whose rejection is a clear 400 (not axum's plain-text default).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::BadRequest("the request body is too large".into())
                }
                _ => ApiError::BadRequest(rejection.body_text()),
            }),
        }
    }
}
