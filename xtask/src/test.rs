//! `cargo xtask test` and `cargo xtask bench`: what they install and build, then cargo.

use std::process::Command;
use std::time::Instant;

use harness::paths;

use crate::Result;
use crate::install::{apt_install, ensure_envoy, ensure_manifest_validator, ensure_postgres};
use crate::process::{cargo, run};

/// `cargo xtask test`: tools, wasm, formatting and lints, then every test.
pub fn test(extra: &[String]) -> Result {
    let started = Instant::now();
    let envoy = ensure_envoy()?;
    let postgres = ensure_postgres()?;
    // The image, deployment and monitoring tests run these tools.
    apt_install(&["umoci", "skopeo", "docker-registry", "prometheus"])?;
    ensure_manifest_validator()?;
    let built = crate::wasm::build_all()?;
    // The end-to-end tests of the native module load it.
    let native = crate::native::build(crate::native::Profile::Test)?;
    // The container image test runs it.
    let server = crate::server::build(crate::server::Profile::ImageTest)?;
    eprintln!("xtask: checking formatting and lints");
    let has = |tool: &str| {
        cargo()
            .args([tool, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("fmt") || !has("clippy") {
        run(
            Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]),
            "rustup component add rustfmt clippy",
        )?;
    }
    run(
        cargo().args(["fmt", "--all", "--check"]),
        "cargo fmt --check",
    )?;
    run(
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy",
    )?;
    if let Some(target) = crate::wasm::rustup_target() {
        // The glue and the harness's plugins, then the Cedar-only module's other build
        // (Cedar's JSON form, priced by size in the docs).
        let lints: [(&[&str], Option<&str>, &str); 2] = [
            (
                &["portcullis-filter", "abi-probe", "cedar-floor"],
                None,
                "cargo clippy (wasm glue)",
            ),
            (
                &["cedar-floor"],
                Some("json"),
                "cargo clippy (cedar-floor, json)",
            ),
        ];
        for (packages, features, what) in lints {
            let mut cmd = cargo();
            cmd.args(["clippy", "--release", "--quiet", "--target", target]);
            for package in packages {
                cmd.args(["-p", package]);
            }
            if let Some(features) = features {
                cmd.args(["--features", features]);
            }
            run(cmd.args(["--", "-D", "warnings"]), what)?;
        }
    }
    eprintln!("xtask: running tests");
    run(
        cargo()
            .args(["test", "--workspace"])
            .args(extra)
            .env(paths::WASM_ENV, &built.filter)
            .env(paths::PROBE_ENV, &built.probe)
            .env(paths::NATIVE_ENV, &native)
            .env(paths::STATIC_POLICY_SYNC_ENV, &server)
            .env(paths::ENVOY_ENV, &envoy)
            .env(harness::postgres::PG_BIN_ENV, &postgres),
        "cargo test",
    )?;
    eprintln!("xtask: all tests passed in {:.0?}", started.elapsed());
    Ok(())
}

/// `cargo xtask bench`: the criterion benchmarks with the built modules.
pub fn bench(args: &[String]) -> Result {
    let built = crate::wasm::build_all()?;
    run(
        cargo()
            .args(["bench", "-p", "bench", "--"])
            .args(args)
            .env(paths::WASM_ENV, &built.filter)
            .env(paths::PROBE_ENV, &built.probe),
        "cargo bench",
    )
}
