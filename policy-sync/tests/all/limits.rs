//! What one client can hold, against the real service: parked long-polls are bounded in all
//! and per token, every statement has a timeout, and an exhausted pool answers 503 quickly.
//! Each refusal is a 503 with `Retry-After`, and changes nothing.

use std::time::{Duration, Instant};

use policy_sync::store::{self, Role};
use reqwest::{Method, StatusCode};

use crate::support::{self, PERMIT_GET, Res, TestResult};

type Answer = Result<(StatusCode, Option<String>), reqwest::Error>;

/// Sends `GET /v1/bundles/default` that waits for a version after 1, with `token`.
fn park(svc: &support::Service, token: &str) -> tokio::task::JoinHandle<Answer> {
    let req = svc
        .http
        .get(format!("{}/v1/bundles/default?after=1&wait=20", svc.base))
        .bearer_auth(token)
        .send();
    tokio::spawn(async move {
        let r = req.await?;
        let retry = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((r.status(), retry))
    })
}

async fn parked_now(svc: &support::Service, n: i64) -> TestResult {
    let started = Instant::now();
    while svc.running.state.metrics.waiters.get() != n {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "{} parked, expected {n}",
                svc.running.state.metrics.waiters.get()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_long_polls_are_bounded_in_all_and_per_token() -> TestResult {
    let url = support::database().await?;
    let svc = support::service_configured(&url, |c| {
        c.api.max_waiters = 3;
        c.api.max_waiters_per_token = 2;
    })
    .await?;
    let other = store::create_token(&svc.running.state.pool, "edge-2", Role::Filter).await?;
    let mut parked = vec![park(&svc, &svc.filter), park(&svc, &svc.filter)];
    parked_now(&svc, 2).await?;
    // A third of the same token is refused at once, and parks nothing.
    let started = Instant::now();
    let (status, retry) = park(&svc, &svc.filter).await??;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(2));
    // Another token still has room, until the total is reached.
    parked.push(park(&svc, &other));
    parked_now(&svc, 3).await?;
    let (status, retry) = park(&svc, &svc.admin).await??;
    assert_eq!(
        (status, retry.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
    );
    parked_now(&svc, 3).await?;
    // One commit answers the three, and their places are free again.
    let (status, body) = svc.put_policy("default", "get-ok", PERMIT_GET).await?;
    assert_eq!(status, 200, "{body}");
    for p in parked {
        assert_eq!(p.await??.0, StatusCode::OK);
    }
    assert_eq!(svc.running.state.parking.waiting(""), (0, 0));
    let r = svc
        .as_filter(Method::GET, "/v1/bundles/default?after=2&wait=1")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    Ok(())
}

/// Holds `LOCK TABLE policies` in a transaction of its own until the returned sender is used.
async fn lock_policies(url: &str) -> Res<tokio::sync::oneshot::Sender<()>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute("BEGIN; LOCK TABLE policies IN ACCESS EXCLUSIVE MODE")
        .await?;
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = released.await;
        let _ = client.batch_execute("ROLLBACK").await;
    });
    Ok(release)
}

/// Sends `req` (given 8 s: without the limit under test it would wait for the lock, held until
/// it answers) and checks that it is refused with 503 and `Retry-After: 1`; returns how long
/// the answer took and its body.
async fn refused(req: reqwest::RequestBuilder) -> Res<(Duration, serde_json::Value)> {
    let started = Instant::now();
    let r = req.timeout(Duration::from_secs(8)).send().await?;
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    Ok((took, r.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_timeout_is_cancelled_and_answered_503() -> TestResult {
    let url = support::database().await?;
    let svc = support::service_configured(&url, |c| {
        c.pool.statement_timeout = Duration::from_millis(800);
    })
    .await?;
    let release = lock_policies(&url).await?;
    let (took, body) = refused(
        svc.admin(Method::PUT, "/v1/admin/tenants/default/policies/blocked")
            .json(&serde_json::json!({ "text": PERMIT_GET })),
    )
    .await?;
    assert_eq!(body["error"], "the database is busy");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "{took:?}"
    );
    release.send(()).map_err(|()| "the lock holder is gone")?;
    // Nothing of the cancelled write stayed; the same write goes through now.
    assert_eq!(svc.versions().await?.len(), 1);
    let (status, body) = svc.put_policy("default", "blocked", PERMIT_GET).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_503_at_once() -> TestResult {
    let url = support::database().await?;
    let svc = support::service_configured(&url, |c| {
        c.pool.size = 1;
        c.pool.statement_timeout = Duration::from_secs(10);
    })
    .await?;
    let release = lock_policies(&url).await?;
    // A write that holds the only connection, blocked on the lock.
    let write = svc
        .admin(Method::PUT, "/v1/admin/tenants/default/policies/slow")
        .json(&serde_json::json!({ "text": PERMIT_GET }))
        .send();
    let write = tokio::spawn(async move { Ok::<_, reqwest::Error>(write.await?.status()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (took, _) = refused(svc.as_filter(Method::GET, "/v1/bundles/default?wait=0")).await?;
    // The pool's wait (500 ms by default), not the statement's 10 s.
    assert!(took < Duration::from_secs(2), "{took:?}");
    release.send(()).map_err(|()| "the lock holder is gone")?;
    assert_eq!(write.await??, StatusCode::OK);
    let r = svc
        .as_filter(Method::GET, "/v1/bundles/default?wait=0")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    Ok(())
}
