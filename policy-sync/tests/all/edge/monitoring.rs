//! Monitoring end to end: a real Prometheus scrapes a real Envoy (the built filter following a
//! real policy-sync) and that policy-sync, and evaluates the shipped rules. After a few
//! requests, every query of every dashboard panel and every metric each rule reads returns
//! series, the per-policy, per-cause and per-tenant values arrive as labels, every rule
//! evaluates without error, and both metric pages pass `promtool check metrics` (less, on
//! Envoy's page, the findings that are the host's; see below).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::devkeys::DevIssuer;
use harness::prometheus::{self, Job, Prometheus};
use harness::serve::Static;
use serde_json::{Value, json};

use super::follow::ALLOW;
use super::{Seeded, Serve, add_issuer, envoy_following, get_api, sync_section, until_all};
use crate::support::{Res, TestResult};

const NO_ADMIN: &str =
    "forbid (principal, action, resource) when { resource == Path::\"/admin\" };";

/// Problems `promtool check metrics` finds in `page` (the exposition format).
fn promtool_lint(page: &str) -> Res<Vec<String>> {
    let out = harness::process::run_with_input(
        Command::new("promtool").args(["check", "metrics"]),
        page.as_bytes(),
        "promtool (Debian package prometheus)",
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// The part of Envoy's Prometheus page that is the filter's: `portcullis_*` samples and their
/// `# TYPE` lines.
fn filter_page(page: &str) -> String {
    page.lines()
        .filter(|l| l.starts_with("portcullis_") || l.starts_with("# TYPE portcullis_"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Waits until `expr` returns series; returns them.
fn until_series(prom: &Prometheus, expr: &str, within: Duration) -> Res<Vec<Value>> {
    let started = Instant::now();
    loop {
        let got = prom.query(expr)?;
        if !got.is_empty() {
            return Ok(got);
        }
        if started.elapsed() > within {
            return Err(format!("no series for {expr} within {within:?}").into());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_sees_every_panel_and_rule() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let jwks = Static::start(issuer.jwks().to_string().into_bytes(), "application/json")?;
    // An issuer whose key server is down: its fetches fail.
    let down = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;

    let setup = Seeded::new("mon", &[("allow", ALLOW), ("no-admin", NO_ADMIN)]).await?;
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let _serve =
        Serve::start_with(&setup.url, addr, &setup.key, &["--refresh-interval", "1"]).await?;
    let jwks_uri = format!("http://127.0.0.1:{}/jwks", jwks.port());
    let audience = &issuer.audience;
    add_issuer(
        addr,
        &setup.admin,
        &issuer.issuer,
        audience,
        &jwks_uri,
        (1, 2),
    )
    .await?;
    let down_uri = format!("http://{down}/jwks");
    add_issuer(
        addr,
        &setup.admin,
        "https://down.example.com",
        audience,
        &down_uri,
        (1, 2),
    )
    .await?;

    let plugin = json!({ "sync": sync_section(addr, &setup.filter) });
    let (envoy, ports) = envoy_following(&plugin, addr.port(), 2)?;
    let token = issuer.token("bob", &[]);
    until_all(&envoy, &token, 200, Duration::from_secs(15)).await?;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        assert_eq!(get_api(&envoy, &token, "x").await?.0, 200);
        let r = client
            .get(envoy.url("/admin"))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(r.status(), 403);
        assert_eq!(client.get(envoy.url("/api")).send().await?.status(), 401);
    }

    let labels = |pod: &str| {
        vec![
            ("namespace".to_owned(), "e2e".to_owned()),
            ("pod".to_owned(), pod.to_owned()),
        ]
    };
    let jobs = [
        Job {
            name: "envoy".into(),
            target: format!("127.0.0.1:{}", ports.admin),
            path: "/stats/prometheus".into(),
            labels: labels("envoy-0"),
        },
        Job {
            name: "policy-sync".into(),
            target: addr.to_string(),
            path: "/metrics".into(),
            labels: labels("policy-sync-0"),
        },
    ];
    let groups = prometheus::rule_groups()?;
    let prom = tokio::task::block_in_place(|| Prometheus::start(&jobs, &groups))?;
    let within = Duration::from_secs(30);
    tokio::task::block_in_place(|| -> TestResult {
        // The labels Envoy's stats_tags make, as the dashboard and the rules use them.
        let denied = until_series(
            &prom,
            "portcullis_denied_by_policy_total{policy_id=\"no-admin\"}",
            within,
        )?;
        assert_eq!(denied.len(), 1, "{denied:?}");
        until_series(
            &prom,
            "portcullis_sync_bundle_version{tenant=\"default\"}",
            within,
        )?;
        until_series(
            &prom,
            "portcullis_sync_failures_total{cause=\"timeout\"}",
            within,
        )?;
        until_series(
            &prom,
            "policy_sync_jwks_fetch_failures_total{issuer=\"https://down.example.com\"}",
            within,
        )?;
        // Every panel's every query.
        for q in prometheus::dashboard_queries()? {
            let expr = q
                .expr
                .replace("$__rate_interval", "30s")
                .replace("$namespace", "e2e");
            until_series(&prom, &expr, within)
                .map_err(|e| format!("panel {:?}: {e}\n{}", q.panel, prom.log()))?;
        }
        // Every metric every rule reads, and every recording rule's own series.
        let rules = prometheus::rules(&groups);
        for rule in &rules {
            for name in prometheus::metric_names(&rule.expr) {
                until_series(&prom, &format!("{{__name__=\"{name}\"}}"), within)
                    .map_err(|e| format!("rule {}: {e}", rule.name))?;
            }
            if !rule.alert {
                until_series(&prom, &rule.name, within)?;
            }
        }
        until_series(&prom, "up{job=\"policy-sync\"} == 1", within)?;
        // Every rule evaluates without error.
        let data = prom.api("/api/v1/rules")?;
        let evaluated: Vec<&Value> = data["groups"]
            .as_array()
            .ok_or("no groups")?
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        assert_eq!(evaluated.len(), rules.len());
        for r in evaluated {
            assert_eq!(r["health"], "ok", "{r}");
        }
        Ok(())
    })?;

    // Metric names follow Prometheus' conventions (promtool's lint). Two findings are the
    // host's, not ours: Envoy writes no HELP text for any stat, and an Envoy histogram holds
    // integers, so the filter's sub-millisecond timings are recorded in micro- and nanoseconds
    // (with the unit in the name) rather than the base unit, seconds.
    let page = reqwest::get(format!("http://127.0.0.1:{}/stats/prometheus", ports.admin))
        .await?
        .text()
        .await?;
    let ours = filter_page(&page);
    assert!(ours.contains("portcullis_allowed_total"), "{ours}");
    let problems: Vec<String> = promtool_lint(&ours)?
        .into_iter()
        .filter(|l| {
            !l.contains("no help text")
                && !(l.contains("use base unit \"seconds\"")
                    && (l.contains("_microseconds") || l.contains("_nanoseconds")))
        })
        .collect();
    assert!(problems.is_empty(), "the filter's metrics: {problems:?}");
    let page = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let problems = promtool_lint(&page)?;
    assert!(problems.is_empty(), "policy-sync's metrics: {problems:?}");
    Ok(())
}
