//! A commit reaches every worker; one long-poll per Envoy is parked at a time; policy-sync
//! killed changes nothing that is in force, and coming back brings the newest version.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy};
use portcullis_core::metrics;
use serde_json::json;

use policy_sync::store::{self, Role};

use super::{
    Build, Serve, envoy_following_with, eventually, failures, get_api, key_file, most_parked,
    statuses, sync_section, until_all,
};
use crate::support::{self, Res, TestResult};

pub(super) const ALLOW: &str = "permit (principal, action, resource);";
pub(super) const DENY: &str =
    "forbid (principal, action, resource) when { resource == Path::\"/api\" };";

/// One request's status and `x-portcullis-bundle` header.
async fn bundle_header(envoy: &Envoy, token: &str) -> Res<(u16, String)> {
    let (status, label) = get_api(envoy, token, "x-portcullis-bundle").await?;
    Ok((status, label.unwrap_or_else(|| "none".to_owned())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_follows_policy_sync() -> TestResult {
    follows(Build::Wasm).await
}

/// The same with the native module: one poller for the process (no lease among workers),
/// each version compiled once and shared by the four workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_envoy_follows_policy_sync() -> TestResult {
    follows(Build::Native).await
}

#[expect(
    clippy::indexing_slicing,
    reason = "test code: a field missing from a JSON answer fails the test"
)]
async fn follows(build: Build) -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 2)?;
    let admin = store::create_token(&pool, "edge-admin", Role::Admin).await?;
    let filter = store::create_token(&pool, "edge-filter", Role::Filter).await?;
    let dir = tempfile::tempdir()?;
    let key = key_file(dir.path())?;
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let serve = Serve::start(&url, addr, &key).await?;
    let http = reqwest::Client::new();
    let policy = |method: reqwest::Method, id: &str| {
        http.request(
            method,
            format!("http://{addr}/v1/admin/tenants/default/policies/{id}"),
        )
        .bearer_auth(&admin)
    };
    let r = policy(reqwest::Method::PUT, "allow")
        .json(&json!({"text": ALLOW}))
        .send()
        .await?;
    assert!(r.status().is_success(), "{}", r.status());
    let allowing: serde_json::Value = r.json().await?;
    let issuer = DevIssuer::generate()?;
    let mut plugin = json!({
        "issuers": [{"issuer": issuer.issuer, "audiences": [issuer.audience], "jwks": issuer.jwks()}],
        "debugHeaders": true,
        "sync": sync_section(addr, &filter),
    });
    plugin["sync"]["maxStaleness"] = json!("120s");
    let (envoy, _) = envoy_following_with(build, &plugin, addr.port(), 4)?;
    let token = issuer.token("bob", &[]);
    // No inline bundle: 503 until the first document, then policy-sync's policies.
    until_all(&envoy, &token, 200, Duration::from_secs(15)).await?;
    // With debug headers, the answer names the version that decided it.
    assert_eq!(
        bundle_header(&envoy, &token).await?,
        (200, format!("default@{}", allowing["version"]))
    );
    // From policy-sync's side: one long-poll parked for the whole Envoy, never more.
    assert_eq!(
        most_parked(addr).await?,
        1,
        "long-polls parked for one Envoy of four workers"
    );

    // A commit: every worker denies within a fraction of a second.
    let r = policy(reqwest::Method::PUT, "deny")
        .json(&json!({"text": DENY}))
        .send()
        .await?;
    assert!(r.status().is_success(), "{}", r.status());
    let denying: serde_json::Value = r.json().await?;
    let took = until_all(&envoy, &token, 403, Duration::from_secs(5)).await?;
    eprintln!("commit to 403 at every connection: {took:?}");
    assert_eq!(
        bundle_header(&envoy, &token).await?,
        (403, format!("default@{}", denying["version"]))
    );
    assert!(
        statuses(&envoy, &token, 64)
            .await?
            .iter()
            .all(|s| *s == 403)
    );
    // Every denial becomes a decision-log row in Postgres (shipped by the poller's worker,
    // at least once a second).
    let c = pool.get().await?;
    let started = Instant::now();
    let denied = loop {
        let n: i64 = c
            .query_one(
                r#"SELECT count(*) FROM decision_logs WHERE decision = 'deny'
                   AND action = 'Action::"GET"' AND resource = 'Path::"/api"'
                   AND principal = 'User::"bob"' AND policies = ARRAY['deny']"#,
                &[],
            )
            .await?
            .get(0);
        if n >= 80 || started.elapsed() > Duration::from_secs(5) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(denied >= 80, "{denied} denials logged, 80 or more sent");
    drop(c);

    // policy-sync is killed: the policies in force stay in force.
    serve.kill()?;
    for _ in 0..10 {
        assert!(statuses(&envoy, &token, 8).await?.iter().all(|s| *s == 403));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Meanwhile the policy changes in Postgres (through the CLI's store, as an operator
    // would with policy-sync down); policy-sync comes back on the same address.
    let source = policy_sync::store::delete_policy(&pool, "default", "deny").await;
    assert!(source.is_ok(), "{source:?}");
    let back = Serve::start(&url, addr, &key).await?;
    let took = until_all(&envoy, &token, 200, Duration::from_secs(10)).await?;
    eprintln!("policy-sync back with the deny removed: every connection allowed after {took:?}");
    if build == Build::Wasm {
        envoy.wait_stat(&envoy::stat_name(&metrics::sync_failures("unreachable")), 1)?;
    }
    let outage = ["unreachable", "timeout", "status"];
    eventually(Duration::from_secs(5), "the outage counted", || async {
        Ok(failures(&envoy, &outage).await? >= 1)
    })
    .await?;
    assert_eq!(most_parked(addr).await?, 1);
    drop(back);
    Ok(())
}
