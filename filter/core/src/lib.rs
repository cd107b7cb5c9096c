//! Host-agnostic core of the Portcullis filter.
//!
//! Nothing here knows about proxy-wasm: the glue crate (`portcullis-filter`) hands the core a
//! [`RequestView`] and the current time, and turns the returned [`Outcome`] into host calls.
//! Everything the filter does per request is decided here, so it can be tested and benchmarked
//! natively, in the harness, and inside Envoy with the same code.
//!
//! Modules by concern:
//! - [`config`]: the plugin configuration (JSON), compiled by [`snapshot`] into an immutable
//!   [`Snapshot`] that [`engine`] swaps whole.
//! - [`engine`]: the per-request entry point; [`decision`]: verdicts and local replies;
//!   [`effects`]: what a host does with a decision (counters, log lines, upstream edits).
//! - [`auth`]: token sources, JWS parsing, key sets, verification, issuers, auth routes.
//! - [`authz`]: HTTP → Cedar, the policy sets per tenant, the policy index, entity slices.
//! - [`http`]: the host boundary ([`RequestView`]), header maps, claim headers upstream.
//! - [`cache`]: the verified-token and decision caches.
//! - [`bundle`]: the policy bundle, its incremental parse, compiled policies, signed documents.
//! - [`sync`]: following policy-sync (the agent, acceptance of documents, decision logs).
//! - [`metrics`]: stat names and their tag rules; [`duration`]: durations in configuration.

pub mod auth;
pub mod authz;
pub mod bundle;
pub mod cache;
pub mod config;
pub mod decision;
pub mod duration;
pub mod effects;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod snapshot;
pub mod sync;

pub use auth::host_crypto::{Digest, HostCrypto};
pub use bundle::{Bundle, BundleError, BundleWire};
pub use config::{ConfigError, FilterConfig};
pub use decision::{AuthError, DecisionError, LocalReply, Outcome, Verdict};
pub use engine::{CacheUse, Decided, Engine};
pub use http::header_map::{HeaderMap, HeaderMapError};
pub use http::request::{RequestView, StaticRequest};
pub use snapshot::{DocumentError, Snapshot, Start};
