//! `POST /v1/decisions`: batched ingest into daily partitions, validation, retention.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::json;

use crate::support::{self, Res, Service, TestResult};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn rows(svc: &Service) -> Res<i64> {
    let pool = policy_sync::db::pool(&svc.url, 1)?;
    Ok(pool
        .get()
        .await?
        .query_one("SELECT count(*) FROM decision_logs", &[])
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_written_into_daily_partitions() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let t = now();
    let batch = json!({"decisions": [
        {"time": t, "decision": "allow", "principal": "User::\"bob\"", "action": "Action::\"GET\"",
         "resource": "Path::\"/\"", "policies": ["get-ok"], "version": 1, "filterId": "envoy-1"},
        {"time": t - 86_400.0, "tenant": "shop", "decision": "deny", "policies": ["admins-only", "x"],
         "dryRun": true, "details": {"status": 403}},
        {"time": t, "decision": "unauthenticated"}
    ]});
    let r = svc
        .as_filter(Method::POST, "/v1/decisions")
        .json(&batch)
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["accepted"], 3);
    assert_eq!(rows(&svc).await?, 3);
    let pool = policy_sync::db::pool(&url, 1)?;
    let c = pool.get().await?;
    let row = c
        .query_one(
            "SELECT tenant, decision, policies, dry_run, details FROM decision_logs WHERE decision = 'deny'",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "shop");
    assert_eq!(row.get::<_, Vec<String>>(2), ["admins-only", "x"]);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, serde_json::Value>(4), json!({"status": 403}));
    // Two days, two partitions.
    let parts: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = 'decision_logs'",
            &[],
        )
        .await?
        .get(0);
    assert!(parts >= 2, "{parts}");
    assert_eq!(svc.running.state.metrics.decision_rows.get(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batches_are_refused_whole() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let t = now();
    let good = json!({"time": t, "decision": "allow"});
    let many: Vec<serde_json::Value> = (0..1001).map(|_| good.clone()).collect();
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"decisions": []}), "empty"),
        (json!({"decisions": many}), "too many"),
        (
            json!({"decisions": [good, {"time": t, "decision": "maybe"}]}),
            "bad decision",
        ),
        (
            json!({"decisions": [good, {"time": t - 30.0 * 86_400.0, "decision": "allow"}]}),
            "too old",
        ),
        (
            json!({"decisions": [good, {"time": t + 86_400.0, "decision": "allow"}]}),
            "future",
        ),
        (
            json!({"decisions": [good, {"time": t, "decision": "allow", "principal": "x".repeat(2000)}]}),
            "long field",
        ),
        (
            json!({"decisions": [good, {"time": t, "decision": "allow", "tenant": "'; DROP TABLE decision_logs; --"}]}),
            "SQL tenant",
        ),
        (
            json!({"decisions": [good, {"time": t, "decision": "allow", "details": "text"}]}),
            "details not an object",
        ),
        (
            json!({"decisions": [good, {"time": t, "decision": "allow", "extra": 1}]}),
            "unknown field",
        ),
        (
            json!({"decisions": [good, {"decision": "allow"}]}),
            "no time",
        ),
        (
            json!({"decisions": [good], "x": 1}),
            "unknown top-level field",
        ),
    ];
    for (body, what) in cases {
        let r = svc
            .as_filter(Method::POST, "/v1/decisions")
            .json(&body)
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{what}");
        let b: serde_json::Value = r.json().await?;
        assert!(b["error"].is_string(), "{what}");
    }
    for raw in ["{", "not json", ""] {
        let r = svc
            .as_filter(Method::POST, "/v1/decisions")
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{raw:?}");
    }
    let huge = json!({"decisions": [{"time": t, "decision": "allow", "details": {"pad": "x".repeat(2 << 20)}}]});
    let r = svc
        .as_filter(Method::POST, "/v1/decisions")
        .json(&huge)
        .send()
        .await?;
    assert_eq!(r.status(), 400, "oversize body");
    assert_eq!(rows(&svc).await?, 0);
    assert!(svc.running.state.metrics.decision_batches_refused.get() >= 15);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_past_retention_are_dropped() -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 2)?;
    let c = pool.get().await?;
    c.execute(
        "SELECT portcullis_decision_partition(current_date - 40)",
        &[],
    )
    .await?;
    c.execute(
        "INSERT INTO decision_logs (ts, tenant, decision) VALUES (now() - interval '40 days', 'default', 'allow')",
        &[],
    )
    .await?;
    let dropped = policy_sync::service::maintain_partitions(&pool, 7).await?;
    assert_eq!(dropped, 1);
    let left: i64 = c
        .query_one("SELECT count(*) FROM decision_logs", &[])
        .await?
        .get(0);
    assert_eq!(left, 0);
    // Today's and tomorrow's partitions exist and are kept.
    assert_eq!(
        policy_sync::service::maintain_partitions(&pool, 7).await?,
        0
    );
    let parts: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = 'decision_logs'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(parts, 2);
    Ok(())
}
