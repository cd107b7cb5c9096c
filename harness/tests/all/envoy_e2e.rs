//! End to end: real Envoy (V8) + the built `.wasm` + the demo bundle, real HTTP requests.

use std::error::Error;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::fixtures::{self, Observed, UPSTREAM_BODY};
use harness::{demo, http, paths};
use portcullis_core::metrics;
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

/// Sends every demo fixture through `proxy` and checks each answer (status, challenge,
/// determining policies, upstream body).
pub fn decide_demo_cases(proxy: &Envoy, issuer: &DevIssuer) -> TestResult {
    let agent = http::agent(Duration::from_secs(10));
    for case in fixtures::demo_cases(issuer)? {
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

    decide_demo_cases(&proxy, &issuer)?;
    // The filter's counters are Envoy stats: 2 allowed, 2 denied and 7 unauthenticated
    // fixtures, plus the token-less request `wait_ready` sends.
    assert_eq!(
        proxy.wait_stat(&envoy::stat_name(metrics::ALLOWED), 2)?,
        Some(2)
    );
    assert_eq!(
        proxy.wait_stat(&envoy::stat_name(metrics::DENIED), 2)?,
        Some(2)
    );
    // The determining policy of each deny is counted under its id.
    assert_eq!(
        proxy.wait_stat(
            &envoy::stat_name(&metrics::denied_by_policy("admin-area-admins-only")),
            1
        )?,
        Some(1)
    );
    assert_eq!(
        proxy.wait_stat(&envoy::stat_name(metrics::UNAUTHENTICATED), 8)?,
        Some(8)
    );
    // Signatures were checked by Envoy's BoringSSL (`verify_signature`): one per distinct
    // correctly signed RS256 fixture token (5; the token cache answers repeats).
    // forged_signature: bob's token with the signature of alice's — the host declines, the
    // filter's own check refuses it, the client gets 401.
    let bob = issuer.token("bob", &["staff"]);
    let alice = issuer.token("alice", &["admins"]);
    let agent = http::agent(Duration::from_secs(10));
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
            proxy.wait_stat(&envoy::stat_name(metrics::HOST_VERIFY_CONFIRMED), 5)?,
            proxy.wait_stat(&envoy::stat_name(metrics::HOST_VERIFY_DECLINED), 1)?
        ),
        (Some(5), Some(1))
    );
    Ok(())
}

/// A filter configuration whose policies do not parse, and Envoy's configuration for it
/// (`render`: the Wasm or the native module's).
#[expect(
    clippy::indexing_slicing,
    reason = "test code: the demo configuration has a bundle"
)]
pub fn refused_at_start(
    render: impl Fn(Ports, &serde_json::Value) -> Result<String, Box<dyn Error>>,
) -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = demo::plugin_config(&issuer);
    cfg["bundle"]["policies"] = json!("permit(principal, action, resource"); // does not parse
    let ports = Ports::free()?;
    let mut proxy = Envoy::start(&render(ports, &cfg)?, ports, 1)?;
    // With a static listener, Envoy refuses to start rather than serve without the filter
    // (the filter fails closed): no request can get through a broken configuration.
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

#[test]
fn invalid_configuration_fails_closed() -> TestResult {
    refused_at_start(|ports, cfg| Ok(envoy::config(ports, &paths::wasm()?, cfg)?))
}

/// Issue-4 features inside real Envoy: a tenant selected by host in dry run (the deny it
/// would have made is counted, the request goes through), the client address from Envoy's
/// `source.address` property in the Cedar context, and the evaluation-time histogram.
#[test]
fn tenants_dry_run_and_source_address_in_envoy() -> TestResult {
    tenants_dry_run_and_source_address(
        |ports, cfg| Ok(envoy::config(ports, &paths::wasm()?, cfg)?),
        envoy::stat_name,
    )
}

/// Tenants, dry run, the client address and the histogram, through an Envoy rendered by
/// `render` (either build), whose stats `stat_name` names.
#[expect(
    clippy::indexing_slicing,
    reason = "test code: the demo configuration has a bundle"
)]
pub fn tenants_dry_run_and_source_address(
    render: impl Fn(Ports, &serde_json::Value) -> Result<String, Box<dyn Error>>,
    stat_name: fn(&str) -> String,
) -> TestResult {
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
    let mut proxy = Envoy::start(&render(ports, &cfg)?, ports, 1)?;
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
        proxy.wait_stat(&stat_name(metrics::DRY_RUN_WOULD_DENY), 2)?,
        Some(2)
    );
    assert_eq!(proxy.wait_stat(&stat_name(metrics::DENIED), 1)?, Some(1));
    // The histogram exists (Envoy lists histograms with their quantiles, not a count).
    let stats = http::text(
        agent
            .get(format!(
                "http://127.0.0.1:{}/stats?filter=decision_microseconds",
                ports.admin
            ))
            .call()?,
    );
    assert!(
        stats.contains(&stat_name(metrics::DECISION_MICROSECONDS)),
        "{stats}"
    );
    Ok(())
}

/// A client may put any byte above 0x7F in a header value, and Envoy passes it on. Such a
/// request is decided like any other (the header reads with U+FFFD in place of invalid UTF-8),
/// and the filter keeps deciding afterwards. Before the filter read headers itself, the SDK's
/// header getter panicked on such a value: the VM aborted and Envoy answered 503 to every
/// request after it.
#[test]
fn header_values_that_are_not_utf8_are_decided_and_stop_nothing() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let ports = Ports::free()?;
    let cfg = envoy::config(ports, &paths::wasm()?, &demo::plugin_config(&issuer))?;
    let mut proxy = Envoy::start(&cfg, ports, 1)?;
    proxy.wait_ready(Duration::from_secs(60))?;
    // bob: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","groups":["staff"],"iat":now,"exp":now+3600}
    let bob = issuer.token("bob", &["staff"]);
    let send = |extra: &[u8]| raw_get(ports.listener, "/api/hello", extra);
    let bearer = format!("authorization: Bearer {bob}\r\n");

    // An allowed request with a stray Latin-1 header is still allowed.
    let with_weird = [bearer.as_bytes(), b"x-weird: caf\xe9\xff\r\n"].concat();
    let (status, head, body) = send(&with_weird)?;
    assert_eq!((status, body.as_str()), (200, UPSTREAM_BODY), "{head}");
    // A token that is not UTF-8 is a malformed token (401 invalid_token), not a missing one.
    let (status, head, _) = send(b"authorization: Bearer \xff\xfe.\xfd.\xfc\r\n")?;
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("error=\"invalid_token\""), "{head}");
    // A spoofed identity header that is not UTF-8 is still the client's copy (removed), and
    // the request is decided on the token.
    let spoofed = [bearer.as_bytes(), b"x-user: \xffadmin\r\n"].concat();
    assert_eq!(send(&spoofed)?.0, 200);
    // The filter still decides: no token is 401, bob's token 200.
    assert_eq!(send(b"")?.0, 401);
    assert_eq!(send(bearer.as_bytes())?.0, 200);
    assert_eq!(
        proxy.wait_stat(&envoy::stat_name(metrics::ALLOWED), 3)?,
        Some(3)
    );
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
    Ok(())
}

/// `GET path` over a fresh HTTP/1.1 connection with `extra` header lines as raw bytes (no
/// client library would send bytes that are not UTF-8): status, response head, body.
fn raw_get(port: u16, path: &str, extra: &[u8]) -> Result<(u16, String, String), Box<dyn Error>> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = [
        format!("GET {path} HTTP/1.1\r\nhost: example.test\r\n").as_bytes(),
        extra,
        b"connection: close\r\n\r\n",
    ]
    .concat();
    conn.write_all(&request)?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no end of head")?;
    let status = head.split(' ').nth(1).ok_or("no status")?.parse()?;
    Ok((status, head.to_owned(), body.to_owned()))
}
