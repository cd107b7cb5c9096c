//! The event hooks Envoy looks up in the module (`envoy_dynamic_module_on_*`). Envoy refuses
//! a module that lacks any of the HTTP filter's hooks, so all of them are here; those the
//! filter has no use for let the stream go on.
//!
//! No panic unwinds into Envoy: every hook runs its body under `catch_unwind`, and a request
//! whose decision panicked is answered 503 (fail closed). The module is built with
//! `panic = "unwind"` (`cargo xtask native`) for that.
#![expect(
    unsafe_code,
    reason = "exported C entry points, called by Envoy with the pointers the ABI describes"
)]

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::abi::{self, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr};
use crate::config::SharedConfig;
use crate::filter;
use crate::host::{ConfigHandle, EnvoyLog, Stream};

static LOGGER: EnvoyLog = EnvoyLog;

/// Runs `body`; a panic is logged and turned into `fallback`.
fn guarded<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        log::error!("portcullis: panic in {hook}; failing closed");
        fallback
    })
}

/// The configuration behind a module pointer Envoy hands back (the one `config_new` made).
///
/// # Safety
/// `ptr` must come from `envoy_dynamic_module_on_http_filter_config_new` and not have been
/// destroyed; Envoy destroys a configuration only after every filter made from it.
unsafe fn config_ref<'a>(ptr: *const c_void) -> Option<&'a Arc<SharedConfig>> {
    // SAFETY: the caller's promise: a live `Box<Arc<SharedConfig>>` from `config_new`.
    unsafe { ptr.cast::<Arc<SharedConfig>>().as_ref() }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    // `log` can be set once per process; a second set (never expected) changes nothing.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    abi::ABI_VERSION.as_ptr()
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded("filter configuration", std::ptr::null(), || {
        // SAFETY: both come from Envoy for this hook.
        let (json, envoy) = unsafe { (config.bytes(), ConfigHandle::new(config_envoy)) };
        match SharedConfig::compile(json, envoy) {
            Ok(shared) => {
                if let Some(snapshot) = shared.current() {
                    log::info!(
                        "portcullis: configured (native) with {} issuer(s), bundle version {}",
                        snapshot.issuers().len(),
                        snapshot.bundle_version()
                    );
                }
                Box::into_raw(Box::new(Arc::new(shared)))
                    .cast_const()
                    .cast()
            }
            Err(e) => {
                // Envoy rejects the filter configuration: no request passes unchecked.
                log::error!("portcullis: configuration refused: {e}");
                std::ptr::null()
            }
        }
    })
}

/// The sync's tick, on Envoy's main thread (committed by the sync's own timer thread).
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoyPtr,
    config: *const c_void,
    _event_id: u64,
) {
    guarded("the sync's tick", (), || {
        // SAFETY: `config` is the configuration `config_new` made, alive while Envoy schedules.
        if let Some(shared) = unsafe { config_ref(config) }
            && let Some(sync) = &shared.sync
        {
            sync.on_tick(shared);
        }
    });
}

/// An answer from policy-sync to one of the sync's calls, on Envoy's main thread.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    config: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    guarded("policy-sync's answer", (), || {
        // SAFETY: `config` is the configuration `config_new` made; Envoy cancels a call whose
        // configuration is gone. The arrays hold the given counts of entries (or are null).
        let (shared, headers, chunks) = unsafe {
            (
                config_ref(config),
                slice_of(headers, headers_size),
                slice_of(body_chunks, body_chunks_size),
            )
        };
        if let Some(shared) = shared
            && let Some(sync) = &shared.sync
        {
            sync.on_answer(shared, callout_id, result, headers, chunks);
        }
    });
}

/// `len` entries at `ptr` (none for a null pointer).
///
/// # Safety
/// A non-null `ptr` must point at `len` initialised entries alive for the hook.
unsafe fn slice_of<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller's promise.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guarded("configuration teardown", (), || {
        if !config.is_null() {
            // SAFETY: Envoy destroys each configuration `config_new` made once, after its filters.
            drop(unsafe { Box::from_raw(config.cast_mut().cast::<Arc<SharedConfig>>()) });
        }
    });
}

/// A stream's filter is its configuration: the filter keeps nothing per stream (the decision
/// is made in one hook), so no allocation per request.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: FilterEnvoyPtr,
) -> *const c_void {
    config
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: the pointer is this hook's stream.
    let stream = unsafe { Stream::new(filter_envoy) };
    // SAFETY: `filter` is the configuration `filter_new` handed out.
    let config = unsafe { config_ref(filter) };
    let decided = catch_unwind(AssertUnwindSafe(|| {
        config.map(|config| filter::on_request_headers(config, stream))
    }));
    match decided {
        Ok(Some(status)) => status,
        Ok(None) => filter::unavailable(None, stream, "no configuration in force"),
        Err(_) => guarded("the panic's reply", abi::status::STOP_ITERATION, || {
            filter::unavailable(config.map(|c| &**c), stream, "a decision panicked")
        }),
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    abi::status::CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) -> u32 {
    abi::status::CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    abi::status::CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    abi::status::CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) -> u32 {
    abi::status::CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) {
}

/// Nothing to free: the stream's filter is its configuration.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: *const c_void) {}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _event_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) {
}
