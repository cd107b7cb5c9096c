//! The proxy-wasm callbacks this glue leaves to the SDK's do-nothing defaults.
//!
//! The SDK exports every callback, and a host calls each one it finds, for every request
//! (Envoy: request body and trailers, response headers, body and trailers, log, done), skipping
//! those the module does not export. Each call into V8 costs about a microsecond, so
//! `cargo xtask wasm` removes these from the built module's exports (`harness::trim`, which
//! includes this file). The list lives here, beside the code that implements the others: a
//! callback the glue starts implementing must leave it, and a harness test fails while the glue
//! defines the trait method of a callback listed here.
//!
//! This file is not part of the module; it holds data only.

/// Each callback left to the SDK, with the context-trait method that would implement it.
pub const UNUSED_CALLBACKS: [(&str, &str); 7] = [
    ("proxy_on_request_body", "on_http_request_body"),
    ("proxy_on_request_trailers", "on_http_request_trailers"),
    ("proxy_on_response_headers", "on_http_response_headers"),
    ("proxy_on_response_body", "on_http_response_body"),
    ("proxy_on_response_trailers", "on_http_response_trailers"),
    ("proxy_on_log", "on_log"),
    ("proxy_on_done", "on_done"),
];
