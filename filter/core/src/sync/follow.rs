//! Following policy-sync as a glue does it, host-agnostic: the [`Agent`], the configuration a
//! filter that started without bundles completes from documents, staleness, key refreshes
//! asked by requests, decision-log sampling, and what each of the agent's events means (a log
//! line, a stat, a snapshot to put in force). The Wasm glue drives one per VM, the native glue
//! one per Envoy filter configuration; both only supply a [`SyncHost`] and a [`SyncStats`].

use std::sync::Arc;

use log::{debug, error, info, warn};

use crate::bundle::signed::BundleDocument;
use crate::config::FilterConfig;
use crate::decision::{Outcome, Verdict};
use crate::http::header_map::HeaderMap;
use crate::metrics;
use crate::snapshot::{Snapshot, Start};
use crate::sync::SyncSettings;
use crate::sync::agent::{Agent, Answer, Event, SyncHost};
use crate::sync::decision_log::{LogEntry, LogEvent};

/// Where the sync's stats go: the glue's counters and gauges.
pub trait SyncStats {
    /// Adds `n` to counter `metric` (a name from [`metrics`]); `label` is the failure cause of
    /// [`metrics::SYNC_FAILURES`].
    fn count(&self, metric: &'static str, label: Option<&str>, n: u64);
    /// Sets gauge `metric` ([`metrics::SYNC_BUNDLE_VERSION`] or
    /// [`metrics::SYNC_SECONDS_SINCE_SUCCESS`]) of `tenant`.
    fn gauge(&self, metric: &'static str, tenant: &str, value: u64);
}

/// The most issuers whose keys requests may ask to refresh between two ticks.
const MAX_REFRESHES: usize = 64;

/// How often the per-tenant "seconds since success" gauges are set.
const GAUGE_PERIOD_MS: u64 = 1000;

/// One sync: the agent and what the glue keeps around it.
#[derive(Debug)]
pub struct Follower {
    agent: Agent,
    /// The configuration of a filter that started without bundles, completed from documents
    /// until it can start.
    pending: Option<FilterConfig>,
    /// Whether requests are refused for staleness (refreshed every tick).
    stale: bool,
    /// Issuers whose keys a request found wanting, asked for at the next tick.
    refresh: Vec<String>,
    last_gauges_ms: u64,
}

impl Follower {
    /// The sync of a configuration with `sync`; `in_force` is the snapshot from inline
    /// bundles, if any. `None` when the host refuses shared data.
    pub fn new(
        settings: SyncSettings,
        cfg: &FilterConfig,
        in_force: Option<&Snapshot>,
        host: &dyn SyncHost,
        stats: &dyn SyncStats,
    ) -> Option<Self> {
        let version = |tenant: &str| {
            in_force.and_then(|s| s.policy_sets().get(tenant).map(|set| set.version()))
        };
        let agent = Agent::new(settings, host, version)?;
        for t in agent.tenants() {
            if let Some(v) = version(t) {
                stats.gauge(metrics::SYNC_BUNDLE_VERSION, t, v);
            }
        }
        Some(Self {
            agent,
            pending: in_force.is_none().then(|| cfg.clone()),
            stale: false,
            refresh: Vec::new(),
            last_gauges_ms: 0,
        })
    }

    /// The checked `sync` settings.
    #[must_use]
    pub fn settings(&self) -> &SyncSettings {
        self.agent.settings()
    }

    /// Whether requests are refused now (stale, `failClosed`).
    #[must_use]
    pub fn refusing(&self) -> bool {
        self.stale
    }

    /// A request's token named a key its issuer does not have: ask at the next tick.
    pub fn want_refresh(&mut self, issuer: &str) {
        if !self.refresh.iter().any(|i| i == issuer) && self.refresh.len() < MAX_REFRESHES {
            self.refresh.push(issuer.to_owned());
        }
    }

    /// Keeps a decision-log entry for policy-sync; `false` when the buffer is full (the entry
    /// is dropped and counted at the next tick).
    pub fn record(&mut self, entry: LogEntry) -> bool {
        self.agent.record(entry)
    }

    /// The periodic step: the agent's tick, key refreshes, staleness and the gauges; a
    /// snapshot to put in force, if a document made one.
    pub fn tick(
        &mut self,
        host: &dyn SyncHost,
        in_force: Option<&Arc<Snapshot>>,
        stats: &dyn SyncStats,
    ) -> Option<Arc<Snapshot>> {
        let mut events = self.agent.tick(host);
        for issuer in std::mem::take(&mut self.refresh) {
            events.extend(self.agent.refresh_keys(host, &issuer));
        }
        let next = self.handle(host, events, in_force, stats);
        self.stale = self.agent.refuse_stale(host);
        let now = host.now_ms();
        if now.saturating_sub(self.last_gauges_ms) >= GAUGE_PERIOD_MS {
            self.last_gauges_ms = now;
            for tenant in self.agent.tenants() {
                stats.gauge(
                    metrics::SYNC_SECONDS_SINCE_SUCCESS,
                    tenant,
                    self.agent.since_sync_ms(host, tenant) / 1000,
                );
            }
        }
        next
    }

    /// An answer to one of the sync's calls.
    pub fn on_answer(
        &mut self,
        host: &dyn SyncHost,
        token: u32,
        answer: Answer<'_>,
        in_force: Option<&Arc<Snapshot>>,
        stats: &dyn SyncStats,
    ) -> Option<Arc<Snapshot>> {
        let events = self.agent.on_answer(host, token, answer);
        self.handle(host, events, in_force, stats)
    }

    /// The sync stops: hand the lease over.
    pub fn stop(&mut self, host: &dyn SyncHost) {
        self.agent.stop(host);
    }

    fn handle(
        &mut self,
        host: &dyn SyncHost,
        events: Vec<Event>,
        in_force: Option<&Arc<Snapshot>>,
        stats: &dyn SyncStats,
    ) -> Option<Arc<Snapshot>> {
        let mut next: Option<Arc<Snapshot>> = None;
        for e in events {
            if let Event::Document(doc) = e {
                // A second document in the same step builds on the first.
                let current = next.as_ref().or(in_force);
                next = self.apply(host, &doc, current, stats).or(next);
            } else {
                report(e, stats);
            }
        }
        next
    }

    /// Compiles a document into the next snapshot (or the first one).
    fn apply(
        &mut self,
        host: &dyn SyncHost,
        doc: &BundleDocument,
        in_force: Option<&Arc<Snapshot>>,
        stats: &dyn SyncStats,
    ) -> Option<Arc<Snapshot>> {
        let started = host.now_ms();
        let done = |what: &str| {
            let ms = host.now_ms().saturating_sub(started);
            info!(
                "portcullis: {} version {} {what} (compiled in {ms} ms)",
                doc.tenant, doc.version
            );
        };
        let refused = |e: &dyn std::fmt::Display, what: &str| {
            error!(
                "portcullis: {} version {} {what}: {e}",
                doc.tenant, doc.version
            );
            stats.count(metrics::SYNC_FAILURES, Some("policies"), 1);
        };
        let compiled = self.agent.take_compiled(&doc.tenant, doc.version);
        if let Some(current) = in_force {
            return match current.with_document_compiled(doc, compiled) {
                Ok(next) => {
                    done("in force");
                    stats.count(metrics::SYNC_DOCUMENTS_APPLIED, None, 1);
                    stats.gauge(metrics::SYNC_BUNDLE_VERSION, &doc.tenant, doc.version);
                    Some(Arc::new(next))
                }
                Err(e) => {
                    refused(&e, "refused; the bundle in force stays");
                    None
                }
            };
        }
        let cfg = self.pending.as_mut()?;
        if let Err(e) = cfg.apply_document(doc) {
            refused(&e, "refused");
            return None;
        }
        stats.gauge(metrics::SYNC_BUNDLE_VERSION, &doc.tenant, doc.version);
        match Start::new(cfg) {
            Ok(Start::Ready(snapshot)) => {
                self.pending = None;
                done("in force: the filter now decides");
                stats.count(metrics::SYNC_DOCUMENTS_APPLIED, None, 1);
                Some(snapshot)
            }
            Ok(Start::Pending { bundles, issuers }) => {
                info!(
                    "portcullis: {} version {} received; still waiting for {}{}",
                    doc.tenant,
                    doc.version,
                    bundles.join(", "),
                    if issuers { " and the issuers" } else { "" }
                );
                None
            }
            Err(e) => {
                refused(&e, "cannot start the filter");
                None
            }
        }
    }
}

/// The log line and stat of an event other than a document.
fn report(e: Event, stats: &dyn SyncStats) {
    let count = |metric, n: u64| stats.count(metric, None, n);
    match e {
        Event::LeaseTaken { took_over } => {
            info!(
                "portcullis: this worker now polls policy-sync for the Envoy{}",
                if took_over {
                    " (the previous poller stopped renewing)"
                } else {
                    ""
                }
            );
            if took_over {
                count(metrics::SYNC_LEASE_TAKEOVERS, 1);
            }
        }
        Event::LeaseLost => info!("portcullis: another worker polls policy-sync now"),
        Event::Polling { tenant, after } => {
            debug!("portcullis: polling policy-sync for {tenant} after version {after}");
        }
        Event::Accepted { tenant, version } => {
            info!("portcullis: policy-sync version {version} for {tenant} verified");
            count(metrics::SYNC_SUCCESSES, 1);
        }
        Event::Unchanged { tenant } => {
            debug!("portcullis: nothing newer for {tenant}");
            count(metrics::SYNC_SUCCESSES, 1);
        }
        Event::Failed {
            tenant,
            failure,
            first,
        } => {
            stats.count(metrics::SYNC_FAILURES, Some(failure.cause()), 1);
            if first {
                warn!(
                    "portcullis: following policy-sync for {tenant} failed: {failure}; the bundle in force stays, retrying with backoff"
                );
            } else {
                debug!("portcullis: policy-sync for {tenant} still failing: {failure}");
            }
        }
        Event::Recovered { tenant, failures } => info!(
            "portcullis: policy-sync for {tenant} answers again after {failures} failed attempt(s)"
        ),
        // Handled by the caller.
        Event::Document(_) => {}
        Event::KeyRefresh { issuer } => {
            info!("portcullis: asked policy-sync to refresh the keys of {issuer:?}");
        }
        Event::KeyRefreshFailed { issuer, why } => {
            warn!("portcullis: key refresh for {issuer:?} failed: {why}");
        }
        Event::DecisionLog(LogEvent::Shipped(n)) => {
            count(
                metrics::DECISION_LOG_SHIPPED,
                u64::try_from(n).unwrap_or(u64::MAX),
            );
        }
        Event::DecisionLog(LogEvent::Dropped(n)) => {
            warn!(
                "portcullis: {n} decision-log entries dropped (buffer full or refused by policy-sync)"
            );
            count(
                metrics::DECISION_LOG_DROPPED,
                u64::try_from(n).unwrap_or(u64::MAX),
            );
        }
        Event::DecisionLog(LogEvent::Retrying { entries, why }) => {
            debug!("portcullis: {entries} decision-log entries not shipped ({why}); sending again");
        }
    }
}

/// xorshift64 over `state` (seeded non-zero): enough to spread retries and sample allows.
pub fn next_random(state: &std::cell::Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.set(x);
    x
}

/// The decision-log entry for a decision, if it is logged: every denial, and the configured
/// share of allows (`pick` draws a uniform random value, only for an allow). `cedar_target` maps the request's
/// method and path to the Cedar action and resource of the set that decided.
#[must_use]
pub fn decision_entry(
    settings: &SyncSettings,
    pick: impl FnOnce() -> u64,
    cedar_target: impl FnOnce(&str, &str) -> Option<(String, String)>,
    outcome: &Outcome,
    headers: &HeaderMap<'_>,
    (now_ms, status): (u64, u16),
) -> Option<LogEntry> {
    let share = settings.sample_allows;
    if outcome.verdict == Verdict::Allow {
        if share <= 0.0 {
            return None;
        }
        #[expect(clippy::cast_precision_loss, reason = "a share, not an exact count")]
        let pick = pick() as f64 / u64::MAX as f64;
        if pick >= share {
            return None;
        }
    }
    // Headers are read only for a request that is logged.
    let (method, path) = (
        headers.get(":method").unwrap_or_default(),
        headers.get(":path").unwrap_or_default(),
    );
    let (action, resource) =
        cedar_target(method, path).unwrap_or_else(|| (method.to_owned(), path.to_owned()));
    Some(LogEntry::new(
        outcome,
        (&action, &resource),
        headers.get("x-request-id"),
        headers.get("traceparent"),
        now_ms,
        status,
    ))
}
