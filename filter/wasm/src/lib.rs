//! Proxy-wasm glue: Envoy ⇄ `portcullis-core`.
//!
//! The root context compiles the plugin configuration once into an immutable [`Engine`]; each
//! HTTP context asks the engine for a decision on the request headers and either lets the
//! request continue or sends the local reply. No policy or token logic lives here.

mod host_crypto;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::{debug, error, info, warn};
use portcullis_core::{Engine, Outcome, RequestView, Verdict};
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
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { engine: None, metrics: Metrics::default() }) });
}}

struct Root {
    engine: Option<Rc<Engine>>,
    metrics: Metrics,
}

/// Counters, visible in Envoy as `wasmcustom.portcullis.*` (README lists them).
#[derive(Debug, Default, Clone, Copy)]
struct Metrics {
    allowed: u32,
    denied: u32,
    unauthenticated: u32,
    cache_hits: u32,
    cache_misses: u32,
    host_verified: u32,
    host_fallback: u32,
}

impl Metrics {
    fn define() -> Self {
        let counter = |name| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
        Self {
            allowed: counter("portcullis.allowed"),
            denied: counter("portcullis.denied"),
            unauthenticated: counter("portcullis.unauthenticated"),
            cache_hits: counter("portcullis.token_cache.hits"),
            cache_misses: counter("portcullis.token_cache.misses"),
            host_verified: counter("portcullis.host_verify.confirmed"),
            host_fallback: counter("portcullis.host_verify.declined"),
        }
    }

    fn add(id: u32, n: u64) {
        if id != 0 && n > 0 {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            error!("portcullis: no plugin configuration given; refusing to start");
            return false;
        };
        match Engine::from_json(&bytes) {
            Ok(mut engine) => {
                self.metrics = Metrics::define();
                let host_crypto = engine.set_host_crypto(Box::new(host_crypto::EnvoyCrypto::new(
                    self.metrics.host_verified,
                    self.metrics.host_fallback,
                )));
                info!(
                    "portcullis: configured with {} issuer(s), bundle version {}, host signature checks {}",
                    engine.issuer_count(),
                    engine.bundle_version(),
                    if host_crypto { "on" } else { "off" }
                );
                self.engine = Some(Rc::new(engine));
                true
            }
            Err(e) => {
                // Envoy keeps the previous configuration (or none: fail closed).
                error!("portcullis: configuration refused: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            engine: self.engine.clone(),
            metrics: self.metrics,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    engine: Option<Rc<Engine>>,
    metrics: Metrics,
}

impl Context for Http {}

struct HostRequest<'a>(&'a Http);

impl RequestView for HostRequest<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.0.get_http_request_header(name)
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(engine) = self.engine.clone() else {
            // Only reachable if the host creates contexts for an unconfigured plugin.
            warn!("portcullis: no configuration in force; denying");
            self.send_http_response(
                503,
                vec![("content-type", "text/plain")],
                Some(b"authorization unavailable\n"),
            );
            return Action::Pause;
        };
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let before = engine.cache_stats();
        let outcome = engine.check(&HostRequest(self), now);
        let after = engine.cache_stats();
        log_outcome(&outcome);
        let m = self.metrics;
        Metrics::add(m.cache_hits, after.hits.saturating_sub(before.hits));
        Metrics::add(m.cache_misses, after.misses.saturating_sub(before.misses));
        let verdict = match outcome.verdict {
            Verdict::Allow => m.allowed,
            Verdict::Forbidden => m.denied,
            Verdict::Unauthenticated(_) => m.unauthenticated,
        };
        Metrics::add(verdict, 1);
        match outcome.local_reply(engine.debug_headers()) {
            None => {
                for name in &outcome.remove_headers {
                    self.set_http_request_header(name, None);
                }
                for (name, value) in &outcome.set_headers {
                    self.set_http_request_header(name, Some(value));
                }
                Action::Continue
            }
            Some(reply) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                self.send_http_response(
                    u32::from(reply.status),
                    headers,
                    Some(reply.body.as_bytes()),
                );
                Action::Pause
            }
        }
    }
}

fn log_outcome(o: &Outcome) {
    for e in &o.errors {
        warn!("portcullis: policy evaluation error: {e}");
    }
    match &o.verdict {
        Verdict::Allow => debug!(
            "portcullis: allow {} by [{}] (bundle {})",
            o.principal.as_deref().unwrap_or("-"),
            o.policies.join(","),
            o.bundle_version
        ),
        Verdict::Forbidden => debug!(
            "portcullis: deny {} by [{}] (bundle {})",
            o.principal.as_deref().unwrap_or("-"),
            o.policies.join(","),
            o.bundle_version
        ),
        Verdict::Unauthenticated(e) => debug!("portcullis: unauthenticated: {e}"),
    }
}
