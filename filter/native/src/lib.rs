//! Portcullis as an Envoy dynamic module: the same `portcullis-core` engine as the Wasm
//! module, loaded natively into Envoy's HTTP dynamic-module filter.
//!
//! Thin glue, like the Wasm glue: the same configuration JSON, replies, headers and stats; no
//! decision logic here. What differs is what a native library can do: one immutable snapshot
//! per Envoy filter configuration, shared by every worker (`Arc`), with a per-worker engine
//! (caches) over it; signature checks with ring (`portcullis_core::auth::native_crypto`);
//! following policy-sync from Envoy's main thread, with one compile per version for the whole
//! process.
//!
//! - `abi`: the declarations of Envoy's ABI the glue uses (and the ABI version).
//! - `host`: safe wrappers over those callbacks.
//! - `hooks`: the entry points Envoy calls, each guarded against panics.
//! - `config`: the shared configuration and the per-worker engines; `stats`: its stat ids.
//! - `filter`: one request through the core.
//! - `sync`: following policy-sync on Envoy's main thread, one poller per process.

mod abi;
mod config;
mod filter;
mod hooks;
mod host;
mod stats;
mod sync;
