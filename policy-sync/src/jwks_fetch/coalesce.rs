//! The two ways a fetch starts, on demand ([`Fetcher::refresh`]) and periodic
//! ([`Fetcher::run`]), serialised per issuer through its [`Slot`]: concurrent callers share one
//! fetch and its result, and on-demand fetches are rate-limited.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use super::error::{FetchError, duplicate};
use super::{Fetcher, RefreshOutcome};

/// Issuers fetched at the same time by one pass of the periodic loop.
const CONCURRENT_FETCHES: usize = 4;

/// The in-memory state of one issuer: serialises its fetches in this process, and keeps what
/// coalescing, rate limiting and the backoff need.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// When the last on-demand fetch started.
    last_on_demand: Option<Instant>,
    /// When the last fetch (of either kind) ended, and its result.
    last: Option<(Instant, Result<RefreshOutcome, FetchError>)>,
    /// Failed fetches since the last success.
    failures: u32,
}

impl Fetcher {
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
        let due = self.claim_due(lease).await?;
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
}
