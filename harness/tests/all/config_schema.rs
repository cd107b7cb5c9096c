//! The filter configuration's JSON Schema (`docs/filter-config.schema.json`), generated from
//! its Rust types with schemars: the file in the repository is the generated one, every
//! plugin configuration the repository ships validates against it, and what the filter
//! refuses for its shape the schema refuses too.

use std::error::Error;
use std::path::Path;

use harness::devkeys::DevIssuer;
use portcullis_core::FilterConfig;
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn Error>>;

const FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/filter-config.schema.json"
);

fn generated() -> Result<String, Box<dyn Error>> {
    let schema = schemars::schema_for!(FilterConfig);
    Ok(format!("{}\n", serde_json::to_string_pretty(&schema)?))
}

fn validator() -> Result<jsonschema::Validator, Box<dyn Error>> {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(FILE)?)?;
    Ok(jsonschema::validator_for(&schema)?)
}

/// `PORTCULLIS_BLESS=1` rewrites the file from the types.
#[test]
fn the_schema_in_the_repository_is_generated_from_the_types() -> TestResult {
    let now = generated()?;
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(FILE, &now)?;
    }
    let kept = std::fs::read_to_string(FILE).unwrap_or_default();
    assert!(
        kept == now,
        "docs/filter-config.schema.json is out of date: run \
         `PORTCULLIS_BLESS=1 cargo test -p harness --test all config_schema` and commit it"
    );
    Ok(())
}

fn plugin_configs() -> Result<Vec<(String, Value)>, Box<dyn Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for file in [
        "istio/wasmplugin.yaml",
        "istio/overlays/sidecars/wasmplugin.yaml",
        "istio/overlays/ingress-gateway/wasmplugin.yaml",
        "istio/overlays/gateway-api/wasmplugin.yaml",
    ] {
        let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(root.join(file))?)?;
        let config = doc
            .get("spec")
            .and_then(|s| s.get("pluginConfig"))
            .cloned()
            .ok_or(format!("{file}: no pluginConfig"))?;
        out.push((file.to_owned(), config));
    }
    out.push((
        "the demo".to_owned(),
        harness::demo::plugin_config(&DevIssuer::generate()?),
    ));
    Ok(out)
}

#[test]
fn every_shipped_plugin_config_validates() -> TestResult {
    let validator = validator()?;
    for (name, config) in plugin_configs()? {
        let errors: Vec<String> = validator
            .iter_errors(&config)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        serde_json::from_value::<FilterConfig>(config)?;
    }
    Ok(())
}

/// Shapes the filter refuses are refused by the schema as well; a valid one passes both.
#[test]
fn the_schema_refuses_what_the_filter_refuses() -> TestResult {
    let validator = validator()?;
    let (_, base) = plugin_configs()?
        .into_iter()
        .find(|(n, _)| n.contains("sidecars"))
        .ok_or("sidecars")?;
    let mut cases = Vec::new();
    let mut typo = base.clone();
    typo["sync"]["maxStalenes"] = json!("10m");
    cases.push(("unknown field", typo));
    let mut duration = base.clone();
    duration["sync"]["wait"] = json!("30 seconds");
    cases.push(("bad duration", duration));
    let mut stale = base.clone();
    stale["sync"]["whenStale"] = json!("failOpen");
    cases.push(("unknown enum value", stale));
    let mut missing = base.clone();
    if let Some(sync) = missing["sync"].as_object_mut() {
        sync.remove("token");
    }
    cases.push(("missing required field", missing));
    let mut auth = base.clone();
    auth["routes"] = json!([{"prefix": "/health", "auth": "anonymous"}]);
    cases.push(("bad route auth", auth));
    for (what, config) in cases {
        assert!(
            !validator.is_valid(&config),
            "the schema accepted a config with {what}"
        );
        assert!(
            serde_json::from_value::<FilterConfig>(config).is_err(),
            "the filter accepted a config with {what}"
        );
    }
    assert!(validator.is_valid(&base));
    Ok(())
}
