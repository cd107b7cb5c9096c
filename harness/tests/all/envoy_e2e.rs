//! End to end: real Envoy (V8) + the built `.wasm` + the demo bundle, real HTTP requests.

use std::error::Error;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::fixtures::{self, Observed, UPSTREAM_BODY};
use harness::{demo, http, paths};
use serde_json::json;

type TestResult = Result<(), Box<dyn Error>>;

#[test]
fn rendered_config_validates() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let cfg = envoy::config(
        Ports::free()?,
        &paths::wasm()?,
        &demo::plugin_config(&issuer),
    )?;
    envoy::validate(&cfg)?;
    envoy::validate(&envoy::baseline_config(Ports::free()?)?)?;
    Ok(())
}

/// The conformance set, through Envoy (the same set runs through the wasmtime host).
#[test]
fn decisions_through_real_envoy() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let ports = Ports::free()?;
    let cfg = envoy::config(ports, &paths::wasm()?, &demo::plugin_config(&issuer))?;
    let mut proxy = Envoy::start(&cfg, ports, 1)?;
    proxy.wait_ready(Duration::from_secs(60))?;

    let agent = http::agent(Duration::from_secs(10));
    for case in fixtures::demo_cases(&issuer)? {
        let mut req = ureq::http::Request::builder()
            .method(case.method)
            .uri(proxy.url(case.path));
        if let Some(tok) = &case.token {
            req = req.header("authorization", format!("Bearer {tok}"));
        }
        let resp = agent.run(req.body(())?)?;
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let seen = Observed {
            status: resp.status().as_u16(),
            challenge: header("www-authenticate"),
            policies: header("x-portcullis-policies"),
            body: String::new(),
        };
        let seen = Observed {
            body: http::text(resp),
            ..seen
        };
        case.check(&seen, UPSTREAM_BODY)?;
    }
    // The filter's counters are Envoy stats: 2 allowed, 2 denied and 7 unauthenticated
    // fixtures, plus the token-less request `wait_ready` sends.
    assert_eq!(
        proxy.wait_stat("wasmcustom.portcullis.allowed", 2)?,
        Some(2)
    );
    assert_eq!(proxy.wait_stat("wasmcustom.portcullis.denied", 2)?, Some(2));
    // The determining policy of each deny is counted under its id.
    assert_eq!(
        proxy.wait_stat("wasmcustom.portcullis.denied_by.admin-area-admins-only", 1)?,
        Some(1)
    );
    assert_eq!(
        proxy.wait_stat("wasmcustom.portcullis.unauthenticated", 8)?,
        Some(8)
    );
    // Signatures were checked by Envoy's BoringSSL (`verify_signature`): one per distinct
    // correctly signed RS256 fixture token (5; the token cache answers repeats).
    // forged_signature: bob's token with the signature of alice's — the host declines, the
    // filter's own check refuses it, the client gets 401.
    let bob = issuer.token("bob", &["staff"]);
    let alice = issuer.token("alice", &["admins"]);
    let forged = format!(
        "{}.{}",
        bob.rsplit_once('.').ok_or("shape")?.0,
        alice.rsplit_once('.').ok_or("shape")?.1
    );
    let resp = agent.run(
        ureq::http::Request::builder()
            .uri(proxy.url("/api/hello"))
            .header("authorization", format!("Bearer {forged}"))
            .body(())?,
    )?;
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        (
            proxy.wait_stat("wasmcustom.portcullis.host_verify.confirmed", 5)?,
            proxy.wait_stat("wasmcustom.portcullis.host_verify.declined", 1)?
        ),
        (Some(5), Some(1))
    );
    Ok(())
}

#[test]
fn invalid_configuration_fails_closed() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = demo::plugin_config(&issuer);
    cfg["bundle"]["policies"] = json!("permit(principal, action, resource"); // does not parse
    let ports = Ports::free()?;
    let yaml = envoy::config(ports, &paths::wasm()?, &cfg)?;
    let mut proxy = Envoy::start(&yaml, ports, 1)?;
    // With a static listener, Envoy refuses to start rather than serve without the filter
    // (the plugin fails closed): no request can get through a broken configuration.
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

/// Issue-4 features inside real Envoy: a tenant selected by host in dry run (the deny it
/// would have made is counted, the request goes through), the client address from Envoy's
/// `source.address` property in the Cedar context, and the evaluation-time histogram.
#[test]
fn tenants_dry_run_and_source_address_in_envoy() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = demo::plugin_config(&issuer);
    let demo_policies = cfg["bundle"]["policies"]
        .as_str()
        .ok_or("policies")?
        .to_owned();
    // loopback-internal: only callers on the loopback interface reach /internal.
    cfg["bundle"]["policies"] = json!(format!(
        "{demo_policies}\n@id(\"loopback-internal\")\npermit (principal, action == Action::\"GET\", resource == Path::\"/internal\")\nwhen {{ context has source && context.source.isLoopback() }};"
    ));
    cfg["routes"] = json!([{"path": "/internal", "auth": "public"}]);
    cfg["tenants"] = json!([{
        "id": "trial",
        "hosts": ["trial.example.com"],
        "dryRun": true,
        "bundle": {"version": 2, "policies": "@id(\"nothing-yet\") forbid (principal, action, resource);"},
    }]);
    let ports = Ports::free()?;
    let mut proxy = Envoy::start(&envoy::config(ports, &paths::wasm()?, &cfg)?, ports, 1)?;
    proxy.wait_ready(Duration::from_secs(60))?;
    let agent = http::agent(Duration::from_secs(10));
    let bob = format!("Bearer {}", issuer.token("bob", &["staff"]));
    let send = |method: &str, host: &str, path: &str| -> Result<u16, Box<dyn Error>> {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(proxy.url(path))
            .header("host", host)
            .header("authorization", &bob)
            .body(())?;
        Ok(agent.run(req)?.status().as_u16())
    };
    // The trial tenant's policies forbid everything, but it runs in dry run.
    assert_eq!(send("DELETE", "trial.example.com", "/api/x")?, 200);
    assert_eq!(send("GET", "trial.example.com", "/api/x")?, 200);
    // The default set enforces: bob may not DELETE.
    assert_eq!(send("DELETE", "api.example.com", "/api/x")?, 403);
    // The source address reached Cedar: loopback callers get /internal.
    assert_eq!(send("GET", "api.example.com", "/internal")?, 200);
    assert_eq!(
        proxy.wait_stat("wasmcustom.portcullis.dry_run.would_deny", 2)?,
        Some(2)
    );
    assert_eq!(proxy.wait_stat("wasmcustom.portcullis.denied", 1)?, Some(1));
    // The histogram exists (Envoy lists histograms with their quantiles, not a count).
    let stats = http::text(
        agent
            .get(format!(
                "http://127.0.0.1:{}/stats?filter=decision_us",
                ports.admin
            ))
            .call()?,
    );
    assert!(
        stats.contains("wasmcustom.portcullis.decision_us"),
        "{stats}"
    );
    Ok(())
}
