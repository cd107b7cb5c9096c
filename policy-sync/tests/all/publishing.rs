//! Migrations, publishing on change (triggers + NOTIFY), invalid changes refused with Cedar's
//! positions, replicas agreeing on versions, rollback.

use std::time::{Duration, Instant};

use reqwest::Method;

use crate::support::{self, PERMIT_GET, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_empty() -> TestResult {
    let url = support::empty_database()?;
    let pool = policy_sync::db::pool(&url, 2)?;
    assert_eq!(policy_sync::db::migrate(&pool).await?, vec![1]);
    assert_eq!(policy_sync::db::migrate(&pool).await?, Vec::<i32>::new());
    let c = pool.get().await?;
    let tenants: Vec<String> = c
        .query("SELECT id FROM tenants", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, ["default"]);
    // Published versions are immutable.
    c.execute(
        "INSERT INTO versions (version, reason, source) VALUES (1, 't', '{}')",
        &[],
    )
    .await?;
    let err = c
        .execute("UPDATE versions SET reason = 'x'", &[])
        .await
        .err()
        .ok_or("a published version was modified")?;
    assert!(err.to_string().contains("immutable") || format!("{err:?}").contains("immutable"));
    // A migration changed after it was applied is refused, not re-run.
    c.execute("UPDATE portcullis_migrations SET checksum = 'x'", &[])
        .await?;
    let err = policy_sync::db::migrate(&pool)
        .await
        .err()
        .ok_or("a changed migration went unnoticed")?;
    assert!(
        err.to_string().contains("changed after it was applied"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_a_direct_sql_change_through_notify() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    // Start-up publishes what is there: the empty default tenant.
    let (status, doc) = svc.document("default", 0).await?;
    assert_eq!(status, 200);
    let first = doc.ok_or("no document")?;
    assert_eq!(first.version, 1);
    assert!(first.bundle.policies.is_empty());
    // A write that bypasses the API entirely: only the trigger's NOTIFY can wake publishing.
    let pool = policy_sync::db::pool(&url, 1)?;
    pool.get()
        .await?
        .execute(
            "INSERT INTO policies (tenant, id, text) VALUES ('default', 'get-ok', $1)",
            &[&PERMIT_GET],
        )
        .await?;
    let started = Instant::now();
    let doc = loop {
        if let (200, Some(d)) = svc.document("default", 1).await? {
            break d;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("the change was not published".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(doc.version, 2);
    assert!(
        doc.bundle.policies.contains("@id(\"get-ok\")"),
        "{}",
        doc.bundle.policies
    );
    // The served bundle is one the filter accepts.
    let bundle = portcullis_core::Bundle::try_from(&doc.bundle)?;
    assert_eq!(bundle.policies.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_changes_are_refused_with_positions_and_the_last_good_stays() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let (status, body) = svc.put_policy("default", "get-ok", PERMIT_GET).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);

    // A syntax error: refused with the policy, line and column.
    let broken = "permit(\n  principal,\n  action == Action::\"GET\"\n  resource\n);";
    let (status, body) = svc.put_policy("default", "broken", broken).await?;
    assert_eq!(status, 422, "{body}");
    let p = &body["problems"][0];
    assert_eq!(p["source"], "policy \"broken\"", "{body}");
    assert_eq!(p["line"], 4, "{body}");
    assert_eq!(p["column"], 3, "{body}");

    // A schema, then a policy that does not type-check against it.
    let schema = r#"entity User { dept: String };
entity Path;
action "GET" appliesTo { principal: User, resource: Path, context: {} };"#;
    let r = svc
        .admin(Method::PUT, "/v1/admin/tenants/default/schema")
        .json(&serde_json::json!({ "text": schema }))
        .send()
        .await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    let ill_typed =
        "permit(principal, action == Action::\"GET\", resource)\nwhen { principal.dept == 3 };";
    let (status, body) = svc.put_policy("default", "ill-typed", ill_typed).await?;
    assert_eq!(status, 422, "{body}");
    let p = &body["problems"][0];
    assert_eq!(p["source"], "policy \"ill-typed\"", "{body}");
    assert_eq!(p["line"], 2, "{body}");
    assert!(
        p["message"].as_str().unwrap_or("").contains("type"),
        "{body}"
    );
    // A schema the existing policy does not fit is refused too.
    let r = svc
        .admin(Method::PUT, "/v1/admin/tenants/default/schema")
        .json(&serde_json::json!({ "text": "entity User; entity Path;" }))
        .send()
        .await?;
    assert_eq!(r.status(), 422);

    // Nothing of the refused changes exists; version 3 (the schema) is the latest.
    let (_, doc) = svc.document("default", 0).await?;
    let doc = doc.ok_or("no document")?;
    assert_eq!(doc.version, 3);
    assert!(!doc.bundle.policies.contains("broken") && !doc.bundle.policies.contains("ill-typed"));
    let list = svc
        .admin(Method::GET, "/v1/admin/tenants/default/policies")
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // A change written straight into Postgres that does not validate: the publisher refuses
    // it and version 3 stays served.
    let pool = policy_sync::db::pool(&url, 1)?;
    pool.get()
        .await?
        .execute(
            "INSERT INTO policies (tenant, id, text) VALUES ('default', 'sneaky', 'permit(')",
            &[],
        )
        .await?;
    let started = Instant::now();
    while svc.running.state.metrics.publish_refused.get() == 0 {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("the invalid direct change was never looked at".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, doc) = svc.document("default", 0).await?;
    assert_eq!(doc.ok_or("no document")?.version, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_one_version_sequence() -> TestResult {
    let url = support::database().await?;
    let a = support::service(&url).await?;
    let b = support::service(&url).await?;
    // Writes through both replicas at once.
    let ids: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
    let texts: Vec<String> = (0..12)
        .map(|i| format!("@id(\"p{i}\") permit(principal, action == Action::\"GET\", resource == Path::\"/{i}\");"))
        .collect();
    let mut writes = Vec::new();
    for i in 0..12 {
        let svc = if i % 2 == 0 { &a } else { &b };
        writes.push(svc.put_policy("default", &ids[i], &texts[i]));
    }
    for (status, body) in futures_util::future::join_all(writes)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
    {
        assert_eq!(status, 200, "{body}");
    }
    // Both replicas also publish on every NOTIFY; let them settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let versions = a.versions().await?;
    let numbers: Vec<i64> = versions
        .iter()
        .filter_map(|v| v["version"].as_i64())
        .collect();
    // Newest first, no gaps, no duplicates.
    let expected: Vec<i64> = (1..=numbers.len() as i64).rev().collect();
    assert_eq!(numbers, expected);
    let (_, da) = a.document("default", 0).await?;
    let (_, db) = b.document("default", 0).await?;
    let (da, db) = (da.ok_or("a: none")?, db.ok_or("b: none")?);
    assert_eq!(da, db);
    assert_eq!(
        i64::try_from(da.version)?,
        *numbers.first().ok_or("no versions")?
    );
    for i in 0..12 {
        assert!(da.bundle.policies.contains(&format!("\"p{i}\"")));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_an_old_version_as_a_new_one() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    svc.put_policy("default", "one", PERMIT_GET).await?;
    let (_, v2) = svc.document("default", 0).await?;
    let v2 = v2.ok_or("none")?;
    assert_eq!(v2.version, 2);
    svc.put_policy("default", "two", "forbid(principal, action, resource);")
        .await?;
    let r = svc
        .admin(Method::DELETE, "/v1/admin/tenants/default/policies/one")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = svc
        .as_filter(Method::POST, "/v1/admin/rollback")
        .json(&serde_json::json!({"to": 2}))
        .send()
        .await?;
    assert_eq!(r.status(), 403, "a filter token cannot roll back");
    let r = svc
        .admin(Method::POST, "/v1/admin/rollback")
        .json(&serde_json::json!({"to": 99}))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let r = svc.rollback(2).await?;
    assert_eq!(r["version"], 5, "{r}");
    let (_, v5) = svc.document("default", 0).await?;
    let v5 = v5.ok_or("none")?;
    assert_eq!(v5.version, 5);
    assert_eq!(v5.bundle.policies, v2.bundle.policies);
    let versions = svc.versions().await?;
    assert_eq!(versions[0]["rollbackOf"], 2);
    // The source tables hold version 2's state again, so later edits start from it.
    let list: Vec<serde_json::Value> = svc
        .admin(Method::GET, "/v1/admin/tenants/default/policies")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "one");
    // Rolling back to what is already served publishes nothing.
    let r = svc.rollback(2).await?;
    assert_eq!(r["changed"], false);
    assert_eq!(r["version"], 5);
    Ok(())
}
