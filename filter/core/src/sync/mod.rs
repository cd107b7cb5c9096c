//! Following policy-sync: the `sync` configuration, the checks a received document must pass,
//! the lease that lets exactly one VM per Envoy poll, retry backoff and the sync's health. All
//! host-agnostic: the glue supplies the clock, the shared data and the HTTP calls. [`follow`]
//! is what a glue drives: the agent and what each of its events means.

pub mod accept;
pub mod agent;
pub mod backoff;
pub mod config;
pub mod decision_log;
pub mod follow;
pub mod health;
pub mod lease;

pub use accept::{SyncFailure, accept};
pub use config::{SyncConfig, SyncSettings, WhenStale};
