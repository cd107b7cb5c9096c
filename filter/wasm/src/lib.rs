//! Proxy-wasm glue: Envoy ⇄ `portcullis-core`.
//!
//! The root context compiles the plugin configuration into an immutable [`Snapshot`] and keeps
//! the worker's [`Engine`] over it (the snapshot in force plus the worker's caches); each
//! HTTP context asks the engine for a decision on the request headers and either lets the
//! request continue or sends the local reply. No policy or token logic lives here.
//!
//! The callbacks the glue leaves to the SDK's defaults are listed in `callbacks.rs`; the build
//! removes them from the module's exports.

mod host_crypto;
mod sync;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{error, info, warn};
use portcullis_core::effects::{self, HeaderEdit};
use portcullis_core::metrics::{self, Counter, CounterIds};
use portcullis_core::{
    AuthError, Engine, FilterConfig, HeaderMap, RequestView, Snapshot, Start, Verdict,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

#[cfg(feature = "lol-alloc")]
#[global_allocator]
#[expect(
    unsafe_code,
    reason = "a proxy-wasm VM runs on one thread, the promise AssumeSingleThreaded needs"
)]
static ALLOCATOR: lol_alloc::AssumeSingleThreaded<lol_alloc::FreeListAllocator> =
    unsafe { lol_alloc::AssumeSingleThreaded::new(lol_alloc::FreeListAllocator::new()) };

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    engine: Option<Rc<Engine>>,
    metrics: Metrics,
    by_policy: Rc<PolicyCounters>,
    /// Following policy-sync, when the configuration says `sync`.
    sync: Option<Rc<RefCell<sync::Sync>>>,
    /// When counts last went to Envoy (the tick is faster than the flush when syncing).
    flushed: Option<SystemTime>,
}

impl Root {
    /// A worker's engine over `snapshot`, with Envoy's signature checks.
    fn engine_over(metrics: Metrics, snapshot: Arc<Snapshot>) -> Engine {
        let crypto = host_crypto::EnvoyCrypto::new(
            metrics.id(Counter::HostVerifyConfirmed),
            metrics.id(Counter::HostVerifyDeclined),
            metrics.host_verify_ns,
        );
        Engine::new(snapshot, Some(Box::new(crypto)))
    }

    /// The follower (if any) hands over the lease and what it holds of the decision log.
    fn stop_following(&self) {
        if let Some(mut sync) = self.sync.as_ref().and_then(|s| s.try_borrow_mut().ok()) {
            sync.stop();
        }
    }

    fn apply(&mut self, change: Option<sync::Change>) {
        if let Some(sync::Change::Engine(engine)) = change {
            self.engine = Some(engine);
        }
    }
}

/// Counters, visible in Envoy as `wasmcustom.portcullis.*` (names in
/// `portcullis_core::metrics`, listed in docs/deployment.md).
#[derive(Debug, Default, Clone, Copy)]
struct Metrics {
    counters: CounterIds<u32>,
    eval_us: u32,
    host_verify_ns: u32,
}

impl Metrics {
    fn define() -> Self {
        let define = |kind, name| hostcalls::define_metric(kind, name).unwrap_or(0);
        Self {
            // A counter Envoy refuses keeps id 0, which counts nothing.
            counters: CounterIds::define(|c| define(MetricType::Counter, c.name())),
            eval_us: define(MetricType::Histogram, metrics::DECISION_MICROSECONDS),
            host_verify_ns: define(MetricType::Histogram, metrics::HOST_VERIFY_NANOSECONDS),
        }
    }

    /// The id Envoy gave `counter` (0, which counts nothing, for one it refused).
    fn id(&self, counter: Counter) -> u32 {
        self.counters.get(counter).unwrap_or(0)
    }

    /// Counts `n` for counter `id`; Envoy sees it at the next flush (within a second).
    fn add(id: u32, n: u64) {
        if id == 0 || n == 0 {
            return;
        }
        PENDING.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                match p.iter_mut().find(|(i, _)| *i == id) {
                    Some((_, count)) => *count = count.saturating_add(n),
                    None => p.push((id, n)),
                }
            }
        });
    }

    /// Hands the counts gathered since the last flush to the host.
    fn flush() {
        let counts = PENDING.with(|p| p.try_borrow_mut().map(|mut p| std::mem::take(&mut *p)));
        for (id, n) in counts.unwrap_or_default() {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// How often counts reach Envoy. Each `increment_metric` is a host call (four or more per
/// request; its cost inside V8 is in docs/performance.md); adding them up in the filter and handing them over once a
/// second (the root context's tick) takes those calls off the request path.
const METRICS_FLUSH: Duration = Duration::from_secs(1);

/// `Retry-After` of the 503 sent while there is no bundle the filter may decide with.
const RETRY_AFTER: &str = "5";

thread_local! {
    /// Counter id → count not yet handed to the host (a proxy-wasm VM runs on one thread).
    static PENDING: std::cell::RefCell<Vec<(u32, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `portcullis.denied_by_policy_total.<policy id>` counters, defined the first time a policy
/// denies (at most one per policy of the bundles in force).
#[derive(Debug, Default)]
struct PolicyCounters(std::cell::RefCell<std::collections::HashMap<String, u32>>);

impl PolicyCounters {
    fn denied_by(&self, policy: &str) {
        let Ok(mut ids) = self.0.try_borrow_mut() else {
            return;
        };
        let id = match ids.get(policy) {
            Some(id) => *id,
            None => {
                let id = hostcalls::define_metric(
                    MetricType::Counter,
                    &metrics::denied_by_policy(policy),
                )
                .unwrap_or(0);
                ids.insert(policy.to_owned(), id);
                id
            }
        };
        Metrics::add(id, 1);
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(sync) = self.sync.clone() else {
            return;
        };
        let metrics = self.metrics;
        let change = sync.try_borrow_mut().ok().and_then(|mut s| {
            s.on_answer(
                token_id,
                num_headers,
                body_size,
                self.engine.as_ref(),
                &|snap| Self::engine_over(metrics, snap),
            )
        });
        self.apply(change);
    }
}

/// Envoy deletes the root context when the plugin stops: the counts gathered since the last
/// tick go to Envoy then, instead of going with the VM when no later tick comes.
/// (`proxy_on_done`, the hook meant for this, is not exported: Envoy would also call it on
/// every request. Without it Envoy deletes the root context at once.)
impl Drop for Root {
    fn drop(&mut self) {
        Metrics::flush();
        self.stop_following();
    }
}

impl Root {
    /// Compiles the configuration and, with `sync`, starts following policy-sync.
    fn configure(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        let began = self.get_current_time();
        let cfg = FilterConfig::from_json(&bytes).map_err(|e| e.to_string())?;
        // Not held while the bundles compile: a VM's linear memory never shrinks, so what is
        // held at its peak is what every worker keeps.
        drop(bytes);
        let (start, settings) = Start::with_sync_settings(&cfg).map_err(|e| e.to_string())?;
        self.metrics = Metrics::define();
        let engine = match start {
            Start::Ready(snapshot) => Some(Rc::new(Self::engine_over(self.metrics, snapshot))),
            Start::Pending { bundles, issuers } => {
                info!(
                    "portcullis: waiting for policy-sync to bring {}{}; answering 503 until then",
                    bundles.join(", "),
                    if issuers { " and the issuers" } else { "" }
                );
                None
            }
        };
        if let Some(engine) = &engine {
            // What one VM costs: `cargo xtask measure` reads the memory and the time from here.
            let took = self
                .get_current_time()
                .duration_since(began)
                .unwrap_or_default();
            info!(
                "portcullis: configured with {} issuer(s), bundle version {}, host signature checks {}, linear memory {} KiB, configured in {} ms",
                engine.issuer_count(),
                engine.bundle_version(),
                if engine.host_crypto_in_use() {
                    "on"
                } else {
                    "off"
                },
                linear_memory_kib(),
                took.as_millis()
            );
        }
        // A configuration replaced: its follower hands over the lease and its decision log.
        self.stop_following();
        self.sync = match settings {
            Some(settings) => {
                let tenants = settings.tenants.join(", ");
                let cluster = settings.cluster.clone();
                let s = sync::Sync::new(settings, &cfg, engine.as_deref())
                    .ok_or("Envoy refused shared data, which following policy-sync needs")?;
                info!(
                    "portcullis: following policy-sync through cluster {cluster:?} for {tenants}"
                );
                self.set_tick_period(sync::SYNC_TICK);
                Some(Rc::new(RefCell::new(s)))
            }
            None => {
                self.set_tick_period(METRICS_FLUSH);
                None
            }
        };
        self.engine = engine;
        Ok(())
    }
}

/// The size of this VM's linear memory (it grows and never shrinks: its high-water mark).
fn linear_memory_kib() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size::<0>() * 64
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            error!("portcullis: no plugin configuration given; refusing to start");
            return false;
        };
        // Format log lines only at the level the host keeps (Envoy's wasm component level, read
        // once per configuration): a debug line per request costs formatting and a host call
        // even when Envoy drops it.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        match self.configure(bytes) {
            Ok(()) => true,
            Err(e) => {
                // Envoy keeps the previous configuration (or none: fail closed).
                error!("portcullis: configuration refused: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(sync) = self.sync.clone() {
            let metrics = self.metrics;
            let change = sync.try_borrow_mut().ok().and_then(|mut s| {
                s.tick(self.engine.as_ref(), &|snap| {
                    Self::engine_over(metrics, snap)
                })
            });
            self.apply(change);
        }
        let now = self.get_current_time();
        // Without a sync the tick is the flush period itself: every tick flushes (a tick that
        // comes a little early must not push the counts a whole period later).
        let due = self.sync.is_none()
            || self
                .flushed
                .is_none_or(|t| now.duration_since(t).unwrap_or(METRICS_FLUSH) >= METRICS_FLUSH);
        if due {
            self.flushed = Some(now);
            Metrics::flush();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            engine: self.engine.clone(),
            metrics: self.metrics,
            by_policy: self.by_policy.clone(),
            sync: self.sync.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    engine: Option<Rc<Engine>>,
    metrics: Metrics,
    by_policy: Rc<PolicyCounters>,
    sync: Option<Rc<RefCell<sync::Sync>>>,
}

impl Context for Http {}

impl Http {
    /// Refuses the request while the filter has nothing it may decide with (no verified
    /// bundle yet, or the one in force is stale): 503 with `Retry-After`, never allow. Logged
    /// once per episode by the sync, counted per request.
    fn retry_later(&self, sync: &sync::Sync) -> Action {
        sync.count_refused();
        self.send_http_response(
            503,
            vec![("content-type", "text/plain"), ("retry-after", RETRY_AFTER)],
            Some(b"authorization unavailable\n"),
        );
        Action::Pause
    }

    /// Fails the request closed when the filter cannot decide (logged and counted as an error;
    /// the client learns nothing of why).
    fn unavailable(&self, why: &str) -> Action {
        warn!("portcullis: {why}; denying");
        Metrics::add(self.metrics.id(Counter::Errors), 1);
        self.send_http_response(
            503,
            vec![("content-type", "text/plain")],
            Some(b"authorization unavailable\n"),
        );
        Action::Pause
    }
}

/// The request as the core sees it: every header read in one host call and parsed in place
/// (the core asks for several: pseudo-headers, token sources, context headers), the client
/// address on demand.
struct HostRequest<'a> {
    http: &'a Http,
    headers: HeaderMap<'a>,
}

impl RequestView for HostRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    fn source_address(&self) -> Option<String> {
        self.http
            .get_property(vec!["source", "address"])
            .and_then(|b| String::from_utf8(b).ok())
    }
}

/// The request headers in the host's encoding (read by [`HeaderMap`]), or `None` if the host
/// refuses the call.
///
/// Not the SDK's `get_http_request_headers`: that one turns every name and value into a
/// `String` and panics on a value that is not UTF-8, which any client can send (HTTP allows
/// bytes above 0x7F in values and Envoy passes them on). A panic aborts the VM, so one such
/// request would stop the filter for every request after it.
fn request_header_bytes() -> Option<Vec<u8>> {
    #[expect(
        unsafe_code,
        reason = "the proxy-wasm import that returns every header at once"
    )]
    unsafe extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }
    /// `MapType::HttpRequestHeaders` in the ABI.
    const REQUEST_HEADERS: u32 = 0;
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    #[expect(
        unsafe_code,
        reason = "the ABI call itself; the host writes only the two out-parameters given"
    )]
    // SAFETY: both pointers are to live locals of the types the ABI names.
    let status =
        unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &raw mut data, &raw mut size) };
    if status != 0 {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    #[expect(
        unsafe_code,
        reason = "taking ownership of the buffer the host filled, as the SDK's own getters do"
    )]
    // SAFETY: the host allocated exactly `size` bytes through this module's only allocation
    // export, the SDK's allocator (exported as `proxy_on_memory_allocate` on wasm32-wasip1 and
    // as `malloc` on wasm32-unknown-unknown; either way a boxed slice of that length from the
    // global allocator, given up with `Box::into_raw`: the layout `Vec` frees with capacity
    // `size`), wrote them, and hands the buffer over.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(sync) = &self.sync
            && let Ok(sync) = sync.try_borrow()
            && (sync.refusing() || self.engine.is_none())
        {
            return self.retry_later(&sync);
        }
        let Some(engine) = self.engine.clone() else {
            // Only reachable if the host creates contexts for an unconfigured plugin.
            return self.unavailable("no configuration in force");
        };
        let started = self.get_current_time();
        let now = started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Some(raw) = request_header_bytes() else {
            return self.unavailable("the host did not hand over the request headers");
        };
        let headers = match HeaderMap::parse(&raw) {
            Ok(headers) => headers,
            Err(e) => return self.unavailable(&format!("unreadable request headers: {e}")),
        };
        let request = HostRequest {
            http: self,
            headers,
        };
        let decided = engine.decide(&request, now);
        // Time the decisions that evaluated policies: one from the decision cache takes no
        // measurable time, and skipping it saves a clock read and a record per request.
        if self.metrics.eval_us != 0 && decided.evaluated {
            let elapsed = self
                .get_current_time()
                .duration_since(started)
                .map_or(0, |d| d.as_micros());
            let _ = hostcalls::record_metric(
                self.metrics.eval_us,
                u64::try_from(elapsed).unwrap_or(u64::MAX),
            );
        }
        for (counter, n) in effects::counts(&decided) {
            Metrics::add(self.metrics.id(counter), n);
        }
        let outcome = decided.outcome;
        effects::log(&outcome);
        if let Verdict::Unauthenticated(AuthError::NoKey { issuer, .. }) = &outcome.verdict
            && let Some(sync) = self.sync.as_ref().and_then(|s| s.try_borrow().ok())
        {
            sync.want_refresh(issuer);
        }
        for id in effects::denied_by(&outcome) {
            self.by_policy.denied_by(id);
        }
        let reply = outcome.local_reply(engine.debug_headers());
        if let Some(sync) = &self.sync
            && let Ok(mut sync) = sync.try_borrow_mut()
        {
            let status = reply.as_ref().map_or(200, |r| r.status);
            sync.log_decision(&engine, &outcome, &request.headers, status);
        }
        match reply {
            None => {
                for edit in
                    effects::upstream_edits(&outcome, &request.headers, engine.debug_headers())
                {
                    match edit {
                        HeaderEdit::Remove(name) => self.set_http_request_header(name, None),
                        HeaderEdit::Set(name, value) => {
                            self.set_http_request_header(name, Some(&value));
                        }
                    }
                }
                Action::Continue
            }
            Some(reply) => {
                self.send_http_response(
                    u32::from(reply.status),
                    reply.header_pairs(),
                    Some(reply.body.as_bytes()),
                );
                Action::Pause
            }
        }
    }
}
