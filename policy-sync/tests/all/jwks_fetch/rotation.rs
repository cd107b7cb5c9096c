//! The JWKS fetcher: the first fetch (direct and through discovery), rotation, no writes when
//! nothing changed, the periodic loop.

use super::*;

#[tokio::test]
async fn first_fetch_rotation_and_no_churn() -> Result<()> {
    let db = database().await?;
    let iss = "https://rotate.test";
    let mut k1 = ed25519(1, Some("k1"));
    // A private member published by mistake never reaches the database.
    k1["d"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let server =
        TestIssuer::start(iss, &jwks(&[k1, ed25519(2, Some("k2")), rsa(2048, "r1")])).await?;
    add_issuer(&db, IssuerRow::jwks(iss, server.jwks_uri())).await?;
    upload(&db, iss, "up", &ed25519(9, Some("up"))).await?;
    let (fetcher, metrics) = fetcher(&db, settings()).await?;
    let mut listener = Listener::start(&db.url).await?;

    // First pass: the issuer has no fetch state yet, so it is due.
    ensure!(fetcher.fetch_due().await? == 1);
    ensure!(
        kids(&db, iss).await?
            == pairs(&[
                ("k1", "fetched"),
                ("k2", "fetched"),
                ("r1", "fetched"),
                ("up", "uploaded")
            ]),
        "{:?}",
        kids(&db, iss).await?
    );
    let stored = keys(&db, iss).await?;
    let k1_row = &stored[0].3;
    ensure!(k1_row.get("d").is_none(), "private member stored: {k1_row}");
    ensure!(*k1_row == ed25519(1, Some("k1")), "{k1_row}");
    let state = fetch_state(&db, iss).await?;
    ensure!(state.succeeded && state.last_error.is_none(), "{state:?}");
    ensure!(
        !listener.drain().await?.is_empty(),
        "a change must be announced"
    );
    ensure!(metrics.fetches.with_label_values(&[iss]).get() == 1);
    // Not due again before next_fetch_at.
    ensure!(fetcher.fetch_due().await? == 0);

    // Nothing changed at the issuer: nothing is written, nothing announced.
    let before = keys(&db, iss).await?;
    fetch_now(&db, &fetcher, iss).await?;
    ensure!(keys(&db, iss).await? == before);
    let notes = listener.drain().await?;
    ensure!(
        notes.is_empty(),
        "unchanged JWKS announced a change: {notes:?}"
    );
    ensure!(server.jwks_hits() == 2);
    ensure!(fetcher.refresh(iss).await? == RefreshOutcome::Unchanged { keys: 3 });
    ensure!(listener.drain().await?.is_empty());

    // Rotation: k3 appears, k1 goes; k2 stays as it was; the uploaded key is untouched.
    server.serve_keys(&jwks(&[
        ed25519(2, Some("k2")),
        ed25519(3, Some("k3")),
        rsa(2048, "r1"),
    ]));
    fetch_now(&db, &fetcher, iss).await?;
    let after = keys(&db, iss).await?;
    ensure!(
        kids(&db, iss).await?
            == pairs(&[
                ("k2", "fetched"),
                ("k3", "fetched"),
                ("r1", "fetched"),
                ("up", "uploaded")
            ])
    );
    let added = |rows: &[(String, String, String, Value)], kid: &str| {
        rows.iter().find(|r| r.0 == kid).map(|r| r.2.clone())
    };
    ensure!(
        added(&before, "k2") == added(&after, "k2"),
        "unchanged key rewritten"
    );
    ensure!(
        added(&before, "up") == added(&after, "up"),
        "uploaded key rewritten"
    );
    ensure!(!listener.drain().await?.is_empty());

    // A key whose material changes under the same kid is replaced.
    server.serve_keys(&jwks(&[ed25519(4, Some("k2")), ed25519(3, Some("k3"))]));
    fetch_now(&db, &fetcher, iss).await?;
    let rows = keys(&db, iss).await?;
    ensure!(
        rows.iter()
            .any(|r| r.0 == "k2" && r.3 == ed25519(4, Some("k2")))
    );
    ensure!(
        kids(&db, iss).await? == pairs(&[("k2", "fetched"), ("k3", "fetched"), ("up", "uploaded")])
    );

    // A fetched key cannot replace an uploaded one with the same kid.
    server.serve_keys(&jwks(&[ed25519(5, Some("up")), ed25519(3, Some("k3"))]));
    fetch_now(&db, &fetcher, iss).await?;
    let rows = keys(&db, iss).await?;
    ensure!(
        rows.iter()
            .any(|r| r.0 == "up" && r.1 == "uploaded" && r.3 == ed25519(9, Some("up")))
    );
    ensure!(kids(&db, iss).await? == pairs(&[("k3", "fetched"), ("up", "uploaded")]));

    // Keys without a kid get a stable id.
    server.serve_keys(&jwks(&[ed25519(6, None)]));
    fetch_now(&db, &fetcher, iss).await?;
    let first = kids(&db, iss).await?;
    fetch_now(&db, &fetcher, iss).await?;
    ensure!(kids(&db, iss).await? == first);
    let generated = &first[0].0;
    ensure!(
        generated.starts_with("sha256:") && generated.len() == "sha256:".len() + 32,
        "{first:?}"
    );
    Ok(())
}

#[tokio::test]
async fn discovery_and_the_periodic_loop() -> Result<()> {
    let db = database().await?;
    let iss = "https://discovery.test";
    let server = TestIssuer::start(iss, &jwks(&[ed25519(1, Some("d1"))])).await?;
    add_issuer(
        &db,
        IssuerRow {
            discovery_url: Some(server.discovery_url()),
            jwks_uri: None,
            ..IssuerRow::jwks(iss, String::new())
        },
    )
    .await?;
    // An issuer without URLs is never fetched.
    add_issuer(
        &db,
        IssuerRow {
            jwks_uri: None,
            ..IssuerRow::jwks("https://uploaded-only.test", String::new())
        },
    )
    .await?;
    let (fetcher, _) = fetcher(&db, settings()).await?;
    let fetcher = Arc::new(fetcher);
    let task = tokio::spawn(Arc::clone(&fetcher).run());
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = kids(&db, iss).await?;
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    ensure!(stored == pairs(&[("d1", "fetched")]), "{stored:?}");
    ensure!(server.discovery_hits() >= 1);
    match fetcher.refresh("https://uploaded-only.test").await {
        Err(FetchError::NotFetched(_)) => {}
        other => bail!("expected NotFetched, got {other:?}"),
    }
    match fetcher.refresh("https://nobody.test").await {
        Err(FetchError::UnknownIssuer(_)) => {}
        other => bail!("expected UnknownIssuer, got {other:?}"),
    }

    // A discovery document naming another issuer is refused; the keys stay.
    server.set(|s| s.issuer = "https://evil.test".into());
    server.serve_keys(&jwks(&[ed25519(2, Some("evil"))]));
    match fetcher.refresh(iss).await {
        Err(FetchError::IssuerMismatch { found }) => ensure!(found == "https://evil.test"),
        other => bail!("expected IssuerMismatch, got {other:?}"),
    }
    ensure!(kids(&db, iss).await? == pairs(&[("d1", "fetched")]));
    let state = fetch_state(&db, iss).await?;
    ensure!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("discovery document names issuer")),
        "{state:?}"
    );

    // An issuer that is no longer fetched loses its fetched keys at the next pass.
    db.pool
        .get()
        .await?
        .execute(
            "UPDATE issuers SET discovery_url = NULL WHERE issuer = $1",
            &[&iss],
        )
        .await?;
    ensure!(fetcher.fetch_due().await? == 0);
    ensure!(kids(&db, iss).await?.is_empty());
    Ok(())
}
