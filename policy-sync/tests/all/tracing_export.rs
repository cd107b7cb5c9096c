//! Traces over OTLP: `policy-sync serve` with `--otlp-endpoint` exports each request's span to
//! an OTLP/HTTP receiver on loopback (protobuf, decoded with the OpenTelemetry protocol's own
//! types), as a child of the request's W3C `traceparent`. (That export is off without an
//! endpoint is unit-tested in `policy_sync::telemetry`.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::edge::{Serve, key_file};
use crate::support::{self, Res, TestResult};

/// An OTLP/HTTP trace receiver: keeps every span posted to `/v1/traces`.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

impl Receiver {
    async fn start() -> Res<(Self, SocketAddr)> {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(|State(r): State<Self>, body: Bytes| async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            let spans = req
                                .resource_spans
                                .into_iter()
                                .flat_map(|rs| rs.scope_spans)
                                .flat_map(|ss| ss.spans);
                            r.0.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .extend(spans);
                            axum::http::StatusCode::OK
                        }
                        Err(_) => axum::http::StatusCode::BAD_REQUEST,
                    }
                }),
            )
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((receiver, addr))
    }

    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `policy-sync serve` exporting its traces to `otlp`, quickly (the batch delay shortened).
async fn serve(url: &str, key: &std::path::Path, otlp: SocketAddr) -> Res<(Serve, SocketAddr)> {
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut cmd = Serve::command(url, addr, key);
    cmd.arg("--otlp-endpoint")
        .arg(format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    Ok((Serve::spawn(&mut cmd, addr).await?, addr))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_as_children_of_traceparent() -> TestResult {
    let url = support::database().await?;
    let dir = tempfile::tempdir()?;
    let key = key_file(dir.path())?;
    let (receiver, otlp) = Receiver::start().await?;
    let (_serve, addr) = serve(&url, &key, otlp).await?;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/v1/bundles/default?wait=0"))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await?;
    assert_eq!(r.status(), 401, "no token");
    let started = Instant::now();
    let span = loop {
        if let Some(s) = receiver
            .spans()
            .into_iter()
            .find(|s| hex(&s.trace_id) == trace_id)
        {
            break s;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("no span of trace {trace_id}: {:?}", receiver.spans()).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        hex(&span.parent_span_id),
        parent,
        "the caller's span is the parent"
    );
    assert_eq!(span.name, "GET /v1/bundles/{tenant}");
    let status = span
        .attributes
        .iter()
        .find(|a| a.key == "http.response.status_code")
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{v:?}"));
    assert!(
        status.is_some_and(|s| s.contains("401")),
        "{:?}",
        span.attributes
    );

    // A request without traceparent starts a trace of its own.
    let before = receiver.spans().len();
    reqwest::get(format!("http://{addr}/healthz")).await?;
    let started = Instant::now();
    while receiver.spans().len() == before {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("no span for /healthz".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = receiver.spans();
    let health = spans
        .iter()
        .find(|s| s.name == "GET /healthz")
        .ok_or("no /healthz span")?;
    assert!(health.parent_span_id.is_empty());
    assert_ne!(hex(&health.trace_id), trace_id);
    Ok(())
}
