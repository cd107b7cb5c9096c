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
//! Fetched keys are checked exactly as the filter checks them ([`Key`], [`KeySet`]); a key the
//! filter would refuse (weak RSA, unknown type, ...) is never stored, and shared secrets
//! (`kty: "oct"`) are never taken from a fetched set. A set without one usable key counts as a
//! failed fetch. Stored keys keep only the members a filter reads (no private members, no
//! `x5c`). Keys are written in one transaction and only when something changed, so the
//! `keys` trigger announces real changes only and the publisher turns each into a version.
//!
//! When an issuer cannot be fetched its last good keys stay until its last success is older
//! than `max_staleness_s`; then its fetched keys are deleted (fail closed) and a warning is
//! logged. Keys uploaded by an administrator (`origin = 'uploaded'`) are never touched.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures_util::StreamExt as _;
use portcullis_core::auth::jwks::{JwkSetWire, JwkWire, Key, KeySet};
use reqwest::header::{ACCEPT, AGE, CACHE_CONTROL, HeaderMap};
use serde::Deserialize as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::db::{DbError, hex};
use crate::metrics::Metrics;

/// Most keys stored per issuer; a larger set is refused.
pub const MAX_KEYS: usize = 256;

/// Longest `kid` stored (the `keys.kid` column's limit).
const MAX_KID_CHARS: usize = 512;

/// Longest `last_error` text recorded.
const MAX_ERROR_CHARS: usize = 300;

/// Issuers fetched at the same time by one pass of the periodic loop.
const CONCURRENT_FETCHES: usize = 4;

/// First key of the two-key advisory lock that serialises key writes for one issuer (across
/// replicas); the second key is `hashtext(issuer)`.
const ISSUER_LOCK_SPACE: i32 = 0x6a77_6b73;

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

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No such issuer.
    #[error("unknown issuer {0:?}")]
    UnknownIssuer(String),
    /// The issuer has neither a `jwks_uri` nor a discovery URL (its keys are uploaded).
    #[error("issuer {0:?} has no jwks_uri or discovery URL; its keys are not fetched")]
    NotFetched(String),
    /// The request failed (connection, timeout, TLS, ...).
    #[error("HTTP request failed: {0}")]
    Http(String),
    /// The issuer answered with a status other than 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The response body exceeded [`FetchSettings::max_body_bytes`].
    #[error("response body exceeds the size limit")]
    TooLarge,
    /// The discovery document or the key set is not usable.
    #[error("invalid response: {0}")]
    Invalid(String),
    /// The discovery document names another issuer.
    #[error("discovery document names issuer {found:?}, not the configured one")]
    IssuerMismatch { found: String },
    /// Postgres failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<deadpool_postgres::PoolError> for FetchError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(e.into())
    }
}

impl From<tokio_postgres::Error> for FetchError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

impl FetchError {
    /// A copy for the callers that shared a coalesced fetch (Postgres errors become text).
    fn duplicate(&self) -> Self {
        match self {
            Self::UnknownIssuer(s) => Self::UnknownIssuer(s.clone()),
            Self::NotFetched(s) => Self::NotFetched(s.clone()),
            Self::Http(s) => Self::Http(s.clone()),
            Self::Status(s) => Self::Status(*s),
            Self::TooLarge => Self::TooLarge,
            Self::Invalid(s) => Self::Invalid(s.clone()),
            Self::IssuerMismatch { found } => Self::IssuerMismatch {
                found: found.clone(),
            },
            Self::Db(DbError::Url(s)) => Self::Db(DbError::Url(s.clone())),
            Self::Db(DbError::Pool(s)) => Self::Db(DbError::Pool(s.clone())),
            Self::Db(DbError::Connect(s)) => Self::Db(DbError::Connect(s.clone())),
            Self::Db(e) => Self::Db(DbError::Connect(e.to_string())),
        }
    }

    /// Whether the issuer itself (not its configuration or Postgres) failed: these are
    /// recorded in `issuer_fetch_state` and counted.
    fn is_fetch_failure(&self) -> bool {
        !matches!(self, Self::UnknownIssuer(_) | Self::NotFetched(_))
    }
}

/// The in-memory state of one issuer: serialises its fetches in this process, and keeps what
/// coalescing, rate limiting and the backoff need.
#[derive(Debug, Default)]
struct Slot {
    /// When the last on-demand fetch started.
    last_on_demand: Option<Instant>,
    /// When the last fetch (of either kind) ended, and its result.
    last: Option<(Instant, Result<RefreshOutcome, FetchError>)>,
    /// Failed fetches since the last success.
    failures: u32,
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

/// A fetched key that passed the filter's checks, as stored.
#[derive(Debug)]
struct UsableKey {
    kid: String,
    jwk: Value,
}

impl Fetcher {
    /// A fetcher writing through `pool`, counting into `metrics`.
    pub fn new(pool: Pool, metrics: Metrics, settings: FetchSettings) -> Result<Self, FetchError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!(
                "portcullis-policy-sync/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| {
                FetchError::Http(format!("cannot build the HTTP client: {}", chain(&e)))
            })?;
        Ok(Self {
            pool,
            metrics,
            http,
            settings,
            slots: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Refetches `issuer`'s key set now, because a filter saw an unknown `kid`.
    ///
    /// Coalesced: callers that arrive while a fetch of this issuer is under way (on demand or
    /// periodic) wait for it and get its result. Rate-limited: within
    /// [`FetchSettings::min_on_demand_interval`] of the previous on-demand fetch this returns
    /// [`RefreshOutcome::RateLimited`] without fetching.
    pub async fn refresh(&self, issuer: &str) -> Result<RefreshOutcome, FetchError> {
        let arrived = Instant::now();
        let slot = self.known_slot(issuer).await?;
        let mut slot = slot.lock().await;
        if let Some((ended, result)) = &slot.last
            && *ended >= arrived
        {
            return duplicate(result);
        }
        if let Some(started) = slot.last_on_demand {
            let since = started.elapsed();
            if since < self.settings.min_on_demand_interval {
                return Ok(RefreshOutcome::RateLimited {
                    retry_after: self.settings.min_on_demand_interval.saturating_sub(since),
                });
            }
        }
        slot.last_on_demand = Some(Instant::now());
        self.fetch_in_slot(issuer, &mut slot).await
    }

    /// The periodic loop: every [`FetchSettings::tick`], fetches the issuers that are due.
    /// Never returns; failures are logged and counted.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.tick.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.fetch_due().await {
                tracing::warn!(error = %e, "JWKS fetch pass failed");
            }
        }
    }

    /// One pass of the periodic loop: claims every issuer with a `jwks_uri` or discovery URL
    /// whose `next_fetch_at` is due (or unset) and fetches it. Returns how many issuers were
    /// fetched (successfully or not; failures are recorded per issuer, logged and counted).
    /// Also drops the fetched keys of issuers that are no longer fetched.
    ///
    /// Claiming moves `next_fetch_at` ahead first, so replicas sharing the database do not
    /// fetch the same issuer at once.
    pub async fn fetch_due(&self) -> Result<usize, FetchError> {
        let lease = self.settings.timeout.saturating_mul(2) + Duration::from_secs(10);
        let due: Vec<String> = {
            let client = self.pool.get().await?;
            self.drop_unfetched(&client).await?;
            client
                .query(
                    "INSERT INTO issuer_fetch_state (issuer, next_fetch_at)
                     SELECT i.issuer, now() + make_interval(secs => $1::float8)
                       FROM issuers i LEFT JOIN issuer_fetch_state s ON s.issuer = i.issuer
                      WHERE (i.jwks_uri IS NOT NULL OR i.discovery_url IS NOT NULL)
                        AND (s.next_fetch_at IS NULL OR s.next_fetch_at <= now())
                     ON CONFLICT (issuer) DO UPDATE SET next_fetch_at = EXCLUDED.next_fetch_at
                      WHERE issuer_fetch_state.next_fetch_at IS NULL
                         OR issuer_fetch_state.next_fetch_at <= now()
                     RETURNING issuer",
                    &[&lease.as_secs_f64()],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let n = due.len();
        futures_util::stream::iter(due)
            .map(|issuer| async move {
                let arrived = Instant::now();
                let slot = self.slot(&issuer);
                let mut slot = slot.lock().await;
                // A fetch that ended while this one waited has just done the work.
                if slot
                    .last
                    .as_ref()
                    .is_some_and(|(ended, _)| *ended >= arrived)
                {
                    return;
                }
                // Errors are logged, counted and recorded by `fetch_in_slot`.
                let _ = self.fetch_in_slot(&issuer, &mut slot).await;
            })
            .buffer_unordered(CONCURRENT_FETCHES)
            .collect::<Vec<()>>()
            .await;
        Ok(n)
    }

    /// The slot of `issuer`, created on first use.
    fn slot(&self, issuer: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(slots.entry(issuer.to_owned()).or_default())
    }

    /// The slot of `issuer` after checking that the issuer exists (so that requests naming
    /// random issuers do not grow the map).
    async fn known_slot(&self, issuer: &str) -> Result<Arc<tokio::sync::Mutex<Slot>>, FetchError> {
        if let Some(slot) = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(issuer)
        {
            return Ok(Arc::clone(slot));
        }
        if issuer.is_empty() || issuer.len() > 2048 {
            return Err(FetchError::UnknownIssuer(issuer.to_owned()));
        }
        let client = self.pool.get().await?;
        let found = client
            .query_opt("SELECT 1 FROM issuers WHERE issuer = $1", &[&issuer])
            .await?;
        if found.is_none() {
            return Err(FetchError::UnknownIssuer(issuer.to_owned()));
        }
        Ok(self.slot(issuer))
    }

    /// Fetches `issuer` while holding its slot, records the result there, in
    /// `issuer_fetch_state` and in the metrics.
    async fn fetch_in_slot(
        &self,
        issuer: &str,
        slot: &mut Slot,
    ) -> Result<RefreshOutcome, FetchError> {
        let result = self.fetch_and_store(issuer).await;
        match &result {
            Ok(outcome) => {
                slot.failures = 0;
                self.metrics.fetches.with_label_values(&[issuer]).inc();
                tracing::debug!(issuer, ?outcome, "JWKS fetched");
            }
            Err(e) if e.is_fetch_failure() => {
                slot.failures = slot.failures.saturating_add(1);
                self.metrics
                    .fetch_failures
                    .with_label_values(&[issuer])
                    .inc();
                tracing::warn!(issuer, error = %e, failures = slot.failures, "JWKS fetch failed");
                if let Err(db) = self.record_failure(issuer, e, slot.failures).await {
                    tracing::warn!(issuer, error = %db, "cannot record the JWKS fetch failure");
                }
            }
            Err(_) => {}
        }
        slot.last = Some((Instant::now(), duplicate(&result)));
        result
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

    async fn config(&self, issuer: &str) -> Result<IssuerConfig, FetchError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT jwks_uri, discovery_url, min_refresh_s, max_refresh_s, max_staleness_s
                   FROM issuers WHERE issuer = $1",
                &[&issuer],
            )
            .await?
            .ok_or_else(|| FetchError::UnknownIssuer(issuer.to_owned()))?;
        let secs = |i: usize| -> u64 { u64::try_from(row.get::<_, i32>(i)).unwrap_or(1).max(1) };
        Ok(IssuerConfig {
            jwks_uri: row.get(0),
            discovery_url: row.get(1),
            min_refresh_s: secs(2),
            max_refresh_s: secs(3),
            max_staleness_s: secs(4),
        })
    }

    /// The `jwks_uri` of an OIDC discovery document whose `issuer` is `issuer`.
    async fn discover(&self, issuer: &str, url: &str) -> Result<String, FetchError> {
        let (body, _) = self.get(url, "application/json").await?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|_| FetchError::Invalid("discovery document is not JSON".into()))?;
        let found = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| FetchError::Invalid("discovery document has no \"issuer\"".into()))?;
        if found != issuer {
            return Err(FetchError::IssuerMismatch {
                found: truncate(found, 200),
            });
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| FetchError::Invalid("discovery document has no \"jwks_uri\"".into()))?;
        if !(uri.starts_with("https://") || uri.starts_with("http://")) {
            return Err(FetchError::Invalid(
                "discovery document's jwks_uri is not an http(s) URL".into(),
            ));
        }
        Ok(uri.to_owned())
    }

    /// GETs `url`: a 2xx response's body (at most `max_body_bytes`) and headers.
    async fn get(&self, url: &str, accept: &str) -> Result<(Vec<u8>, HeaderMap), FetchError> {
        let mut response = self
            .http
            .get(url)
            .header(ACCEPT, accept)
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let max = self.settings.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
        {
            return Err(FetchError::TooLarge);
        }
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_error)? {
            if body.len().saturating_add(chunk.len()) > max {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, headers))
    }

    /// Writes `keys` as the issuer's fetched keys (only what changed) and records the success.
    async fn store(
        &self,
        issuer: &str,
        keys: &[UsableKey],
        next_fetch: Duration,
    ) -> Result<RefreshOutcome, FetchError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_issuer(&tx, issuer).await?;
        let existing: HashMap<String, (Value, String)> = tx
            .query(
                "SELECT kid, jwk, origin FROM keys WHERE issuer = $1",
                &[&issuer],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        let mut changed = false;
        let mut stored = 0usize;
        for key in keys {
            match existing.get(&key.kid) {
                Some((_, origin)) if origin != "fetched" => {
                    tracing::warn!(
                        issuer,
                        kid = %key.kid,
                        "fetched key has the kid of an uploaded key; the uploaded key stays"
                    );
                    continue;
                }
                Some((jwk, _)) if *jwk == key.jwk => {}
                Some(_) => {
                    tx.execute(
                        "UPDATE keys SET jwk = $3, added_at = now()
                          WHERE issuer = $1 AND kid = $2 AND origin = 'fetched'",
                        &[&issuer, &key.kid, &key.jwk],
                    )
                    .await?;
                    changed = true;
                }
                None => {
                    tx.execute(
                        "INSERT INTO keys (issuer, kid, jwk, origin) VALUES ($1, $2, $3, 'fetched')",
                        &[&issuer, &key.kid, &key.jwk],
                    )
                    .await?;
                    changed = true;
                }
            }
            stored += 1;
        }
        let gone: Vec<&String> = existing
            .iter()
            .filter(|(kid, (_, origin))| {
                origin == "fetched" && !keys.iter().any(|k| &k.kid == *kid)
            })
            .map(|(kid, _)| kid)
            .collect();
        if !gone.is_empty() {
            tx.execute(
                "DELETE FROM keys WHERE issuer = $1 AND origin = 'fetched' AND kid = ANY($2)",
                &[&issuer, &gone],
            )
            .await?;
            changed = true;
        }
        tx.execute(
            "INSERT INTO issuer_fetch_state
                    (issuer, last_attempt_at, last_success_at, last_error, next_fetch_at)
             VALUES ($1, now(), now(), NULL, now() + make_interval(secs => $2::float8))
             ON CONFLICT (issuer) DO UPDATE SET
                    last_attempt_at = EXCLUDED.last_attempt_at,
                    last_success_at = EXCLUDED.last_success_at,
                    last_error = NULL,
                    next_fetch_at = EXCLUDED.next_fetch_at",
            &[&issuer, &next_fetch.as_secs_f64()],
        )
        .await?;
        tx.commit().await?;
        if changed {
            tracing::info!(issuer, keys = stored, "fetched keys changed");
            Ok(RefreshOutcome::Changed { keys: stored })
        } else {
            Ok(RefreshOutcome::Unchanged { keys: stored })
        }
    }

    /// Records a failed fetch: `last_error`, the backoff, and, once the last success is older
    /// than `max_staleness_s`, drops the issuer's fetched keys.
    async fn record_failure(
        &self,
        issuer: &str,
        error: &FetchError,
        failures: u32,
    ) -> Result<(), FetchError> {
        let config = self.config(issuer).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_issuer(&tx, issuer).await?;
        let since_success: Option<f64> = tx
            .query_opt(
                "SELECT EXTRACT(EPOCH FROM (now() - last_success_at))::float8
                   FROM issuer_fetch_state WHERE issuer = $1",
                &[&issuer],
            )
            .await?
            .and_then(|r| r.get(0));
        let staleness = config.max_staleness_s as f64;
        let stale = since_success.is_none_or(|age| age >= staleness);
        if stale {
            // Checked first: a DELETE of nothing would still announce a change.
            let held: i64 = tx
                .query_one(
                    "SELECT count(*) FROM keys WHERE issuer = $1 AND origin = 'fetched'",
                    &[&issuer],
                )
                .await?
                .get(0);
            if held > 0 {
                let dropped = tx
                    .execute(
                        "DELETE FROM keys WHERE issuer = $1 AND origin = 'fetched'",
                        &[&issuer],
                    )
                    .await?;
                tracing::warn!(
                    issuer,
                    dropped,
                    max_staleness_s = config.max_staleness_s,
                    "issuer unreachable beyond its maximum staleness: its fetched keys are no \
                     longer trusted and were removed"
                );
            }
        }
        let mut delay = backoff(failures, &config);
        if let Some(age) = since_success
            && !stale
        {
            // Come back in time to drop the keys when they turn stale.
            delay = delay.min((staleness - age).ceil().max(1.0));
        }
        tx.execute(
            "INSERT INTO issuer_fetch_state (issuer, last_attempt_at, last_error, next_fetch_at)
             VALUES ($1, now(), $2, now() + make_interval(secs => $3::float8))
             ON CONFLICT (issuer) DO UPDATE SET
                    last_attempt_at = EXCLUDED.last_attempt_at,
                    last_error = EXCLUDED.last_error,
                    next_fetch_at = EXCLUDED.next_fetch_at",
            &[
                &issuer,
                &truncate(&error.to_string(), MAX_ERROR_CHARS),
                &delay,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the fetched keys of issuers that no longer have a `jwks_uri` or discovery URL
    /// (checked first, so that nothing is written when there are none).
    async fn drop_unfetched(&self, client: &deadpool_postgres::Client) -> Result<(), FetchError> {
        let any: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM keys k JOIN issuers i ON k.issuer = i.issuer
                  WHERE k.origin = 'fetched' AND i.jwks_uri IS NULL AND i.discovery_url IS NULL)",
                &[],
            )
            .await?
            .get(0);
        if any {
            let n = client
                .execute(
                    "DELETE FROM keys k USING issuers i
                      WHERE k.issuer = i.issuer AND k.origin = 'fetched'
                        AND i.jwks_uri IS NULL AND i.discovery_url IS NULL",
                    &[],
                )
                .await?;
            tracing::info!(
                keys = n,
                "dropped fetched keys of issuers no longer fetched"
            );
        }
        Ok(())
    }
}

/// A shared result, for the callers that coalesced onto a fetch.
fn duplicate(result: &Result<RefreshOutcome, FetchError>) -> Result<RefreshOutcome, FetchError> {
    match result {
        Ok(o) => Ok(o.clone()),
        Err(e) => Err(e.duplicate()),
    }
}

/// A request error as short text: what failed and why, without the URL (which may carry
/// credentials).
fn http_error(e: reqwest::Error) -> FetchError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "too many redirects"
    } else if e.is_body() || e.is_decode() {
        "cannot read the body"
    } else {
        "request failed"
    };
    FetchError::Http(truncate(
        &format!("{what}: {}", chain(&e.without_url())),
        MAX_ERROR_CHARS,
    ))
}

/// An error and its sources, joined by ": ".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// At most `max` characters of `s`.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", s.get(..at).unwrap_or_default()),
        None => s.to_owned(),
    }
}

/// The keys of a JWK Set body that the filter accepts (public signing keys), as stored, and a
/// note on each key that was not taken. Errors when none is usable.
fn usable_keys(body: &[u8]) -> Result<(Vec<UsableKey>, Vec<String>), FetchError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| FetchError::Invalid("the key set is not JSON".into()))?;
    let members = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| FetchError::Invalid("the key set has no \"keys\" array".into()))?;
    let mut keys: Vec<UsableKey> = Vec::new();
    let mut wires: Vec<JwkWire> = Vec::new();
    let mut skipped = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let wire = match JwkWire::deserialize(member) {
            Ok(w) => w,
            Err(_) => {
                skipped.push(format!("key #{i}: not a JWK"));
                continue;
            }
        };
        let name = wire.kid.clone().unwrap_or_else(|| format!("#{i}"));
        // Encryption keys are not for us (the filter skips them too).
        if wire.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        if wire.kty == "oct" {
            skipped.push(format!(
                "key {name:?}: shared secrets are never taken from a fetched key set"
            ));
            continue;
        }
        if let Err(e) = Key::try_from(&wire) {
            skipped.push(e.to_string());
            continue;
        }
        let jwk = stored_jwk(&wire);
        let kid = match &wire.kid {
            Some(kid) if kid.is_empty() || kid.chars().count() > MAX_KID_CHARS => {
                skipped.push(format!("key #{i}: kid is empty or too long"));
                continue;
            }
            Some(kid) => kid.clone(),
            None => stable_kid(&jwk),
        };
        if keys.iter().any(|k| k.kid == kid) {
            skipped.push(format!("key {:?}: duplicate kid", truncate(&kid, 64)));
            continue;
        }
        if keys.len() >= MAX_KEYS {
            return Err(FetchError::Invalid(format!(
                "the key set holds more than {MAX_KEYS} keys"
            )));
        }
        keys.push(UsableKey { kid, jwk });
        wires.push(wire);
    }
    if keys.is_empty() {
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!(": {}", skipped.join("; "))
        };
        return Err(FetchError::Invalid(truncate(
            &format!("no usable signing key{why}"),
            MAX_ERROR_CHARS,
        )));
    }
    // The whole set as the filter will build it.
    KeySet::try_from(&JwkSetWire { keys: wires })
        .map_err(|e| FetchError::Invalid(truncate(&e.to_string(), MAX_ERROR_CHARS)))?;
    Ok((keys, skipped))
}

/// The JWK as stored: only the members a filter reads, so that nothing else an issuer
/// publishes (private members by mistake, certificates) reaches the bundles.
fn stored_jwk(wire: &JwkWire) -> Value {
    let members = stored_members(wire);
    let map: serde_json::Map<String, Value> = members
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    Value::Object(map)
}

fn stored_members(wire: &JwkWire) -> BTreeMap<&'static str, &str> {
    let mut m = BTreeMap::new();
    m.insert("kty", wire.kty.as_str());
    for (name, value) in [
        ("kid", &wire.kid),
        ("alg", &wire.alg),
        ("use", &wire.use_),
        ("n", &wire.n),
        ("e", &wire.e),
        ("crv", &wire.crv),
        ("x", &wire.x),
        ("y", &wire.y),
    ] {
        if let Some(v) = value {
            m.insert(name, v.as_str());
        }
    }
    m
}

/// The id of a key without a `kid`: `sha256:` and the hex of the first 16 bytes of the
/// SHA-256 of its canonical JSON (members sorted, no white space).
fn stable_kid(jwk: &Value) -> String {
    let canonical: BTreeMap<&str, &Value> = jwk
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default();
    let text = serde_json::to_string(&canonical).unwrap_or_default();
    let digest = Sha256::digest(text.as_bytes());
    format!("sha256:{}", hex(digest.get(..16).unwrap_or_default()))
}

/// The freshness lifetime a response's `Cache-Control` grants, in seconds: `max-age` less
/// `Age`; 0 with `no-cache`; `None` with `no-store` or without `max-age`.
fn max_age(headers: &HeaderMap) -> Option<u64> {
    let mut max_age = None;
    let mut no_store = false;
    let mut no_cache = false;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-store") {
                no_store = true;
            } else if name.eq_ignore_ascii_case("no-cache") {
                no_cache = true;
            } else if name.eq_ignore_ascii_case("max-age")
                && let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok())
            {
                max_age = Some(secs);
            }
        }
    }
    if no_store {
        return None;
    }
    if no_cache {
        return Some(0);
    }
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    max_age.map(|m| m.saturating_sub(age))
}

/// Seconds until the next fetch after a success: the freshness lifetime (or `max_refresh_s`)
/// clamped to `[min_refresh_s, max_refresh_s]`, and never beyond `max_staleness_s`.
fn success_delay(max_age: Option<u64>, config: &IssuerConfig) -> Duration {
    let secs = max_age
        .unwrap_or(config.max_refresh_s)
        .max(config.min_refresh_s)
        .min(config.max_refresh_s)
        .min(config.max_staleness_s)
        .max(1);
    Duration::from_secs(secs)
}

/// Seconds until the retry after `failures` consecutive failures: `min_refresh_s` doubled per
/// further failure, capped at `max_refresh_s`.
fn backoff(failures: u32, config: &IssuerConfig) -> f64 {
    let doublings = failures.saturating_sub(1).min(40);
    let secs = config
        .min_refresh_s
        .saturating_mul(1u64 << doublings)
        .min(config.max_refresh_s)
        .max(1);
    secs as f64
}

/// Serialises writes of one issuer's keys and fetch state (across replicas) until `tx` ends.
async fn lock_issuer(
    tx: &deadpool_postgres::Transaction<'_>,
    issuer: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&ISSUER_LOCK_SPACE, &issuer],
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn config(min: u64, max: u64, staleness: u64) -> IssuerConfig {
        IssuerConfig {
            jwks_uri: None,
            discovery_url: None,
            min_refresh_s: min,
            max_refresh_s: max,
            max_staleness_s: staleness,
        }
    }

    fn headers(pairs: &[(reqwest::header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(n.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cache_control() {
        assert_eq!(max_age(&headers(&[])), None);
        assert_eq!(
            max_age(&headers(&[(CACHE_CONTROL, "public, max-age=300")])),
            Some(300)
        );
        assert_eq!(
            max_age(&headers(&[(CACHE_CONTROL, "Max-Age=\"30\"")])),
            Some(30)
        );
        assert_eq!(
            max_age(&headers(&[(CACHE_CONTROL, "max-age=300"), (AGE, "100")])),
            Some(200)
        );
        assert_eq!(
            max_age(&headers(&[(CACHE_CONTROL, "max-age=300, no-store")])),
            None
        );
        assert_eq!(max_age(&headers(&[(CACHE_CONTROL, "no-cache")])), Some(0));
        assert_eq!(max_age(&headers(&[(CACHE_CONTROL, "max-age=abc")])), None);
    }

    #[test]
    fn delays() {
        let c = config(10, 100, 1000);
        assert_eq!(success_delay(None, &c), Duration::from_secs(100));
        assert_eq!(success_delay(Some(5), &c), Duration::from_secs(10));
        assert_eq!(success_delay(Some(50), &c), Duration::from_secs(50));
        assert_eq!(success_delay(Some(5000), &c), Duration::from_secs(100));
        assert_eq!(
            success_delay(None, &config(10, 100, 30)),
            Duration::from_secs(30)
        );
        assert_eq!(backoff(1, &c), 10.0);
        assert_eq!(backoff(2, &c), 20.0);
        assert_eq!(backoff(4, &c), 80.0);
        assert_eq!(backoff(5, &c), 100.0);
        assert_eq!(backoff(u32::MAX, &c), 100.0);
    }

    #[test]
    fn keys_without_kid_get_a_stable_id() {
        let body = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","extra":"ignored"}]}"#;
        let (keys, skipped) = usable_keys(body).map_err(|e| e.to_string()).unwrap();
        assert!(skipped.is_empty());
        let kid = &keys.first().unwrap().kid;
        assert!(kid.starts_with("sha256:") && kid.len() == 7 + 32, "{kid}");
        let (again, _) = usable_keys(body).map_err(|e| e.to_string()).unwrap();
        assert_eq!(&again.first().unwrap().kid, kid);
        assert!(keys.first().unwrap().jwk.get("extra").is_none());
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 2), "hi");
    }
}
