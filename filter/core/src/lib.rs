//! Host-agnostic core of the Portcullis filter.
//!
//! Nothing here knows about proxy-wasm: the glue crate (`portcullis-filter`) hands the core a
//! [`RequestView`] and the current time, and turns the returned [`Outcome`] into host calls.
//! Everything the filter does per request is decided here, so it can be tested and benchmarked
//! natively, in the harness, and inside Envoy with the same code.

pub mod action_routes;
pub mod bundle;
pub mod bundle_chunks;
pub mod bundle_policies;
pub mod cache_key;
pub mod config;
pub mod decision;
pub mod decision_cache;
pub mod duration;
pub mod engine;
pub mod entity_slice;
pub mod extractor;
pub mod header_map;
pub mod headers;
pub mod host_crypto;
pub mod index;
pub mod jwks;
pub mod metrics;
pub mod policy;
pub mod policy_reads;
pub mod policy_sets;
pub mod request;
pub mod routes;
pub mod signed_bundle;
pub mod snapshot;
pub mod sync;
pub mod token;
pub mod token_cache;
pub mod verifier;

pub use bundle::{Bundle, BundleError, BundleWire};
pub use config::{ConfigError, FilterConfig};
pub use decision::{AuthError, LocalReply, Outcome, Verdict};
pub use engine::{CacheUse, Decided, Engine};
pub use header_map::{HeaderMap, HeaderMapError};
pub use host_crypto::{Digest, HostCrypto};
pub use request::{RequestView, StaticRequest};
pub use snapshot::{DocumentError, Snapshot, Start};
