//! Following policy-sync, on Envoy: its shared data, clock and HTTP calls as the core's
//! [`SyncHost`], and the agent's events turned into log lines, stats and snapshot swaps.
//! Documents are compiled on the root context's tick, never on the request path.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use portcullis_core::metrics;
use portcullis_core::sync::agent::{Answer, Call, SyncHost};
use portcullis_core::sync::follow::{self, Follower, SyncStats, decision_entry};
use portcullis_core::sync::lease::SharedStore;
use portcullis_core::sync::{SyncFailure, SyncSettings};
use portcullis_core::{Engine, FilterConfig, HeaderMap, Outcome, Snapshot};
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
        follow::next_random(&self.rng)
    }

    fn dispatch(&self, call: &Call) -> Result<u32, String> {
        let headers = call.header_pairs(":authority");
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
    counters: Vec<(&'static str, u32)>,
    failures: Vec<(&'static str, u32)>,
    /// Per tenant: the version in force, and seconds since policy-sync last answered.
    versions: Vec<(String, u32, u32)>,
}

impl SyncMetrics {
    fn define(tenants: &[String]) -> Self {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
        let gauge = |name: &str| hostcalls::define_metric(MetricType::Gauge, name).unwrap_or(0);
        Self {
            counters: metrics::SYNC_COUNTERS
                .into_iter()
                .map(|name| (name, counter(name)))
                .collect(),
            failures: SyncFailure::CAUSES
                .iter()
                .map(|c| (*c, counter(&metrics::sync_failures(c))))
                .collect(),
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
}

impl SyncStats for SyncMetrics {
    fn count(&self, metric: &'static str, label: Option<&str>, n: u64) {
        let id = if metric == metrics::SYNC_FAILURES {
            self.failures
                .iter()
                .find(|(c, _)| Some(*c) == label)
                .map(|(_, id)| *id)
        } else {
            self.counters
                .iter()
                .find(|(name, _)| *name == metric)
                .map(|(_, id)| *id)
        };
        if let Some(id) = id {
            Metrics::add(id, n);
        }
    }

    fn gauge(&self, metric: &'static str, tenant: &str, value: u64) {
        let Some((_, version, since)) = self.versions.iter().find(|(t, _, _)| t == tenant) else {
            return;
        };
        let id = if metric == metrics::SYNC_BUNDLE_VERSION {
            *version
        } else {
            *since
        };
        let _ = hostcalls::record_metric(id, value);
    }
}

/// A root context's sync: the core's follower, with Envoy as its host.
#[derive(Debug)]
pub struct Sync {
    follower: Follower,
    host: EnvoyHost,
    metrics: SyncMetrics,
    /// Issuers whose keys a request found wanting (requests see the sync shared, not mutable).
    refresh: std::cell::RefCell<Vec<String>>,
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
        let follower = Follower::new(settings, cfg, snapshot.as_deref(), &host, &metrics)?;
        Some(Self {
            follower,
            host,
            metrics,
            refresh: std::cell::RefCell::default(),
        })
    }

    /// Whether requests are refused now (stale, `failClosed`).
    pub fn refusing(&self) -> bool {
        self.follower.refusing()
    }

    /// Counts a request refused for staleness or for want of a first document.
    pub fn count_refused(&self) {
        self.metrics.count(metrics::SYNC_REFUSED_REQUESTS, None, 1);
    }

    /// Keeps a decision for policy-sync: every denial, and the configured share of allows.
    pub fn log_decision(
        &mut self,
        engine: &Engine,
        outcome: &Outcome,
        headers: &HeaderMap<'_>,
        status: u16,
    ) {
        let entry = decision_entry(
            self.follower.settings(),
            || self.host.random(),
            |method, path| engine.cedar_target(&outcome.policy_set, method, path),
            outcome,
            headers,
            (self.host.now_ms(), status),
        );
        // A full buffer drops the entry and counts it (reported at the next tick).
        if let Some(entry) = entry {
            let _ = self.follower.record(entry);
        }
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
        for issuer in self.refresh.take() {
            self.follower.want_refresh(&issuer);
        }
        let in_force = engine.map(|e| e.snapshot());
        let next = self
            .follower
            .tick(&self.host, in_force.as_ref(), &self.metrics);
        put_in_force(next, engine, make)
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
        let in_force = engine.map(|e| e.snapshot());
        let next = self.follower.on_answer(
            &self.host,
            token,
            Answer {
                status,
                body: &body,
            },
            in_force.as_ref(),
            &self.metrics,
        );
        put_in_force(next, engine, make)
    }

    /// The VM stops: hand the lease over.
    pub fn stop(&mut self) {
        self.follower.stop(&self.host);
    }
}

/// A snapshot the follower made, put in force: swapped into this worker's engine (whose
/// caches know it is new), or the worker's first engine.
fn put_in_force(
    next: Option<Arc<Snapshot>>,
    engine: Option<&Rc<Engine>>,
    make: &dyn Fn(Arc<Snapshot>) -> Engine,
) -> Option<Change> {
    let next = next?;
    match engine {
        Some(engine) => {
            engine.swap(next);
            None
        }
        None => Some(Change::Engine(Rc::new(make(next)))),
    }
}
