//! The JWKS fetcher against a real Postgres and a test issuer on loopback: first fetch (direct
//! and through discovery), rotation, no writes when nothing changed, an issuer that is down
//! (last good keys kept, dropped after the maximum staleness), Cache-Control bounds, refused
//! key sets, and on-demand refreshes (coalesced, rate-limited).

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_postgres::Pool;
use futures_util::StreamExt as _;
use policy_sync::jwks_fetch::{FetchError, FetchSettings, Fetcher, RefreshOutcome};
use policy_sync::metrics::Metrics;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Database

/// A fresh migrated database in the test binary's cluster.
struct Db {
    url: String,
    pool: Pool,
}

async fn database() -> Result<Db> {
    let url = super::support::database()
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let pool = policy_sync::db::pool(&url, 8)?;
    Ok(Db { url, pool })
}

// ---------------------------------------------------------------------------------------------
// Test issuer

/// What the test issuer serves; changed by the tests while it runs.
#[derive(Debug)]
struct Served {
    /// Where the server listens (for the discovery document's `jwks_uri`).
    base: String,
    /// The `issuer` member of the discovery document.
    issuer: String,
    status: u16,
    jwks: String,
    cache_control: Option<String>,
    age: Option<String>,
    /// Sent in 1 KiB chunks without a Content-Length.
    chunked: bool,
    /// Waited before answering a JWKS request.
    delay: Duration,
    /// JWKS requests seen.
    jwks_hits: usize,
    discovery_hits: usize,
}

#[derive(Debug, Clone)]
struct TestIssuer {
    base: String,
    served: Arc<Mutex<Served>>,
}

impl TestIssuer {
    async fn start(issuer: &str, jwks: &Value) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let served = Arc::new(Mutex::new(Served {
            base: base.clone(),
            issuer: issuer.to_owned(),
            status: 200,
            jwks: jwks.to_string(),
            cache_control: None,
            age: None,
            chunked: false,
            delay: Duration::ZERO,
            jwks_hits: 0,
            discovery_hits: 0,
        }));
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_handler))
            .with_state(Arc::clone(&served));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { base, served })
    }

    fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.base)
    }

    fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.base)
    }

    fn set(&self, f: impl FnOnce(&mut Served)) {
        f(&mut lock(&self.served));
    }

    fn serve_keys(&self, jwks: &Value) {
        self.set(|s| s.jwks = jwks.to_string());
    }

    fn jwks_hits(&self) -> usize {
        lock(&self.served).jwks_hits
    }

    fn discovery_hits(&self) -> usize {
        lock(&self.served).discovery_hits
    }
}

fn lock(served: &Mutex<Served>) -> std::sync::MutexGuard<'_, Served> {
    served.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A response with a body and headers.
fn respond(status: u16, body: Body, headers: &[(&'static str, Option<String>)]) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            response.headers_mut().insert(*name, v);
        }
    }
    response
}

async fn discovery(State(served): State<Arc<Mutex<Served>>>) -> Response {
    let doc = {
        let mut s = lock(&served);
        s.discovery_hits += 1;
        json!({
            "issuer": s.issuer,
            "jwks_uri": format!("{}/jwks", s.base),
            "authorization_endpoint": format!("{}/authorize", s.base),
        })
    };
    respond(
        200,
        Body::from(doc.to_string()),
        &[("content-type", Some("application/json".into()))],
    )
}

async fn jwks_handler(State(served): State<Arc<Mutex<Served>>>) -> Response {
    let (status, body, cache_control, age, chunked, delay) = {
        let mut s = lock(&served);
        s.jwks_hits += 1;
        (
            s.status,
            s.jwks.clone(),
            s.cache_control.clone(),
            s.age.clone(),
            s.chunked,
            s.delay,
        )
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let body = if chunked {
        let chunks: Vec<Result<Bytes, Infallible>> = body
            .into_bytes()
            .chunks(1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    } else {
        Body::from(body)
    };
    respond(
        status,
        body,
        &[
            ("content-type", Some("application/jwk-set+json".into())),
            ("cache-control", cache_control),
            ("age", age),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Keys

/// A public Ed25519 JWK from a fixed seed.
fn ed25519(seed: u8, kid: Option<&str>) -> Value {
    let public = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
    let x = URL_SAFE_NO_PAD.encode(public.to_bytes());
    match kid {
        Some(kid) => json!({"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig", "kid": kid}),
        None => json!({"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig"}),
    }
}

/// An RSA public JWK with a `bits`-bit modulus (content irrelevant: only public checks run).
fn rsa(bits: usize, kid: &str) -> Value {
    let mut n = vec![0xc3u8; bits / 8];
    if let Some(top) = n.first_mut() {
        *top = 0xe1;
    }
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"})
}

fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn settings() -> FetchSettings {
    FetchSettings {
        timeout: Duration::from_secs(2),
        min_on_demand_interval: Duration::from_secs(10),
        max_body_bytes: 64 * 1024,
        tick: Duration::from_millis(50),
    }
}

async fn fetcher(db: &Db, settings: FetchSettings) -> Result<(Fetcher, Metrics)> {
    let metrics = Metrics::new()?;
    Ok((
        Fetcher::new(db.pool.clone(), metrics.clone(), settings)?,
        metrics,
    ))
}

struct IssuerRow<'a> {
    issuer: &'a str,
    jwks_uri: Option<String>,
    discovery_url: Option<String>,
    min_refresh_s: i32,
    max_refresh_s: i32,
    max_staleness_s: i32,
}

impl<'a> IssuerRow<'a> {
    fn jwks(issuer: &'a str, uri: String) -> Self {
        Self {
            issuer,
            jwks_uri: Some(uri),
            discovery_url: None,
            min_refresh_s: 1,
            max_refresh_s: 8,
            max_staleness_s: 3600,
        }
    }
}

async fn add_issuer(db: &Db, row: IssuerRow<'_>) -> Result<()> {
    db.pool
        .get()
        .await?
        .execute(
            "INSERT INTO issuers (issuer, jwks_uri, discovery_url, min_refresh_s, max_refresh_s,
                                  max_staleness_s)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &row.issuer,
                &row.jwks_uri,
                &row.discovery_url,
                &row.min_refresh_s,
                &row.max_refresh_s,
                &row.max_staleness_s,
            ],
        )
        .await?;
    Ok(())
}

async fn upload(db: &Db, issuer: &str, kid: &str, jwk: &Value) -> Result<()> {
    db.pool
        .get()
        .await?
        .execute(
            "INSERT INTO keys (issuer, kid, jwk, origin) VALUES ($1, $2, $3, 'uploaded')",
            &[&issuer, &kid, jwk],
        )
        .await?;
    Ok(())
}

/// The issuer's keys: (kid, origin, added_at as text, jwk), by kid.
async fn keys(db: &Db, issuer: &str) -> Result<Vec<(String, String, String, Value)>> {
    Ok(db
        .pool
        .get()
        .await?
        .query(
            "SELECT kid, origin, added_at::text, jwk FROM keys WHERE issuer = $1 ORDER BY kid",
            &[&issuer],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// The issuer's key ids with their origin, by kid.
async fn kids(db: &Db, issuer: &str) -> Result<Vec<(String, String)>> {
    Ok(keys(db, issuer)
        .await?
        .into_iter()
        .map(|(kid, origin, _, _)| (kid, origin))
        .collect())
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[derive(Debug)]
struct FetchState {
    last_error: Option<String>,
    succeeded: bool,
    /// next_fetch_at - last_attempt_at, in seconds.
    next_in: Option<f64>,
}

async fn fetch_state(db: &Db, issuer: &str) -> Result<FetchState> {
    let row = db
        .pool
        .get()
        .await?
        .query_one(
            "SELECT last_error, last_success_at IS NOT NULL,
                    EXTRACT(EPOCH FROM next_fetch_at - last_attempt_at)::float8
               FROM issuer_fetch_state WHERE issuer = $1",
            &[&issuer],
        )
        .await?;
    Ok(FetchState {
        last_error: row.get(0),
        succeeded: row.get(1),
        next_in: row.get(2),
    })
}

/// Makes the issuer due for the periodic loop now.
async fn make_due(db: &Db, issuer: &str) -> Result<()> {
    db.pool
        .get()
        .await?
        .execute(
            "UPDATE issuer_fetch_state SET next_fetch_at = now() - interval '1 second'
              WHERE issuer = $1",
            &[&issuer],
        )
        .await?;
    Ok(())
}

/// Fetches `issuer` through the periodic pass (it is the only due one).
async fn fetch_now(db: &Db, fetcher: &Fetcher, issuer: &str) -> Result<()> {
    make_due(db, issuer).await?;
    let n = fetcher.fetch_due().await?;
    ensure!(n == 1, "expected one due issuer, got {n}");
    Ok(())
}

/// A LISTEN connection on `portcullis_changed`: what the publisher would hear.
struct Listener {
    client: tokio_postgres::Client,
    notes: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Listener {
    async fn start(url: &str) -> Result<Self> {
        let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let (tx, notes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    let _ = tx.send(n.payload().to_owned());
                }
            }
        });
        client.batch_execute("LISTEN portcullis_changed").await?;
        Ok(Self { client, notes })
    }

    /// Change notifications received so far (a round trip first, so that those already sent
    /// have arrived).
    async fn drain(&mut self) -> Result<Vec<String>> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.client.batch_execute("SELECT 1").await?;
        let mut got = Vec::new();
        while let Ok(n) = self.notes.try_recv() {
            got.push(n);
        }
        Ok(got)
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

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

#[tokio::test]
async fn issuer_down_keeps_keys_until_stale() -> Result<()> {
    let db = database().await?;
    let iss = "https://down.test";
    let server = TestIssuer::start(iss, &jwks(&[ed25519(1, Some("a"))])).await?;
    add_issuer(&db, IssuerRow::jwks(iss, server.jwks_uri())).await?;
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
    db.pool
        .get()
        .await?
        .execute(
            "UPDATE issuer_fetch_state SET last_success_at = now() - interval '2 hours'
              WHERE issuer = $1",
            &[&iss],
        )
        .await?;
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
    let server = TestIssuer::start(iss, &jwks(&[ed25519(1, Some("a"))])).await?;
    add_issuer(
        &db,
        IssuerRow {
            min_refresh_s: 10,
            max_refresh_s: 100,
            max_staleness_s: 30,
            ..IssuerRow::jwks(iss, server.jwks_uri())
        },
    )
    .await?;
    let (fetcher, _) = fetcher(&db, settings()).await?;
    // Success: max_refresh_s would be 100 s, but the keys must be refetched before they are
    // 30 s old.
    ensure!(fetcher.fetch_due().await? == 1);
    ensure!(fetch_state(&db, iss).await?.next_in == Some(30.0));
    // Failure 25 s after the success: retried when the keys turn stale (5 s), not after 10 s.
    server.set(|s| s.status = 503);
    db.pool
        .get()
        .await?
        .execute(
            "UPDATE issuer_fetch_state SET last_success_at = now() - interval '25 seconds'
              WHERE issuer = $1",
            &[&iss],
        )
        .await?;
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

#[tokio::test]
async fn cache_control_is_honoured_within_bounds() -> Result<()> {
    let db = database().await?;
    let iss = "https://cache.test";
    let server = TestIssuer::start(iss, &jwks(&[ed25519(1, Some("a"))])).await?;
    add_issuer(
        &db,
        IssuerRow {
            min_refresh_s: 10,
            max_refresh_s: 100,
            max_staleness_s: 1000,
            ..IssuerRow::jwks(iss, server.jwks_uri())
        },
    )
    .await?;
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
    let server = TestIssuer::start(iss, &jwks(&[ed25519(1, Some("good"))])).await?;
    add_issuer(&db, IssuerRow::jwks(iss, server.jwks_uri())).await?;
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
    let server = TestIssuer::start(iss, &jwks(&[ed25519(1, Some("a"))])).await?;
    add_issuer(&db, IssuerRow::jwks(iss, server.jwks_uri())).await?;
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
