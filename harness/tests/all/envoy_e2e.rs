//! End to end: real Envoy (V8) + the built `.wasm` + the demo bundle, real HTTP requests.

use std::error::Error;
use std::time::Duration;

use harness::devkeys::{DevIssuer, now};
use harness::envoy::{self, Envoy, Ports};
use harness::{demo, http, paths};
use serde_json::json;

type TestResult = Result<(), Box<dyn Error>>;

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<String>,
    status: u16,
    /// Determining policies named in the debug header (403 only).
    policies: Option<&'static str>,
    /// Expected `error="..."` in WWW-Authenticate (401 only; `None`: a bare challenge).
    error: Option<&'static str>,
}

fn start(issuer: &DevIssuer) -> Result<Envoy, Box<dyn Error>> {
    let ports = Ports::free()?;
    let cfg = envoy::config(ports, &paths::wasm()?, &demo::plugin_config(issuer))?;
    let mut proxy = Envoy::start(&cfg, ports, 1)?;
    proxy.wait_ready(Duration::from_secs(60))?;
    Ok(proxy)
}

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

#[test]
fn decisions_through_real_envoy() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let other = DevIssuer::generate()?;
    let proxy = start(&issuer)?;
    let t = now();

    // alice: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"alice","groups":["admins"],"iat":now,"exp":now+3600}
    let alice = issuer.token("alice", &["admins"]);
    // bob: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","groups":["staff"],"iat":now,"exp":now+3600}
    let bob = issuer.token("bob", &["staff"]);
    // expired: bob's claims with "exp": now-3600 (beyond the 60 s leeway)
    let expired = issuer.sign(
        &json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "exp": t - 3600}),
    );
    // wrong_aud: bob's claims with "aud": "someone-else"
    let wrong_aud = issuer
        .sign(&json!({"iss": issuer.issuer, "aud": "someone-else", "sub": "bob", "exp": t + 600}));
    // forged: bob's claims, signed by another key under the trusted issuer's kid
    let forged = other
        .sign(&json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "exp": t + 600}));
    // alg_none: {"alg":"none"} header over bob's claims, with a junk signature
    let alg_none = {
        let real = issuer.token("bob", &[]);
        let mut parts = real.splitn(2, '.');
        let _ = parts.next();
        format!("eyJhbGciOiJub25lIn0.{}", parts.next().unwrap_or_default())
    };
    // no_sub: valid signature and times, but no "sub"
    let no_sub =
        issuer.sign(&json!({"iss": issuer.issuer, "aud": issuer.audience, "exp": t + 600}));

    let cases = [
        Case {
            name: "no token",
            method: "GET",
            path: "/api/hello",
            token: None,
            status: 401,
            policies: None,
            error: None,
        },
        Case {
            name: "garbage token",
            method: "GET",
            path: "/api/hello",
            token: Some("not.a.token".into()),
            status: 401,
            policies: None,
            error: Some("invalid_token"),
        },
        Case {
            name: "expired",
            method: "GET",
            path: "/api/hello",
            token: Some(expired),
            status: 401,
            policies: None,
            error: Some("invalid_token"),
        },
        Case {
            name: "wrong audience",
            method: "GET",
            path: "/api/hello",
            token: Some(wrong_aud),
            status: 401,
            policies: None,
            error: Some("invalid_token"),
        },
        Case {
            name: "forged signature",
            method: "GET",
            path: "/api/hello",
            token: Some(forged),
            status: 401,
            policies: None,
            error: Some("invalid_token"),
        },
        Case {
            name: "alg none",
            method: "GET",
            path: "/api/hello",
            token: Some(alg_none),
            status: 401,
            policies: None,
            error: Some("invalid_token"),
        },
        Case {
            name: "no subject",
            method: "GET",
            path: "/api/hello",
            token: Some(no_sub),
            status: 401,
            policies: None,
            error: Some("invalid_token"),
        },
        Case {
            name: "user reads",
            method: "GET",
            path: "/api/hello?x=1",
            token: Some(bob.clone()),
            status: 200,
            policies: None,
            error: None,
        },
        Case {
            name: "user writes",
            method: "DELETE",
            path: "/api/items/7",
            token: Some(bob.clone()),
            status: 403,
            policies: Some(""),
            error: None,
        },
        Case {
            name: "user in admin area",
            method: "GET",
            path: "/admin/users",
            token: Some(bob),
            status: 403,
            policies: Some("admin-area-admins-only"),
            error: None,
        },
        Case {
            name: "admin writes in admin area",
            method: "DELETE",
            path: "/admin/users/9",
            token: Some(alice),
            status: 200,
            policies: None,
            error: None,
        },
    ];

    let agent = http::agent(Duration::from_secs(10));
    for c in cases {
        let mut req = ureq::http::Request::builder()
            .method(c.method)
            .uri(proxy.url(c.path));
        if let Some(tok) = &c.token {
            req = req.header("authorization", format!("Bearer {tok}"));
        }
        let resp = agent.run(req.body(())?)?;
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let challenge = header("www-authenticate");
        let policies = header("x-portcullis-policies");
        let body = http::text(resp);
        assert_eq!(status, c.status, "{}: status (body {body:?})", c.name);
        match c.status {
            200 => assert_eq!(
                body, "hello from the upstream\n",
                "{}: upstream body",
                c.name
            ),
            401 => {
                let challenge =
                    challenge.ok_or_else(|| format!("{}: no WWW-Authenticate", c.name))?;
                assert!(
                    challenge.starts_with("Bearer realm=\"portcullis\""),
                    "{}: {challenge}",
                    c.name
                );
                match c.error {
                    Some(code) => assert!(
                        challenge.contains(&format!("error=\"{code}\"")),
                        "{}: {challenge}",
                        c.name
                    ),
                    None => assert!(!challenge.contains("error="), "{}: {challenge}", c.name),
                }
            }
            403 => {
                assert_eq!(body, "access denied\n", "{}", c.name);
                assert_eq!(
                    policies.as_deref(),
                    c.policies,
                    "{}: determining policies",
                    c.name
                );
            }
            _ => {}
        }
    }
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
