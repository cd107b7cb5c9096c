//! Safe wrappers over the callbacks in `abi.rs`: one Envoy stream, one Envoy filter
//! configuration, and Envoy's log.

use std::ffi::c_void;

use crate::abi::{self, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr, ModuleBuffer};

/// Headers as the ABI takes them (borrowing the names and values).
fn module_headers(headers: &[(&str, &str)]) -> Vec<abi::ModuleHeader> {
    headers
        .iter()
        .map(|(k, v)| abi::ModuleHeader {
            key_ptr: k.as_ptr(),
            key_length: k.len(),
            value_ptr: v.as_ptr(),
            value_length: v.len(),
        })
        .collect()
}

/// The stream a hook was called for; valid for that hook only (Envoy's pointer).
#[derive(Debug, Clone, Copy)]
pub struct Stream(FilterEnvoyPtr);

#[expect(
    unsafe_code,
    reason = "calls into Envoy with the stream pointer it handed to the current hook"
)]
impl Stream {
    /// # Safety
    /// `ptr` must be the `filter_envoy_ptr` Envoy passed to the hook running now.
    pub unsafe fn new(ptr: FilterEnvoyPtr) -> Self {
        Self(ptr)
    }

    /// The request headers, pseudo-headers included, as Envoy holds them (names and values
    /// borrowed from Envoy's header map until the hook returns or a header is changed).
    pub fn request_headers(&self) -> Option<Vec<EnvoyHeader>> {
        // SAFETY: the stream pointer is live for this hook.
        let size = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(self.0, abi::REQUEST_HEADERS)
        };
        let mut headers = vec![EnvoyHeader::EMPTY; size];
        // SAFETY: `headers` has room for the `size` entries Envoy just reported.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.0,
                abi::REQUEST_HEADERS,
                headers.as_mut_ptr(),
            )
        };
        ok.then_some(headers)
    }

    /// Sets request header `name` to `value`, or removes it (`None`).
    pub fn set_request_header(&self, name: &str, value: Option<&str>) {
        let value = value.map_or(ModuleBuffer::NULL, |v| ModuleBuffer::of(v.as_bytes()));
        // SAFETY: both buffers point at bytes alive for the call; Envoy copies them.
        let _ = unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                abi::REQUEST_HEADERS,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        };
    }

    /// Answers the request locally; the hook then stops the filter chain.
    pub fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let headers = module_headers(headers);
        // SAFETY: every pointer is to bytes alive for the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(b"portcullis"),
            );
        }
    }

    /// The client's address (`ip:port`), if Envoy knows it.
    pub fn source_address(&self) -> Option<String> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: `out` is a live local Envoy writes one buffer into.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                abi::ATTRIBUTE_SOURCE_ADDRESS,
                &raw mut out,
            )
        };
        if !ok {
            return None;
        }
        // SAFETY: Envoy filled `out` during this hook.
        String::from_utf8(unsafe { out.bytes() }.to_vec()).ok()
    }

    /// Adds `n` to counter `id` (with `label` for a labelled one).
    pub fn count(&self, id: usize, label: Option<&str>, n: u64) {
        let labels: Vec<ModuleBuffer> = label
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .into_iter()
            .collect();
        // SAFETY: the label buffers are alive for the call.
        let _ = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                self.0,
                id,
                labels.as_ptr(),
                labels.len(),
                n,
            )
        };
    }

    /// Records `value` in histogram `id`.
    pub fn record(&self, id: usize, value: u64) {
        // SAFETY: no labels; the stream pointer is live.
        let _ = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                self.0,
                id,
                std::ptr::null(),
                0,
                value,
            )
        };
    }
}

/// Envoy's filter configuration: alive as long as the module's configuration is, used on
/// Envoy's main thread only (`config_new`, the scheduled and callout hooks). Stats can be
/// defined only while `config_new` runs.
#[derive(Debug, Clone, Copy)]
pub struct ConfigHandle(ConfigEnvoyPtr);

/// Envoy's definition of a counter, gauge or histogram on a configuration.
type DefineStat = unsafe extern "C" fn(
    abi::ConfigEnvoyPtr,
    ModuleBuffer,
    *const ModuleBuffer,
    usize,
    *mut usize,
) -> u32;

/// Envoy's update of a counter or gauge on a configuration.
type UpdateStat =
    unsafe extern "C" fn(abi::ConfigEnvoyPtr, usize, *const ModuleBuffer, usize, u64) -> u32;

/// Labels as the ABI takes them.
fn buffers(labels: &[&str]) -> Vec<ModuleBuffer> {
    labels
        .iter()
        .map(|l| ModuleBuffer::of(l.as_bytes()))
        .collect()
}

#[expect(
    unsafe_code,
    reason = "calls into Envoy with the configuration pointer of the running config_new hook"
)]
impl ConfigHandle {
    /// # Safety
    /// `ptr` must be the `filter_config_envoy_ptr` of the `config_new` hook running now.
    pub unsafe fn new(ptr: *mut c_void) -> Self {
        Self(ptr)
    }

    /// Defines a stat with `define` (Envoy's counter, gauge or histogram definition), labelled
    /// by `labels`; `None` if Envoy refuses.
    fn define(&self, define: DefineStat, name: &str, labels: &[&str]) -> Option<usize> {
        let labels = buffers(labels);
        let mut id = 0usize;
        // SAFETY: name and labels are alive for the call; `id` is a live local.
        let result = unsafe {
            define(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                labels.as_ptr(),
                labels.len(),
                &raw mut id,
            )
        };
        (result == abi::METRICS_SUCCESS).then_some(id)
    }

    /// Defines a counter (labelled by `labels`); `None` if Envoy refuses.
    pub fn counter(&self, name: &str, labels: &[&str]) -> Option<usize> {
        self.define(
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter,
            name,
            labels,
        )
    }

    /// Defines a gauge labelled by `labels`; `None` if Envoy refuses.
    pub fn gauge(&self, name: &str, labels: &[&str]) -> Option<usize> {
        self.define(
            abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
            name,
            labels,
        )
    }

    /// Defines a histogram; `None` if Envoy refuses.
    pub fn histogram(&self, name: &str) -> Option<usize> {
        self.define(
            abi::envoy_dynamic_module_callback_http_filter_config_define_histogram,
            name,
            &[],
        )
    }

    /// Applies `update` (Envoy's counter increment or gauge set on a configuration) to stat
    /// `id` with `labels` and `value`.
    fn update(&self, update: UpdateStat, id: usize, labels: &[&str], value: u64) {
        let labels = buffers(labels);
        // SAFETY: the label buffers are alive for the call.
        let _ = unsafe { update(self.0, id, labels.as_ptr(), labels.len(), value) };
    }

    /// Adds `n` to counter `id` (outside any stream: the sync's counters).
    pub fn count(&self, id: usize, labels: &[&str], n: u64) {
        self.update(
            abi::envoy_dynamic_module_callback_http_filter_config_increment_counter,
            id,
            labels,
            n,
        );
    }

    /// Sets gauge `id`.
    pub fn set_gauge(&self, id: usize, labels: &[&str], value: u64) {
        self.update(
            abi::envoy_dynamic_module_callback_http_filter_config_set_gauge,
            id,
            labels,
            value,
        );
    }

    /// A scheduler for this configuration's main-thread events.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: the configuration pointer is live.
        let ptr =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(Scheduler(ptr))
    }

    /// Starts a call to `cluster`; its id, or why Envoy would not start it.
    pub fn callout(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let headers = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: every buffer is alive for the call (Envoy copies them); `id` is a live local.
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &raw mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        if result == abi::CALLOUT_INIT_SUCCESS {
            Ok(id)
        } else {
            Err(result)
        }
    }
}

/// `log` records to Envoy's log (its `dynamic_modules` logger, at Envoy's level for it).
#[derive(Debug)]
pub struct EnvoyLog;

fn envoy_level(level: log::Level) -> u32 {
    match level {
        log::Level::Error => abi::level::ERROR,
        log::Level::Warn => abi::level::WARN,
        log::Level::Info => abi::level::INFO,
        log::Level::Debug => abi::level::DEBUG,
        log::Level::Trace => abi::level::TRACE,
    }
}

#[expect(unsafe_code, reason = "Envoy's log callbacks, callable from any hook")]
impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // SAFETY: takes a level only.
        unsafe { abi::envoy_dynamic_module_callback_log_enabled(envoy_level(metadata.level())) }
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        // SAFETY: the message is alive for the call; Envoy copies it.
        unsafe {
            abi::envoy_dynamic_module_callback_log(
                envoy_level(record.level()),
                ModuleBuffer::of(text.as_bytes()),
            );
        }
    }

    fn flush(&self) {}
}

/// Envoy's scheduler for a configuration's main-thread events. Committing is the one thing
/// the ABI allows from any thread; it is deleted once, when the configuration goes.
#[derive(Debug)]
pub struct Scheduler(abi::ConfigSchedulerPtr);

// SAFETY: the ABI documents `..._config_scheduler_commit` as callable from any thread; the
// pointer is deleted only by `delete`, which takes the scheduler by value after the thread
// that commits has stopped.
#[expect(
    unsafe_code,
    reason = "the scheduler's commit is documented thread-safe"
)]
unsafe impl Send for Scheduler {}
// SAFETY: as above; `commit` is the only method taking `&self`.
#[expect(
    unsafe_code,
    reason = "the scheduler's commit is documented thread-safe"
)]
unsafe impl Sync for Scheduler {}

#[expect(unsafe_code, reason = "Envoy's scheduler callbacks")]
impl Scheduler {
    /// Asks Envoy to run `on_http_filter_config_scheduled` on its main thread.
    pub fn commit(&self, event: u64) {
        // SAFETY: the scheduler is live until `delete`.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event)
        }
    }

    /// Gives the scheduler back to Envoy.
    pub fn delete(self) {
        // SAFETY: deleted once; nothing commits to it any more.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}
