//! The sequential phase of `cargo xtask measure`: each variant's Envoy started in turn (one
//! worker), its decisions checked, then a loop of requests on one keep-alive connection.

use std::time::{Duration, Instant};

use harness::devkeys::DevIssuer;
use harness::envoy::{Envoy, Ports};
use harness::http;

use super::LOAD_PATH;
use super::variant::{self, Modules, Tokens, Variant};
use crate::Result;

/// One variant's start and sequential requests.
pub struct Row {
    pub variant: Variant,
    pub first_answer: Duration,
    pub rss_ready_kib: u64,
    pub rss_after_kib: u64,
    pub per_second: f64,
}

/// What the phase measured, and the Envoys it started.
pub struct Sequential {
    pub rows: Vec<Row>,
    /// Every variant's Envoy, in [`Variant::ALL`]'s order; they stay up for the load phase,
    /// which alternates between them.
    pub proxies: Vec<(Variant, Envoy)>,
}

/// Starts every variant and sends it `requests` sequential requests with `auth`.
pub fn run(
    requests: u32,
    modules: Modules<'_>,
    issuer: &DevIssuer,
    tokens: &Tokens,
    auth: &str,
) -> Result<Sequential> {
    let mut rows = Vec::new();
    let mut proxies = Vec::new();
    for variant in Variant::ALL {
        let ports = Ports::free().map_err(|e| e.to_string())?;
        let cfg = variant.config(ports, modules, issuer)?;
        let mut proxy = Envoy::start(&cfg, ports, 1).map_err(|e| e.to_string())?;
        let first_answer = proxy
            .wait_ready(Duration::from_secs(120))
            .map_err(|e| e.to_string())?;
        let rss_ready_kib = proxy.rss_kib().unwrap_or(0);
        variant::check_decisions(&proxy, variant, tokens)?;
        let per_second = requests_per_second(&proxy, auth, requests)?;
        rows.push(Row {
            variant,
            first_answer,
            rss_ready_kib,
            rss_after_kib: proxy.rss_kib().unwrap_or(0),
            per_second,
        });
        proxies.push((variant, proxy));
    }
    Ok(Sequential { rows, proxies })
}

/// Sends `requests` sequential GETs on one connection; every answer must be a 200.
fn requests_per_second(proxy: &Envoy, auth: &str, requests: u32) -> Result<f64> {
    let agent = http::agent(Duration::from_secs(10));
    let url = proxy.url(LOAD_PATH);
    let started = Instant::now();
    for i in 0..requests {
        let resp = agent
            .get(&url)
            .header("authorization", auth)
            .call()
            .map_err(|e| format!("request {i}: {e}"))?;
        // A broken setup must not look fast: every answer is the upstream's 200.
        if resp.status().as_u16() != 200 {
            return Err(format!(
                "request {i}: status {} (expected 200)",
                resp.status()
            ));
        }
        let _ = http::text(resp);
    }
    Ok(f64::from(requests) / started.elapsed().as_secs_f64())
}
