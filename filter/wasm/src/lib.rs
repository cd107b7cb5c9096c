//! Proxy-wasm glue: Envoy ⇄ `portcullis-core`.
//!
//! The root context compiles the plugin configuration once into an immutable [`Engine`]; each
//! HTTP context asks the engine for a decision on the request headers and either lets the
//! request continue or sends the local reply. No policy or token logic lives here.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::{debug, error, info, warn};
use portcullis_core::{Engine, Outcome, RequestView, Verdict};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

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
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { engine: None }) });
}}

struct Root {
    engine: Option<Rc<Engine>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            error!("portcullis: no plugin configuration given; refusing to start");
            return false;
        };
        match Engine::from_json(&bytes) {
            Ok(engine) => {
                info!(
                    "portcullis: configured with {} issuer(s), bundle version {}",
                    engine.issuer_count(),
                    engine.bundle_version()
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
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    engine: Option<Rc<Engine>>,
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
        let outcome = engine.check(&HostRequest(self), now);
        log_outcome(&outcome);
        match outcome.local_reply(engine.debug_headers()) {
            None => Action::Continue,
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
