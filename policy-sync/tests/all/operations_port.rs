//! `serve --metrics-listen`: a second port with health and metrics and nothing else, so that
//! Prometheus and probes can reach it where the API's port is for filters and admins only.

use std::net::TcpListener;

use crate::support::{self, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_port_serves_health_and_metrics_only() -> TestResult {
    let url = support::database().await?;
    let svc = support::service_configured(&url, |c| {
        c.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await?;
    let ops = svc.running.metrics_addr.ok_or("no operations listener")?;
    assert_ne!(ops, svc.running.addr);
    let get = |path: &str| {
        let req = svc
            .http
            .get(format!("http://{ops}{path}"))
            .bearer_auth(&svc.admin);
        async move {
            let r = req.send().await?;
            Ok::<_, reqwest::Error>((r.status().as_u16(), r.text().await?))
        }
    };
    assert_eq!(get("/healthz").await?.0, 200);
    assert_eq!(get("/readyz").await?.0, 200);
    let (status, metrics) = get("/metrics").await?;
    assert_eq!(status, 200);
    assert!(metrics.contains("policy_sync_ready 1"), "{metrics}");
    // Nothing of the API, whatever the token.
    for path in [
        "/v1/bundles/default?after=0&wait=0",
        "/v1/admin/tenants",
        "/v1/admin/versions",
    ] {
        assert_eq!(get(path).await?.0, 404, "{path}");
    }
    let refresh = svc
        .http
        .post(format!("http://{ops}/v1/keys/refresh"))
        .bearer_auth(&svc.filter)
        .send()
        .await?;
    assert_eq!(refresh.status().as_u16(), 404);
    // The API's port is unchanged, its own /metrics included.
    let (status, _) = svc.document("default", 0).await?;
    assert_eq!(status, 200);
    assert!(svc.metrics().await?.contains("policy_sync_ready 1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_operations_port_fails_the_start() -> TestResult {
    let url = support::database().await?;
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let at = taken.local_addr()?;
    let started = support::service_configured(&url, |c| c.metrics_listen = Some(at)).await;
    let error = started
        .err()
        .ok_or("started with its operations port taken")?;
    assert!(
        error
            .to_string()
            .contains(&format!("cannot listen on {at}")),
        "{error}"
    );
    Ok(())
}
