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

mod outages;
mod responses;
mod rotation;

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
            min_refresh_s: DEFAULT_BOUNDS[0],
            max_refresh_s: DEFAULT_BOUNDS[1],
            max_staleness_s: DEFAULT_BOUNDS[2],
        }
    }
}

/// The refresh bounds an issuer gets unless a test says otherwise (seconds): at least 1, at
/// most 8 between fetches, keys kept at most an hour without one.
const DEFAULT_BOUNDS: [i32; 3] = [1, 8, 3600];

/// A test issuer serving one Ed25519 key `kid`, registered as `iss` with refresh bounds
/// (seconds): at least `min`, at most `max`, keys kept at most `stale` without a fetch.
async fn served_issuer(
    db: &Db,
    iss: &str,
    kid: &str,
    [min, max, stale]: [i32; 3],
) -> Result<TestIssuer> {
    let server = TestIssuer::start(iss, &jwks(&[ed25519(1, Some(kid))])).await?;
    let row = IssuerRow {
        min_refresh_s: min,
        max_refresh_s: max,
        max_staleness_s: stale,
        ..IssuerRow::jwks(iss, server.jwks_uri())
    };
    add_issuer(db, row).await?;
    Ok(server)
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

/// Moves the issuer's last successful fetch `seconds` into the past.
async fn succeeded_ago(db: &Db, issuer: &str, seconds: f64) -> Result<()> {
    db.pool
        .get()
        .await?
        .execute(
            "UPDATE issuer_fetch_state SET last_success_at = now() - make_interval(secs => $2)
              WHERE issuer = $1",
            &[&issuer, &seconds],
        )
        .await?;
    Ok(())
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
