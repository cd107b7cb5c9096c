//! `policy-sync bundle validate` on good and bad bundles.

use std::error::Error;
use std::process::Command;

type TestResult = Result<(), Box<dyn Error>>;

fn validate(contents: &str) -> Result<(bool, String, String), Box<dyn Error>> {
    // Removed when it drops, after the command has run.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bundle.json");
    std::fs::write(&file, contents)?;
    let out = Command::new(env!("CARGO_BIN_EXE_policy-sync"))
        .args(["bundle", "validate"])
        .arg(&file)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[test]
fn accepts_the_demo_bundle() -> TestResult {
    let policies = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../envoy/demo-policies.cedar"
    ))?;
    let bundle = serde_json::json!({"version": 3, "policies": policies}).to_string();
    let (ok, out, err) = validate(&bundle)?;
    assert!(ok, "stderr: {err}");
    assert!(
        out.contains("bundle version 3 is valid: 3 policies, 0 entities, no schema"),
        "{out}"
    );
    Ok(())
}

#[test]
fn refuses_bad_bundles_with_reasons() -> TestResult {
    let cases = [
        ("{", "is not a bundle"),
        (
            r#"{"policies": "permit(principal, action, resource", "extra": 1}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"policies": "permit(principal, action, resource"}"#,
            "policies do not parse",
        ),
        (
            r#"{"policies": "permit(principal, action == Action::\"GET\", resource) when { context.nope };",
                "schema": "entity User; entity Path; action \"GET\" appliesTo { principal: User, resource: Path, context: {} };"}"#,
            "do not validate against the schema",
        ),
    ];
    for (bundle, want) in cases {
        let (ok, _, err) = validate(bundle)?;
        assert!(!ok, "accepted {bundle}");
        assert!(
            err.contains(want),
            "for {bundle}: stderr {err:?} lacks {want:?}"
        );
    }
    Ok(())
}
