//! `cargo xtask measure`: size of the filter, Envoy start-up time, memory and a sequential
//! request loop, with and without the filter, measured in the same run.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::{demo, http};

use crate::Result;

struct Row {
    name: &'static str,
    first_answer: Duration,
    rss_ready_kib: u64,
    rss_after_kib: u64,
    per_second: f64,
}

/// Measures and prints a table.
pub fn run(requests: u32, wasm: Option<PathBuf>) -> Result {
    crate::tools::ensure_envoy()?;
    let wasm = match wasm {
        Some(w) => w,
        None => crate::wasm::build()?,
    };
    let size = std::fs::metadata(&wasm).map_err(|e| e.to_string())?.len();
    let gz = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(&wasm)
        .output()
        .map_err(|e| format!("gzip: {e}"))?
        .stdout
        .len();
    println!(
        "filter: {} — {} KiB, {} KiB gzipped",
        wasm.display(),
        size / 1024,
        gz / 1024
    );

    let issuer = DevIssuer::generate().map_err(|e| e.to_string())?;
    let token = issuer.token("bob", &["staff"]);
    let mut rows = Vec::new();
    for with_filter in [false, true] {
        let ports = Ports::free().map_err(|e| e.to_string())?;
        let cfg = if with_filter {
            envoy::config(ports, &wasm, &demo::plugin_config(&issuer))
        } else {
            envoy::baseline_config(ports)
        }
        .map_err(|e| e.to_string())?;
        let mut proxy = Envoy::start(&cfg, ports, 1).map_err(|e| e.to_string())?;
        let first_answer = proxy
            .wait_ready(Duration::from_secs(120))
            .map_err(|e| e.to_string())?;
        let rss_ready_kib = proxy.rss_kib().unwrap_or(0);
        let agent = http::agent(Duration::from_secs(10));
        let url = proxy.url("/api/hello");
        let auth = format!("Bearer {token}");
        let started = Instant::now();
        for i in 0..requests {
            let resp = agent
                .get(&url)
                .header("authorization", &auth)
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
        let per_second = f64::from(requests) / started.elapsed().as_secs_f64();
        rows.push(Row {
            name: if with_filter {
                "envoy + portcullis"
            } else {
                "envoy, no filter"
            },
            first_answer,
            rss_ready_kib,
            rss_after_kib: proxy.rss_kib().unwrap_or(0),
            per_second,
        });
    }
    println!(
        "\n{:<20} {:>14} {:>14} {:>16} {:>14}",
        "variant", "first answer", "RSS ready", "RSS after load", "req/s (1 conn)"
    );
    for r in &rows {
        println!(
            "{:<20} {:>12.0?} {:>11} MiB {:>13} MiB {:>14.0}",
            r.name,
            r.first_answer,
            r.rss_ready_kib / 1024,
            r.rss_after_kib / 1024,
            r.per_second
        );
    }
    println!(
        "\n({requests} sequential GET requests with an RS256 token, one keep-alive connection, one Envoy worker)"
    );
    Ok(())
}
