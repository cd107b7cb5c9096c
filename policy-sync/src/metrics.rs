//! Prometheus metrics, served on `/metrics`.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric policy-sync exports (prefix `policy_sync_`).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Versions published.
    pub published: IntCounter,
    /// Publishing attempts that found the source state invalid (last good version kept).
    pub publish_refused: IntCounter,
    /// Publishing attempts that failed for another reason (Postgres unreachable, ...).
    pub publish_errors: IntCounter,
    /// Seconds per publishing attempt.
    pub publish_seconds: Histogram,
    /// Latest version this replica knows of.
    pub latest_version: IntGauge,
    /// Long-poll requests waiting now.
    pub waiters: IntGauge,
    /// Bundle responses sent (200).
    pub bundles_served: IntCounter,
    /// JWKS fetch failures, by issuer.
    pub fetch_failures: IntCounterVec,
    /// JWKS fetches that succeeded, by issuer.
    pub fetches: IntCounterVec,
    /// Decision-log rows written.
    pub decision_rows: IntCounter,
    /// Decision-log batches refused as invalid.
    pub decision_batches_refused: IntCounter,
    /// Connections in the pool, and those idle.
    pub pool_size: IntGauge,
    pub pool_available: IntGauge,
    /// Times the LISTEN connection was (re)established.
    pub listener_connects: IntCounter,
    /// 1 when `/readyz` would answer 200 (Postgres reachable, a version published), else 0.
    pub ready: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("policy_sync".into()), None)?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let by_issuer = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &["issuer"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let publish_seconds = Histogram::with_opts(
            HistogramOpts::new("publish_seconds", "Seconds per publishing attempt").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        registry.register(Box::new(publish_seconds.clone()))?;
        Ok(Self {
            published: counter("published_total", "Versions published")?,
            publish_refused: counter(
                "publish_refused_total",
                "Publishing attempts refused because the source state is invalid",
            )?,
            publish_errors: counter("publish_errors_total", "Publishing attempts that failed")?,
            publish_seconds,
            latest_version: gauge("latest_version", "Latest published version known here")?,
            waiters: gauge("long_poll_waiters", "Long-poll bundle requests waiting now")?,
            bundles_served: counter("bundles_served_total", "Bundle documents sent")?,
            fetch_failures: by_issuer("jwks_fetch_failures_total", "JWKS fetch failures")?,
            fetches: by_issuer("jwks_fetches_total", "JWKS fetches that succeeded")?,
            decision_rows: counter("decision_log_rows_total", "Decision-log rows written")?,
            decision_batches_refused: counter(
                "decision_log_batches_refused_total",
                "Decision-log batches refused as invalid",
            )?,
            pool_size: gauge("pool_connections", "Connections in the Postgres pool")?,
            pool_available: gauge("pool_connections_idle", "Idle connections in the pool")?,
            listener_connects: counter(
                "listener_connects_total",
                "Times the LISTEN connection was established",
            )?,
            ready: gauge(
                "ready",
                "1 when Postgres is reachable and a version is published, else 0",
            )?,
            registry,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format; an empty page is the fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
