//! The JWKS fetcher: an issuer that is down: last good keys kept, dropped after the maximum
//! staleness.

use super::*;

#[tokio::test]
async fn issuer_down_keeps_keys_until_stale() -> Result<()> {
    let db = database().await?;
    let iss = "https://down.test";
    let server = served_issuer(&db, iss, "a", DEFAULT_BOUNDS).await?;
    upload(&db, iss, "up", &ed25519(9, Some("up"))).await?;
    let settings = FetchSettings {
        timeout: Duration::from_millis(300),
        ..settings()
    };
    let (fetcher, metrics) = fetcher(&db, settings).await?;
    ensure!(fetcher.fetch_due().await? == 1);
    let good = pairs(&[("a", "fetched"), ("up", "uploaded")]);
    ensure!(kids(&db, iss).await? == good);

    // 500: keys kept, error recorded, retried after min_refresh_s (1 s), then doubling.
    server.set(|s| s.status = 500);
    fetch_now(&db, &fetcher, iss).await?;
    ensure!(kids(&db, iss).await? == good);
    let state = fetch_state(&db, iss).await?;
    ensure!(
        state.last_error.as_deref() == Some("HTTP status 500"),
        "{state:?}"
    );
    ensure!(state.succeeded && state.next_in == Some(1.0), "{state:?}");
    fetch_now(&db, &fetcher, iss).await?;
    ensure!(fetch_state(&db, iss).await?.next_in == Some(2.0));

    // Too slow: timed out.
    server.set(|s| {
        s.status = 200;
        s.delay = Duration::from_secs(1);
    });
    fetch_now(&db, &fetcher, iss).await?;
    let state = fetch_state(&db, iss).await?;
    ensure!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("timed out")),
        "{state:?}"
    );
    ensure!(state.next_in == Some(4.0), "{state:?}");
    ensure!(kids(&db, iss).await? == good);

    // Connection refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    db.pool
        .get()
        .await?
        .execute(
            "UPDATE issuers SET jwks_uri = $2 WHERE issuer = $1",
            &[&iss, &format!("http://127.0.0.1:{dead}/jwks")],
        )
        .await?;
    fetch_now(&db, &fetcher, iss).await?;
    let state = fetch_state(&db, iss).await?;
    ensure!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot connect")),
        "{state:?}"
    );
    ensure!(
        state.next_in == Some(8.0),
        "capped at max_refresh_s: {state:?}"
    );
    ensure!(kids(&db, iss).await? == good);
    ensure!(metrics.fetch_failures.with_label_values(&[iss]).get() == 4);

    // Past the maximum staleness the fetched keys go; uploaded keys stay.
    succeeded_ago(&db, iss, 7200.0).await?;
    fetch_now(&db, &fetcher, iss).await?;
    ensure!(kids(&db, iss).await? == pairs(&[("up", "uploaded")]));

    // The issuer is back: its keys return, the error is cleared.
    server.set(|s| s.delay = Duration::ZERO);
    db.pool
        .get()
        .await?
        .execute(
            "UPDATE issuers SET jwks_uri = $2 WHERE issuer = $1",
            &[&iss, &server.jwks_uri()],
        )
        .await?;
    fetch_now(&db, &fetcher, iss).await?;
    ensure!(kids(&db, iss).await? == good);
    let state = fetch_state(&db, iss).await?;
    ensure!(state.last_error.is_none(), "{state:?}");
    Ok(())
}

#[tokio::test]
async fn staleness_bounds_the_retry_and_a_never_fetched_issuer_has_no_keys() -> Result<()> {
    let db = database().await?;
    let iss = "https://short-lived.test";
    let server = served_issuer(&db, iss, "a", [10, 100, 30]).await?;
    let (fetcher, _) = fetcher(&db, settings()).await?;
    // Success: max_refresh_s would be 100 s, but the keys must be refetched before they are
    // 30 s old.
    ensure!(fetcher.fetch_due().await? == 1);
    ensure!(fetch_state(&db, iss).await?.next_in == Some(30.0));
    // Failure 25 s after the success: retried when the keys turn stale (5 s), not after 10 s.
    server.set(|s| s.status = 503);
    succeeded_ago(&db, iss, 25.0).await?;
    fetch_now(&db, &fetcher, iss).await?;
    let next = fetch_state(&db, iss)
        .await?
        .next_in
        .context("next_fetch_at")?;
    ensure!((4.0..=6.0).contains(&next), "{next}");
    ensure!(kids(&db, iss).await? == pairs(&[("a", "fetched")]));

    // An issuer that never answered has nothing to keep.
    let never = "https://never.test";
    add_issuer(&db, IssuerRow::jwks(never, format!("{}/jwks", server.base))).await?;
    fetcher.refresh(never).await.err().context("must fail")?;
    let state = fetch_state(&db, never).await?;
    ensure!(!state.succeeded && state.last_error.as_deref() == Some("HTTP status 503"));
    ensure!(kids(&db, never).await?.is_empty());
    Ok(())
}
