//! `GET /v1/bundles/{tenant}`: long-poll wake-up on commit, 304 at the end of the wait, ETag,
//! gzip, replicas, refusals.

use std::io::Read as _;
use std::time::{Duration, Instant};

use portcullis_core::bundle::signed::SignedBundle;
use reqwest::Method;

use crate::support::{self, PERMIT_GET, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_returns_within_milliseconds_of_a_commit() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let writer = policy_sync::db::pool(&url, 1)?;
    let client = writer.get().await?;
    let mut latencies = Vec::new();
    for round in 0..5_i64 {
        let after = round + 1;
        let request = svc
            .as_filter(
                Method::GET,
                &format!("/v1/bundles/default?after={after}&wait=10"),
            )
            .send();
        let waiting = tokio::spawn(async move {
            let r = request.await?;
            Ok::<_, reqwest::Error>((Instant::now(), r.status().as_u16(), r.text().await?))
        });
        // The request is parked before the commit.
        let started = Instant::now();
        while svc.running.state.metrics.waiters.get() < 1 {
            if started.elapsed() > Duration::from_secs(5) {
                return Err("the request never waited".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A commit straight into Postgres: trigger → NOTIFY → publish → NOTIFY → answer.
        client
            .execute(
                "INSERT INTO policies (tenant, id, text) VALUES ('default', $1, $2)",
                &[&format!("p{round}"), &PERMIT_GET],
            )
            .await?;
        let committed = Instant::now();
        let (answered, status, body) = waiting.await??;
        assert_eq!(status, 200, "{body}");
        let doc =
            serde_json::from_str::<SignedBundle>(&body)?.verify(&support::signer().public_key())?;
        assert_eq!(doc.version, u64::try_from(after + 1)?);
        assert!(doc.bundle.policies.contains(&format!("\"p{round}\"")));
        latencies.push(answered.duration_since(committed));
    }
    latencies.sort();
    println!(
        "long-poll answer after commit: min {:?}, median {:?}, max {:?}",
        latencies.first().ok_or("none")?,
        latencies.get(latencies.len() / 2).ok_or("none")?,
        latencies.last().ok_or("none")?
    );
    // Far below the 10 s wait: the answer came from the commit, not from a timeout.
    assert!(*latencies.last().ok_or("none")? < Duration::from_secs(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_ends_in_304_and_etags_and_gzip_work() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let started = Instant::now();
    let r = svc
        .as_filter(Method::GET, "/v1/bundles/default?after=1&wait=1")
        .send()
        .await?;
    assert_eq!(r.status(), 304);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.headers()["etag"], "\"1\"");
    // If-None-Match with the current version: nothing newer, no wait.
    let r = svc
        .as_filter(Method::GET, "/v1/bundles/default?wait=0")
        .header("if-none-match", "\"1\"")
        .send()
        .await?;
    assert_eq!(r.status(), 304);
    let r = svc
        .as_filter(Method::GET, "/v1/bundles/default?wait=0")
        .header("if-none-match", "\"0\"")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"1\"");
    assert_eq!(r.headers()["x-portcullis-version"], "1");
    // gzip when asked for; the signature still holds over the decompressed document.
    let r = svc
        .as_filter(Method::GET, "/v1/bundles/default?wait=0")
        .header("accept-encoding", "gzip")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let zipped = r.bytes().await?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&zipped[..]).read_to_string(&mut text)?;
    let doc =
        serde_json::from_str::<SignedBundle>(&text)?.verify(&support::signer().public_key())?;
    assert_eq!(doc.version, 1);
    assert_eq!(doc.tenant, "default");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_served_separately_and_bad_requests_are_refused() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let r = svc
        .admin(Method::PUT, "/v1/admin/tenants/shop")
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    svc.put_policy("shop", "shop-get", PERMIT_GET).await?;
    let (_, shop) = svc.document("shop", 0).await?;
    let shop = shop.ok_or("no shop document")?;
    assert_eq!(shop.tenant, "shop");
    assert!(shop.bundle.policies.contains("shop-get"));
    // The default tenant did not change with the shop's policy: still version 1.
    let (_, default) = svc.document("default", 0).await?;
    assert_eq!(default.ok_or("none")?.version, 1);
    for (path, token, status) in [
        ("/v1/bundles/nope?wait=0", Some(&svc.filter), 404),
        ("/v1/bundles/bad%20id?wait=0", Some(&svc.filter), 400),
        ("/v1/bundles/default?after=-1", Some(&svc.filter), 400),
        ("/v1/bundles/default?after=x", Some(&svc.filter), 400),
        ("/v1/bundles/default?colour=red", Some(&svc.filter), 400),
        ("/v1/bundles/default?wait=0", None, 401),
    ] {
        let mut req = svc.http.get(format!("{}{path}", svc.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await?;
        assert_eq!(r.status(), status, "{path}");
        let body: serde_json::Value = r.json().await?;
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_replica_serves_bundles_and_an_unreachable_one_falls_back() -> TestResult {
    let url = support::database().await?;
    // The same database as "replica" (a second pool, as a replica would be).
    let svc = support::service_with(&url, Some(&url), Duration::from_secs(5)).await?;
    svc.put_policy("default", "get-ok", PERMIT_GET).await?;
    let (_, doc) = svc.document("default", 1).await?;
    assert_eq!(doc.ok_or("none")?.version, 2);
    // A replica that cannot be reached: answers still come, from the primary.
    let down = format!(
        "postgres://postgres@127.0.0.1:{}/nope?connect_timeout=1",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    );
    let svc2 = support::service_with(&url, Some(&down), Duration::from_secs(5)).await?;
    let (status, doc) = svc2.document("default", 1).await?;
    assert_eq!(status, 200);
    assert_eq!(doc.ok_or("none")?.version, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_commit_wakes_every_waiter() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    const WAITERS: usize = 300;
    // Plain HTTP/1.1 clients need one connection per parked request.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(WAITERS)
        .build()?;
    let mut waiting = Vec::new();
    for _ in 0..WAITERS {
        let req = http
            .get(format!("{}/v1/bundles/default?after=1&wait=20", svc.base))
            .bearer_auth(&svc.filter)
            .send();
        waiting.push(tokio::spawn(async move {
            let r = req.await?;
            let status = r.status().as_u16();
            let body = r.bytes().await?;
            Ok::<_, reqwest::Error>((Instant::now(), status, body))
        }));
    }
    let started = Instant::now();
    while svc.running.state.metrics.waiters.get() < i64::try_from(WAITERS)? {
        if started.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "only {} of {WAITERS} requests parked",
                svc.running.state.metrics.waiters.get()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = svc.put_policy("default", "get-ok", PERMIT_GET).await?;
    assert_eq!(status, 200, "{body}");
    let committed = Instant::now();
    let mut last = committed;
    let mut first_body = None;
    for w in waiting {
        let (at, status, body) = w.await??;
        assert_eq!(status, 200);
        let doc = serde_json::from_slice::<SignedBundle>(&body)?
            .verify(&support::signer().public_key())?;
        assert_eq!(doc.version, 2);
        // Every waiter got the same bytes.
        match &first_body {
            None => first_body = Some(body),
            Some(b) => assert_eq!(b, &body),
        }
        last = last.max(at);
    }
    println!(
        "{WAITERS} waiting requests all answered {:?} after the admin write returned",
        last.duration_since(committed)
    );
    assert_eq!(svc.running.state.metrics.waiters.get(), 0);
    Ok(())
}
