//! End to end with the native build: real Envoy loading `libportcullis_native.so` through its
//! HTTP dynamic-module filter, the same conformance set as the Wasm module in Envoy and the
//! wasmtime host (`envoy_e2e::decide_demo_cases`).

use std::error::Error;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, EdgePorts, Envoy, Ports};
use harness::fixtures::UPSTREAM_BODY;
use harness::serve::Static;
use harness::{demo, http, paths};
use portcullis_core::metrics;

use crate::envoy_e2e::{decide_demo_cases, refused_at_start, tenants_dry_run_and_source_address};

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

/// Tenants, dry run, the client address (Envoy's `source.address` attribute) in the Cedar
/// context and the decision-time histogram, with the native module.
#[test]
fn tenants_dry_run_and_source_address_natively() -> TestResult {
    tenants_dry_run_and_source_address(
        |ports, cfg| Ok(envoy::native_config(ports, &paths::native()?, cfg)?),
        envoy::native_stat_name,
    )
}

/// A configuration the core refuses makes Envoy refuse the filter: Envoy does not start
/// rather than serve without it.
#[test]
fn invalid_configuration_fails_closed_natively() -> TestResult {
    refused_at_start(|ports, cfg| Ok(envoy::native_config(ports, &paths::native()?, cfg)?))
}

/// A process without Envoy's dynamic-module callbacks (this test binary, as an Envoy of
/// another ABI that lacks one would be) cannot load the module at all: it is linked with
/// immediate binding, so the loader refuses it, naming the missing callback, before any of its
/// code runs; nothing crashes. In Envoy that refusal rejects the filter configuration.
#[test]
fn a_host_without_the_callbacks_cannot_load_the_module() -> TestResult {
    let path = std::ffi::CString::new(paths::native()?.display().to_string())?;
    #[expect(unsafe_code, reason = "dlopen and dlerror, as Envoy loads a module")]
    // SAFETY: a NUL-terminated path; dlerror's text is copied before any other dl call.
    let (handle, error) = unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        let error = libc::dlerror();
        let error = (!error.is_null()).then(|| {
            std::ffi::CStr::from_ptr(error)
                .to_string_lossy()
                .into_owned()
        });
        (handle, error)
    };
    assert!(handle.is_null(), "the module loaded without Envoy");
    let error = error.ok_or("no loader error")?;
    assert!(
        error.contains("undefined symbol: envoy_dynamic_module_callback_"),
        "{error}"
    );
    Ok(())
}

/// The native gateway sample (`envoy/native-gateway.yaml`) as a user would run it: validated,
/// started, the conformance set on the protected routes, the public route without a token.
#[test]
fn native_gateway_sample_decides_the_fixtures() -> TestResult {
    const SITE_BODY: &str = "hello from the public site\n";
    let issuer = DevIssuer::generate()?;
    let api = Static::start(UPSTREAM_BODY.into(), "text/plain")?;
    let site = Static::start(SITE_BODY.into(), "text/plain")?;
    let ports = Ports::free()?;
    let edge = EdgePorts {
        api: api.port(),
        site: site.port(),
        module: 0,
    };
    let yaml = envoy::native_gateway_config(
        ports,
        edge,
        &paths::native()?,
        &demo::plugin_config(&issuer),
    )?;
    envoy::validate(&yaml)?;
    let mut proxy = Envoy::start(&yaml, ports, 2)?;
    proxy.wait_ready(Duration::from_secs(60))?;
    decide_demo_cases(&proxy, &issuer)?;
    let resp = http::agent(Duration::from_secs(10))
        .get(proxy.url("/"))
        .call()?;
    assert_eq!(resp.status(), 200);
    assert_eq!(http::text(resp), SITE_BODY);
    Ok(())
}

/// The C types of the module's event hooks (filter/native/src/hooks.rs), as Envoy spells the
/// function types it looks up (`getFunctionPointer<T>` names `T` in the binary's text).
const HOOK_TYPES: [(&str, &str); 13] = [
    ("on_program_init", "const char *(*)()"),
    (
        "on_http_filter_config_new",
        "const void *(*)(void *, envoy_dynamic_module_type_envoy_buffer, envoy_dynamic_module_type_envoy_buffer)",
    ),
    (
        "on_http_filter_config_destroy, _destroy",
        "void (*)(const void *)",
    ),
    (
        "on_http_filter_new",
        "const void *(*)(const void *, void *)",
    ),
    (
        "on_http_filter_request_headers",
        "envoy_dynamic_module_type_on_http_filter_request_headers_status (*)(void *, const void *, bool)",
    ),
    (
        "on_http_filter_request_body",
        "envoy_dynamic_module_type_on_http_filter_request_body_status (*)(void *, const void *, bool)",
    ),
    (
        "on_http_filter_request_trailers",
        "envoy_dynamic_module_type_on_http_filter_request_trailers_status (*)(void *, const void *)",
    ),
    (
        "on_http_filter_response_headers",
        "envoy_dynamic_module_type_on_http_filter_response_headers_status (*)(void *, const void *, bool)",
    ),
    (
        "on_http_filter_http_callout_done, _config_http_callout_done",
        "void (*)(void *, const void *, unsigned long, envoy_dynamic_module_type_http_callout_result, envoy_dynamic_module_type_envoy_http_header *, unsigned long, envoy_dynamic_module_type_envoy_buffer *, unsigned long)",
    ),
    (
        "on_http_filter_http_stream_headers",
        "void (*)(void *, const void *, unsigned long, envoy_dynamic_module_type_envoy_http_header *, unsigned long, bool)",
    ),
    (
        "on_http_filter_http_stream_data",
        "void (*)(void *, const void *, unsigned long, const envoy_dynamic_module_type_envoy_buffer *, unsigned long, bool)",
    ),
    (
        "on_http_filter_http_stream_reset",
        "void (*)(void *, const void *, unsigned long, envoy_dynamic_module_type_http_stream_reset_reason)",
    ),
    (
        "on_http_filter_scheduled, _config_scheduled, _http_stream_complete",
        "void (*)(void *, const void *, unsigned long)",
    ),
];

/// The module's hooks have the types the Envoy the project ships looks them up with (a
/// different Envoy, or a hook declared wrongly, fails here before any request is sent).
#[test]
fn native_hooks_have_the_types_envoy_looks_up() -> TestResult {
    let binary = std::fs::read(paths::envoy()?)?;
    let text = String::from_utf8_lossy(&binary);
    for (hook, ty) in HOOK_TYPES {
        let named = format!("[T = {ty}]");
        assert!(text.contains(&named), "{hook}: Envoy looks up no {ty}");
    }
    Ok(())
}
