//! Following policy-sync natively: the core's [`Follower`] for one filter configuration,
//! driven on Envoy's main thread. A thread of the module's own only keeps time: every
//! [`SYNC_TICK`] it asks Envoy (through the configuration's scheduler, the one callback the ABI
//! allows from any thread) to run `on_http_filter_config_scheduled` on the main thread, where
//! the follower ticks and polls policy-sync through Envoy's own cluster
//! (`http_filter_config_http_callout`, answered in `on_http_filter_config_http_callout_done`).
//! A verified document is compiled there once, for the whole process, and published to every
//! worker ([`SharedConfig::publish`]). Workers hand decision-log entries and key-refresh
//! requests over through small queues.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_core::sync::SyncSettings;
use portcullis_core::sync::accept::MAX_DOCUMENT_BYTES;
use portcullis_core::sync::agent::{Answer, Call, SyncHost};
use portcullis_core::sync::decision_log::LogEntry;
use portcullis_core::sync::follow::{Follower, decision_entry, next_random};
use portcullis_core::sync::lease::{MemoryStore, SharedStore};
use portcullis_core::{Engine, FilterConfig, HeaderMap, Outcome, Snapshot};

use crate::abi::{self, EnvoyBuffer, EnvoyHeader};
use crate::config::{ConfigRefused, SharedConfig};
use crate::host::{ConfigHandle, Scheduler};
use crate::stats::{MainThreadStats, Stats};

/// How often the follower ticks (polls start, retries fall due, staleness is judged).
pub const SYNC_TICK: Duration = Duration::from_millis(50);

/// How often the workers' decision-log entries go to the follower (as often as it ships).
const DECISION_LOG_HANDOFF_MS: u64 = 1000;

/// The most key refreshes requests may ask for between two ticks.
const MAX_REFRESHES: usize = 64;

/// The follower's host: Envoy's clock-free main thread, with its cluster for calls and an
/// in-process store for the agent's lease (one follower per process holds it at once).
struct MainHost {
    envoy: ConfigHandle,
    cluster: String,
    store: MemoryStore,
    rng: Cell<u64>,
}

impl SharedStore for MainHost {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        self.store.set(key, value, cas)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SyncHost for MainHost {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn random(&self) -> u64 {
        next_random(&self.rng)
    }

    fn dispatch(&self, call: &Call) -> Result<u32, String> {
        let headers = call.header_pairs("host");
        let timeout = u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX);
        let id = self
            .envoy
            .callout(
                &self.cluster,
                &headers,
                call.body.as_deref().unwrap_or_default(),
                timeout,
            )
            .map_err(|code| match code {
                2 => format!("Envoy has no cluster {:?}", self.cluster),
                other => format!("Envoy refused the call (callout result {other})"),
            })?;
        log::debug!(
            "portcullis: call {id} to {:?}: {} {}",
            self.cluster,
            call.method,
            call.path
        );
        u32::try_from(id).map_err(|_| format!("callout id {id} out of range"))
    }
}

/// What only the main thread touches.
struct Main {
    follower: Follower,
    host: MainHost,
    /// When decision-log entries were last handed to the follower.
    handed_ms: u64,
}

// SAFETY: `Main` holds Envoy's configuration pointer, which only Envoy's main thread uses
// (the scheduled and callout hooks and `config_new` lock `main`; workers never do). The mutex
// around it is for Rust's sake: `SharedConfig` is shared with the workers.
#[expect(
    unsafe_code,
    reason = "Envoy's configuration pointer, used on its main thread only"
)]
unsafe impl Send for Main {}

/// The thread that keeps time; stopped and joined when the configuration goes.
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    scheduler: Option<Arc<Scheduler>>,
}

impl Ticker {
    fn start(scheduler: Scheduler) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let scheduler = Arc::new(scheduler);
        let (stopping, commits) = (stop.clone(), scheduler.clone());
        let thread = std::thread::Builder::new()
            .name("portcullis-sync".into())
            .spawn(move || {
                let (flag, wake) = &*stopping;
                let mut stopped = flag.lock().unwrap_or_else(PoisonError::into_inner);
                while !*stopped {
                    let (guard, timeout) = wake
                        .wait_timeout(stopped, SYNC_TICK)
                        .unwrap_or_else(PoisonError::into_inner);
                    stopped = guard;
                    if timeout.timed_out() && !*stopped {
                        commits.commit(0);
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            scheduler: Some(scheduler),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The thread has stopped: nothing commits any more.
        if let Some(scheduler) = self.scheduler.take().and_then(|s| Arc::try_unwrap(s).ok()) {
            scheduler.delete();
        }
    }
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticker")
    }
}

/// An answer waiting for the follower.
struct Queued {
    token: u32,
    status: Option<u16>,
    body: Vec<u8>,
}

/// One configuration's sync.
pub struct Sync {
    main: Mutex<Main>,
    settings: SyncSettings,
    /// Whether requests are refused (stale, `failClosed`), as of the last tick.
    refusing: AtomicBool,
    /// Decision-log entries from the workers, recorded at the next tick.
    entries: Mutex<Vec<LogEntry>>,
    /// Issuers whose keys a request found wanting.
    refresh: Mutex<Vec<String>>,
    /// Answers to the follower's calls, taken in order on the main thread.
    answers: Mutex<Vec<Queued>>,
    /// Last, so that it stops before the rest goes.
    _ticker: Ticker,
}

impl std::fmt::Debug for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sync")
            .field("cluster", &self.settings.cluster)
            .field("tenants", &self.settings.tenants)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// A worker's random state, for sampling allows into the decision log.
    static RNG: Cell<u64> = Cell::new(now_ms() | 1);
}

impl Sync {
    /// Starts following policy-sync for a configuration (`in_force`: its inline bundles'
    /// snapshot, if any). Called in `config_new`, on the main thread.
    pub fn start(
        settings: SyncSettings,
        cfg: &FilterConfig,
        in_force: Option<&Snapshot>,
        envoy: ConfigHandle,
        stats: &Stats,
    ) -> Result<Self, ConfigRefused> {
        let host = MainHost {
            envoy,
            cluster: settings.cluster.clone(),
            store: MemoryStore::default(),
            rng: Cell::new(now_ms() | 1),
        };
        let main_stats = MainThreadStats { envoy, stats };
        let follower = Follower::new(settings.clone(), cfg, in_force, &host, &main_stats)
            .ok_or(ConfigRefused::Store)?;
        let scheduler = envoy.scheduler().ok_or(ConfigRefused::Scheduler)?;
        let ticker = Ticker::start(scheduler)?;
        log::info!(
            "portcullis: following policy-sync through cluster {:?} for {} (native: one poller for the process)",
            settings.cluster,
            settings.tenants.join(", ")
        );
        Ok(Self {
            main: Mutex::new(Main {
                follower,
                host,
                handed_ms: 0,
            }),
            settings,
            refusing: AtomicBool::new(false),
            entries: Mutex::new(Vec::new()),
            refresh: Mutex::new(Vec::new()),
            answers: Mutex::new(Vec::new()),
            _ticker: ticker,
        })
    }

    /// Whether requests are refused now (stale, `failClosed`).
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// A request's token named a key its issuer does not have.
    pub fn want_refresh(&self, issuer: &str) {
        let mut r = self.refresh.lock().unwrap_or_else(PoisonError::into_inner);
        if !r.iter().any(|i| i == issuer) && r.len() < MAX_REFRESHES {
            r.push(issuer.to_owned());
        }
    }

    /// Queues a decision for policy-sync (every denial, the configured share of allows);
    /// `false` when it was to be logged but the queue is full (the caller counts the drop).
    pub fn log_decision(
        &self,
        engine: &Engine,
        outcome: &Outcome,
        headers: &HeaderMap<'_>,
        status: u16,
    ) -> bool {
        let entry = decision_entry(
            &self.settings,
            || RNG.with(next_random),
            |method, path| engine.cedar_target(&outcome.policy_set, method, path),
            outcome,
            headers,
            (now_ms(), status),
        );
        let Some(entry) = entry else {
            return true;
        };
        let mut queue = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= self.settings.queue {
            return false;
        }
        queue.push(entry);
        true
    }

    /// The periodic step, on the main thread (`on_http_filter_config_scheduled`).
    pub fn on_tick(&self, config: &SharedConfig) {
        let mut main = self.main.lock().unwrap_or_else(PoisonError::into_inner);
        let Main {
            follower,
            host,
            handed_ms,
        } = &mut *main;
        let wanted =
            std::mem::take(&mut *self.refresh.lock().unwrap_or_else(PoisonError::into_inner));
        for issuer in wanted {
            follower.want_refresh(&issuer);
        }
        // The agent writes its whole buffer on every tick it is handed entries (the Wasm
        // build's shared-data slot), so entries are handed over once a period, not per tick:
        // under a stream of denials, per-tick hand-overs kept Envoy's main thread busy enough
        // to delay the calls to policy-sync past their timeouts.
        let now = now_ms();
        if now.saturating_sub(*handed_ms) >= DECISION_LOG_HANDOFF_MS {
            *handed_ms = now;
            let entries =
                std::mem::take(&mut *self.entries.lock().unwrap_or_else(PoisonError::into_inner));
            for entry in entries {
                // A full buffer drops the entry; the agent counts it.
                let _ = follower.record(entry);
            }
        }
        let stats = MainThreadStats {
            envoy: host.envoy,
            stats: &config.stats,
        };
        if let Some(next) = follower.tick(host, config.current().as_ref(), &stats) {
            config.publish(next);
        }
        self.drain(follower, host, config);
    }

    /// Hands the follower the answers queued for it (Envoy may answer a call from inside the
    /// call that started it, while the follower is busy), and every answer that comes in
    /// meanwhile.
    fn drain(&self, follower: &mut Follower, host: &MainHost, config: &SharedConfig) {
        let stats = MainThreadStats {
            envoy: host.envoy,
            stats: &config.stats,
        };
        loop {
            let answers =
                std::mem::take(&mut *self.answers.lock().unwrap_or_else(PoisonError::into_inner));
            if answers.is_empty() {
                break;
            }
            for a in answers {
                let answer = Answer {
                    status: a.status,
                    body: &a.body,
                };
                if let Some(next) =
                    follower.on_answer(host, a.token, answer, config.current().as_ref(), &stats)
                {
                    config.publish(next);
                }
            }
        }
        self.refusing.store(follower.refusing(), Ordering::Relaxed);
    }

    /// An answer to one of the follower's calls, on the main thread
    /// (`on_http_filter_config_http_callout_done`).
    pub fn on_answer(
        &self,
        config: &SharedConfig,
        callout: u64,
        result: u32,
        headers: &[EnvoyHeader],
        body: &[EnvoyBuffer],
    ) {
        let Ok(token) = u32::try_from(callout) else {
            return;
        };
        log::debug!("portcullis: call {callout} answered (result {result})");
        #[expect(unsafe_code, reason = "reading the answer's headers Envoy handed over")]
        // SAFETY: Envoy filled these entries for this hook.
        let headers = HeaderMap::from_pairs(headers.iter().map(|h| unsafe { h.parts() }));
        let status = (result == abi::CALLOUT_SUCCESS)
            .then(|| headers.get(":status")?.parse::<u16>().ok())
            .flatten();
        // One byte past the limit is enough for the core to refuse the answer as too large.
        let mut bytes = Vec::new();
        for chunk in body {
            #[expect(unsafe_code, reason = "reading the answer's body Envoy handed over")]
            // SAFETY: Envoy filled these buffers for this hook.
            let chunk = unsafe { chunk.bytes() };
            let room = (MAX_DOCUMENT_BYTES + 1).saturating_sub(bytes.len());
            bytes.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        }
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Queued {
                token,
                status,
                body: bytes,
            });
        // Busy means this answer came from inside one of the follower's own calls: the
        // follower takes it as soon as that call returns.
        let mut main = match self.main.try_lock() {
            Ok(main) => main,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let Main { follower, host, .. } = &mut *main;
        self.drain(follower, host, config);
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        let main = self.main.get_mut().unwrap_or_else(PoisonError::into_inner);
        main.follower.stop(&main.host);
    }
}
