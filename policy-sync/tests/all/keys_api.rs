//! Fetched keys through the running service: the periodic fetch publishes an issuer's keys,
//! `POST /v1/keys/refresh` fetches at once (rate-limited per issuer), and rotation reaches the
//! document.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{self, Res, Service, TestResult};

fn okp(kid: &str, seed: u8) -> Value {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
           "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())})
}

/// A JWKS endpoint on loopback serving whatever `keys` holds; counts requests.
async fn jwks_server(keys: Arc<Mutex<(Value, usize)>>) -> Res<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jwks", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/jwks",
        get(move || {
            let keys = Arc::clone(&keys);
            async move {
                let mut k = keys.lock().unwrap_or_else(|e| e.into_inner());
                k.1 += 1;
                axum::Json(k.0.clone())
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn kids(svc: &Service, after: i64) -> Res<(u64, Vec<String>)> {
    let started = Instant::now();
    loop {
        if let (200, Some(doc)) = svc.document("default", after).await? {
            let kids = doc
                .issuers
                .iter()
                .flat_map(|i| i.jwks.keys.iter().filter_map(|k| k.kid.clone()))
                .collect();
            return Ok((doc.version, kids));
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("no version after {after} within 10 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_keys_are_published_and_refreshed_on_demand() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let served = Arc::new(Mutex::new((json!({"keys": [okp("k1", 1)]}), 0_usize)));
    let jwks = jwks_server(Arc::clone(&served)).await?;
    let r = svc
        .admin(Method::POST, "/v1/admin/issuers")
        .json(
            &json!({"issuer": "https://idp.test", "jwksUri": jwks, "minRefreshS": 3600,
                      "maxRefreshS": 3600}),
        )
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // The periodic fetch finds the new issuer due at once; its key is published.
    let (v, got) = kids(&svc, 1).await?;
    assert_eq!(got, ["k1"]);
    // Rotation at the issuer; the next periodic fetch is an hour away, a filter that sees
    // the unknown kid asks for a refresh.
    served.lock().unwrap_or_else(|e| e.into_inner()).0 = json!({"keys": [okp("k2", 2)]});
    let r = svc
        .as_filter(Method::POST, "/v1/keys/refresh?iss=https://idp.test")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    assert_eq!(body, json!({"changed": true, "keys": 1}));
    let (v2, got) = kids(&svc, i64::try_from(v)?).await?;
    assert!(v2 > v);
    assert_eq!(got, ["k2"]);
    // Asked again at once: rate-limited, no request reaches the issuer.
    let before = served.lock().unwrap_or_else(|e| e.into_inner()).1;
    let r = svc
        .as_filter(Method::POST, "/v1/keys/refresh?iss=https://idp.test")
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(served.lock().unwrap_or_else(|e| e.into_inner()).1, before);
    // Unknown issuers, issuers whose keys are uploaded, and bad requests.
    let r = svc
        .as_filter(Method::POST, "/v1/keys/refresh?iss=https://nobody")
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let r = svc
        .admin(Method::POST, "/v1/admin/issuers")
        .json(&json!({"issuer": "https://uploaded.test"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = svc
        .as_filter(Method::POST, "/v1/keys/refresh?iss=https://uploaded.test")
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let r = svc
        .as_filter(Method::POST, "/v1/keys/refresh")
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_cannot_be_reached_is_a_bad_gateway() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let r = svc
        .admin(Method::POST, "/v1/admin/issuers")
        .json(&json!({"issuer": "https://down.test", "jwksUri": format!("http://127.0.0.1:{port}/jwks")}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // Let the periodic attempt pass, so the on-demand one is not coalesced with it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = svc
        .as_filter(Method::POST, "/v1/keys/refresh?iss=https://down.test")
        .send()
        .await?;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await?;
    let error = body["error"].as_str().ok_or("no error")?;
    assert!(!error.contains("127.0.0.1"), "{error}");
    assert!(
        svc.running
            .state
            .metrics
            .fetch_failures
            .with_label_values(&["https://down.test"])
            .get()
            >= 1
    );
    Ok(())
}
