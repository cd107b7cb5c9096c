//! The `stats_tags` rules that turn the filter's per-policy, per-cause and per-tenant stats into
//! labels: the same in every Envoy sample, the tests' template and each Istio overlay's
//! bootstrap patch as the filter's own list (`portcullis_core::metrics::TAGS`); each patch
//! selects the proxies its overlay's WasmPlugin does; and merged by a real Envoy into a
//! configuration without them, the patch makes the labels Prometheus sees.

use std::error::Error;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::{demo, http, paths};
use portcullis_core::metrics;
use serde_json::Value;

type TestResult = Result<(), Box<dyn Error>>;

const OVERLAYS: [&str; 3] = ["sidecars", "ingress-gateway", "gateway-api"];

fn want() -> Vec<(String, String)> {
    portcullis_core::metrics::TAGS
        .iter()
        .map(|t| (t.tag_name.to_owned(), t.regex.to_owned()))
        .collect()
}

/// The `stats_config.stats_tags` rules of a bootstrap (or fragment), as (name, regex).
fn rules(bootstrap: &Value) -> Vec<(String, String)> {
    bootstrap
        .pointer("/stats_config/stats_tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["tag_name"].as_str().unwrap_or_default().to_owned(),
                t["regex"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn yaml(rel: &str) -> Result<Value, Box<dyn Error>> {
    let text = std::fs::read_to_string(paths::repo_root().join(rel))?;
    Ok(serde_yaml_ng::from_str(&text)?)
}

/// The bootstrap fragment an overlay's EnvoyFilter merges, checked to be one MERGE patch of
/// the bootstrap.
fn patch(overlay: &str) -> Result<Value, Box<dyn Error>> {
    let doc = yaml(&format!("istio/overlays/{overlay}/stats-tags.yaml"))?;
    assert_eq!(doc.get("kind"), Some(&Value::from("EnvoyFilter")));
    let patches = doc
        .pointer("/spec/configPatches")
        .and_then(Value::as_array)
        .ok_or("no configPatches")?;
    let [only] = patches.as_slice() else {
        return Err(format!("{overlay}: one patch expected").into());
    };
    assert_eq!(only.get("applyTo"), Some(&Value::from("BOOTSTRAP")));
    assert_eq!(
        only.pointer("/patch/operation"),
        Some(&Value::from("MERGE"))
    );
    Ok(only
        .pointer("/patch/value")
        .ok_or("no patch value")?
        .clone())
}

#[test]
fn stats_tags_everywhere_are_the_filters() -> TestResult {
    let root = paths::repo_root();
    for file in [
        "envoy/test-template.yaml",
        "envoy/edge-gateway.yaml",
        "envoy/gateway-sync.yaml",
    ] {
        // The templates' `${NAME}` placeholders are not YAML inside flow mappings.
        let mut text = std::fs::read_to_string(root.join(file))?;
        while let Some(start) = text.find("${") {
            let end = text[start..].find('}').ok_or("unclosed placeholder")? + start;
            text.replace_range(start..=end, "0");
        }
        let doc: Value = serde_yaml_ng::from_str(&text)?;
        assert_eq!(rules(&doc), want(), "{file}");
    }
    for overlay in OVERLAYS {
        assert_eq!(rules(&patch(overlay)?), want(), "{overlay}");
    }
    Ok(())
}

/// Each patch selects the proxies the overlay's WasmPlugin runs in: the same labels in the
/// same namespace (for a Gateway API gateway, the label Istio gives the pods of the Gateway
/// the WasmPlugin targets).
#[test]
fn each_stats_tags_patch_selects_the_filters_proxies() -> TestResult {
    for overlay in OVERLAYS {
        let filter = yaml(&format!("istio/overlays/{overlay}/wasmplugin.yaml"))?;
        let tags = yaml(&format!("istio/overlays/{overlay}/stats-tags.yaml"))?;
        assert_eq!(
            tags["metadata"]["namespace"], filter["metadata"]["namespace"],
            "{overlay}"
        );
        let selected = &tags["spec"]["workloadSelector"]["labels"];
        let expected = match filter["spec"]["targetRefs"].as_array() {
            Some(refs) => {
                let [gateway] = refs.as_slice() else {
                    return Err(format!("{overlay}: one targetRef expected").into());
                };
                assert_eq!(gateway["kind"], "Gateway");
                serde_json::json!({ "gateway.networking.k8s.io/gateway-name": gateway["name"] })
            }
            None => filter["spec"]["selector"]["matchLabels"].clone(),
        };
        assert!(expected.is_object(), "{overlay}: nothing selected");
        assert_eq!(selected, &expected, "{overlay}");
    }
    Ok(())
}

/// The Envoy configuration the tests run, without its `stats_tags`.
fn config_without_tags(ports: Ports, issuer: &DevIssuer) -> Result<String, Box<dyn Error>> {
    let yaml = envoy::config(ports, &paths::wasm()?, &demo::plugin_config(issuer))?;
    let mut doc: Value = serde_yaml_ng::from_str(&yaml)?;
    doc.get_mut("stats_config")
        .and_then(Value::as_object_mut)
        .ok_or("the template has no stats_config")?
        .remove("stats_tags")
        .ok_or("the template has no stats_tags")?;
    Ok(serde_json::to_string(&doc)?)
}

/// Bob's request to the admin area (denied by `admin-area-admins-only`), then Envoy's
/// Prometheus exposition.
fn denied_then_scraped(patch: Option<&str>, issuer: &DevIssuer) -> Result<String, Box<dyn Error>> {
    let ports = Ports::free()?;
    let cfg = config_without_tags(ports, issuer)?;
    let mut proxy = Envoy::start_patched(&cfg, patch, ports, 1)?;
    proxy.wait_ready(Duration::from_secs(60))?;
    let token = issuer.token("bob", &[]);
    let req = ureq::http::Request::builder()
        .uri(proxy.url("/admin/users"))
        .header("authorization", format!("Bearer {token}"))
        .body(())?;
    let status = http::agent(Duration::from_secs(10)).run(req)?.status();
    assert_eq!(status.as_u16(), 403);
    // The filter counts the deny once the request is done: wait for the count.
    assert_eq!(
        proxy.wait_stat(&envoy::stat_name(metrics::DENIED), 1)?,
        Some(1)
    );
    Ok(proxy.admin("/stats/prometheus")?)
}

#[test]
fn the_bootstrap_patch_labels_the_stats_in_a_real_envoy() -> TestResult {
    let value = patch("sidecars")?;
    for overlay in OVERLAYS {
        assert_eq!(
            patch(overlay)?,
            value,
            "every overlay merges the same fragment"
        );
    }
    let issuer = DevIssuer::generate()?;
    let labelled = r#"portcullis_denied_by_policy_total{policy_id="admin-area-admins-only"} 1"#;
    let patched = denied_then_scraped(Some(&serde_json::to_string(&value)?), &issuer)?;
    assert!(
        patched.lines().any(|l| l == labelled),
        "no {labelled} in\n{patched}"
    );
    // Without the patch the policy id stays in the metric's name: the check above can fail.
    let plain = denied_then_scraped(None, &issuer)?;
    assert!(
        !plain.contains("policy_id="),
        "a label without the patch:\n{plain}"
    );
    assert!(
        plain.contains("portcullis_denied_by_policy_total_admin"),
        "{plain}"
    );
    Ok(())
}
