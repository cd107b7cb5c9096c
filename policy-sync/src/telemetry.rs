//! Logs and traces of `policy-sync serve`. Logs go to stderr, filtered by `--log` (tracing's
//! `EnvFilter` syntax).
//! Traces are off unless an OTLP endpoint is configured (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): then every request's
//! span, and the spans of level info and above inside it, are exported over OTLP/HTTP (protobuf) in batches, with the
//! W3C `traceparent` of an incoming request as their parent.

use axum::http::Request;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The standard variables that turn trace export on.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Why logging or tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--log: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("logging is already set up: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the trace pipeline; [`Telemetry::shutdown`] sends what is still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sets up logging with `filter`, and trace export when `otlp_endpoint` (an OTLP/HTTP
    /// base URL such as `http://collector:4318`) is given or the environment names one. Call
    /// it outside the async runtime: the exporter's HTTP client runs its own.
    pub fn init(filter: &str, otlp_endpoint: Option<&str>) -> Result<Self, TelemetryError> {
        let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        let provider = if export_configured(otlp_endpoint, |v| std::env::var_os(v)) {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
            if let Some(base) = otlp_endpoint {
                exporter =
                    exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
            }
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter.build()?)
                .with_resource(Resource::builder().with_service_name("policy-sync").build())
                .build();
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            Some(provider)
        } else {
            None
        };
        // Each layer has its own filter: `--log` chooses the log lines; spans of level info and
        // above are traced whatever it says.
        let otel = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("policy-sync"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        });
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(otel)
            .try_init()?;
        Ok(Self { provider })
    }

    /// Exports the spans still queued and stops the pipeline.
    pub fn shutdown(self) {
        if let Some(Err(e)) = self.provider.map(|p| p.shutdown()) {
            eprintln!("policy-sync: traces not all exported: {e}");
        }
    }
}

/// The span of one HTTP request, a child of the request's `traceparent` when it has one
/// (and trace export is on; otherwise the header is ignored).
pub fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {}", request.method(), route(request.uri().path())),
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
    });
    // Without the OpenTelemetry layer (export off) there is nothing to attach the parent to.
    let _ = span.set_parent(parent);
    span
}

/// A low-cardinality name for a path: the API's route with its variable parts named, or
/// `unmatched` for a path the API does not serve (so that scanners do not make span names).
fn route(path: &str) -> &'static str {
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    match parts.as_slice() {
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["v1", "decisions"] => "/v1/decisions",
        ["v1", "keys", "refresh"] => "/v1/keys/refresh",
        ["v1", "bundles", _] => "/v1/bundles/{tenant}",
        ["v1", "admin", "tenants"] => "/v1/admin/tenants",
        ["v1", "admin", "tenants", _] => "/v1/admin/tenants/{tenant}",
        ["v1", "admin", "tenants", _, "policies"] => "/v1/admin/tenants/{tenant}/policies",
        ["v1", "admin", "tenants", _, "policies", _] => "/v1/admin/tenants/{tenant}/policies/{id}",
        ["v1", "admin", "tenants", _, "schema"] => "/v1/admin/tenants/{tenant}/schema",
        ["v1", "admin", "tenants", _, "entities"] => "/v1/admin/tenants/{tenant}/entities",
        ["v1", "admin", "issuers"] => "/v1/admin/issuers",
        ["v1", "admin", "keys"] => "/v1/admin/keys",
        ["v1", "admin", "versions"] => "/v1/admin/versions",
        ["v1", "admin", "rollback"] => "/v1/admin/rollback",
        ["v1", "admin", "validate"] => "/v1/admin/validate",
        _ => "unmatched",
    }
}

/// Whether trace export is configured: the flag, or a non-empty standard endpoint variable.
fn export_configured(flag: Option<&str>, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    flag.is_some()
        || ENDPOINT_VARS
            .iter()
            .any(|v| env(v).is_some_and(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_hide_ids_and_unknown_paths() {
        assert_eq!(route("/v1/bundles/shop"), "/v1/bundles/{tenant}");
        assert_eq!(
            route("/v1/admin/tenants/shop/policies/p1"),
            "/v1/admin/tenants/{tenant}/policies/{id}"
        );
        assert_eq!(route("/healthz"), "/healthz");
        assert_eq!(route("/wp-login.php"), "unmatched");
        assert_eq!(route("/v1/bundles/a/b"), "unmatched");
    }

    #[test]
    fn export_is_off_unless_configured() {
        let none = |_: &str| None;
        assert!(!export_configured(None, none));
        assert!(!export_configured(None, |_| Some("".into())));
        assert!(export_configured(Some("http://c:4318"), none));
        assert!(export_configured(None, |v| {
            (v == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".into())
        }));
        assert!(export_configured(None, |v| {
            (v == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").then(|| "http://c:4318/v1/traces".into())
        }));
    }
}
