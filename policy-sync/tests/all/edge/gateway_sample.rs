//! The gateway sample that follows policy-sync (`envoy/gateway-sync.yaml`), rendered and run
//! as a user would run it: the module fetched by sha256 from a module server, two upstreams,
//! a real policy-sync over a real Postgres. Its public route needs no token; its protected
//! routes are decided by the policies policy-sync publishes, and a new policy is enforced
//! without a restart.

use std::net::SocketAddr;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, EdgePorts, Envoy, Ports};
use harness::serve::Static;
use serde_json::json;

use super::follow::ALLOW;
use super::{Seeded, Serve, sync_section};
use crate::support::TestResult;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_sample_follows_policy_sync() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let setup = Seeded::new("gw", &[("allow", ALLOW)]).await?;
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let _serve = Serve::start(&setup.url, addr, &setup.key).await?;

    let wasm = std::fs::read(harness::paths::wasm()?)?;
    let sha = harness::oci::digest(&wasm);
    let module = Static::start(wasm, "application/wasm")?;
    let api = Static::start(b"hello from the api\n".to_vec(), "text/plain")?;
    let site = Static::start(b"hello from the site\n".to_vec(), "text/plain")?;
    let edge = EdgePorts {
        api: api.port(),
        site: site.port(),
        module: module.port(),
    };
    let plugin = json!({
        "issuers": [{"issuer": issuer.issuer, "audiences": [issuer.audience], "jwks": issuer.jwks()}],
        "sync": sync_section(addr, &setup.filter),
    });
    let ports = Ports::free()?;
    let yaml = envoy::gateway_sync_config(
        ports,
        edge,
        sha.trim_start_matches("sha256:"),
        &plugin,
        addr.port(),
    )?;
    tokio::task::block_in_place(|| envoy::validate(&yaml))?;
    let mut proxy = Envoy::start(&yaml, ports, 2)?;
    tokio::task::block_in_place(|| proxy.wait_ready(Duration::from_secs(60)))?;
    assert!(module.served() >= 1);

    let client = reqwest::Client::new();
    let token = issuer.token("bob", &[]);
    let get = |path: &str, token: Option<&str>| {
        let mut r = client.get(proxy.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // Until the first document arrives the protected route may answer 503; then 200.
    let started = std::time::Instant::now();
    loop {
        let r = get("/api/items", Some(&token)).await?;
        match r.status().as_u16() {
            200 => {
                assert_eq!(r.text().await?, "hello from the api\n");
                break;
            }
            503 if started.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Err(format!("status {other}\n{}", proxy.log()).into()),
        }
    }
    assert_eq!(get("/api/items", None).await?.status(), 401);
    let r = get("/", None).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await?, "hello from the site\n");

    // A forbid committed through the admin API is enforced without a restart.
    let r = client
        .put(format!(
            "http://{addr}/v1/admin/tenants/default/policies/no-admin"
        ))
        .bearer_auth(&setup.admin)
        .json(&json!({"text": "forbid (principal, action, resource) when { context.path like \"/admin*\" };"}))
        .send()
        .await?;
    assert!(r.status().is_success(), "{}", r.status());
    let started = std::time::Instant::now();
    while get("/admin/users", Some(&token)).await?.status() != 403 {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("the forbid was not enforced\n{}", proxy.log()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get("/api/items", Some(&token)).await?.status(), 200);
    Ok(())
}
