//! ABI probe: a proxy-wasm plugin (built with the same SDK as the filter) whose behaviour is
//! chosen per request by the `x-probe` header, so that tests can exercise each host feature —
//! shared data with CAS, shared queues, HTTP callouts, ticks, metrics, foreign functions,
//! properties, header and body mutation, traps and runaway loops — through real SDK code.

use std::rc::Rc;
use std::time::Duration;

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default, Clone, Copy)]
struct Metrics {
    requests: u32,
    gauge: u32,
    latency: u32,
    ticks: u32,
}

#[derive(Default)]
struct Root {
    metrics: Metrics,
    load: Load,
}

/// What the probe does per request when it is the filter under load (`cargo xtask measure`):
/// nothing at all (plugin configuration `noop`), or the host calls `calls=N:KIND[,N:KIND...]`
/// lists, to price a host call inside the runtime or to pay for the same calls as the filter.
#[derive(Default, Clone, PartialEq, Eq)]
enum Load {
    /// The probe's own behaviour, chosen by `x-probe`.
    #[default]
    Probe,
    Noop,
    Calls(Rc<[(u32, CallKind)]>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CallKind {
    /// `proxy_get_header_map_value(:path)`
    Header,
    /// `proxy_increment_metric`
    Metric,
    /// `proxy_get_current_time_nanoseconds`
    Time,
    /// `proxy_get_header_map_pairs` (every request header in one call)
    Pairs,
}

impl Load {
    fn parse(config: &str) -> Option<Self> {
        if config == "noop" {
            return Some(Self::Noop);
        }
        let calls = config.strip_prefix("calls=")?.split(',').map(|call| {
            let (n, kind) = call.split_once(':')?;
            let kind = match kind {
                "header" => CallKind::Header,
                "metric" => CallKind::Metric,
                "time" => CallKind::Time,
                "pairs" => CallKind::Pairs,
                _ => return None,
            };
            Some((n.parse().ok()?, kind))
        });
        Some(Self::Calls(calls.collect::<Option<_>>()?))
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config).into_owned();
        if config == "refuse" {
            return false;
        }
        // A bare word, or the same as a JSON string (how the harness renders configurations).
        let word = config.trim_matches('"');
        match Load::parse(word) {
            Some(load) => self.load = load,
            // A list of calls it cannot read would silently measure the probe's own behaviour.
            None if word.starts_with("calls=") => return false,
            None => {}
        }
        if let Some(ms) = config.strip_prefix("tick_ms=").and_then(|v| v.parse().ok()) {
            self.set_tick_period(Duration::from_millis(ms));
        }
        self.register_shared_queue("probe-queue");
        let define = |kind, name| proxy_wasm::hostcalls::define_metric(kind, name).unwrap_or(0);
        self.metrics = Metrics {
            requests: define(MetricType::Counter, "probe.requests"),
            gauge: define(MetricType::Gauge, "probe.gauge"),
            latency: define(MetricType::Histogram, "probe.latency"),
            ticks: define(MetricType::Counter, "probe.ticks"),
        };
        true
    }

    fn on_tick(&mut self) {
        let _ = proxy_wasm::hostcalls::increment_metric(self.metrics.ticks, 1);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            info!("dequeued {}", String::from_utf8_lossy(&item));
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            metrics: self.metrics,
            load: self.load.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    metrics: Metrics,
    load: Load,
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        if status_code == 0 {
            let body = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            self.send_http_response(200, vec![], Some(&body));
        } else {
            let (_, message) = self.get_grpc_status();
            let text = format!("grpc {status_code}: {}", message.unwrap_or_default());
            self.send_http_response(503, vec![], Some(text.as_bytes()));
        }
    }

    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        match self.get_http_call_response_body(0, body_size) {
            Some(body) => {
                let status = self
                    .get_http_call_response_header(":status")
                    .unwrap_or_default();
                self.send_http_response(200, vec![("x-callout-status", &status)], Some(&body));
            }
            None => self.send_http_response(504, vec![], Some(b"callout failed")),
        }
    }
}

impl Http {
    fn reply(&self, status: u32, body: &str) -> Action {
        self.send_http_response(status, vec![], Some(body.as_bytes()));
        Action::Pause
    }

    fn shared_increment(&self) -> Action {
        for _ in 0..100 {
            let (value, cas) = self.get_shared_data("counter");
            let n: u64 = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
                + 1;
            match self.set_shared_data("counter", Some(n.to_string().as_bytes()), cas) {
                Ok(()) => return self.reply(200, &n.to_string()),
                Err(Status::CasMismatch) => {}
                Err(e) => return self.reply(500, &format!("{e:?}")),
            }
        }
        self.reply(500, "too many CAS conflicts")
    }
}

impl HttpContext for Http {
    #[expect(clippy::panic, reason = "the probe traps on purpose when asked to")]
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match &self.load {
            Load::Probe => {}
            Load::Noop => return Action::Continue,
            Load::Calls(calls) => {
                for &(n, kind) in calls.iter() {
                    for _ in 0..n {
                        match kind {
                            CallKind::Header => {
                                let _ = self.get_http_request_header(":path");
                            }
                            CallKind::Metric => {
                                let _ = proxy_wasm::hostcalls::increment_metric(
                                    self.metrics.requests,
                                    1,
                                );
                            }
                            CallKind::Time => {
                                let _ = self.get_current_time();
                            }
                            CallKind::Pairs => {
                                let _ = self.get_http_request_headers();
                            }
                        }
                    }
                }
                return Action::Continue;
            }
        }
        let probe = self.get_http_request_header("x-probe").unwrap_or_default();
        match probe.as_str() {
            "shared-incr" => self.shared_increment(),
            "enqueue" => {
                let path = self.get_http_request_header(":path").unwrap_or_default();
                match self.resolve_shared_queue("portcullis", "probe-queue") {
                    Some(q) => match self.enqueue_shared_queue(q, Some(path.as_bytes())) {
                        Ok(()) => Action::Continue,
                        Err(e) => self.reply(500, &format!("{e:?}")),
                    },
                    None => self.reply(404, "no queue"),
                }
            }
            "callout" => {
                let headers = vec![
                    (":method", "GET"),
                    (":path", "/check"),
                    (":authority", "backend"),
                ];
                match self.dispatch_http_call(
                    "backend",
                    headers,
                    Some(b"question"),
                    vec![],
                    Duration::from_millis(500),
                ) {
                    Ok(_) => Action::Pause,
                    Err(e) => self.reply(502, &format!("{e:?}")),
                }
            }
            "grpc" => {
                let metadata: Vec<(&str, &[u8])> = vec![("x-md", b"v")];
                match self.dispatch_grpc_call(
                    "backend",
                    "probe.Checker",
                    "Check",
                    metadata,
                    Some(b"grpc-question"),
                    Duration::from_millis(500),
                ) {
                    Ok(_) => Action::Pause,
                    Err(e) => self.reply(502, &format!("{e:?}")),
                }
            }
            "foreign" => {
                match proxy_wasm::hostcalls::call_foreign_function("echo", Some(b"ping")) {
                    Ok(r) => self.reply(200, &String::from_utf8_lossy(&r.unwrap_or_default())),
                    Err(Status::NotFound) => self.reply(501, "no such foreign function"),
                    Err(e) => self.reply(500, &format!("{e:?}")),
                }
            }
            "property" => {
                let get = |path: Vec<&str>| {
                    self.get_property(path)
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default()
                };
                let body = format!(
                    "path={};plugin={}",
                    get(vec!["request", "path"]),
                    get(vec!["plugin_name"])
                );
                self.reply(200, &body)
            }
            "metric" => {
                let m = self.metrics;
                let _ = proxy_wasm::hostcalls::increment_metric(m.requests, 1);
                let _ = proxy_wasm::hostcalls::record_metric(m.gauge, 7);
                let _ = proxy_wasm::hostcalls::record_metric(m.latency, 42);
                let n = proxy_wasm::hostcalls::get_metric(m.requests).unwrap_or(0);
                self.reply(200, &n.to_string())
            }
            "headers" => {
                self.add_http_request_header("x-added", "yes");
                self.set_http_request_header("x-replace", Some("new"));
                self.set_http_request_header("x-remove", None);
                Action::Continue
            }
            "trap" => panic!("probe asked to trap"),
            "loop" => loop {
                std::hint::spin_loop();
            },
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size) {
            self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.load != Load::Probe {
            return Action::Continue;
        }
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.add_http_response_header("x-probe-saw", &status);
        Action::Continue
    }
}
