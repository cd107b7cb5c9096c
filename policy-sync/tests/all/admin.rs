//! The admin API: no write without an admin token, bad input refused without effect, and the
//! objects it manages.

use reqwest::Method;
use serde_json::json;

use crate::support::{self, PERMIT_GET, Res, Service, TestResult};

/// Everything stored, to compare before and after refused requests.
async fn snapshot(svc: &Service) -> Res<String> {
    let pool = policy_sync::db::pool(&svc.url, 1)?;
    let state = policy_sync::source::load(&pool.get().await?, None).await?;
    let issuers = policy_sync::source::load_issuers(&pool.get().await?).await?;
    let versions: i64 = pool
        .get()
        .await?
        .query_one("SELECT count(*) FROM versions", &[])
        .await?
        .get(0);
    Ok(format!("{state:?} {issuers:?} {versions}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_without_an_admin_token() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let revoked =
        policy_sync::store::create_token(&pool, "old", policy_sync::store::Role::Admin).await?;
    policy_sync::store::revoke_token(&pool, "old").await?;
    let before = snapshot(&svc).await?;
    let writes: Vec<(Method, &str, serde_json::Value)> = vec![
        (Method::PUT, "/v1/admin/tenants/x", json!(null)),
        (Method::DELETE, "/v1/admin/tenants/default", json!(null)),
        (
            Method::PUT,
            "/v1/admin/tenants/default/policies/p",
            json!({"text": PERMIT_GET}),
        ),
        (
            Method::POST,
            "/v1/admin/tenants/default/policies",
            json!([{"id": "p", "text": PERMIT_GET, "enabled": true}]),
        ),
        (
            Method::DELETE,
            "/v1/admin/tenants/default/policies/p",
            json!(null),
        ),
        (
            Method::PUT,
            "/v1/admin/tenants/default/schema",
            json!({"text": "entity User;"}),
        ),
        (
            Method::DELETE,
            "/v1/admin/tenants/default/schema",
            json!(null),
        ),
        (
            Method::POST,
            "/v1/admin/tenants/default/entities",
            json!({"uid": {"type": "User", "id": "a"}, "attrs": {}, "parents": []}),
        ),
        (
            Method::DELETE,
            "/v1/admin/tenants/default/entities?uid=x",
            json!(null),
        ),
        (
            Method::POST,
            "/v1/admin/issuers",
            json!({"issuer": "https://i"}),
        ),
        (
            Method::DELETE,
            "/v1/admin/issuers?iss=https://i",
            json!(null),
        ),
        (
            Method::POST,
            "/v1/admin/keys",
            json!({"issuer": "https://i", "jwk": {}}),
        ),
        (Method::DELETE, "/v1/admin/keys?iss=a&kid=b", json!(null)),
        (Method::POST, "/v1/admin/rollback", json!({"to": 1})),
        (Method::GET, "/v1/admin/versions", json!(null)),
        (
            Method::GET,
            "/v1/admin/tenants/default/policies",
            json!(null),
        ),
    ];
    for (method, path, body) in &writes {
        for (token, expected) in [
            (None, 401),
            (Some("pcs_not-a-token"), 401),
            (Some(revoked.as_str()), 401),
            (Some(svc.filter.as_str()), 403),
        ] {
            let mut req = svc
                .http
                .request(method.clone(), format!("{}{path}", svc.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if !body.is_null() {
                req = req.json(body);
            }
            let r = req.send().await?;
            assert_eq!(
                r.status().as_u16(),
                expected,
                "{method} {path} with {token:?}"
            );
            if expected == 401 {
                assert_eq!(r.headers()["www-authenticate"], "Bearer");
            }
        }
    }
    // Decision logs and key refreshes need a token too.
    let r = svc
        .http
        .post(format!("{}/v1/decisions", svc.base))
        .json(&json!({"decisions": []}))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let r = svc
        .http
        .post(format!("{}/v1/keys/refresh?iss=x", svc.base))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    assert_eq!(snapshot(&svc).await?, before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    svc.put_policy("default", "keep", PERMIT_GET).await?;
    let before = snapshot(&svc).await?;
    let raw = |method: Method, path: &str, body: &str| {
        svc.admin(method, path)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (raw(Method::PUT, "/v1/admin/tenants/default/policies/p", "{\"text\": "), 400, "malformed JSON"),
        (raw(Method::PUT, "/v1/admin/tenants/default/policies/p", "{\"text\": \"x\", \"evil\": 1}"), 400, "unknown field"),
        (raw(Method::PUT, "/v1/admin/tenants/default/policies/p", "[]"), 400, "wrong shape"),
        (svc.admin(Method::PUT, "/v1/admin/tenants/default/policies/p").body("{}"), 400, "no content type"),
        (
            // Its own connection: the server answers before reading the whole body and then
            // closes the connection, which a pooled client could pick up again.
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()?
                .put(format!("{}/v1/admin/tenants/default/policies/p", svc.base))
                .bearer_auth(&svc.admin)
                .json(&json!({"text": "x".repeat(5 << 20)})),
            400,
            "oversize body",
        ),
        (svc.admin(Method::PUT, "/v1/admin/tenants/default/policies/x';DROP%20TABLE%20policies;--").json(&json!({"text": PERMIT_GET})), 400, "SQL in an id"),
        (svc.admin(Method::PUT, "/v1/admin/tenants/a'%20OR%20'1'='1").json(&json!(null)), 400, "SQL in a tenant"),
        (svc.admin(Method::PUT, "/v1/admin/tenants/default/policies/p").json(&json!({"text": "permit(principal, action, resource); forbid(principal, action, resource);"})), 422, "two policies in one"),
        (svc.admin(Method::PUT, "/v1/admin/tenants/default/policies/p").json(&json!({"text": "@id(\"q\") permit(principal, action, resource);"})), 422, "annotation disagrees"),
        (svc.admin(Method::PUT, "/v1/admin/tenants/default/policies/p").json(&json!({"text": "  "})), 400, "empty policy"),
        (svc.admin(Method::PUT, "/v1/admin/tenants/nope/policies/p").json(&json!({"text": PERMIT_GET})), 404, "unknown tenant"),
        (svc.admin(Method::POST, "/v1/admin/tenants/default/entities").json(&json!({"uid": "nope"})), 422, "bad entity"),
        (svc.admin(Method::POST, "/v1/admin/tenants/default/entities").json(&json!(3)), 400, "not an entity"),
        (svc.admin(Method::POST, "/v1/admin/issuers").json(&json!({"issuer": "https://i", "jwksUri": "file:///etc/passwd"})), 400, "bad URL"),
        (svc.admin(Method::POST, "/v1/admin/issuers").json(&json!({"issuer": "https://i", "jwksUri": "http://a/", "discoveryUrl": "http://b/"})), 400, "two sources"),
        (svc.admin(Method::POST, "/v1/admin/issuers").json(&json!({"issuer": "https://i", "settings": {"requiredClaims": 3}})), 400, "bad settings"),
        (svc.admin(Method::POST, "/v1/admin/issuers").json(&json!({"issuer": "https://i", "settings": {"jwks": {}}})), 400, "reserved setting"),
        (svc.admin(Method::POST, "/v1/admin/issuers").json(&json!({"issuer": "https://i", "minRefreshS": 10, "maxRefreshS": 5})), 400, "bad bounds"),
        (svc.admin(Method::POST, "/v1/admin/keys").json(&json!({"issuer": "https://none", "jwk": {"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}})), 404, "key for an unknown issuer"),
        (svc.admin(Method::POST, "/v1/admin/keys").json(&json!({"issuer": "https://none", "jwk": {"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}})), 400, "weak RSA key"),
        (svc.admin(Method::POST, "/v1/admin/rollback").json(&json!({"to": "1; DROP TABLE versions"})), 400, "SQL in a number"),
        (svc.admin(Method::DELETE, "/v1/admin/tenants/default"), 400, "the default tenant"),
        (svc.admin(Method::POST, "/v1/admin/tenants/default/policies").json(&json!([{"id": "d", "text": PERMIT_GET, "enabled": true}, {"id": "d", "text": PERMIT_GET, "enabled": false}])), 400, "one id twice in a batch"),
        (svc.admin(Method::GET, "/v1/admin/nothing-here"), 404, "unknown endpoint"),
    ];
    for (req, expected, what) in cases {
        let r = req.send().await?;
        let status = r.status().as_u16();
        let body = r.text().await?;
        assert_eq!(status, expected, "{what}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body)?;
        let error = body["error"].as_str().ok_or("no error message")?;
        // Nothing internal leaks.
        assert!(
            !error.contains("postgres") && !error.contains("SQLSTATE"),
            "{what}: {error}"
        );
    }
    assert_eq!(snapshot(&svc).await?, before);
    // SQL metacharacters inside data are only data: they round-trip exactly.
    let text = r#"@id("quotes") permit(principal, action, resource) when { context.path == "'; DROP TABLE policies; --" };"#;
    let (status, body) = svc.put_policy("default", "quotes", text).await?;
    assert_eq!(status, 200, "{body}");
    let got: serde_json::Value = svc
        .admin(Method::GET, "/v1/admin/tenants/default/policies/quotes")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(got["text"], text);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_issuers_and_keys_reach_the_document() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let entity = json!({"uid": {"type": "Group", "id": "admins"}, "attrs": {}, "parents": []});
    let r = svc
        .admin(Method::POST, "/v1/admin/tenants/default/entities")
        .json(&json!([entity]))
        .send()
        .await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    let r = svc
        .admin(Method::POST, "/v1/admin/issuers")
        .json(
            &json!({"issuer": "https://issuer.example", "audiences": ["api"],
                      "settings": {"requiredClaims": ["email"]}}),
        )
        .send()
        .await?;
    let body: serde_json::Value = r.json().await?;
    // An issuer without keys verifies nothing and is left out of documents: no new version.
    assert_eq!(body["version"], 2, "{body}");
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k1",
                     "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    let r = svc
        .admin(Method::POST, "/v1/admin/keys")
        .json(&json!({"issuer": "https://issuer.example", "jwk": jwk}))
        .send()
        .await?;
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["version"], 3, "{body}");
    let (_, doc) = svc.document("default", 0).await?;
    let doc = doc.ok_or("none")?;
    assert_eq!(doc.version, 3);
    assert_eq!(doc.bundle.entities, json!([entity]));
    assert_eq!(doc.issuers.len(), 1);
    let issuer = &doc.issuers[0];
    assert_eq!(issuer.issuer, "https://issuer.example");
    assert_eq!(issuer.audiences, ["api"]);
    assert_eq!(serde_json::to_value(&issuer.jwks)?, json!({"keys": [jwk]}));
    assert_eq!(
        serde_json::to_value(&issuer.settings)?,
        json!({"requiredClaims": ["email"]})
    );
    // Deleting the issuer removes its keys with it.
    let r = svc
        .admin(
            Method::DELETE,
            "/v1/admin/issuers?iss=https://issuer.example",
        )
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let keys: serde_json::Value = svc
        .admin(Method::GET, "/v1/admin/keys")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(keys, json!([]));
    let (_, doc) = svc.document("default", 3).await?;
    assert!(doc.ok_or("none")?.issuers.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let r = svc.http.get(format!("{}/healthz", svc.base)).send().await?;
    assert_eq!(r.status(), 200);
    let r: serde_json::Value = svc
        .http
        .get(format!("{}/readyz", svc.base))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(r["ready"], true);
    assert_eq!(r["version"], 1);
    svc.put_policy("default", "p", PERMIT_GET).await?;
    let text = svc.metrics().await?;
    for line in [
        "policy_sync_published_total 2",
        "policy_sync_latest_version 2",
        "policy_sync_long_poll_waiters 0",
        "policy_sync_pool_connections ",
        "policy_sync_publish_seconds_count",
        "policy_sync_decision_log_rows_total 0",
        "policy_sync_ready 1",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    Ok(())
}
