//! The command line: `dev-token`, through to the filter engine.

use super::*;

/// A filter engine configured from a verified document: every issuer in it with its keys,
/// and the tenant's bundle inline.
fn engine_from(doc: &BundleDocument) -> Res<Engine> {
    let config = json!({"issuers": doc.issuer_configs(), "bundle": doc.bundle});
    Ok(Engine::from_json(config.to_string().as_bytes())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_pass_the_filter() -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let dir = tempfile::tempdir()?;
    let allow_all = write(
        dir.path(),
        "all.cedar",
        "permit(principal, action, resource);\n",
    )?;
    let out = cli(&url, &["policy", "put", &allow_all, "--id", "allow-all"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let svc = support::service(&url).await?;
    let first = document_after(&svc, 0).await?;
    assert!(first.issuers.is_empty());

    let key_file = dir.path().join("dev-issuer.key");
    let kf = path(&key_file)?;
    let args = [
        "dev-token",
        "--sub",
        "bob",
        "--groups",
        "staff",
        "--key-file",
        kf,
    ];
    let out = cli(&url, &args).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("for demos and tests only"), "{out:?}");
    let token = out.stdout.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{out:?}");
    #[cfg(unix)]
    assert_eq!(mode(&key_file)?, 0o600);
    let header = jwt_part(&token, 0)?;
    let claims = jwt_part(&token, 1)?;
    let dev_key = policy_sync::signing::Signer::from_file(&key_file)?;
    let kid = format!("dev-{}", dev_key.key_id());
    assert_eq!(header, json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}));
    assert_eq!(claims["iss"], policy_sync::dev_token::DEV_ISSUER);
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["aud"], "portcullis-demo");
    assert_eq!(claims["groups"], json!(["staff"]));
    let (iat, exp) = (
        claims["iat"].as_u64().ok_or("iat")?,
        claims["exp"].as_u64().ok_or("exp")?,
    );
    assert_eq!(exp - iat, 3600);
    // The dev issuer and its key are in the database.
    assert_eq!(
        strings(
            &pool,
            "SELECT issuer || ' ' || audiences::text FROM issuers"
        )
        .await?,
        [format!(
            "{} {{portcullis-demo}}",
            policy_sync::dev_token::DEV_ISSUER
        )]
    );
    assert_eq!(
        strings(&pool, "SELECT kid FROM keys").await?,
        [kid.as_str()]
    );

    // The service publishes the new key; the document checks out with the service's key.
    let doc = document_where(&svc, "default", first.version, |d| {
        d.issuers.iter().any(|i| {
            i.issuer == policy_sync::dev_token::DEV_ISSUER
                && i.jwks
                    .keys
                    .iter()
                    .any(|k| k.kid.as_deref() == Some(kid.as_str()))
        })
    })
    .await?;
    let engine = engine_from(&doc)?;
    let allowed = engine.check(
        &StaticRequest::new("GET", "/anything").with_bearer(&token),
        now(),
    );
    assert_eq!(allowed.verdict, Verdict::Allow, "{allowed:?}");
    assert_eq!(allowed.principal.as_deref(), Some("User::\"bob\""));
    assert_eq!(allowed.policies, ["allow-all"]);

    // A changed payload under the same signature is refused; so is no token at all.
    let mut forged = claims.clone();
    forged["sub"] = "mallory".into();
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged.to_string()),
        parts[2]
    );
    let refused = engine.check(
        &StaticRequest::new("GET", "/anything").with_bearer(&tampered),
        now(),
    );
    assert!(
        matches!(refused.verdict, Verdict::Unauthenticated(_)),
        "{refused:?}"
    );
    let anonymous = engine.check(&StaticRequest::new("GET", "/anything"), now());
    assert!(
        matches!(anonymous.verdict, Verdict::Unauthenticated(_)),
        "{anonymous:?}"
    );

    // Again with the same key file: the same key, nothing new registered.
    let out = cli(&url, &args).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let again = out.stdout.trim();
    assert_eq!(jwt_part(again, 0)?["kid"], kid.as_str());
    assert_eq!(count(&pool, "SELECT count(*) FROM keys").await?, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM issuers").await?, 1);
    let ok = engine.check(&StaticRequest::new("GET", "/x").with_bearer(again), now());
    assert_eq!(ok.verdict, Verdict::Allow, "{ok:?}");

    // A bad --ttl or --claim is bad usage.
    let out = cli(&url, &["dev-token", "--key-file", kf, "--ttl", "soon"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--ttl"), "{out:?}");
    let out = cli(&url, &["dev-token", "--key-file", kf, "--claim", "novalue"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    Ok(())
}
