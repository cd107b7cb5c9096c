//! State the host keeps: per process (shared by all VMs, as in one Envoy) and per VM.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::abi::{Headers, LogLevel, MetricKind};

/// One line the filter logged (`proxy_log`, or WASI stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub vm: usize,
    pub level: LogLevel,
    pub message: String,
}

/// An HTTP callout made by the filter, waiting for the test's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    pub vm: usize,
    pub context_id: u32,
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout_ms: u32,
    /// Host clock (ns) when the call times out.
    pub deadline_ns: u64,
}

/// A gRPC call or stream opened by the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    pub token: u32,
    pub vm: usize,
    pub context_id: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub metadata: Headers,
    /// The request message (unary) or the messages sent so far (stream).
    pub messages: Vec<Vec<u8>>,
    pub streaming: bool,
    pub timeout_ms: u32,
}

/// The response a test scripts for an HTTP callout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

/// A metric as Envoy keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub value: u64,
    /// Every value recorded into a histogram.
    pub samples: Vec<u64>,
}

/// A foreign function a test provides: arguments in, result bytes or a status code out.
pub type ForeignFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, i32> + Send + Sync>;

#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub vm_id: String,
    pub name: String,
    pub owner_vm: usize,
    pub owner_context: u32,
    pub items: VecDeque<Vec<u8>>,
}

/// Process-wide state: what Envoy shares between the VMs of its workers.
#[derive(Default)]
pub(crate) struct Shared {
    pub clock_ns: u64,
    pub logs: Vec<LogEntry>,
    pub shared_data: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub queues: Vec<Queue>,
    /// Queue ids with items added since their owner was last told.
    pub ready_queues: Vec<u32>,
    pub metrics: Vec<Metric>,
    pub next_token: u32,
    pub http_calls: Vec<HttpCall>,
    pub grpc_calls: Vec<GrpcCall>,
    pub upstreams: Vec<String>,
    pub foreign: BTreeMap<String, ForeignFunction>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("clock_ns", &self.clock_ns)
            .field("logs", &self.logs.len())
            .field("shared_data", &self.shared_data.len())
            .field("queues", &self.queues)
            .field("metrics", &self.metrics)
            .field("http_calls", &self.http_calls)
            .field("foreign", &self.foreign.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Handle on the shared state.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedRef(Arc<Mutex<Shared>>);

impl SharedRef {
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave the data half-written in a way that
        // matters to tests; keep going with what is there.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A local reply the filter sent (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub details: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub grpc_status: i32,
}

impl LocalReply {
    /// A header of the reply as text (`None` when absent or not UTF-8).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// A header of the reply as the bytes it is.
    #[must_use]
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        find(&self.headers, name)
    }

    /// The body as text.
    #[must_use]
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn find<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// One HTTP stream (request and response) as the filter sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stream {
    pub request_headers: Headers,
    pub request_body: Vec<u8>,
    pub request_trailers: Headers,
    pub response_headers: Headers,
    pub response_body: Vec<u8>,
    pub response_trailers: Headers,
    pub properties: HashMap<String, Vec<u8>>,
    pub local_reply: Option<LocalReply>,
    pub continued_request: bool,
    pub continued_response: bool,
    pub closed: bool,
}

/// Per-VM state: one Envoy worker's VM.
#[derive(Debug)]
pub(crate) struct VmState {
    pub index: usize,
    pub shared: SharedRef,
    pub vm_id: String,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub log_level: LogLevel,
    pub plugin_properties: HashMap<String, Vec<u8>>,
    pub root_id: u32,
    /// The context host calls act on (the one called, or set by `proxy_set_effective_context`).
    pub effective: u32,
    pub contexts: Vec<u32>,
    pub streams: HashMap<u32, Stream>,
    pub tick_period_ms: u32,
    pub next_tick_ns: Option<u64>,
    pub call_response: Option<HttpCallResponse>,
    pub grpc_message: Option<Vec<u8>>,
    pub status: (u32, String),
    pub done_called: u32,
}

impl VmState {
    pub fn log(&self, level: LogLevel, message: String) {
        self.shared.lock().logs.push(LogEntry {
            vm: self.index,
            level,
            message,
        });
    }

    pub fn stream(&mut self) -> Option<&mut Stream> {
        self.streams.get_mut(&self.effective)
    }
}
