//! The monitoring the repository ships (the rules in `istio/base/prometheusrule.yaml` and the
//! Grafana dashboard `istio/base/dashboard.json`), read as data, and a real Prometheus
//! (Debian's `prometheus`) on a free loopback port that scrapes given targets and evaluates
//! those rules.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::process::Daemon;
use crate::{Error, Result};

/// The PrometheusRule (`istio/base/prometheusrule.yaml`).
pub const PROMETHEUS_RULE: &str = include_str!("../../istio/base/prometheusrule.yaml");
/// The Grafana dashboard (`istio/base/dashboard.json`).
pub const DASHBOARD: &str = include_str!("../../istio/base/dashboard.json");

/// The PrometheusRule's `spec`: a Prometheus rule file.
pub fn rule_groups() -> Result<Value> {
    let doc: Value =
        serde_yaml_ng::from_str(PROMETHEUS_RULE).map_err(|e| Error::Template(e.to_string()))?;
    doc.get("spec")
        .filter(|_| doc.get("kind") == Some(&json!("PrometheusRule")))
        .cloned()
        .ok_or_else(|| Error::Template("not a PrometheusRule with a spec".into()))
}

/// A rule: its group, its `record` or `alert` name and its expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub group: String,
    pub name: String,
    pub expr: String,
    pub alert: bool,
}

/// Every rule of `groups` (a rule file).
pub fn rules(groups: &Value) -> Vec<Rule> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let list = |v: &Value, key: &str| v.get(key).and_then(Value::as_array).cloned();
    let mut out = Vec::new();
    for g in list(groups, "groups").into_iter().flatten() {
        for r in list(&g, "rules").into_iter().flatten() {
            let alert = text(&r, "alert");
            let name = alert.clone().or_else(|| text(&r, "record"));
            if let (Some(name), Some(expr)) = (name, text(&r, "expr")) {
                out.push(Rule {
                    group: text(&g, "name").unwrap_or_default(),
                    name,
                    expr,
                    alert: alert.is_some(),
                });
            }
        }
    }
    out
}

/// A dashboard query: the panel's title and the target's expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    pub panel: String,
    pub expr: String,
}

/// Every query of every panel of the dashboard.
pub fn dashboard_queries() -> Result<Vec<PanelQuery>> {
    let dash: Value =
        serde_json::from_str(DASHBOARD).map_err(|e| Error::Template(e.to_string()))?;
    let mut out = Vec::new();
    for panel in dash
        .get("panels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let title = panel.get("title").and_then(Value::as_str).unwrap_or("?");
        for target in panel
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let expr = target
                .get("expr")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Template(format!("panel {title}: a target without expr")))?;
            out.push(PanelQuery {
                panel: title.to_owned(),
                expr: expr.to_owned(),
            });
        }
    }
    Ok(out)
}

/// The metric names an expression reads (ours: `portcullis_*`, `policy_sync_*` and the
/// recording rules' `level:metric:operation` names).
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| {
            w.starts_with("portcullis_")
                || w.starts_with("policy_sync_")
                // Recording rules (`level:metric:operation`), not subquery ranges (`30m:1m`).
                || (w.split(':').count() == 3 && w.starts_with(|c: char| c.is_ascii_alphabetic()))
        })
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A scrape job: its name, the `host:port` it scrapes, the path, and static labels.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub target: String,
    pub path: String,
    pub labels: Vec<(String, String)>,
}

/// A running Prometheus; stopped and its data removed on drop.
#[derive(Debug)]
pub struct Prometheus {
    daemon: Daemon,
    port: u16,
}

impl Prometheus {
    /// Scrapes `jobs` every second and evaluates `groups` (a rule file; each group's own
    /// `interval` is replaced by one second so that the rules have values within a test).
    pub fn start(jobs: &[Job], groups: &Value) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-prometheus-")
            .tempdir()?;
        let mut groups = groups.clone();
        for g in groups
            .get_mut("groups")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(g) = g.as_object_mut() {
                g.insert("interval".into(), json!("1s"));
            }
        }
        let rules =
            serde_yaml_ng::to_string(&groups).map_err(|e| Error::Template(e.to_string()))?;
        std::fs::write(dir.path().join("rules.yaml"), rules)?;
        let scrape: Vec<Value> = jobs
            .iter()
            .map(|j| {
                let labels: serde_json::Map<String, Value> = j
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                json!({
                    "job_name": j.name,
                    "metrics_path": j.path,
                    "static_configs": [{"targets": [j.target], "labels": labels}],
                })
            })
            .collect();
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": scrape,
        });
        std::fs::write(
            dir.path().join("prometheus.yml"),
            serde_yaml_ng::to_string(&config).map_err(|e| Error::Template(e.to_string()))?,
        )?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut daemon = Daemon::spawn(
            Command::new("prometheus")
                .current_dir(dir.path())
                .arg("--config.file=prometheus.yml")
                .arg("--storage.tsdb.path=data")
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
            dir,
            "prometheus",
            "Debian package prometheus",
        )?;
        daemon.wait_http_ok(&format!("http://127.0.0.1:{port}/-/ready"))?;
        Ok(Self { daemon, port })
    }

    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// An API call's `data` (`status` must be `success`).
    pub fn api(&self, path_and_query: &str) -> Result<Value> {
        let agent = crate::http::agent(Duration::from_secs(10));
        let resp = agent
            .get(self.url(path_and_query))
            .call()
            .map_err(|e| Error::Missing(format!("prometheus {path_and_query}: {e}")))?;
        let body: Value = serde_json::from_str(&crate::http::text(resp))
            .map_err(|e| Error::Missing(format!("prometheus {path_and_query}: {e}")))?;
        if body.get("status") != Some(&json!("success")) {
            return Err(Error::Missing(format!(
                "prometheus {path_and_query}: {body}"
            )));
        }
        body.get("data")
            .cloned()
            .ok_or_else(|| Error::Missing(format!("prometheus {path_and_query}: no data")))
    }

    /// The series an instant query returns now.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)))?;
        Ok(data
            .get("result")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_found_in_expressions() {
        assert_eq!(
            metric_names(
                "sum by (policy_id) (rate(portcullis_denied_by_policy_total{namespace=~\"$ns\"}[1m])) / namespace:portcullis_requests:rate5m"
            ),
            [
                "namespace:portcullis_requests:rate5m",
                "portcullis_denied_by_policy_total"
            ]
        );
        assert!(metric_names("max_over_time(up[30m:1m])").is_empty());
        assert_eq!(encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    }
}
