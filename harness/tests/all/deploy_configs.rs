//! The deployment configurations in `envoy/` and `istio/` are checked against what the filter
//! and Envoy accept.

use std::error::Error;

use portcullis_core::{Engine, FilterConfig, Start};

type TestResult = Result<(), Box<dyn Error>>;

#[test]
fn istio_wasmplugin_is_accepted_by_the_filter() -> TestResult {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../istio/wasmplugin.yaml"
    ))?;
    let doc: serde_json::Value = serde_yaml_ng::from_str(&text)?;
    assert_eq!(doc["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(doc["kind"], "WasmPlugin");
    let spec = &doc["spec"];
    assert_eq!(
        spec["phase"], "AUTHN",
        "authorization must run before other filters"
    );
    assert_eq!(
        spec["failStrategy"], "FAIL_CLOSE",
        "a broken filter must not let traffic through"
    );
    assert!(
        spec["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("oci://"))
    );
    // The plugin configuration compiles exactly as the filter compiles it in on_configure.
    let config: FilterConfig = serde_json::from_value(spec["pluginConfig"].clone())?;
    let engine = Engine::try_from(config)?;
    assert_eq!(engine.issuer_count(), 1);
    assert_eq!(engine.bundle_version(), 1);
    Ok(())
}

#[test]
fn istio_wasmplugin_following_policy_sync_is_accepted() -> TestResult {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../istio/overlays/sidecars/wasmplugin.yaml"
    ))?;
    let doc: serde_json::Value = serde_yaml_ng::from_str(&text)?;
    assert_eq!(doc["kind"], "WasmPlugin");
    assert_eq!(doc["spec"]["phase"], "AUTHN");
    assert_eq!(doc["spec"]["failStrategy"], "FAIL_CLOSE");
    let config: FilterConfig = serde_json::from_value(doc["spec"]["pluginConfig"].clone())?;
    let sync = config.sync_settings()?.ok_or("no sync section")?;
    assert!(sync.cluster.starts_with("outbound|8080||"));
    assert_eq!(sync.tenants, ["default"]);
    // Checked whole now; waits for policy-sync's first document for its policies and keys.
    match Start::new(&config)? {
        Start::Pending { bundles, issuers } => {
            assert_eq!(bundles, ["default"]);
            assert!(issuers);
        }
        Start::Ready(_) => return Err("started without policy-sync".into()),
    }
    Ok(())
}

#[test]
fn jwt_authn_rbac_comparison_config_validates() -> TestResult {
    let issuer = harness::devkeys::DevIssuer::generate()?;
    let cfg = harness::envoy::jwt_authn_rbac_config(
        harness::envoy::Ports::free()?,
        &issuer.issuer,
        &issuer.audience,
        &issuer.jwks(),
    )?;
    harness::envoy::validate(&cfg)?;
    Ok(())
}

/// The `stats_tags` rules that turn the filter's per-policy, per-cause and per-tenant stats into
/// labels are the same in every Envoy sample, the tests' template and the sidecar overlay's
/// bootstrap fragment as the filter's own list (`portcullis_core::metrics::TAGS`).
#[test]
fn stats_tags_everywhere_are_the_filters() -> TestResult {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let want: Vec<(String, String)> = portcullis_core::metrics::TAGS
        .iter()
        .map(|t| (t.tag_name.to_owned(), t.regex.to_owned()))
        .collect();
    let rules = |bootstrap: &serde_json::Value| -> Vec<(String, String)> {
        bootstrap["stats_config"]["stats_tags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["tag_name"].as_str().unwrap_or_default().to_owned(),
                    t["regex"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
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
        let doc: serde_json::Value = serde_yaml_ng::from_str(&text)?;
        assert_eq!(rules(&doc), want, "{file}");
    }
    {
        let file = root.join("istio/overlays/sidecars/stats-tags.yaml");
        let doc: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&file)?)?;
        let fragment = doc["data"]["custom_bootstrap.json"]
            .as_str()
            .ok_or("no custom_bootstrap.json")?;
        assert_eq!(
            rules(&serde_json::from_str(fragment)?),
            want,
            "{}",
            file.display()
        );
    }
    Ok(())
}
