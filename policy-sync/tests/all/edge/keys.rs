//! Key rotation end to end: a test issuer on loopback serves its JWK Set; policy-sync fetches
//! it and publishes the keys in the tenant's document; the filter, configured with no keys of
//! its own, accepts tokens signed by it. The issuer then rotates to a new key: the first token
//! signed by the new key gets 401 `invalid_token` and makes the filter ask policy-sync to
//! refresh that issuer; policy-sync fetches the new set and publishes it; tokens signed by the
//! new key are then accepted at every worker, and the retired key's are refused.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use harness::devkeys::DevIssuer;
use harness::envoy::Envoy;
use serde_json::{Value, json};

use super::follow::ALLOW;
use super::{
    Build, Seeded, Serve, add_issuer, envoy_following_with, get_api, sync_section, until_all,
};
use crate::support::{Res, TestResult};

/// Serves `/jwks` from a value the test replaces; counts the fetches.
#[derive(Clone)]
struct Jwks(Arc<Mutex<(Value, u64)>>);

impl Jwks {
    async fn start(first: Value) -> Res<(Self, SocketAddr)> {
        let jwks = Self(Arc::new(Mutex::new((first, 0))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route(
                "/jwks",
                get(|State(j): State<Self>| async move {
                    let mut served = j.0.lock().unwrap_or_else(PoisonError::into_inner);
                    served.1 += 1;
                    axum::Json(served.0.clone())
                }),
            )
            .with_state(jwks.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((jwks, addr))
    }

    fn serve(&self, keys: Value) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).0 = keys;
    }

    fn fetches(&self) -> u64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

/// One request for `/api`: its status and `WWW-Authenticate`.
async fn answer(envoy: &Envoy, token: &str) -> Res<(u16, String)> {
    let (status, challenge) = get_api(envoy, token, "www-authenticate").await?;
    Ok((status, challenge.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuer_rotates_its_keys() -> TestResult {
    rotation(Build::Wasm).await
}

/// The same with the native module: a worker's request for a refresh reaches the follower on
/// Envoy's main thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_issuer_rotates_its_keys() -> TestResult {
    rotation(Build::Native).await
}

async fn rotation(build: Build) -> TestResult {
    let old = DevIssuer::generate()?;
    let new = DevIssuer::generate()?;
    let (jwks, jwks_addr) = Jwks::start(old.jwks()).await?;

    let setup = Seeded::new("keys", &[("allow", ALLOW)]).await?;
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let _serve =
        Serve::start_with(&setup.url, addr, &setup.key, &["--refresh-interval", "1"]).await?;
    // The issuer is registered with a refresh interval far longer than the test: only the
    // first fetch and the filter's refresh request can bring keys.
    let jwks_uri = format!("http://{jwks_addr}/jwks");
    add_issuer(
        addr,
        &setup.admin,
        &old.issuer,
        &old.audience,
        &jwks_uri,
        (3600, 3600),
    )
    .await?;

    // The filter has no keys of its own: the document's keys are the only ones it knows.
    let plugin = json!({ "sync": sync_section(addr, &setup.filter) });
    let (envoy, _) = envoy_following_with(build, &plugin, addr.port(), 4)?;
    let old_token = old.token("bob", &[]);
    until_all(&envoy, &old_token, 200, Duration::from_secs(15)).await?;
    assert_eq!(jwks.fetches(), 1, "policy-sync fetched the key set once");
    // Past policy-sync's on-demand rate limit since that first fetch.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The issuer rotates: the old key is retired, tokens are signed by the new one.
    jwks.serve(new.jwks());
    let new_token = new.token("bob", &[]);
    let (status, challenge) = answer(&envoy, &new_token).await?;
    assert_eq!(
        status, 401,
        "a token with an unknown kid, before any refresh"
    );
    assert!(challenge.contains("invalid_token"), "{challenge}");
    let started = Instant::now();
    let took = until_all(&envoy, &new_token, 200, Duration::from_secs(10)).await?;
    eprintln!(
        "the new key accepted at every connection {took:?} after the first token signed by it \
         ({} key set fetches)",
        jwks.fetches()
    );
    assert!(jwks.fetches() >= 2, "policy-sync fetched the rotated set");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The retired key is gone from the document in force.
    until_all(&envoy, &old_token, 401, Duration::from_secs(5)).await?;
    Ok(())
}
