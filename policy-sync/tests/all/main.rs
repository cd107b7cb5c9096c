//! policy-sync tests: the CLI, and the service against a real Postgres (a private cluster
//! started by `support`).

mod admin;
mod bundle_cli;
mod cli;
mod decisions;
pub(crate) mod edge;
mod image;
mod jwks_fetch;
mod keys_api;
mod limits;
mod long_poll;
mod operations_port;
mod publishing;
mod resilience;
mod support;
mod tracing_export;
