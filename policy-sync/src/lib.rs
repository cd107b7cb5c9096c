//! Portcullis policy-sync: Postgres is the source of truth; this service turns it into
//! versioned, validated, signed bundles and hands every change to waiting filters at once.

pub mod api;
pub mod db;
pub mod dev_token;
pub mod diagnostics;
pub mod hub;
pub mod jwks_fetch;
pub mod listener;
pub mod metrics;
pub mod publish;
pub mod service;
pub mod signing;
pub mod source;
pub mod store;
pub mod telemetry;
