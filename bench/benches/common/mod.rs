//! What the table-printing benchmarks share: a quick criterion configuration writing to a known
//! directory, and reading a benchmark's mean back from it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::Criterion;
use harness::host::{LogLevel, VmOptions};
use serde_json::Value;

/// Criterion with short runs (20 samples, 0.5 s warm-up, 2 s measurement; command-line
/// arguments still apply), writing to `<target>/criterion-<name>`; returns that directory too.
pub fn criterion(name: &str) -> (Criterion, PathBuf) {
    let dir = format!("criterion-{name}");
    let out = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.parent()?.join(&dir)))
        .unwrap_or_else(|| PathBuf::from("target").join(&dir));
    let c = Criterion::default()
        .output_directory(&out)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    (c, out)
}

/// Mean time in ns of benchmark `group/id` from its last run.
pub fn mean_ns(dir: &Path, group: &str, id: &str) -> Option<f64> {
    // Criterion names the directory of "group/id" "group_id".
    let path = dir.join(format!("{group}_{id}")).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("mean")?.get("point_estimate")?.as_f64()
}

/// A VM configured as in Envoy with its default log level (`info`): the filter formats no
/// debug lines, as in production.
pub fn vm(plugin_config: Vec<u8>) -> VmOptions {
    VmOptions {
        log_level: LogLevel::Info,
        ..VmOptions::new(plugin_config)
    }
}
