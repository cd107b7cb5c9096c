//! The metrics table in docs/deployment.md lists exactly the stats the filter defines
//! (`portcullis_core::metrics::ALL`), under the names Prometheus sees.

use std::collections::BTreeSet;
use std::error::Error;

use harness::paths;
use portcullis_core::metrics;

type TestResult = Result<(), Box<dyn Error>>;

/// `a_{x,y}_b` as `a_x_b` and `a_y_b`; a `{label}` (no comma) stays as it is.
fn expand(name: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (name.find('{'), name.find('}')) else {
        return vec![name.to_owned()];
    };
    match (
        name.get(..open),
        name.get(open + 1..close),
        name.get(close + 1..),
    ) {
        (Some(head), Some(inner), Some(tail)) if inner.contains(',') => inner
            .split(',')
            .flat_map(|alt| expand(&format!("{head}{alt}{tail}")))
            .collect(),
        _ => vec![name.to_owned()],
    }
}

/// The names in the first column of the table's rows (`| \`portcullis_...\` |`), expanded.
fn documented(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name))
        .filter(|name| name.starts_with("portcullis_"))
        .flat_map(expand)
        .collect()
}

#[test]
fn the_docs_metrics_table_is_the_filters() -> TestResult {
    let text = std::fs::read_to_string(paths::repo_root().join("docs/deployment.md"))?;
    let want: BTreeSet<String> = metrics::ALL
        .iter()
        .map(|(name, label)| {
            let name = name.replace('.', "_");
            label.map_or_else(|| name.clone(), |l| format!("{name}{{{l}}}"))
        })
        .collect();
    assert_eq!(documented(&text), want);
    // A row missing from the table is seen.
    let without = text.replace("| `portcullis_denied_total` |", "| denied |");
    assert_ne!(documented(&without), want);
    Ok(())
}
