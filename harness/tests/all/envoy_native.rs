//! End to end with the native build: real Envoy loading `libportcullis_native.so` through its
//! HTTP dynamic-module filter, the same conformance set as the Wasm module in Envoy and the
//! wasmtime host (`envoy_e2e::decide_demo_cases`).

use std::error::Error;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::{demo, paths};
use portcullis_core::metrics;
use serde_json::json;

use crate::envoy_e2e::decide_demo_cases;

type TestResult = Result<(), Box<dyn Error>>;

#[test]
fn native_config_validates() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let cfg = envoy::native_config(
        Ports::free()?,
        &paths::native()?,
        &demo::plugin_config(&issuer),
    )?;
    envoy::validate(&cfg)?;
    Ok(())
}

/// The conformance set through Envoy with the native module, at 2 workers (one snapshot shared
/// by both, an engine each).
#[test]
fn decisions_through_the_native_module() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let ports = Ports::free()?;
    let cfg = envoy::native_config(ports, &paths::native()?, &demo::plugin_config(&issuer))?;
    let mut proxy = Envoy::start(&cfg, ports, 2)?;
    proxy.wait_ready(Duration::from_secs(60))?;
    let log = proxy.log();
    // Envoy compares the ABI version the module reports with its own.
    assert!(
        log.contains(&format!(
            "Dynamic module ABI version {} matched",
            envoy::NATIVE_ABI_VERSION
        )),
        "log: {log}"
    );
    decide_demo_cases(&proxy, &issuer)?;
    let stat = |m: &str| envoy::native_stat_name(m);
    assert_eq!(proxy.wait_stat(&stat(metrics::ALLOWED), 2)?, Some(2));
    assert_eq!(proxy.wait_stat(&stat(metrics::DENIED), 2)?, Some(2));
    assert_eq!(
        proxy.wait_stat(&stat(metrics::UNAUTHENTICATED), 8)?,
        Some(8)
    );
    // Prometheus sees the same names and labels as from the Wasm module (the template's
    // runtime flag strips Envoy's prefix for a dynamic module's stats; the policy id is a
    // label the module defines, no stats_tags rule needed).
    let prom = proxy.admin("/stats/prometheus")?;
    for line in [
        "portcullis_allowed_total{} 2",
        "portcullis_denied_by_policy_total{policy_id=\"admin-area-admins-only\"} 1",
        "portcullis_host_verify_confirmed_total{} 5",
    ] {
        assert!(prom.lines().any(|l| l == line), "{line} not in {prom}");
    }
    Ok(())
}

/// A configuration the core refuses makes Envoy refuse the filter: Envoy does not start
/// rather than serve without it.
#[test]
fn invalid_configuration_fails_closed_natively() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = demo::plugin_config(&issuer);
    cfg["bundle"]["policies"] = json!("permit(principal, action, resource"); // does not parse
    let ports = Ports::free()?;
    let yaml = envoy::native_config(ports, &paths::native()?, &cfg)?;
    let mut proxy = Envoy::start(&yaml, ports, 1)?;
    let err = proxy
        .wait_ready(Duration::from_secs(60))
        .err()
        .ok_or("Envoy served with a broken filter configuration")?;
    assert!(err.to_string().contains("exited"), "{err}");
    assert!(
        proxy
            .log()
            .contains("configuration refused: bundle refused: policies do not parse"),
        "log: {}",
        proxy.log()
    );
    Ok(())
}
