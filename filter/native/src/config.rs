//! One filter configuration per Envoy filter config: the immutable snapshot every worker
//! shares (`Arc`, compiled once on Envoy's main thread), the stat ids, and each worker's own
//! engine (its caches) over that snapshot, kept in a thread-local.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use portcullis_core::auth::native_crypto::RingCrypto;
use portcullis_core::metrics;
use portcullis_core::{Engine, FilterConfig, Snapshot, Start};

use crate::host::{ConfigHandle, Stream};

/// Why a configuration was refused (logged; Envoy then rejects the filter configuration).
#[derive(Debug, thiserror::Error)]
pub enum ConfigRefused {
    #[error("{0}")]
    Config(#[from] portcullis_core::ConfigError),
    #[error(
        "the native module does not follow policy-sync yet: configure the bundle inline (`bundle`), or use the Wasm module for `sync`"
    )]
    Sync,
    #[error("Envoy refused to define stat {0}")]
    Stat(&'static str),
}

/// The counters a decision adds to (`effects::counts`) and those the glue adds itself.
const COUNTERS: [&str; 12] = [
    metrics::ALLOWED,
    metrics::DENIED,
    metrics::UNAUTHENTICATED,
    metrics::ERRORS,
    metrics::TOKEN_CACHE_HITS,
    metrics::TOKEN_CACHE_MISSES,
    metrics::DECISION_CACHE_HITS,
    metrics::DECISION_CACHE_MISSES,
    metrics::HOST_VERIFY_CONFIRMED,
    metrics::HOST_VERIFY_DECLINED,
    metrics::DRY_RUN_WOULD_DENY,
    metrics::SHADOW_DISAGREEMENTS,
];

/// Stat ids Envoy gave this configuration.
#[derive(Debug)]
pub struct Stats {
    counters: Vec<(&'static str, usize)>,
    /// `portcullis.denied_by_policy_total`, labelled `policy_id`.
    pub denied_by_policy: usize,
    pub decision_us: usize,
}

impl Stats {
    fn define(envoy: ConfigHandle) -> Result<Self, ConfigRefused> {
        let counter = |name: &'static str, labels: &[&str]| {
            envoy.counter(name, labels).ok_or(ConfigRefused::Stat(name))
        };
        let counters = COUNTERS
            .iter()
            .map(|&name| counter(name, &[]).map(|id| (name, id)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            counters,
            denied_by_policy: counter(metrics::DENIED_BY_POLICY, &["policy_id"])?,
            decision_us: envoy
                .histogram(metrics::DECISION_MICROSECONDS)
                .ok_or(ConfigRefused::Stat(metrics::DECISION_MICROSECONDS))?,
        })
    }

    /// The id of counter `name`, if this module defines it.
    pub fn counter(&self, name: &str) -> Option<usize> {
        self.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, id)| *id)
    }
}

/// What `on_http_filter_config_new` builds: shared by every worker, so `Send + Sync`.
#[derive(Debug)]
pub struct SharedConfig {
    snapshot: Arc<Snapshot>,
    pub stats: Stats,
    /// Tells this configuration's engines from those of configurations before it.
    serial: u64,
}

static SERIAL: AtomicU64 = AtomicU64::new(0);

/// A worker's engine for one configuration: the configuration's serial, the configuration
/// (to see that it is gone), the engine.
struct WorkerEngine {
    serial: u64,
    config: Weak<SharedConfig>,
    engine: Rc<Engine>,
}

thread_local! {
    /// This worker's engines, one per live configuration (a configuration that is gone is
    /// dropped the next time the worker looks one up).
    static ENGINES: RefCell<Vec<WorkerEngine>> = const { RefCell::new(Vec::new()) };
    /// Signature checks since the stream's counts were last handed to Envoy: (ring's, the core's).
    static SIGNATURES: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

impl SharedConfig {
    /// Compiles the filter configuration (JSON, the same as the Wasm module's).
    pub fn compile(json: &[u8], envoy: ConfigHandle) -> Result<Self, ConfigRefused> {
        let cfg = FilterConfig::from_json(json)?;
        let snapshot = match Start::new(&cfg)? {
            Start::Ready(snapshot) => snapshot,
            Start::Pending { .. } => return Err(ConfigRefused::Sync),
        };
        if cfg.sync_settings()?.is_some() {
            return Err(ConfigRefused::Sync);
        }
        Ok(Self {
            snapshot,
            stats: Stats::define(envoy)?,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        })
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// This worker's engine over the shared snapshot, made the first time the worker serves
    /// this configuration.
    pub fn engine(self: &Arc<Self>) -> Option<Rc<Engine>> {
        ENGINES.with(|engines| {
            let mut engines = engines.try_borrow_mut().ok()?;
            if let Some(mine) = engines.iter().find(|e| e.serial == self.serial) {
                return Some(mine.engine.clone());
            }
            engines.retain(|e| e.config.strong_count() > 0);
            let crypto = RingCrypto::new(Box::new(|ring| {
                SIGNATURES.with(|c| {
                    let (r, core) = c.get();
                    c.set(if ring { (r + 1, core) } else { (r, core + 1) });
                });
            }));
            let engine = Rc::new(Engine::new(self.snapshot.clone(), Some(Box::new(crypto))));
            engines.push(WorkerEngine {
                serial: self.serial,
                config: Arc::downgrade(self),
                engine: engine.clone(),
            });
            Some(engine)
        })
    }

    /// Hands the signature checks counted on this worker since the last call to Envoy.
    pub fn flush_signature_counts(&self, stream: Stream) {
        let (ring, core) = SIGNATURES.with(|c| c.replace((0, 0)));
        for (name, n) in [
            (metrics::HOST_VERIFY_CONFIRMED, ring),
            (metrics::HOST_VERIFY_DECLINED, core),
        ] {
            if n > 0
                && let Some(id) = self.stats.counter(name)
            {
                stream.count(id, None, n);
            }
        }
    }
}
