//! The Prometheus rules (`istio/base/prometheusrule.yaml`): checked and unit-tested with
//! `promtool`, every alert covered by a unit test that fails without it.

use std::error::Error;
use std::path::Path;
use std::process::Command;

use harness::prometheus::{rule_groups, rules};
use serde_json::Value;

type TestResult = Result<(), Box<dyn Error>>;

/// Runs `promtool args` in `dir`; `Ok(Err(output))` when promtool says no.
fn promtool(dir: &Path, args: &[&str]) -> Result<Result<(), String>, Box<dyn Error>> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("promtool (Debian package prometheus) did not start: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(text)
    })
}

fn write_rules(dir: &Path, groups: &Value) -> TestResult {
    std::fs::write(dir.join("rules.yaml"), serde_yaml_ng::to_string(groups)?)?;
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/all/rules_test.yaml"),
        dir.join("rules_test.yaml"),
    )?;
    Ok(())
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() -> TestResult {
    let dir = tempfile::tempdir()?;
    let groups = rule_groups()?;
    write_rules(dir.path(), &groups)?;
    promtool(dir.path(), &["check", "rules", "rules.yaml"])?.map_err(|e| e.to_string())?;
    promtool(dir.path(), &["test", "rules", "rules_test.yaml"])?.map_err(|e| e.to_string())?;
    // Names follow Prometheus' conventions: level:metric:operations for recording rules.
    for rule in rules(&groups) {
        let name = &rule.name;
        if rule.alert {
            assert!(
                name.starts_with("Portcullis") || name.starts_with("PolicySync"),
                "{name}"
            );
        } else {
            assert_eq!(name.split(':').count(), 3, "{name}");
        }
    }
    // A broken expression is refused.
    let mut broken = groups.clone();
    broken["groups"][0]["rules"][0]["expr"] = "sum by (namespace (rate(x[5m]))".into();
    write_rules(dir.path(), &broken)?;
    assert!(promtool(dir.path(), &["check", "rules", "rules.yaml"])?.is_err());
    Ok(())
}

/// Each alert has a unit test that notices when the alert is gone.
#[test]
fn every_alert_is_unit_tested() -> TestResult {
    let dir = tempfile::tempdir()?;
    let groups = rule_groups()?;
    let alerts: Vec<String> = rules(&groups)
        .into_iter()
        .filter(|r| r.alert)
        .map(|r| r.name)
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in &alerts {
        let mut without = groups.clone();
        for g in without["groups"].as_array_mut().into_iter().flatten() {
            if let Some(rules) = g["rules"].as_array_mut() {
                rules.retain(|r| r["alert"].as_str() != Some(alert.as_str()));
            }
        }
        write_rules(dir.path(), &without)?;
        assert!(
            promtool(dir.path(), &["test", "rules", "rules_test.yaml"])?.is_err(),
            "no unit test fails without {alert}"
        );
    }
    Ok(())
}
