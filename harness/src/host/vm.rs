//! One VM (an Envoy worker's instance of the module) and the HTTP exchange API.

use std::collections::HashMap;
use std::time::Duration;

use wasmtime::{Instance, Store, WasmParams, WasmResults};

use super::abi::{Action, Headers};
use super::state::{
    GrpcCall, HttpCall, HttpCallResponse, LocalReply, SharedRef, Stream, VmState, find,
};
use super::{EPOCH_TICK, HostError, Plugin, VmOptions};

/// A request as the downstream client sends it, and what the upstream will answer.
#[derive(Debug, Clone)]
pub struct Request {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    /// The upstream's answer if the request gets through.
    pub upstream: Response,
}

impl Request {
    /// A request with pseudo-headers as Envoy presents them.
    #[must_use]
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            headers: vec![
                (":method".into(), method.into()),
                (":path".into(), path.into()),
                (":authority".into(), "example.test".into()),
                (":scheme".into(), "http".into()),
            ],
            body: Vec::new(),
            trailers: Vec::new(),
            upstream: Response {
                status: 200,
                headers: Vec::new(),
                body: b"upstream".to_vec(),
            },
        }
    }

    /// A GET request.
    #[must_use]
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// Adds a header (name lower-cased, as Envoy normalises it).
    #[must_use]
    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_bytes(name, value.as_bytes())
    }

    /// Adds a header whose value is any bytes (HTTP allows bytes above 0x7F in a value, and
    /// Envoy passes them on).
    #[must_use]
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }

    /// Adds `authorization: Bearer <token>`.
    #[must_use]
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sets the request body.
    #[must_use]
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }
}

/// A response (from the upstream, or what the client receives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub context_id: u32,
    /// What `proxy_on_request_headers` returned.
    pub request_action: Action,
    /// The filter's local reply, if it sent one.
    pub local_reply: Option<LocalReply>,
    /// The request as it reached the upstream (after the filter's changes), if it did.
    pub upstream_request: Option<Request>,
    /// The upstream response as the client got it (after the filter's changes).
    pub response: Option<Response>,
    /// The filter paused the request and neither continued it nor replied yet.
    pub paused: bool,
    request: Request,
}

impl Exchange {
    /// The status the client got: the local reply's, else the upstream's; 0 while paused.
    #[must_use]
    pub fn status(&self) -> u16 {
        match (&self.local_reply, &self.response) {
            (Some(r), _) => u16::try_from(r.status).unwrap_or(0),
            (None, Some(r)) => r.status,
            (None, None) => 0,
        }
    }

    /// A header of the request as the upstream received it, as text (`None` when absent or
    /// not UTF-8).
    #[must_use]
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.upstream_header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// A header of the request as the upstream received it, as the bytes it is.
    #[must_use]
    pub fn upstream_header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.upstream_request
            .as_ref()
            .and_then(|r| find(&r.headers, name))
    }
}

pub(crate) struct Vm {
    store: Store<VmState>,
    instance: Instance,
    failed: Option<String>,
    /// Stopped by the host ([`Vm::stop`]): takes no more calls.
    stopped: bool,
    deadline_ticks: u64,
    next_context: u32,
}

impl Vm {
    pub(crate) fn start(
        plugin: &Plugin,
        shared: SharedRef,
        index: usize,
        options: VmOptions,
        call_timeout: Duration,
    ) -> Result<Self, HostError> {
        let mut plugin_properties = HashMap::new();
        plugin_properties.insert("plugin_name".to_owned(), options.plugin_name.into_bytes());
        plugin_properties.insert("plugin_root_id".to_owned(), options.root_id.into_bytes());
        let state = VmState {
            index,
            shared,
            vm_id: options.vm_id,
            vm_config: options.vm_config,
            plugin_config: options.plugin_config,
            log_level: options.log_level,
            plugin_properties,
            root_id: 1,
            effective: 1,
            contexts: vec![1],
            streams: HashMap::new(),
            tick_period_ms: 0,
            next_tick_ns: None,
            call_response: None,
            grpc_message: None,
            status: (0, String::new()),
            done_called: 0,
        };
        let mut store = Store::new(&plugin.engine, state);
        let deadline_ticks = (call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(deadline_ticks);
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| HostError::Link(format!("{e:#}")))?;
        let abi = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];
        if !abi
            .iter()
            .any(|name| instance.get_func(&mut store, name).is_some())
        {
            return Err(HostError::Abi(
                "no proxy_abi_version_0_2_1 or _0_2_0 export".into(),
            ));
        }
        if instance
            .get_export(&mut store, "memory")
            .and_then(wasmtime::Extern::into_memory)
            .is_none()
        {
            return Err(HostError::Abi("no exported memory".into()));
        }
        if instance
            .get_func(&mut store, "proxy_on_memory_allocate")
            .is_none()
        {
            return Err(HostError::Abi("no proxy_on_memory_allocate export".into()));
        }
        let mut vm = Self {
            store,
            instance,
            failed: None,
            stopped: false,
            deadline_ticks,
            next_context: 2,
        };
        if vm.call::<(), ()>("_initialize", ())?.is_none() {
            vm.call::<(), ()>("_start", ())?;
        }
        vm.call::<(i32, i32), ()>("proxy_on_context_create", (1, 0))?;
        let vm_config_len = len(&vm.store.data().vm_config);
        if vm.call::<(i32, i32), i32>("proxy_on_vm_start", (1, vm_config_len))? == Some(0) {
            return Err(HostError::VmStartRefused);
        }
        let config_len = len(&vm.store.data().plugin_config);
        if vm.call::<(i32, i32), i32>("proxy_on_configure", (1, config_len))? == Some(0) {
            return Err(HostError::ConfigureRefused);
        }
        Ok(vm)
    }

    /// Calls an export if the module has it; a trap or interruption fails the VM for good.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        params: P,
    ) -> Result<Option<R>, HostError> {
        if let Some(why) = &self.failed {
            return Err(HostError::VmFailed(why.clone()));
        }
        if self.stopped {
            return Err(HostError::VmStopped);
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let typed = func
            .typed::<P, R>(&self.store)
            .map_err(|e| HostError::Abi(format!("{name} has the wrong signature: {e}")))?;
        self.store.set_epoch_deadline(self.deadline_ticks);
        match typed.call(&mut self.store, params) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let message = match e.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => {
                        "interrupted: the call ran past the host's deadline".to_owned()
                    }
                    _ => format!("{e:#}"),
                };
                self.failed = Some(format!("{name}: {message}"));
                Err(HostError::Trap {
                    call: name,
                    message,
                })
            }
        }
    }

    fn set_effective(&mut self, ctx: u32) {
        self.store.data_mut().effective = ctx;
    }

    pub(crate) fn send(&mut self, request: Request) -> Result<Exchange, HostError> {
        let ctx = self.next_context;
        self.next_context += 1;
        let stream = Stream {
            request_headers: request.headers.clone(),
            request_body: request.body.clone(),
            request_trailers: request.trailers.clone(),
            ..Stream::default()
        };
        {
            let st = self.store.data_mut();
            st.streams.insert(ctx, stream);
            st.contexts.push(ctx);
        }
        self.set_effective(ctx);
        let root = self.store.data().root_id;
        self.call::<(i32, i32), ()>("proxy_on_context_create", (ctx as i32, root as i32))?;
        let end_of_stream = request.body.is_empty() && request.trailers.is_empty();
        let action = self
            .call::<(i32, i32, i32), i32>(
                "proxy_on_request_headers",
                (ctx as i32, len(&request.headers), i32::from(end_of_stream)),
            )?
            .map_or(Action::Continue, Action::from_raw);
        let ex = Exchange {
            context_id: ctx,
            request_action: action,
            local_reply: None,
            upstream_request: None,
            response: None,
            paused: false,
            request,
        };
        self.proceed(ex, action)
    }

    pub(crate) fn resume(&mut self, ex: Exchange) -> Result<Exchange, HostError> {
        self.proceed(ex, Action::Pause)
    }

    /// Runs the rest of the exchange after the request headers.
    fn proceed(&mut self, mut ex: Exchange, action: Action) -> Result<Exchange, HostError> {
        let ctx = ex.context_id;
        let (reply, continued) = self
            .store
            .data()
            .streams
            .get(&ctx)
            .map_or((None, false), |s| {
                (s.local_reply.clone(), s.continued_request)
            });
        if let Some(reply) = reply {
            ex.local_reply = Some(reply);
            ex.paused = false;
            self.finish(ctx)?;
            return Ok(ex);
        }
        if action == Action::Pause && !continued {
            ex.paused = true;
            return Ok(ex);
        }
        ex.paused = false;
        self.set_effective(ctx);
        if !ex.request.body.is_empty() {
            let eos = ex.request.trailers.is_empty();
            self.call::<(i32, i32, i32), i32>(
                "proxy_on_request_body",
                (ctx as i32, len(&ex.request.body), i32::from(eos)),
            )?;
        }
        if !ex.request.trailers.is_empty() {
            self.call::<(i32, i32), i32>(
                "proxy_on_request_trailers",
                (ctx as i32, len(&ex.request.trailers)),
            )?;
        }
        if let Some(reply) = self
            .store
            .data()
            .streams
            .get(&ctx)
            .and_then(|s| s.local_reply.clone())
        {
            ex.local_reply = Some(reply);
            self.finish(ctx)?;
            return Ok(ex);
        }
        // The request reaches the upstream as the filter left it.
        let upstream = ex.request.upstream.clone();
        if let Some(s) = self.store.data_mut().streams.get_mut(&ctx) {
            ex.upstream_request = Some(Request {
                headers: s.request_headers.clone(),
                body: s.request_body.clone(),
                trailers: s.request_trailers.clone(),
                upstream: upstream.clone(),
            });
            s.response_headers = vec![(":status".into(), upstream.status.to_string().into())];
            s.response_headers.extend(upstream.headers.iter().cloned());
            s.response_body = upstream.body.clone();
        }
        let eos = upstream.body.is_empty();
        let n = len(&upstream.headers) + 1;
        self.call::<(i32, i32, i32), i32>(
            "proxy_on_response_headers",
            (ctx as i32, n, i32::from(eos)),
        )?;
        if !upstream.body.is_empty() {
            self.call::<(i32, i32, i32), i32>(
                "proxy_on_response_body",
                (ctx as i32, len(&upstream.body), 1),
            )?;
        }
        if let Some(s) = self.store.data().streams.get(&ctx) {
            ex.local_reply = s.local_reply.clone();
            let status = find(&s.response_headers, ":status")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0);
            ex.response = Some(Response {
                status,
                headers: s
                    .response_headers
                    .iter()
                    .filter(|(k, _)| !k.starts_with(':'))
                    .cloned()
                    .collect(),
                body: s.response_body.clone(),
            });
        }
        self.finish(ctx)?;
        Ok(ex)
    }

    /// End of stream, in Envoy's order: done, log, delete.
    fn finish(&mut self, ctx: u32) -> Result<(), HostError> {
        self.set_effective(ctx);
        self.call::<i32, i32>("proxy_on_done", ctx as i32)?;
        self.call::<i32, ()>("proxy_on_log", ctx as i32)?;
        self.call::<i32, ()>("proxy_on_delete", ctx as i32)?;
        let st = self.store.data_mut();
        st.streams.remove(&ctx);
        st.contexts.retain(|c| *c != ctx);
        st.effective = st.root_id;
        Ok(())
    }

    pub(crate) fn deliver_http_response(
        &mut self,
        call: &HttpCall,
        response: Option<HttpCallResponse>,
    ) -> Result<(), HostError> {
        let (headers, body, trailers) = response.as_ref().map_or((0, 0, 0), |r| {
            (len(&r.headers), len(&r.body), len(&r.trailers))
        });
        self.store.data_mut().call_response = response;
        self.set_effective(call.context_id);
        let r = self.call::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            (
                call.context_id as i32,
                call.token as i32,
                headers,
                body,
                trailers,
            ),
        );
        self.store.data_mut().call_response = None;
        r.map(|_| ())
    }

    /// Envoy's order: a unary call gets `proxy_on_grpc_receive` on success and only
    /// `proxy_on_grpc_close` on failure; a stream gets one receive per message and a close.
    pub(crate) fn deliver_grpc(
        &mut self,
        call: &GrpcCall,
        result: Result<Vec<u8>, (u32, String)>,
    ) -> Result<(), HostError> {
        self.set_effective(call.context_id);
        let (ctx, token) = (call.context_id as i32, call.token as i32);
        match result {
            Ok(message) => {
                let n = len(&message);
                self.store.data_mut().grpc_message = Some(message);
                self.store.data_mut().status = (0, String::new());
                let r = self.call::<(i32, i32, i32), ()>("proxy_on_grpc_receive", (ctx, token, n));
                self.store.data_mut().grpc_message = None;
                r.map(|_| ())
            }
            Err((code, message)) => {
                self.store.data_mut().status = (code, message);
                self.call::<(i32, i32, i32), ()>("proxy_on_grpc_close", (ctx, token, code as i32))
                    .map(|_| ())
            }
        }
    }

    /// Stops the VM as Envoy stops a plugin (its configuration replaced, its listener gone):
    /// the root context's `proxy_on_done`, then, if the module is done at once, its
    /// `proxy_on_delete` (a module that answers "not yet" would call `proxy_done` later; the
    /// host then deletes it, which this host does not model). No calls reach the VM afterwards.
    pub(crate) fn stop(&mut self) -> Result<(), HostError> {
        let root = self.store.data().root_id;
        self.set_effective(root);
        let done = self.call::<i32, i32>("proxy_on_done", root as i32)?;
        if done.is_none_or(|d| d != 0) {
            self.call::<i32, ()>("proxy_on_delete", root as i32)?;
        }
        self.stopped = true;
        Ok(())
    }

    pub(crate) fn next_tick(&self) -> Option<u64> {
        if self.failed.is_some() || self.stopped {
            None
        } else {
            self.store.data().next_tick_ns
        }
    }

    pub(crate) fn tick(&mut self) -> Result<(), HostError> {
        let root = self.store.data().root_id;
        {
            let st = self.store.data_mut();
            let period = u64::from(st.tick_period_ms) * 1_000_000;
            st.next_tick_ns = st.next_tick_ns.map(|t| t + period.max(1));
        }
        self.set_effective(root);
        self.call::<i32, ()>("proxy_on_tick", root as i32)
            .map(|_| ())
    }

    pub(crate) fn queue_ready(&mut self, ctx: u32, id: u32) -> Result<(), HostError> {
        self.set_effective(ctx);
        self.call::<(i32, i32), ()>("proxy_on_queue_ready", (ctx as i32, id as i32))
            .map(|_| ())
    }

    pub(crate) fn done_calls(&self) -> u32 {
        self.store.data().done_called
    }
}

/// A length as the guest's `usize`.
fn len<T>(v: &[T]) -> i32 {
    i32::try_from(v.len()).unwrap_or(i32::MAX)
}
