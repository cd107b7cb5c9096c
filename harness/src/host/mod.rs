//! A proxy-wasm host on wasmtime: runs the built filter the way Envoy does, fast and
//! deterministically, including what is hard to reach in a real Envoy — several worker VMs
//! sharing data and queues, HTTP callouts whose responses the test scripts, ticks driven by a
//! clock the test controls, metrics, and foreign functions.
//!
//! ```no_run
//! # fn main() -> Result<(), harness::host::HostError> {
//! use harness::host::{Host, Plugin, Request, VmOptions};
//! let plugin = Plugin::built()?;                 // the .wasm from `cargo xtask wasm`
//! let mut host = Host::new(&plugin);             // one Envoy process
//! let vm = host.start_vm(VmOptions::new(br#"{"issuers": []}"#.to_vec()))?;  // one worker
//! let ex = host.send(vm, Request::get("/api/hello"))?;
//! assert_eq!(ex.status(), 401);
//! # Ok(()) }
//! ```

pub mod abi;
mod imports;
mod state;
mod vm;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use abi::{Action, Headers, LogLevel, MetricKind};
use state::{ForeignFunction, SharedRef, VmState};
pub use state::{GrpcCall, HttpCall, HttpCallResponse, LocalReply, LogEntry, Metric};
use vm::Vm;
pub use vm::{Exchange, Request, Response};

/// Why the host could not do what was asked. Traps and refusals are reported with the call
/// that failed; nothing here hangs (each call into the module has a deadline).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Missing(String),
    #[error("module does not compile: {0}")]
    Compile(String),
    #[error("module cannot be instantiated (missing or mistyped import?): {0}")]
    Link(String),
    #[error("module does not speak a supported proxy-wasm ABI: {0}")]
    Abi(String),
    #[error("the module trapped in {call}: {message}")]
    Trap { call: &'static str, message: String },
    #[error("the VM failed earlier ({0}); Envoy would refuse the request (fail closed)")]
    VmFailed(String),
    #[error("proxy_on_vm_start returned false")]
    VmStartRefused,
    #[error("proxy_on_configure returned false (the plugin refused its configuration)")]
    ConfigureRefused,
    #[error("the VM was stopped")]
    VmStopped,
    #[error("no VM {0}")]
    NoSuchVm(usize),
    #[error("no pending call with token {0}")]
    NoSuchCall(u32),
}

/// A compiled filter module, ready to be instantiated into VMs.
pub struct Plugin {
    engine: wasmtime::Engine,
    pre: wasmtime::InstancePre<VmState>,
    stop_ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").finish_non_exhaustive()
    }
}

/// Granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

impl Plugin {
    /// Compiles the filter built by `cargo xtask wasm` (`PORTCULLIS_WASM`).
    pub fn built() -> Result<Self, HostError> {
        let path = crate::paths::wasm().map_err(|e| HostError::Missing(e.to_string()))?;
        Self::load(&path)
    }

    /// Compiles a `.wasm` file.
    pub fn load(path: &Path) -> Result<Self, HostError> {
        let bytes = std::fs::read(path).map_err(|e| {
            HostError::Missing(format!(
                "cannot read {}: {e} (run `cargo xtask wasm`)",
                path.display()
            ))
        })?;
        Self::from_bytes(&bytes)
    }

    /// Compiles a module from binary or text (WAT) form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HostError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_simd(true);
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| HostError::Compile(format!("{e:#}")))?;
        let module = wasmtime::Module::new(&engine, bytes)
            .map_err(|e| HostError::Compile(format!("{e:#}")))?;
        let mut linker = wasmtime::Linker::new(&engine);
        imports::add_to_linker(&mut linker).map_err(|e| HostError::Link(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| HostError::Link(format!("{e:#}")))?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (stop, ticking) = (stop_ticker.clone(), engine.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                ticking.increment_epoch();
            }
        });
        Ok(Self {
            engine,
            pre,
            stop_ticker,
        })
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// How one VM is configured (Envoy's `vm_config` and plugin `config`).
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub vm_id: String,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub plugin_name: String,
    pub root_id: String,
    /// What `proxy_get_log_level` answers: the lowest level the host keeps (Envoy: its `wasm`
    /// log component, `info` by default). Trace here, so tests see every line.
    pub log_level: LogLevel,
}

impl VmOptions {
    /// A VM with this plugin configuration and Envoy-like names.
    #[must_use]
    pub fn new(plugin_config: Vec<u8>) -> Self {
        Self {
            vm_id: "portcullis".into(),
            vm_config: Vec::new(),
            plugin_config,
            plugin_name: "portcullis".into(),
            root_id: "portcullis".into(),
            log_level: LogLevel::Trace,
        }
    }
}

/// One Envoy process: VMs (one per worker) sharing data, queues, metrics and a clock.
pub struct Host<'p> {
    plugin: &'p Plugin,
    shared: SharedRef,
    vms: Vec<Vm>,
    call_timeout: Duration,
}

impl std::fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("vms", &self.vms.len())
            .finish_non_exhaustive()
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl<'p> Host<'p> {
    /// A host whose clock starts at the real current time.
    #[must_use]
    pub fn new(plugin: &'p Plugin) -> Self {
        let shared = SharedRef::default();
        shared.lock().clock_ns = unix_ns(SystemTime::now());
        Self {
            plugin,
            shared,
            vms: Vec::new(),
            call_timeout: Duration::from_secs(10),
        }
    }

    /// Longest a single call into the module may run before it is interrupted.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// Sets the host clock.
    pub fn set_time(&self, t: SystemTime) {
        self.shared.lock().clock_ns = unix_ns(t);
    }

    /// The host clock.
    #[must_use]
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.shared.lock().clock_ns)
    }

    /// Declares a cluster the filter may call (`proxy_http_call`, `proxy_grpc_call`).
    pub fn add_upstream(&self, name: &str) {
        self.shared.lock().upstreams.push(name.to_owned());
    }

    /// Provides a foreign function (`proxy_call_foreign_function`).
    pub fn add_foreign_function(
        &self,
        name: &str,
        f: impl Fn(&[u8]) -> Result<Vec<u8>, i32> + Send + Sync + 'static,
    ) {
        let f: ForeignFunction = Arc::new(f);
        self.shared.lock().foreign.insert(name.to_owned(), f);
    }

    /// Starts a VM as Envoy starts a worker's: instantiate, `_initialize`, root context,
    /// `proxy_on_vm_start`, `proxy_on_configure`. Returns the VM's index.
    pub fn start_vm(&mut self, options: VmOptions) -> Result<usize, HostError> {
        let index = self.vms.len();
        let vm = Vm::start(
            self.plugin,
            self.shared.clone(),
            index,
            options,
            self.call_timeout,
        )?;
        self.vms.push(vm);
        self.deliver_queues()?;
        Ok(index)
    }

    fn vm_mut(&mut self, vm: usize) -> Result<&mut Vm, HostError> {
        self.vms.get_mut(vm).ok_or(HostError::NoSuchVm(vm))
    }

    /// Stops VM `vm` as Envoy stops a plugin: the root context's `proxy_on_done`, then its
    /// `proxy_on_delete`; its callouts in flight are cancelled, as Envoy cancels a deleted
    /// context's. Later calls on it fail with [`HostError::VmStopped`].
    pub fn stop_vm(&mut self, vm: usize) -> Result<(), HostError> {
        self.vm_mut(vm)?.stop()?;
        let mut sh = self.shared.lock();
        sh.http_calls.retain(|c| c.vm != vm);
        sh.grpc_calls.retain(|c| c.vm != vm);
        Ok(())
    }

    /// Runs one HTTP exchange through the filter on VM `vm`, with Envoy's callback order.
    pub fn send(&mut self, vm: usize, request: Request) -> Result<Exchange, HostError> {
        let ex = self.vm_mut(vm)?.send(request)?;
        self.deliver_queues()?;
        Ok(ex)
    }

    /// Continues a paused exchange (after the filter called `proxy_continue_stream` or sent a
    /// local reply, typically from an HTTP callout's response).
    pub fn resume(&mut self, vm: usize, exchange: Exchange) -> Result<Exchange, HostError> {
        let ex = self.vm_mut(vm)?.resume(exchange)?;
        self.deliver_queues()?;
        Ok(ex)
    }

    /// HTTP callouts waiting for a response.
    #[must_use]
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.shared.lock().http_calls.clone()
    }

    /// Delivers a scripted response to callout `token`.
    pub fn respond_http_call(
        &mut self,
        token: u32,
        response: HttpCallResponse,
    ) -> Result<(), HostError> {
        let call = self.take_call(token)?;
        self.vm_mut(call.vm)?
            .deliver_http_response(&call, Some(response))?;
        self.deliver_queues()
    }

    fn take_call(&self, token: u32) -> Result<HttpCall, HostError> {
        let mut sh = self.shared.lock();
        let pos = sh
            .http_calls
            .iter()
            .position(|c| c.token == token)
            .ok_or(HostError::NoSuchCall(token))?;
        Ok(sh.http_calls.remove(pos))
    }

    /// gRPC calls and streams the filter opened.
    #[must_use]
    pub fn grpc_calls(&self) -> Vec<GrpcCall> {
        self.shared.lock().grpc_calls.clone()
    }

    /// Answers gRPC call `token`: a message then status OK, or a status code and message.
    pub fn respond_grpc(
        &mut self,
        token: u32,
        result: Result<Vec<u8>, (u32, String)>,
    ) -> Result<(), HostError> {
        let call = {
            let mut sh = self.shared.lock();
            let pos = sh
                .grpc_calls
                .iter()
                .position(|c| c.token == token)
                .ok_or(HostError::NoSuchCall(token))?;
            sh.grpc_calls.remove(pos)
        };
        self.vm_mut(call.vm)?.deliver_grpc(&call, result)?;
        self.deliver_queues()
    }

    /// Advances the clock, firing ticks and callout timeouts in time order.
    pub fn advance(&mut self, by: Duration) -> Result<(), HostError> {
        let target = self
            .shared
            .lock()
            .clock_ns
            .saturating_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX));
        loop {
            let next_tick = self
                .vms
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.next_tick().map(|t| (t, i)))
                .min();
            let next_timeout = self
                .shared
                .lock()
                .http_calls
                .iter()
                .map(|c| (c.deadline_ns, c.token))
                .min();
            match (next_tick, next_timeout) {
                (Some((t, vm)), timeout) if t <= target && timeout.is_none_or(|(d, _)| t <= d) => {
                    self.shared.lock().clock_ns = t;
                    self.vm_mut(vm)?.tick()?;
                }
                (_, Some((d, token))) if d <= target => {
                    self.shared.lock().clock_ns = d;
                    let call = self.take_call(token)?;
                    // Envoy reports a failed or timed-out callout as a response with nothing in it.
                    self.vm_mut(call.vm)?.deliver_http_response(&call, None)?;
                }
                _ => break,
            }
            self.deliver_queues()?;
        }
        self.shared.lock().clock_ns = target;
        Ok(())
    }

    /// Tells queue owners about new items (`proxy_on_queue_ready`), as Envoy's dispatcher does.
    fn deliver_queues(&mut self) -> Result<(), HostError> {
        for _ in 0..1000 {
            let ready: Vec<u32> = std::mem::take(&mut self.shared.lock().ready_queues);
            if ready.is_empty() {
                return Ok(());
            }
            for id in ready {
                let owner = {
                    let sh = self.shared.lock();
                    (id as usize)
                        .checked_sub(1)
                        .and_then(|i| sh.queues.get(i))
                        .map(|q| (q.owner_vm, q.owner_context))
                };
                if let Some((vm, ctx)) = owner {
                    self.vm_mut(vm)?.queue_ready(ctx, id)?;
                }
            }
        }
        Ok(())
    }

    /// Everything logged so far, by all VMs.
    #[must_use]
    pub fn logs(&self) -> Vec<LogEntry> {
        self.shared.lock().logs.clone()
    }

    /// Whether any log line contains `text`.
    #[must_use]
    pub fn logged(&self, text: &str) -> bool {
        self.shared
            .lock()
            .logs
            .iter()
            .any(|l| l.message.contains(text))
    }

    /// A metric by name.
    #[must_use]
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.shared
            .lock()
            .metrics
            .iter()
            .find(|m| m.name == name)
            .cloned()
    }

    /// All metrics.
    #[must_use]
    pub fn metrics(&self) -> Vec<Metric> {
        self.shared.lock().metrics.clone()
    }

    /// Shared data under `key`, with its CAS value.
    #[must_use]
    pub fn shared_data(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.shared.lock().shared_data.get(key).cloned()
    }

    /// Sets shared data from outside the VMs (as another plugin would).
    pub fn set_shared_data(&self, key: &[u8], value: &[u8]) {
        let mut sh = self.shared.lock();
        sh.next_token = sh.next_token.wrapping_add(1).max(1);
        let cas = sh.next_token;
        sh.shared_data.insert(key.to_vec(), (value.to_vec(), cas));
    }

    /// Number of times the module called `proxy_done` on VM `vm`.
    pub fn done_calls(&self, vm: usize) -> Result<u32, HostError> {
        self.vms
            .get(vm)
            .map(Vm::done_calls)
            .ok_or(HostError::NoSuchVm(vm))
    }
}
