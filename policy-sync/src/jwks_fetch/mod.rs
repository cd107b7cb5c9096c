//! JWKS fetching: keeps the `origin = 'fetched'` keys of every issuer with a `jwks_uri` or an
//! OIDC discovery URL in step with what the issuer publishes.
//!
//! - Periodically ([`Fetcher::run`]): each issuer is fetched when its `next_fetch_at` is due.
//!   After a success the next fetch follows the response's `Cache-Control: max-age` (less
//!   `Age`), clamped to the issuer's `[min_refresh_s, max_refresh_s]`; without one (or with
//!   `no-store`) after `max_refresh_s`. After a failure it retries with a doubling backoff from
//!   `min_refresh_s`, capped at `max_refresh_s`.
//! - On demand ([`Fetcher::refresh`]), when a filter saw an unknown `kid`: concurrent callers
//!   for one issuer share one fetch and its result, and an issuer is fetched on demand at most
//!   once per [`FetchSettings::min_on_demand_interval`].
//!
//! Fetched keys are checked exactly as the filter checks them ([`Key`](portcullis_core::auth::jwks::Key),
//! [`KeySet`](portcullis_core::auth::jwks::KeySet)); a key the
//! filter would refuse (weak RSA, unknown type, ...) is never stored, and shared secrets
//! (`kty: "oct"`) are never taken from a fetched set. A set without one usable key counts as a
//! failed fetch. Stored keys keep only the members a filter reads (no private members, no
//! `x5c`). Keys are written in one transaction and only when something changed, so the
//! `keys` trigger announces real changes only and the publisher turns each into a version.
//!
//! When an issuer cannot be fetched its last good keys stay until its last success is older
//! than `max_staleness_s`; then its fetched keys are deleted (fail closed) and a warning is
//! logged. Keys uploaded by an administrator (`origin = 'uploaded'`) are never touched.
//!
//! The work is split by concern: `coalesce` serialises the fetches of each issuer (on demand
//! and periodic); `http` talks to the issuer; `vet` checks what it publishes; `schedule` says
//! when the next fetch is due; `store` writes keys and fetch state to Postgres; `error` is
//! [`FetchError`].

mod coalesce;
mod error;
mod http;
mod schedule;
mod store;
mod vet;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::metrics::Metrics;
use coalesce::Slot;
use schedule::{max_age, success_delay};
use vet::usable_keys;

pub use error::{FetchError, HttpFailure, InvalidResponse};
pub use vet::MAX_KEYS;

/// Tunables of the fetcher.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Limit per HTTP request (connect, headers and body); default 5 s.
    pub timeout: Duration,
    /// Least time between two on-demand fetches of one issuer; default 10 s.
    pub min_on_demand_interval: Duration,
    /// Largest discovery document or JWKS accepted, in bytes; default 1 MiB.
    pub max_body_bytes: usize,
    /// How often the periodic loop looks for due issuers; default 1 s.
    pub tick: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            min_on_demand_interval: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
            tick: Duration::from_secs(1),
        }
    }
}

/// What an on-demand refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The issuer's fetched keys changed; `keys` fetched keys are stored now.
    Changed { keys: usize },
    /// The issuer still publishes the stored keys.
    Unchanged { keys: usize },
    /// The issuer was fetched on demand too recently; ask again after `retry_after`.
    RateLimited { retry_after: Duration },
}

/// Fetches issuers' key sets into the `keys` table. Cheap to share behind an [`Arc`].
#[derive(Debug)]
pub struct Fetcher {
    pool: Pool,
    metrics: Metrics,
    http: reqwest::Client,
    settings: FetchSettings,
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

/// An issuer's fetch configuration.
#[derive(Debug)]
struct IssuerConfig {
    jwks_uri: Option<String>,
    discovery_url: Option<String>,
    min_refresh_s: u64,
    max_refresh_s: u64,
    max_staleness_s: u64,
}

impl Fetcher {
    /// A fetcher writing through `pool`, counting into `metrics`.
    pub fn new(pool: Pool, metrics: Metrics, settings: FetchSettings) -> Result<Self, FetchError> {
        let http = http::client(&settings)?;
        Ok(Self {
            pool,
            metrics,
            http,
            settings,
            slots: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Reads the issuer's configuration, fetches and checks its keys, and stores them.
    async fn fetch_and_store(&self, issuer: &str) -> Result<RefreshOutcome, FetchError> {
        let config = self.config(issuer).await?;
        let jwks_uri = match (&config.jwks_uri, &config.discovery_url) {
            (Some(uri), _) => uri.clone(),
            (None, Some(discovery)) => self.discover(issuer, discovery).await?,
            (None, None) => return Err(FetchError::NotFetched(issuer.to_owned())),
        };
        let (body, headers) = self
            .get(&jwks_uri, "application/jwk-set+json, application/json")
            .await?;
        let (keys, skipped) = usable_keys(&body)?;
        if !skipped.is_empty() {
            tracing::warn!(issuer, skipped = %skipped.join("; "), "JWKS keys not taken");
        }
        let delay = success_delay(max_age(&headers), &config);
        self.store(issuer, &keys, delay).await
    }
}
