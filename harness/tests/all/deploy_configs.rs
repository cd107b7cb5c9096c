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
