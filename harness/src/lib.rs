//! Test and demo harness for Portcullis.
//!
//! - [`envoy`]: renders the Envoy configuration in `envoy/` and runs a real Envoy with the built
//!   filter, stopping it on drop.
//! - [`devkeys`]: a development issuer: an RSA key generated on the spot (never stored) that
//!   mints RS256 tokens, and its public JWK Set.
//! - [`demo`]: the embedded default plugin configuration the demo and end-to-end tests use.
//! - [`paths`]: where the built `.wasm` and the Envoy binary are.
//! - [`oci`]: the filter as an OCI image in Istio's Wasm image formats, and a private registry.
//! - [`server_image`]: policy-sync as a container image (its static binary and an account).
//! - [`serve`]: a loopback HTTP server answering every request with one fixed body (a module
//!   server for Envoy's `remote` Wasm source, and upstreams).
//! - [`process`]: running tools to completion or fed on stdin, and daemons waited for over
//!   HTTP and stopped on drop.
//! - [`prometheus`]: the shipped rules and dashboard as data, and a real Prometheus scraping
//!   and evaluating them.
//! - [`postgres`]: a private Postgres cluster (initdb/pg_ctl) for tests and the live demo.
//! - [`trim`]: the module without the callbacks the filter leaves to the SDK's defaults.
//! - `host` (feature `wasm-host`, on by default): a wasmtime host for the proxy-wasm ABI that
//!   runs the built filter without Envoy.

pub mod demo;
pub mod devkeys;
pub mod envoy;
pub mod fixtures;
#[cfg(feature = "wasm-host")]
pub mod host;
pub mod http;
pub mod oci;
pub mod paths;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod serve;
pub mod server_image;
pub mod trim;

/// Errors from the harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Missing(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("RSA: {0}")]
    Rsa(#[from] rsa::Error),
    #[error("Envoy: {0}")]
    Envoy(String),
    #[error("template: {0}")]
    Template(String),
}

/// Result alias for the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;
