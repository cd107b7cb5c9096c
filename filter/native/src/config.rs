//! One filter configuration per Envoy filter config: the snapshot in force, which every
//! worker shares (`Arc`, compiled on Envoy's main thread, replaced whole when policy-sync
//! brings a new version), the stat ids, the sync, and each worker's own engine (its caches)
//! over the snapshot, kept in a thread-local.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use portcullis_core::auth::native_crypto::RingCrypto;
use portcullis_core::metrics::Counter;
use portcullis_core::{Engine, FilterConfig, Snapshot, Start};

use crate::host::{ConfigHandle, Stream};
use crate::stats::{StatRefused, Stats};
use crate::sync::Sync;

/// Why a configuration was refused (logged; Envoy then rejects the filter configuration).
#[derive(Debug, thiserror::Error)]
pub enum ConfigRefused {
    #[error("{0}")]
    Config(#[from] portcullis_core::ConfigError),
    #[error("{0}")]
    Stat(#[from] StatRefused),
    #[error("Envoy refused the scheduler that following policy-sync needs")]
    Scheduler,
    #[error("the sync could not take its place in the process's store")]
    Store,
    #[error("the sync's timer thread could not start: {0}")]
    Thread(#[from] std::io::Error),
}

/// Why a worker has no engine for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEngine {
    /// No snapshot yet: the configuration waits for policy-sync's first document.
    Pending,
    /// The worker's engines are in use (a re-entrant call; never expected).
    Busy,
}

/// What `on_http_filter_config_new` builds: shared by every worker, so `Send + Sync`.
#[derive(Debug)]
pub struct SharedConfig {
    /// The snapshot in force (`None` until the first document when following policy-sync).
    current: RwLock<Option<Arc<Snapshot>>>,
    /// Bumped whenever `current` is replaced; workers compare it with their engine's.
    generation: AtomicU64,
    pub stats: Stats,
    /// Following policy-sync, with `sync` in the configuration.
    pub sync: Option<Sync>,
    /// Tells this configuration's engines from those of configurations before it.
    serial: u64,
}

static SERIAL: AtomicU64 = AtomicU64::new(0);

/// A worker's engine for one configuration.
struct WorkerEngine {
    serial: u64,
    /// The configuration, to see that it is gone.
    config: Weak<SharedConfig>,
    engine: Rc<Engine>,
    /// The configuration's generation the engine's snapshot is of.
    generation: u64,
}

thread_local! {
    /// This worker's engines, one per live configuration (a configuration that is gone is
    /// dropped the next time the worker makes one).
    static ENGINES: RefCell<Vec<WorkerEngine>> = const { RefCell::new(Vec::new()) };
    /// Signature checks since the stream's counts were last handed to Envoy: (ring's, the core's).
    static SIGNATURES: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A worker's engine over `snapshot`, with ring's signature checks.
fn engine_over(snapshot: Arc<Snapshot>) -> Rc<Engine> {
    let crypto = RingCrypto::new(Box::new(|ring| {
        SIGNATURES.with(|c| {
            let (r, core) = c.get();
            c.set(if ring { (r + 1, core) } else { (r, core + 1) });
        });
    }));
    Rc::new(Engine::new(snapshot, Some(Box::new(crypto))))
}

impl SharedConfig {
    /// Compiles the filter configuration (JSON, the same as the Wasm module's); with `sync`,
    /// starts following policy-sync.
    pub fn compile(json: &[u8], envoy: ConfigHandle) -> Result<Self, ConfigRefused> {
        let cfg = FilterConfig::from_json(json)?;
        let (start, settings) = Start::with_sync_settings(&cfg)?;
        let snapshot = match start {
            Start::Ready(snapshot) => Some(snapshot),
            Start::Pending { bundles, issuers } => {
                log::info!(
                    "portcullis: waiting for policy-sync to bring {}{}; answering 503 until then",
                    bundles.join(", "),
                    if issuers { " and the issuers" } else { "" }
                );
                None
            }
        };
        let stats = Stats::define(envoy, settings.is_some())?;
        let sync = settings
            .map(|settings| Sync::start(settings, &cfg, snapshot.as_deref(), envoy, &stats))
            .transpose()?;
        Ok(Self {
            current: RwLock::new(snapshot),
            generation: AtomicU64::new(0),
            stats,
            sync,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The snapshot in force.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `next` in force for every worker (each swaps it into its engine at its next
    /// request).
    pub fn publish(&self, next: Arc<Snapshot>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(next);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// This worker's engine over the snapshot in force: made the first time the worker serves
    /// this configuration, given the newer snapshot when one was published since.
    pub fn engine(self: &Arc<Self>) -> Result<Rc<Engine>, NoEngine> {
        let generation = self.generation.load(Ordering::Acquire);
        ENGINES.with(|engines| {
            let mut engines = engines.try_borrow_mut().map_err(|_| NoEngine::Busy)?;
            if let Some(mine) = engines.iter_mut().find(|e| e.serial == self.serial) {
                if mine.generation != generation {
                    if let Some(snapshot) = self.current() {
                        mine.engine.swap(snapshot);
                    }
                    mine.generation = generation;
                }
                return Ok(mine.engine.clone());
            }
            let snapshot = self.current().ok_or(NoEngine::Pending)?;
            engines.retain(|e| e.config.strong_count() > 0);
            let engine = engine_over(snapshot);
            engines.push(WorkerEngine {
                serial: self.serial,
                config: Arc::downgrade(self),
                engine: engine.clone(),
                generation,
            });
            Ok(engine)
        })
    }

    /// Hands the signature checks counted on this worker since the last call to Envoy.
    pub fn flush_signature_counts(&self, stream: Stream) {
        let (ring, core) = SIGNATURES.with(|c| c.replace((0, 0)));
        for (counter, n) in [
            (Counter::HostVerifyConfirmed, ring),
            (Counter::HostVerifyDeclined, core),
        ] {
            if n > 0
                && let Some(id) = self.stats.counters.get(counter)
            {
                stream.count(id, None, n);
            }
        }
    }
}
