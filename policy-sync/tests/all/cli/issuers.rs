//! The command line: issuers and their keys, and API tokens.

use super::*;

/// A 1024-bit RSA modulus, generated once with `openssl genrsa 1024` and converted to
/// base64url (`openssl rsa -noout -modulus | xxd -r -p | base64 | tr '+/' '-_' | tr -d =`).
/// The `rsa` crate is not a dependency of policy-sync, and a key this weak is the point.
const RSA_1024_N: &str = "oikfZChH8lqW0A-YVnfUIk9gUtbvi3S3r0nYQnOP0EmHxkbt1t8qquyPOdyb8LYPFfmCD4rV2lCxmkzdyEZeSyRBMBCY0LQxHUexLXgdTe85obKCRB6MxyOgYnH7o6prwkDPWUCDds8ey2692aaggGkFpn3vtp2QKkKSHU3O8rE";

fn ed25519_jwk(seed: u8, kid: Option<&str>) -> Value {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
                         "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())});
    if let (Some(kid), Some(o)) = (kid, jwk.as_object_mut()) {
        o.insert("kid".into(), kid.into());
    }
    jwk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_and_keys() -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let iss = "https://issuer.example";

    let out = cli(
        &url,
        &[
            "issuer",
            "add",
            iss,
            "--audience",
            "a",
            "--jwks-uri",
            "http://127.0.0.1:1/jwks",
            "--settings",
            r#"{"requiredClaims": ["email"]}"#,
        ],
    )
    .await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), format!("issuer {iss} stored"));
    let out = cli(&url, &["issuer", "list"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let listed: Vec<Value> = out
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(listed.len(), 1, "{out:?}");
    assert_eq!(listed[0]["issuer"], iss);
    assert_eq!(listed[0]["audiences"], json!(["a"]));
    assert_eq!(listed[0]["jwksUri"], "http://127.0.0.1:1/jwks");
    assert_eq!(listed[0]["settings"], json!({"requiredClaims": ["email"]}));
    assert_eq!(listed[0]["minRefreshS"], 60);

    // Bad settings: refused, the stored issuer unchanged.
    for (settings, want) in [
        ("{not json", "--settings is not JSON"),
        (r#"{"nope": 1}"#, "settings: unknown field `nope`"),
        (r#"{"jwks": {"keys": []}}"#, "settings cannot set \"jwks\""),
        ("[1]", "settings must be an object"),
    ] {
        let out = cli(&url, &["issuer", "add", iss, "--settings", settings]).await?;
        assert_eq!(out.code, 2, "{settings}: {out:?}");
        assert!(out.stderr.contains(want), "{settings}: {out:?}");
    }
    let out = cli(&url, &["issuer", "add", iss, "--jwks-uri", "ftp://x/jwks"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("is not an http(s) URL"), "{out:?}");
    assert_eq!(
        strings(&pool, "SELECT settings::text FROM issuers").await?,
        [r#"{"requiredClaims": ["email"]}"#]
    );
    assert_eq!(
        strings(&pool, "SELECT jwks_uri FROM issuers").await?,
        ["http://127.0.0.1:1/jwks"]
    );

    // Keys.
    let good = write(d, "k1.json", &ed25519_jwk(3, Some("k1")).to_string())?;
    let out = cli(&url, &["key", "add", "--issuer", iss, &good]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), format!("key k1 of issuer {iss} stored"));
    let no_kid = write(d, "nokid.json", &ed25519_jwk(4, None).to_string())?;
    let out = cli(&url, &["key", "add", "--issuer", iss, &no_kid]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("an uploaded key needs a kid"),
        "{out:?}"
    );
    let weak = write(
        d,
        "weak.json",
        &json!({"kty": "RSA", "alg": "RS256", "kid": "weak", "n": RSA_1024_N, "e": "AQAB"})
            .to_string(),
    )?;
    let out = cli(&url, &["key", "add", "--issuer", iss, &weak]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("RSA modulus of 1024 bits is below the 2048-bit minimum"),
        "{out:?}"
    );
    let not_jwk = write(d, "notjwk.json", r#"{"hello": "world"}"#)?;
    let out = cli(&url, &["key", "add", "--issuer", iss, &not_jwk]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    let out = cli(&url, &["key", "add", "--issuer", "https://nobody", &good]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains("issuer \"https://nobody\" not found"),
        "{out:?}"
    );
    assert_eq!(
        strings(
            &pool,
            "SELECT issuer || ' ' || kid || ' ' || origin FROM keys"
        )
        .await?,
        [format!("{iss} k1 uploaded")]
    );

    let out = cli(&url, &["key", "list"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let line = out.stdout.trim();
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields.len(), 4, "{out:?}");
    assert_eq!(fields[..3], [iss, "k1", "uploaded"]);
    assert_eq!(
        serde_json::from_str::<Value>(fields[3])?,
        ed25519_jwk(3, Some("k1"))
    );
    let out = cli(&url, &["key", "list", "--issuer", "https://nobody"]).await?;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");

    let out = cli(&url, &["key", "rm", "--issuer", iss, "k1"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), format!("key k1 of issuer {iss} removed"));
    assert_eq!(count(&pool, "SELECT count(*) FROM keys").await?, 0);
    let out = cli(&url, &["key", "rm", "--issuer", iss, "k1"]).await?;
    assert_eq!(out.code, 4, "{out:?}");

    let out = cli(&url, &["issuer", "rm", iss]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM issuers").await?, 0);
    let out = cli(&url, &["issuer", "rm", iss]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_work_until_revoked() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let bundle = |token: String| {
        let req = svc
            .http
            .get(format!("{}/v1/bundles/default?wait=0", svc.base))
            .bearer_auth(token);
        async move { Ok::<u16, reqwest::Error>(req.send().await?.status().as_u16()) }
    };

    let out = cli(&url, &["token", "create", "edge-1", "--role", "filter"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let token = out.stdout.trim().to_owned();
    assert!(token.starts_with("pcs_"), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    // Stored only as its hash, with the role.
    let row = pool
        .get()
        .await?
        .query_one(
            "SELECT role, token_hash, revoked_at IS NULL FROM admin_tokens WHERE name = 'edge-1'",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "filter");
    assert_eq!(
        row.get::<_, Vec<u8>>(1),
        policy_sync::store::token_hash(&token)
    );
    assert!(row.get::<_, bool>(2));

    assert_eq!(bundle(token.clone()).await?, 200);
    // A filter token is no admin token.
    let r = svc
        .http
        .get(format!("{}/v1/admin/versions", svc.base))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 403);

    let out = cli(&url, &["token", "create", "edge-1"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr
            .contains("a token named \"edge-1\" exists already"),
        "{out:?}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM admin_tokens WHERE name = 'edge-1'"
        )
        .await?,
        1
    );
    assert_eq!(
        bundle(token.clone()).await?,
        200,
        "the first token still works"
    );

    let out = cli(&url, &["token", "revoke", "edge-1"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "token edge-1 revoked");
    assert_eq!(bundle(token.clone()).await?, 401);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM admin_tokens WHERE name = 'edge-1' AND revoked_at IS NOT NULL"
        )
        .await?,
        1
    );
    let out = cli(&url, &["token", "revoke", "edge-1"]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains("active token \"edge-1\" not found"),
        "{out:?}"
    );

    // An admin token (the default role) reaches the admin API.
    let out = cli(&url, &["token", "create", "ops"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let r = svc
        .http
        .get(format!("{}/v1/admin/versions", svc.base))
        .bearer_auth(out.stdout.trim())
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}
