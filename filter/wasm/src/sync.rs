//! Following policy-sync, on Envoy: its shared data, clock and HTTP calls as the core's
//! [`SyncHost`], and the agent's events turned into log lines, stats and snapshot swaps.
//! Documents are compiled on the root context's tick, never on the request path.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use log::{debug, error, info, warn};
use portcullis_core::bundle::signed::BundleDocument;
use portcullis_core::metrics;
use portcullis_core::sync::agent::{Agent, Answer, Call, Event, SyncHost};
use portcullis_core::sync::decision_log::{LogEntry, LogEvent};
use portcullis_core::sync::lease::SharedStore;
use portcullis_core::sync::{SyncFailure, SyncSettings};
use portcullis_core::{Engine, FilterConfig, HeaderMap, Outcome, Snapshot, Start, Verdict};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, MetricType, Status};

use crate::Metrics;

/// How often every VM looks for a newer document (and the holder for polls to start): the
/// most a worker lags behind the holder.
pub const SYNC_TICK: Duration = Duration::from_millis(50);

/// Envoy's shared data, clock and HTTP calls.
#[derive(Debug)]
pub struct EnvoyHost {
    cluster: String,
    rng: Cell<u64>,
}

impl EnvoyHost {
    fn new(cluster: String) -> Self {
        // Jitter only needs VMs to differ: seeded from the clock's nanoseconds.
        let seed = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0x9e37_79b9_7f4a_7c15, |d| {
                u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(1)
            });
        Self {
            cluster,
            rng: Cell::new(seed | 1),
        }
    }
}

impl SharedStore for EnvoyHost {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), cas)) => Some((bytes, cas.unwrap_or(0))),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        hostcalls::set_shared_data(key, Some(value), (cas != 0).then_some(cas)).is_ok()
    }
}

impl SyncHost for EnvoyHost {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn random(&self) -> u64 {
        // xorshift64: enough to spread retries.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    fn dispatch(&self, call: &Call) -> Result<u32, String> {
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", call.method),
            (":path", &call.path),
            (":authority", &call.authority),
        ];
        headers.extend(call.headers.iter().map(|(k, v)| (*k, v.as_str())));
        hostcalls::dispatch_http_call(
            &self.cluster,
            headers,
            call.body.as_deref(),
            Vec::new(),
            call.timeout,
        )
        .map_err(|s| match s {
            Status::BadArgument => format!("Envoy has no cluster {:?}", self.cluster),
            other => format!("Envoy refused the call ({other:?})"),
        })
    }
}

/// The sync's stats (`wasmcustom.portcullis.sync.*`).
#[derive(Debug, Default)]
struct SyncMetrics {
    successes: u32,
    failures: Vec<(&'static str, u32)>,
    takeovers: u32,
    refused: u32,
    applied: u32,
    shipped: u32,
    dropped: u32,
    /// Per tenant: the version in force, and seconds since policy-sync last answered.
    versions: Vec<(String, u32, u32)>,
}

impl SyncMetrics {
    fn define(tenants: &[String]) -> Self {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
        let gauge = |name: &str| hostcalls::define_metric(MetricType::Gauge, name).unwrap_or(0);
        Self {
            successes: counter(metrics::SYNC_SUCCESSES),
            failures: SyncFailure::CAUSES
                .iter()
                .map(|c| (*c, counter(&metrics::sync_failures(c))))
                .collect(),
            takeovers: counter(metrics::SYNC_LEASE_TAKEOVERS),
            refused: counter(metrics::SYNC_REFUSED_REQUESTS),
            applied: counter(metrics::SYNC_DOCUMENTS_APPLIED),
            shipped: counter(metrics::DECISION_LOG_SHIPPED),
            dropped: counter(metrics::DECISION_LOG_DROPPED),
            versions: tenants
                .iter()
                .map(|t| {
                    (
                        t.clone(),
                        gauge(&metrics::sync_bundle_version(t)),
                        gauge(&metrics::sync_seconds_since_success(t)),
                    )
                })
                .collect(),
        }
    }

    fn failure(&self, cause: &str) {
        if let Some((_, id)) = self.failures.iter().find(|(c, _)| *c == cause) {
            Metrics::add(*id, 1);
        }
    }

    fn version(&self, tenant: &str, version: u64) {
        if let Some((_, id, _)) = self.versions.iter().find(|(t, _, _)| t == tenant) {
            let _ = hostcalls::record_metric(*id, version);
        }
    }
}

/// A root context's sync: the agent, Envoy as its host, and the configuration a filter that
/// started without bundles completes from documents.
#[derive(Debug)]
pub struct Sync {
    agent: Agent,
    host: EnvoyHost,
    metrics: SyncMetrics,
    pending: Option<FilterConfig>,
    /// Whether requests are refused for staleness (refreshed every tick).
    stale: Cell<bool>,
    /// Issuers whose keys a request found wanting, asked for at the next tick.
    refresh: std::cell::RefCell<Vec<String>>,
    last_gauges_ms: u64,
}

/// What a tick or an answer changed for the root context.
pub enum Change {
    /// A snapshot to put in force (the first, when the filter started without one).
    Engine(Rc<Engine>),
}

impl Sync {
    /// The sync of a configuration with `sync`; `engine` is the one in force from inline
    /// bundles, if any. `None` when Envoy refuses shared data.
    pub fn new(
        settings: SyncSettings,
        cfg: &FilterConfig,
        engine: Option<&Engine>,
    ) -> Option<Self> {
        let host = EnvoyHost::new(settings.cluster.clone());
        let metrics = SyncMetrics::define(&settings.tenants);
        let snapshot = engine.map(Engine::snapshot);
        let agent = Agent::new(settings, &host, |tenant| {
            snapshot
                .as_ref()
                .and_then(|s| s.policy_sets().get(tenant).map(|set| set.version()))
        })?;
        for t in agent.tenants() {
            if let Some(v) = snapshot
                .as_ref()
                .and_then(|s| s.policy_sets().get(t).map(|set| set.version()))
            {
                metrics.version(t, v);
            }
        }
        Some(Self {
            agent,
            host,
            metrics,
            pending: engine.is_none().then(|| cfg.clone()),
            stale: Cell::new(false),
            refresh: std::cell::RefCell::default(),
            last_gauges_ms: 0,
        })
    }

    /// Whether requests are refused now (stale, `failClosed`).
    pub fn refusing(&self) -> bool {
        self.stale.get()
    }

    /// Counts a request refused for staleness or for want of a first document.
    pub fn count_refused(&self) {
        Metrics::add(self.metrics.refused, 1);
    }

    /// Keeps a decision for policy-sync: every denial, and the configured share of allows.
    pub fn log_decision(
        &mut self,
        engine: &Engine,
        outcome: &Outcome,
        headers: &HeaderMap<'_>,
        status: u16,
    ) {
        let share = self.agent.settings().sample_allows;
        if outcome.verdict == Verdict::Allow {
            if share <= 0.0 {
                return;
            }
            #[expect(clippy::cast_precision_loss, reason = "a share, not an exact count")]
            let pick = self.host.random() as f64 / u64::MAX as f64;
            if pick >= share {
                return;
            }
        }
        // Headers are read only for a request that is logged.
        let (method, path) = (
            headers.get(":method").unwrap_or_default(),
            headers.get(":path").unwrap_or_default(),
        );
        let (action, resource) = engine
            .cedar_target(&outcome.policy_set, method, path)
            .unwrap_or_else(|| (method.to_owned(), path.to_owned()));
        let entry = LogEntry::new(
            outcome,
            (&action, &resource),
            headers.get("x-request-id"),
            headers.get("traceparent"),
            self.host.now_ms(),
            status,
        );
        // A full buffer drops the entry and counts it (reported at the next tick).
        let _ = self.agent.record(entry);
    }

    /// A request's token named a key its issuer does not have.
    pub fn want_refresh(&self, issuer: &str) {
        if let Ok(mut r) = self.refresh.try_borrow_mut()
            && !r.iter().any(|i| i == issuer)
            && r.len() < 64
        {
            r.push(issuer.to_owned());
        }
    }

    /// The periodic step.
    pub fn tick(
        &mut self,
        engine: Option<&Rc<Engine>>,
        make: &dyn Fn(Arc<Snapshot>) -> Engine,
    ) -> Option<Change> {
        let mut events = self.agent.tick(&self.host);
        let wanted = self.refresh.take();
        for issuer in wanted {
            events.extend(self.agent.refresh_keys(&self.host, &issuer));
        }
        let change = self.handle(events, engine, make);
        self.stale.set(self.agent.refuse_stale(&self.host));
        let now = self.host.now_ms();
        if now.saturating_sub(self.last_gauges_ms) >= 1000 {
            self.last_gauges_ms = now;
            for (tenant, _, since) in &self.metrics.versions {
                let _ = hostcalls::record_metric(
                    *since,
                    self.agent.since_sync_ms(&self.host, tenant) / 1000,
                );
            }
        }
        change
    }

    /// An answer to one of the root context's calls.
    pub fn on_answer(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        engine: Option<&Rc<Engine>>,
        make: &dyn Fn(Arc<Snapshot>) -> Engine,
    ) -> Option<Change> {
        let status = if num_headers == 0 {
            None
        } else {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
        };
        // One byte past the limit is enough for the core to refuse the answer as too large.
        let limit = body_size.min(portcullis_core::sync::accept::MAX_DOCUMENT_BYTES + 1);
        let body = if limit == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(
                proxy_wasm::types::BufferType::HttpCallResponseBody,
                0,
                limit,
            )
            .ok()
            .flatten()
            .unwrap_or_default()
        };
        let events = self.agent.on_answer(
            &self.host,
            token,
            Answer {
                status,
                body: &body,
            },
        );
        self.handle(events, engine, make)
    }

    fn handle(
        &mut self,
        events: Vec<Event>,
        engine: Option<&Rc<Engine>>,
        make: &dyn Fn(Arc<Snapshot>) -> Engine,
    ) -> Option<Change> {
        let mut change = None;
        for e in events {
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
                        Metrics::add(self.metrics.takeovers, 1);
                    }
                }
                Event::LeaseLost => info!("portcullis: another worker polls policy-sync now"),
                Event::Polling { tenant, after } => {
                    debug!("portcullis: polling policy-sync for {tenant} after version {after}")
                }
                Event::Accepted { tenant, version } => {
                    info!("portcullis: policy-sync version {version} for {tenant} verified");
                    Metrics::add(self.metrics.successes, 1);
                }
                Event::Unchanged { tenant } => {
                    debug!("portcullis: nothing newer for {tenant}");
                    Metrics::add(self.metrics.successes, 1);
                }
                Event::Failed {
                    tenant,
                    failure,
                    first,
                } => {
                    self.metrics.failure(failure.cause());
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
                Event::Document(doc) => {
                    change = self.apply(&doc, engine, make).or(change);
                }
                Event::KeyRefresh { issuer } => {
                    info!("portcullis: asked policy-sync to refresh the keys of {issuer:?}")
                }
                Event::KeyRefreshFailed { issuer, why } => {
                    warn!("portcullis: key refresh for {issuer:?} failed: {why}");
                }
                Event::DecisionLog(LogEvent::Shipped(n)) => {
                    Metrics::add(self.metrics.shipped, u64::try_from(n).unwrap_or(u64::MAX));
                }
                Event::DecisionLog(LogEvent::Dropped(n)) => {
                    warn!(
                        "portcullis: {n} decision-log entries dropped (buffer full or refused by policy-sync)"
                    );
                    Metrics::add(self.metrics.dropped, u64::try_from(n).unwrap_or(u64::MAX));
                }
                Event::DecisionLog(LogEvent::Retrying { entries, why }) => {
                    debug!(
                        "portcullis: {entries} decision-log entries not shipped ({why}); sending again"
                    );
                }
            }
        }
        change
    }

    /// Compiles a document into this worker's snapshot (or its first one).
    fn apply(
        &mut self,
        doc: &BundleDocument,
        engine: Option<&Rc<Engine>>,
        make: &dyn Fn(Arc<Snapshot>) -> Engine,
    ) -> Option<Change> {
        let started = self.host.now_ms();
        let done = |what: &str| {
            let ms = self.host.now_ms().saturating_sub(started);
            info!(
                "portcullis: {} version {} {what} (compiled in {ms} ms)",
                doc.tenant, doc.version
            );
        };
        let compiled = self.agent.take_compiled(&doc.tenant, doc.version);
        if let Some(engine) = engine {
            match engine.snapshot().with_document_compiled(doc, compiled) {
                Ok(next) => {
                    engine.swap(Arc::new(next));
                    done("in force");
                    Metrics::add(self.metrics.applied, 1);
                    self.metrics.version(&doc.tenant, doc.version);
                }
                Err(e) => {
                    error!(
                        "portcullis: {} version {} refused: {e}; the bundle in force stays",
                        doc.tenant, doc.version
                    );
                    self.metrics.failure("policies");
                }
            }
            return None;
        }
        let cfg = self.pending.as_mut()?;
        if let Err(e) = cfg.apply_document(doc) {
            error!(
                "portcullis: {} version {} refused: {e}",
                doc.tenant, doc.version
            );
            self.metrics.failure("policies");
            return None;
        }
        self.metrics.version(&doc.tenant, doc.version);
        match Start::new(cfg) {
            Ok(Start::Ready(snapshot)) => {
                self.pending = None;
                done("in force: the filter now decides");
                Metrics::add(self.metrics.applied, 1);
                Some(Change::Engine(Rc::new(make(snapshot))))
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
                error!(
                    "portcullis: {} version {} cannot start the filter: {e}",
                    doc.tenant, doc.version
                );
                self.metrics.failure("policies");
                None
            }
        }
    }

    /// The VM stops: hand the lease over.
    pub fn stop(&self) {
        self.agent.stop(&self.host);
    }
}
