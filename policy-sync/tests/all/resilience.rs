//! Postgres going away and coming back: the service says so (503, not ready), keeps its last
//! answers' promises, reconnects its LISTEN connection, and publishes what was committed
//! meanwhile. This test runs its own cluster, since it stops it.

use std::time::{Duration, Instant};

use harness::postgres::Cluster;
use reqwest::Method;

use crate::support::{self, PERMIT_GET, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_and_back() -> TestResult {
    let cluster = Cluster::start()?;
    let url = cluster.create_database("resilience")?;
    let pool = policy_sync::db::pool(&url, 2)?;
    policy_sync::db::migrate(&pool).await?;
    let svc = support::service_with(&url, None, Duration::from_secs(30)).await?;
    let (status, body) = svc.put_policy("default", "get-ok", PERMIT_GET).await?;
    assert_eq!(status, 200, "{body}");
    // A long-poll waiting when Postgres goes away.
    let waiting = svc
        .as_filter(Method::GET, "/v1/bundles/default?after=2&wait=30")
        .send();
    let waiting = tokio::spawn(waiting);
    tokio::time::sleep(Duration::from_millis(200)).await;

    cluster.stop()?;
    let r = svc.http.get(format!("{}/readyz", svc.base)).send().await?;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["reason"], "database unavailable");
    // The metrics page still answers, and says so.
    let metrics = svc.metrics().await?;
    assert!(metrics.contains("policy_sync_ready 0"), "{metrics}");
    let r = svc
        .as_filter(Method::GET, "/v1/bundles/default?wait=0")
        .send()
        .await?;
    // The token cannot even be checked: unavailable, not "unauthorized".
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["error"], "database unavailable");
    assert!(
        svc.http
            .get(format!("{}/healthz", svc.base))
            .send()
            .await?
            .status()
            .is_success()
    );

    cluster.restart()?;
    // A write straight into Postgres once it is back: only a reconnected LISTEN (or the
    // periodic publisher) can publish it; the parked long-poll gets it.
    let c = policy_sync::db::pool(&url, 1)?;
    c.get()
        .await?
        .execute(
            "INSERT INTO policies (tenant, id, text) VALUES ('default', 'after-restart', $1)",
            &[&PERMIT_GET],
        )
        .await?;
    let started = Instant::now();
    let r = waiting.await??;
    assert_eq!(r.status(), 200, "the waiting request got no new version");
    let doc: portcullis_core::bundle::signed::SignedBundle = r.json().await?;
    let doc = doc.verify(&support::signer().public_key())?;
    assert_eq!(doc.version, 3);
    assert!(doc.bundle.policies.contains("after-restart"));
    println!(
        "published {:?} after the post-restart commit",
        started.elapsed()
    );
    let r = svc.http.get(format!("{}/readyz", svc.base)).send().await?;
    assert_eq!(r.status(), 200);
    assert!(svc.running.state.metrics.listener_connects.get() >= 2);
    Ok(())
}
