//! The built filter through the wasmtime host: the same fixtures as the real-Envoy test, plus
//! what only the host can check quickly (logs, several VMs, the controlled clock).

use std::error::Error;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use harness::demo;
use harness::devkeys::DevIssuer;
use harness::fixtures::{self, Observed};
use harness::host::{Host, HostError, LogLevel, Plugin, Request, VmOptions};
use portcullis_core::metrics;
use serde_json::json;

type TestResult = Result<(), Box<dyn Error>>;

/// Compiling the 3 MB module takes seconds: once per test binary.
pub fn plugin() -> Result<&'static Plugin, Box<dyn Error>> {
    static PLUGIN: OnceLock<Result<Plugin, String>> = OnceLock::new();
    PLUGIN
        .get_or_init(|| Plugin::built().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| e.clone().into())
}

/// A VM configured with the demo bundle, trusting `issuer`.
fn demo_vm(host: &mut Host<'_>, issuer: &DevIssuer) -> Result<usize, HostError> {
    host.start_vm(VmOptions::new(
        demo::plugin_config(issuer).to_string().into_bytes(),
    ))
}

fn request(method: &str, path: &str, token: Option<&str>) -> Request {
    let r = Request::new(method, path);
    match token {
        Some(t) => r.bearer(t),
        None => r,
    }
}

/// The conformance set, through the host (the same set runs through Envoy).
#[test]
fn decisions_through_the_host() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut host = Host::new(plugin()?);
    let vm = demo_vm(&mut host, &issuer)?;
    for case in fixtures::demo_cases(&issuer)? {
        let ex = host.send(vm, request(case.method, case.path, case.token.as_deref()))?;
        let seen = match &ex.local_reply {
            Some(r) => Observed {
                status: ex.status(),
                challenge: r.header("www-authenticate").map(str::to_owned),
                policies: r.header("x-portcullis-policies").map(str::to_owned),
                body: r.body_text(),
            },
            None => Observed {
                status: ex.status(),
                challenge: None,
                policies: None,
                body: ex
                    .response
                    .as_ref()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .unwrap_or_default(),
            },
        };
        case.check(&seen, "upstream")?;
        if case.status == 200 {
            // Allowed requests reach the upstream unchanged.
            assert_eq!(
                ex.upstream_header(":path"),
                Some(case.path),
                "{}",
                case.name
            );
        } else {
            assert!(
                ex.upstream_request.is_none(),
                "{}: denied request reached the upstream",
                case.name
            );
        }
    }
    assert!(host.logged("portcullis: configured with 1 issuer(s), bundle version 1"));
    Ok(())
}

#[test]
fn host_clock_drives_token_expiry() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut host = Host::new(plugin()?);
    let vm = demo_vm(&mut host, &issuer)?;
    // token: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","groups":["staff"],"iat":now,"exp":now+3600}
    let token = issuer.token("bob", &["staff"]);
    assert_eq!(
        host.send(vm, request("GET", "/x", Some(&token)))?.status(),
        200
    );
    // 3600 s of validity + 60 s leeway later, the same token is refused.
    host.set_time(SystemTime::now() + Duration::from_secs(3661));
    let ex = host.send(vm, request("GET", "/x", Some(&token)))?;
    assert_eq!(ex.status(), 401);
    let reply = ex.local_reply.ok_or("no reply")?;
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|h| h.contains("has expired"))
    );
    Ok(())
}

/// Two VMs decide alike, each formatting only the lines its host keeps (`proxy_get_log_level`,
/// read when the filter is configured): at Envoy's default level, info, an allowed request logs
/// nothing.
#[test]
fn several_vms_decide_alike_each_at_its_log_level() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut host = Host::new(plugin()?);
    let config = demo::plugin_config(&issuer).to_string().into_bytes();
    let trace = host.start_vm(VmOptions::new(config.clone()))?;
    let info = host.start_vm(VmOptions {
        log_level: LogLevel::Info,
        ..VmOptions::new(config)
    })?;
    let token = issuer.token("bob", &["staff"]);
    for vm in [trace, info] {
        let allowed = host.send(vm, request("GET", "/api", Some(&token)))?;
        assert_eq!(allowed.status(), 200);
        let denied = host.send(vm, request("GET", "/admin", Some(&token)))?;
        assert_eq!(denied.status(), 403);
    }
    let lines = |vm: usize, start: &str| {
        host.logs()
            .iter()
            .filter(|l| l.vm == vm && l.message.starts_with(start))
            .count()
    };
    for vm in [trace, info] {
        assert_eq!(lines(vm, "portcullis: configured with"), 1);
        assert_eq!(
            lines(vm, "portcullis: deny"),
            1,
            "denials are logged at info"
        );
    }
    assert_eq!(lines(trace, "portcullis: allow"), 1);
    assert_eq!(lines(info, "portcullis: allow"), 0, "a debug line at info");
    Ok(())
}

#[test]
fn refused_configuration_is_reported() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = demo::plugin_config(&issuer);
    cfg["unknownSetting"] = json!(true);
    let mut host = Host::new(plugin()?);
    let err = host
        .start_vm(VmOptions::new(cfg.to_string().into_bytes()))
        .err()
        .ok_or("configured")?;
    assert!(matches!(err, HostError::ConfigureRefused), "{err}");
    let logs = host.logs();
    let line = logs
        .iter()
        .find(|l| l.level == LogLevel::Error)
        .ok_or("no error logged")?;
    assert!(
        line.message.contains("unknown field `unknownSetting`"),
        "{}",
        line.message
    );
    Ok(())
}

#[test]
fn claim_headers_reach_the_upstream_and_spoofs_do_not() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = demo::plugin_config(&issuer);
    cfg["issuers"][0]["claimToHeaders"] = json!([{"claim": "sub", "header": "x-user"}]);
    cfg["issuers"][0]["forward"] = json!(false);
    let mut host = Host::new(plugin()?);
    let vm = host.start_vm(VmOptions::new(cfg.to_string().into_bytes()))?;
    // token: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"alice","groups":["admins"],...}
    let token = issuer.token("alice", &["admins"]);
    let ex = host.send(
        vm,
        request("GET", "/api", Some(&token)).header("x-user", "mallory"),
    )?;
    assert_eq!(ex.status(), 200);
    assert_eq!(ex.upstream_header("x-user"), Some("alice"));
    assert_eq!(
        ex.upstream_header("authorization"),
        None,
        "forward: false drops the token"
    );
    let upstream = ex.upstream_request.ok_or("no upstream request")?;
    assert_eq!(
        upstream
            .headers
            .iter()
            .filter(|(k, _)| k == "x-user")
            .count(),
        1
    );
    Ok(())
}

/// The Envoy end-to-end case of header values that are not UTF-8, through the wasmtime host:
/// such values are decided like any other, a client's copy of a written header is removed,
/// and the filter keeps deciding.
#[test]
fn header_values_that_are_not_utf8_are_decided_and_stop_nothing() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = demo::plugin_config(&issuer);
    cfg["issuers"][0]["claimToHeaders"] = json!([{"claim": "sub", "header": "x-user"}]);
    let mut host = Host::new(plugin()?);
    let vm = host.start_vm(VmOptions::new(cfg.to_string().into_bytes()))?;
    // bob: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","groups":["staff"],...}
    let bob = issuer.token("bob", &["staff"]);
    let get = || request("GET", "/api/hello", Some(&bob));

    let ex = host.send(vm, get().header_bytes("x-weird", b"caf\xe9\xff"))?;
    assert_eq!(ex.status(), 200);
    assert_eq!(
        ex.upstream_header_bytes("x-weird"),
        Some(&b"caf\xe9\xff"[..]),
        "the value reaches the upstream as it came"
    );
    let ex = host.send(
        vm,
        Request::new("GET", "/api/hello")
            .header_bytes("authorization", b"Bearer \xff\xfe.\xfd.\xfc"),
    )?;
    assert_eq!(ex.status(), 401);
    let reply = ex.local_reply.ok_or("no local reply")?;
    let challenge = reply.header("www-authenticate").ok_or("no challenge")?;
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let ex = host.send(vm, get().header_bytes("x-user", b"\xffadmin"))?;
    assert_eq!(ex.status(), 200);
    let upstream = ex.upstream_request.as_ref().ok_or("no upstream request")?;
    let users: Vec<&[u8]> = upstream
        .headers
        .iter()
        .filter(|(k, _)| k == "x-user")
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(users, [b"bob"], "only the filter's x-user");
    assert_eq!(
        host.send(vm, request("GET", "/api/hello", None))?.status(),
        401
    );
    assert_eq!(host.send(vm, get())?.status(), 200);
    Ok(())
}

/// The requests both counter tests count: bob's `GET /a` three times (200), his `GET /admin`
/// (403) and a token-less `GET /a` (401). Returns bob's token.
fn send_counted_mix(
    host: &mut Host<'_>,
    vm: usize,
    issuer: &DevIssuer,
) -> Result<String, Box<dyn Error>> {
    let token = issuer.token("bob", &["staff"]);
    for _ in 0..3 {
        assert_eq!(
            host.send(vm, request("GET", "/a", Some(&token)))?.status(),
            200
        );
    }
    assert_eq!(
        host.send(vm, request("GET", "/admin", Some(&token)))?
            .status(),
        403
    );
    assert_eq!(host.send(vm, request("GET", "/a", None))?.status(), 401);
    Ok(token)
}

#[test]
fn counters_for_decisions_and_the_token_cache() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut host = Host::new(plugin()?);
    let vm = demo_vm(&mut host, &issuer)?;
    send_counted_mix(&mut host, vm, &issuer)?;
    // Counts reach the host at the filter's next tick (once a second), not per request.
    assert_eq!(host.metric(metrics::ALLOWED).map(|m| m.value), Some(0));
    host.advance(Duration::from_secs(1))?;
    let value = |name: &str| host.metric(name).map(|m| m.value);
    assert_eq!(value(metrics::ALLOWED), Some(3));
    assert_eq!(value(metrics::DENIED), Some(1));
    assert_eq!(value(metrics::UNAUTHENTICATED), Some(1));
    // One verification, then hits for the same token (the no-token request touches no cache).
    assert_eq!(value(metrics::TOKEN_CACHE_MISSES), Some(1));
    assert_eq!(value(metrics::TOKEN_CACHE_HITS), Some(3));
    // GET /a decided once, then twice from the decision cache; GET /admin decided once.
    assert_eq!(value(metrics::DECISION_CACHE_MISSES), Some(2));
    assert_eq!(value(metrics::DECISION_CACHE_HITS), Some(2));
    Ok(())
}

/// Counts gathered since the filter's last tick reach the host when the VM stops (Envoy
/// deletes the root context when a plugin stops), instead of going with the VM.
#[test]
fn counts_since_the_last_tick_reach_the_host_when_the_vm_stops() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut host = Host::new(plugin()?);
    let vm = demo_vm(&mut host, &issuer)?;
    let token = send_counted_mix(&mut host, vm, &issuer)?;
    let value = |host: &Host<'_>, name: &str| host.metric(name).map(|m| m.value);
    assert_eq!(value(&host, metrics::ALLOWED), Some(0));
    host.stop_vm(vm)?;
    assert_eq!(value(&host, metrics::ALLOWED), Some(3));
    assert_eq!(value(&host, metrics::UNAUTHENTICATED), Some(1));
    assert_eq!(value(&host, metrics::DECISION_CACHE_HITS), Some(2));
    assert!(matches!(
        host.send(vm, request("GET", "/a", Some(&token))),
        Err(HostError::VmStopped)
    ));
    Ok(())
}

/// The module's exports and imports, by name.
fn module_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), Box<dyn std::error::Error>> {
    let (mut exports, mut imports) = (Vec::new(), Vec::new());
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload? {
            wasmparser::Payload::ExportSection(reader) => {
                for export in reader {
                    exports.push(export?.name.to_owned());
                }
            }
            wasmparser::Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    imports.push(import?.module.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok((exports, imports))
}

/// The exports Envoy sees: the SDK's allocator and no other (the glue takes ownership of the
/// header buffer the host fills through it, as a `Vec` of the global allocator; a second
/// allocation export, which a host might prefer, would break that), and none of the
/// per-request callbacks the filter leaves to the SDK's defaults (trimmed, each would cost a
/// call into V8 per request). The SDK names its allocator by target: `malloc` on
/// wasm32-unknown-unknown, `proxy_on_memory_allocate` elsewhere; the module's imports say which
/// target it was built for (only wasm32-wasip1 imports WASI).
#[test]
fn the_module_allocates_only_through_the_sdk_and_exports_no_unused_callbacks() -> TestResult {
    let bytes = std::fs::read(harness::paths::wasm()?)?;
    let (exports, imports) = module_names(&bytes)?;
    let has = |name: &str| exports.iter().any(|e| e == name);
    let wasi = imports
        .iter()
        .any(|m| m.starts_with("wasi_snapshot_preview"));
    let (allocator, other) = if wasi {
        ("proxy_on_memory_allocate", "malloc")
    } else {
        ("malloc", "proxy_on_memory_allocate")
    };
    assert!(has(allocator), "wasi {wasi}: {exports:?}");
    assert!(has("proxy_on_request_headers"), "{exports:?}");
    for absent in std::iter::once(other).chain(harness::trim::unused_callback_names()) {
        assert!(!has(absent), "{absent} is exported: {exports:?}");
    }
    Ok(())
}

/// Every callback the SDK exports, with the context-trait method behind it (proxy-wasm 0.2's
/// dispatcher).
const SDK_CALLBACKS: [(&str, &str); 19] = [
    ("proxy_on_vm_start", "on_vm_start"),
    ("proxy_on_configure", "on_configure"),
    ("proxy_on_tick", "on_tick"),
    ("proxy_on_queue_ready", "on_queue_ready"),
    ("proxy_on_done", "on_done"),
    ("proxy_on_log", "on_log"),
    ("proxy_on_new_connection", "on_new_connection"),
    ("proxy_on_downstream_data", "on_downstream_data"),
    (
        "proxy_on_downstream_connection_close",
        "on_downstream_close",
    ),
    ("proxy_on_upstream_data", "on_upstream_data"),
    ("proxy_on_upstream_connection_close", "on_upstream_close"),
    ("proxy_on_request_headers", "on_http_request_headers"),
    ("proxy_on_request_body", "on_http_request_body"),
    ("proxy_on_request_trailers", "on_http_request_trailers"),
    ("proxy_on_response_headers", "on_http_response_headers"),
    ("proxy_on_response_body", "on_http_response_body"),
    ("proxy_on_response_trailers", "on_http_response_trailers"),
    ("proxy_on_http_call_response", "on_http_call_response"),
    ("proxy_on_foreign_function", "on_foreign_function"),
];

/// The trimming list is kept beside the glue; this checks it against the glue's code: every
/// callback whose trait method the glue defines is still exported by the built module, and no
/// callback the list removes has its method defined in the glue (it would never be called).
#[test]
fn every_callback_the_glue_implements_is_still_exported() -> TestResult {
    let glue_dir = harness::paths::repo_root().join("filter/wasm/src");
    let mut glue = String::new();
    for entry in std::fs::read_dir(&glue_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            glue.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    let defines = |method: &str| glue.contains(&format!("fn {method}("));
    let (exports, _) = module_names(&std::fs::read(harness::paths::wasm()?)?)?;
    let mut implemented = 0;
    for (export, method) in SDK_CALLBACKS {
        if defines(method) {
            implemented += 1;
            assert!(
                exports.iter().any(|e| e == export),
                "the glue defines {method} but {export} is not exported: {exports:?}"
            );
        }
    }
    // The request path, configuration and the metrics tick at least.
    assert!(implemented >= 3, "{implemented}");
    for (export, method) in harness::trim::UNUSED_CALLBACKS {
        assert!(
            SDK_CALLBACKS.contains(&(export, method)),
            "{export} is not an SDK callback"
        );
        assert!(
            !defines(method),
            "the glue defines {method}, but {export} is trimmed away: remove it from filter/wasm/src/callbacks.rs"
        );
    }
    Ok(())
}
