//! A fault-injecting HTTP proxy on loopback, between Envoy and policy-sync. Everything passes
//! through unchanged except the answers that carry a document (`200` to `GET /v1/bundles/..`),
//! which the fault in force at the moment the answer arrives replaces.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use portcullis_core::bundle::signed::SignedBundle;

use crate::support::Res;

/// What happens to the next document answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Half the body, then the connection is closed (the length promised the whole body).
    Cut,
    /// One byte in the middle of the body is changed.
    Corrupt,
    /// The answer is held this long before it is sent.
    Delay(Duration),
    /// The first document that passed through is served instead.
    Replay,
    /// The document re-signed by a key the filter does not know.
    UnknownKey,
    /// This status instead, with an empty JSON body.
    Status(u16),
}

#[derive(Debug)]
struct Shared {
    fault: Fault,
    first_doc: Option<Bytes>,
    faulted: u64,
}

#[derive(Debug, Clone)]
struct Proxy {
    upstream: SocketAddr,
    http: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
}

/// The running proxy; stopped when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Res<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared {
            fault: Fault::Pass,
            first_doc: None,
            faulted: 0,
        }));
        let proxy = Proxy {
            upstream,
            http: reqwest::Client::builder().no_gzip().build()?,
            shared: Arc::clone(&shared),
        };
        let app = axum::Router::new().fallback(forward).with_state(proxy);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    pub fn set(&self, fault: Fault) {
        lock(&self.shared).fault = fault;
    }

    /// Document answers replaced by a fault so far.
    pub fn faulted(&self) -> u64 {
        lock(&self.shared).faulted
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn respond(status: u16, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    match relay(&p, req).await {
        Ok(r) => r,
        Err(e) => respond(
            502,
            Body::from(format!("{{\"proxy\":{:?}}}", e.to_string())),
        ),
    }
}

async fn relay(p: &Proxy, req: Request) -> Res<Response> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 8 << 20).await?;
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = p
        .http
        .request(parts.method.clone(), format!("http://{}{path}", p.upstream))
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v.clone());
        }
    }
    let answer = out.send().await?;
    let status = answer.status().as_u16();
    let bytes = answer.bytes().await?;
    let is_doc = parts.method == axum::http::Method::GET
        && parts.uri.path().starts_with("/v1/bundles/")
        && status == 200;
    if !is_doc {
        return Ok(respond(status, Body::from(bytes)));
    }
    let (fault, first) = {
        let mut s = lock(&p.shared);
        if s.fault == Fault::Pass {
            s.first_doc.get_or_insert_with(|| bytes.clone());
        } else {
            s.faulted += 1;
        }
        (s.fault, s.first_doc.clone())
    };
    Ok(match fault {
        Fault::Pass => respond(200, Body::from(bytes)),
        Fault::Cut => {
            let half = Bytes::copy_from_slice(bytes.get(..bytes.len() / 2).unwrap_or_default());
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(half),
                Err(std::io::Error::other("cut by the fault proxy")),
            ];
            let mut r = respond(200, Body::from_stream(futures_util::stream::iter(chunks)));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            r
        }
        Fault::Corrupt => {
            let mut changed = bytes.to_vec();
            let middle = changed.len() / 2;
            if let Some(b) = changed.get_mut(middle) {
                *b ^= 0x01;
            }
            respond(200, Body::from(changed))
        }
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            respond(200, Body::from(bytes))
        }
        Fault::Replay => respond(200, Body::from(first.unwrap_or(bytes))),
        Fault::UnknownKey => {
            let doc: SignedBundle = serde_json::from_slice(&bytes)?;
            let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
            let resigned = SignedBundle::sign(&stranger, doc.payload);
            respond(200, Body::from(serde_json::to_vec(&resigned)?))
        }
        Fault::Status(s) => respond(s, Body::from("{}")),
    })
}
