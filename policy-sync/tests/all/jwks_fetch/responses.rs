//! The JWKS fetcher: Cache-Control bounds, refused key sets, and on-demand refreshes (coalesced,
//! rate-limited).

use super::*;

#[tokio::test]
async fn cache_control_is_honoured_within_bounds() -> Result<()> {
    let db = database().await?;
    let iss = "https://cache.test";
    let server = served_issuer(&db, iss, "a", [10, 100, 1000]).await?;
    let (fetcher, _) = fetcher(&db, settings()).await?;
    let cases: &[(Option<&str>, Option<&str>, f64)] = &[
        (None, None, 100.0),
        (Some("public, max-age=50"), None, 50.0),
        (Some("max-age=5"), None, 10.0),
        (Some("max-age=100000"), None, 100.0),
        (Some("max-age=50, no-store"), None, 100.0),
        (Some("max-age=60"), Some("30"), 30.0),
        (Some("no-cache"), None, 10.0),
    ];
    for (cache_control, age, want) in cases {
        server.set(|s| {
            s.cache_control = cache_control.map(str::to_owned);
            s.age = age.map(str::to_owned);
        });
        fetch_now(&db, &fetcher, iss).await?;
        let state = fetch_state(&db, iss).await?;
        ensure!(
            state.next_in == Some(*want),
            "Cache-Control {cache_control:?}, Age {age:?}: {state:?}, want {want}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn unusable_key_sets_are_refused_and_keys_kept() -> Result<()> {
    let db = database().await?;
    let iss = "https://invalid.test";
    let server = served_issuer(&db, iss, "good", DEFAULT_BOUNDS).await?;
    let (fetcher, metrics) = fetcher(&db, settings()).await?;
    ensure!(fetcher.fetch_due().await? == 1);
    let good = pairs(&[("good", "fetched")]);
    let mut listener = Listener::start(&db.url).await?;

    let oversize = json!({"keys": [ed25519(1, Some("good"))], "padding": "x".repeat(70_000)});
    let cases: Vec<(&str, String, bool, &str)> = vec![
        (
            "weak RSA",
            jwks(&[rsa(1024, "weak")]).to_string(),
            false,
            "below the 2048-bit minimum",
        ),
        (
            "shared secret",
            jwks(&[json!({"kty": "oct", "kid": "s", "k": URL_SAFE_NO_PAD.encode([1u8; 32])})])
                .to_string(),
            false,
            "shared secrets are never taken",
        ),
        ("garbage", "{not json".to_owned(), false, "not JSON"),
        (
            "no keys member",
            "{\"kid\": \"x\"}".to_owned(),
            false,
            "no \"keys\" array",
        ),
        (
            "empty set",
            jwks(&[]).to_string(),
            false,
            "no usable signing key",
        ),
        (
            "unknown key type",
            jwks(&[json!({"kty": "EC", "crv": "P-521", "kid": "e", "x": "AA", "y": "AA"})])
                .to_string(),
            false,
            "unsupported",
        ),
        (
            "encryption keys only",
            jwks(&[json!({"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"})])
                .to_string(),
            false,
            "no usable signing key",
        ),
        (
            "oversize",
            oversize.to_string(),
            false,
            "exceeds the size limit",
        ),
        (
            "oversize, chunked",
            oversize.to_string(),
            true,
            "exceeds the size limit",
        ),
    ];
    for (i, (what, body, chunked, error)) in cases.iter().enumerate() {
        server.set(|s| {
            s.jwks = body.clone();
            s.chunked = *chunked;
        });
        fetch_now(&db, &fetcher, iss).await?;
        let state = fetch_state(&db, iss).await?;
        ensure!(
            state
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(error)),
            "{what}: {state:?}"
        );
        ensure!(kids(&db, iss).await? == good, "{what}: keys changed");
        ensure!(metrics.fetch_failures.with_label_values(&[iss]).get() == i as u64 + 1);
    }
    ensure!(
        listener.drain().await?.is_empty(),
        "refused sets wrote keys"
    );

    // A set with some unusable keys: the usable ones are taken, the others skipped.
    server.set(|s| {
        s.chunked = false;
        s.jwks = jwks(&[
            ed25519(1, Some("good")),
            ed25519(2, Some("new")),
            rsa(1024, "weak"),
            json!({"kty": "oct", "kid": "s", "k": URL_SAFE_NO_PAD.encode([1u8; 32])}),
        ])
        .to_string();
    });
    fetch_now(&db, &fetcher, iss).await?;
    ensure!(kids(&db, iss).await? == pairs(&[("good", "fetched"), ("new", "fetched")]));
    ensure!(fetch_state(&db, iss).await?.last_error.is_none());
    Ok(())
}

#[tokio::test]
async fn on_demand_refresh_is_coalesced_and_rate_limited() -> Result<()> {
    let db = database().await?;
    let iss = "https://on-demand.test";
    let server = served_issuer(&db, iss, "a", DEFAULT_BOUNDS).await?;
    let settings = FetchSettings {
        min_on_demand_interval: Duration::from_millis(700),
        ..settings()
    };
    let (fetcher, _) = fetcher(&db, settings).await?;
    server.set(|s| s.delay = Duration::from_millis(300));

    let results = futures_util::future::join_all((0..8).map(|_| fetcher.refresh(iss))).await;
    for r in &results {
        match r {
            Ok(RefreshOutcome::Changed { keys: 1 }) => {}
            other => bail!("expected the shared Changed outcome, got {other:?}"),
        }
    }
    ensure!(server.jwks_hits() == 1, "{} requests", server.jwks_hits());
    ensure!(kids(&db, iss).await? == pairs(&[("a", "fetched")]));

    // Soon after: rate-limited, no request.
    match fetcher.refresh(iss).await? {
        RefreshOutcome::RateLimited { retry_after } => {
            ensure!(!retry_after.is_zero() && retry_after <= Duration::from_millis(700))
        }
        other => bail!("expected RateLimited, got {other:?}"),
    }
    ensure!(server.jwks_hits() == 1);

    // After the interval: fetched again (the new kid appears).
    tokio::time::sleep(Duration::from_millis(750)).await;
    server.serve_keys(&jwks(&[ed25519(1, Some("a")), ed25519(2, Some("b"))]));
    ensure!(fetcher.refresh(iss).await? == RefreshOutcome::Changed { keys: 2 });
    ensure!(server.jwks_hits() == 2);

    // A failing on-demand fetch is shared and rate-limited too.
    tokio::time::sleep(Duration::from_millis(750)).await;
    server.set(|s| s.status = 502);
    let results = futures_util::future::join_all((0..4).map(|_| fetcher.refresh(iss))).await;
    for r in &results {
        match r {
            Err(FetchError::Status(502)) => {}
            other => bail!("expected the shared 502, got {other:?}"),
        }
    }
    ensure!(server.jwks_hits() == 3);
    ensure!(matches!(
        fetcher.refresh(iss).await?,
        RefreshOutcome::RateLimited { .. }
    ));
    ensure!(kids(&db, iss).await? == pairs(&[("a", "fetched"), ("b", "fetched")]));
    Ok(())
}
