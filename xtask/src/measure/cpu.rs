//! CPU accounting of `cargo xtask measure`: where Envoy and wrk run (`taskset` pinning, one CPU
//! each) and Envoy's own CPU time over a run, per answer.

use std::process::Command;
use std::time::Duration;

use harness::envoy::Envoy;

use crate::Result;

/// Where Envoy and wrk run: one CPU each.
#[derive(Debug)]
pub struct Pinning {
    pub envoy: u32,
    pub wrk: u32,
}

impl Pinning {
    /// Moves every thread of an Envoy to the Envoy CPU.
    pub fn pin(&self, proxy: &Envoy) -> Result {
        crate::process::run(
            Command::new("taskset")
                .args(["-a", "-c", "-p"])
                .arg(self.envoy.to_string())
                .arg(proxy.pid().to_string())
                .stdout(std::process::Stdio::null()),
            "taskset (Envoy)",
        )
    }
}

/// Two CPUs this process may use, if `taskset` works here.
pub fn pinning() -> Option<Pinning> {
    let out = Command::new("taskset")
        .args(["-c", "-p"])
        .arg(std::process::id().to_string())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    // "pid 123's current affinity list: 0-3,6"
    let text = String::from_utf8_lossy(&out.stdout);
    let list = text.rsplit(':').next()?.trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<u32>().ok()?..=b.trim().parse().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    match cpus.as_slice() {
        [envoy, wrk, ..] => Some(Pinning {
            envoy: *envoy,
            wrk: *wrk,
        }),
        _ => None,
    }
}

/// Envoy's CPU time per answer over a run (µs), and the share of the run's wall time Envoy was
/// on a CPU, from its CPU time before and after; `None` where `/proc` gives no CPU time or
/// nothing was answered.
pub fn per_answer(
    before: Option<Duration>,
    after: Option<Duration>,
    wall: Duration,
    answers: u64,
) -> Option<(f64, f64)> {
    before
        .zip(after)
        .map(|(b, a)| a.saturating_sub(b).as_secs_f64())
        .filter(|_| answers > 0)
        .map(|s| (s * 1e6 / answers as f64, s / wall.as_secs_f64()))
}

/// CPU seconds spread over `answers`, in µs per answer.
pub fn us_per_answer(cpu_seconds: f64, answers: u64) -> f64 {
    cpu_seconds * 1e6 / answers as f64
}
