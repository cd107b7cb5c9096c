//! The edge gateway sample (`envoy/edge-gateway.yaml`) in a real Envoy: the module fetched from
//! a `remote` HTTP source on loopback and loaded only with the right sha256.

use std::error::Error;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, EdgePorts, Envoy, Ports};
use harness::fixtures::UPSTREAM_BODY;
use harness::serve::Static;
use harness::{demo, http, oci, paths};

use crate::envoy_e2e::decide_demo_cases;

type TestResult = Result<(), Box<dyn Error>>;

const SITE_BODY: &str = "hello from the public site\n";

struct Gateway {
    proxy: Envoy,
    module: Static,
    api: Static,
    _site: Static,
}

/// Starts the upstreams, the module server and the gateway expecting `sha256_hex`.
fn gateway(issuer: &DevIssuer, sha256_hex: Option<&str>) -> Result<Gateway, Box<dyn Error>> {
    let wasm = std::fs::read(paths::wasm()?)?;
    let right = oci::digest(&wasm);
    let sha = sha256_hex
        .unwrap_or(right.trim_start_matches("sha256:"))
        .to_owned();
    let module = Static::start(wasm, "application/wasm")?;
    let api = Static::start(UPSTREAM_BODY.into(), "text/plain")?;
    let site = Static::start(SITE_BODY.into(), "text/plain")?;
    let ports = Ports::free()?;
    let edge = EdgePorts {
        api: api.port(),
        site: site.port(),
        module: module.port(),
    };
    let yaml = envoy::edge_gateway_config(ports, edge, &sha, &demo::plugin_config(issuer))?;
    envoy::validate(&yaml)?;
    let mut proxy = Envoy::start(&yaml, ports, 2)?;
    proxy.wait_ready(Duration::from_secs(90))?;
    Ok(Gateway {
        proxy,
        module,
        api,
        _site: site,
    })
}

#[test]
fn gateway_fetches_the_module_by_sha256_and_decides_the_fixtures() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let gw = gateway(&issuer, None)?;
    assert!(gw.module.served() >= 1, "Envoy fetched the module");
    let fetched = gw.module.served();
    decide_demo_cases(&gw.proxy, &issuer)?;
    // The public route reaches the site without a token.
    let agent = http::agent(Duration::from_secs(10));
    let resp = agent.get(gw.proxy.url("/")).call()?;
    assert_eq!(resp.status(), 200);
    assert_eq!(http::text(resp), SITE_BODY);
    assert_eq!(
        gw.module.served(),
        fetched,
        "the module is fetched once, at start-up"
    );
    Ok(())
}

/// A module whose sha256 is not the configured one is never loaded, and with `fail_open: false`
/// the protected routes answer 503 for every request, with a valid token or none: nothing
/// reaches the protected upstream undecided.
#[test]
fn gateway_with_a_wrong_sha256_fails_closed() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let wrong = oci::digest(b"not the module");
    let gw = gateway(&issuer, Some(wrong.trim_start_matches("sha256:")))?;
    let agent = http::agent(Duration::from_secs(10));
    let admin = issuer.token("alice", &["admins"]);
    for (path, token) in [
        ("/api/hello", Some(&admin)),
        ("/admin/users", Some(&admin)),
        ("/api/hello", None),
    ] {
        let mut req = agent.get(gw.proxy.url(path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.call()?;
        assert_eq!(resp.status(), 503, "{path}: {}", gw.proxy.log());
        assert_ne!(http::text(resp), UPSTREAM_BODY);
    }
    assert_eq!(
        gw.api.served(),
        0,
        "a request reached the protected upstream"
    );
    assert!(gw.module.served() >= 1, "Envoy fetched the module");
    assert!(
        gw.proxy
            .log()
            .contains("Plugin configured to fail closed failed to load"),
        "log: {}",
        gw.proxy.log()
    );
    // The public route does not depend on the filter.
    let resp = agent.get(gw.proxy.url("/")).call()?;
    assert_eq!(http::text(resp), SITE_BODY);
    Ok(())
}
