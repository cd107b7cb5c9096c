//! `cargo xtask measure`: size of the filter, Envoy start-up time, memory, a sequential request
//! loop and a load run (wrk), for Envoy without a filter, with Envoy's native `jwt_authn` + `rbac`
//! and with Portcullis, measured in the same run.
//!
//! [`run`] runs the phases in turn and hands what each measured to [`report`], which prints the
//! tables. The phases are [`startup`], [`sequential`] (which starts the Envoys the later phases
//! share), [`load`], [`shared`] and [`first_sight`]; none imports another. They build on
//! [`variant`] (what each Envoy runs), [`wrk`] (running the load generator and reading its
//! report), [`cpu`] (pinning and Envoy's CPU time) and [`counters`] (the filters' counts that
//! must cover every answer).

mod counters;
mod cpu;
mod first_sight;
mod load;
mod report;
mod sequential;
mod shared;
pub mod startup;
mod variant;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::devkeys::DevIssuer;

use crate::Result;
use variant::Tokens;

/// What `cargo xtask measure` does.
#[derive(Debug)]
pub struct Options {
    /// Sequential requests per variant.
    pub requests: u32,
    /// The filter to measure (else the default build).
    pub wasm: Option<PathBuf>,
    /// Length of each measured wrk run; 0 skips the load runs (as do 0 rounds and 0 shared rounds).
    pub seconds: u32,
    /// wrk connections.
    pub connections: u32,
    /// Measured wrk runs per variant.
    pub rounds: u32,
    /// Distinct tokens of the first-sight run; 0 skips it.
    pub first_sight_tokens: u32,
    /// Rounds with every variant under load at once on one shared CPU; 0 skips them.
    pub shared_rounds: u32,
    /// The start-up and memory phase (no worker counts: skipped).
    pub startup: startup::Options,
    /// Only that phase.
    pub only_startup: bool,
}

/// Warm-up before each measured wrk run (V8 tiers up, caches fill).
const WARMUP_SECONDS: u32 = 3;
/// Longer than the filter's metrics flush period (1 s): counters read after this include every
/// answered request.
const COUNTS_SETTLE: Duration = Duration::from_millis(1500);
/// The path every measured request asks for.
const LOAD_PATH: &str = "/api/hello";

/// Measures and prints the tables.
pub fn run(opts: &Options) -> Result {
    crate::install::ensure_envoy()?;
    let wrk = if opts.seconds > 0 && (opts.rounds > 0 || opts.shared_rounds > 0) {
        Some(crate::install::ensure_wrk()?)
    } else {
        None
    };
    let built = crate::wasm::build_all()?;
    let wasm = opts.wasm.clone().unwrap_or(built.filter);
    let noop_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let noop = noop_dir.path().join("noop.wasm");
    crate::wasm::trimmed_copy(&built.probe, &noop)?;
    print_size(&wasm)?;
    let native = crate::native::build(crate::native::Profile::Release)?;
    print_size(&native)?;
    let modules = variant::Modules {
        wasm: &wasm,
        noop: &noop,
        native: &native,
    };

    if !opts.startup.workers.is_empty() {
        // Trimmed like the filter and the no-op module, so that all three are priced alike.
        let floor = noop_dir.path().join("cedar-floor.wasm");
        crate::wasm::trimmed_copy(&crate::wasm::build_floor()?, &floor)?;
        print_size(&floor)?;
        // First, while no other Envoy runs.
        startup::run(&opts.startup, &modules, &floor)?;
    }
    if opts.only_startup {
        return Ok(());
    }

    let issuer = DevIssuer::generate().map_err(|e| e.to_string())?;
    let other = DevIssuer::generate().map_err(|e| e.to_string())?;
    let tokens = Tokens {
        bob: issuer.token("bob", &["staff"]),
        alice: issuer.token("alice", &["admins"]),
        forged: other.token("bob", &["admins"]),
    };
    let auth = format!("Bearer {}", tokens.bob);
    let sequential::Sequential { rows, mut proxies } =
        sequential::run(opts.requests, modules, &issuer, &tokens, &auth)?;
    report::sequential(&rows, opts);

    if let Some(wrk) = &wrk {
        // Pins the Envoys and warms them up, whether or not alternating rounds follow.
        let loads = load::run(&proxies, wrk, opts, &auth)?;
        if opts.rounds > 0 {
            report::load(&loads, opts);
        }
        if opts.shared_rounds > 0 {
            match cpu::pinning() {
                Some(p) => report::shared(&shared::run(&proxies, wrk, opts, &auth, &p)?, opts),
                None => println!(
                    "\nshared-CPU rounds: skipped (taskset unusable or fewer than two CPUs)"
                ),
            }
        }
        if opts.first_sight_tokens > 0 {
            let first_sight = first_sight::run(&proxies, wrk, opts, &issuer, &wasm, &native)?;
            report::first_sight(&first_sight.rows, opts);
            first_sight.signature_check_times()?;
        }
    }
    for (variant, proxy) in &mut proxies {
        if !proxy.is_running() {
            return Err(format!(
                "{}: Envoy exited during the run:\n{}",
                variant.name(),
                proxy.log()
            ));
        }
    }
    Ok(())
}

/// Prints the filter's size, plain and gzipped.
fn print_size(wasm: &Path) -> Result {
    let size = std::fs::metadata(wasm).map_err(|e| e.to_string())?.len();
    let gz = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(wasm)
        .output()
        .map_err(|e| format!("gzip: {e}"))?
        .stdout
        .len();
    println!(
        "filter: {} — {} KiB, {} KiB gzipped",
        wasm.display(),
        size / 1024,
        gz / 1024
    );
    Ok(())
}
