//! `cargo xtask fuzz`: every cargo-fuzz target in turn (the filter's core, then policy-sync's
//! request bodies), each seeded from the corpus kept in the repo (`<crate>/fuzz/seeds/<target>`)
//! and growing its own working corpus beside it (`<crate>/fuzz/corpus/<target>`, ignored by
//! git). Installs the nightly toolchain and cargo-fuzz when they are missing, and ends with a
//! table of executions, coverage and crashes per target; any crash fails the task, its input
//! saved by libFuzzer under `<crate>/fuzz/artifacts/<target>`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::Result;

/// The cargo-fuzz crates, relative to the repository root.
const FUZZ_CRATES: [&str; 2] = ["filter/core/fuzz", "policy-sync/fuzz"];
use crate::process::{self, run};

/// What to run.
#[derive(Debug)]
pub struct Options {
    /// Seconds per target.
    pub seconds: u32,
    /// Stop a target after this many executions (libFuzzer `-runs`), if given.
    pub runs: Option<u64>,
    /// libFuzzer's sanitizer (`cargo fuzz run --sanitizer`).
    pub sanitizer: String,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
}

/// One target's run, as libFuzzer reported it.
#[derive(Debug, Default)]
struct Report {
    target: String,
    executions: u64,
    seconds: u64,
    coverage: u64,
    features: u64,
    corpus: u64,
    crashed: bool,
}

fn nightly() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"]);
    // The stable toolchain that runs xtask must not leak into the nightly build.
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(var);
    }
    c
}

fn ensure_tools() -> Result {
    let succeeds = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "rustup toolchain install nightly",
        )?;
    }
    if !succeeds(nightly().args(["fuzz", "--version"])) {
        run(
            Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
            "cargo install cargo-fuzz",
        )?;
    }
    Ok(())
}

fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let out = nightly()
        .current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir))
        .args(["fuzz", "list"])
        .output()
        .map_err(|e| format!("cargo fuzz list: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The figures of libFuzzer's output: the last status line and the closing `Done` line.
fn parse(target: &str, log: &str, crashed: bool) -> Report {
    let mut r = Report {
        target: target.to_owned(),
        crashed,
        ..Report::default()
    };
    let after = |line: &str, key: &str| -> Option<u64> {
        let (_, rest) = line.split_once(key)?;
        rest.split(|c: char| c.is_whitespace() || c == '/')
            .next()?
            .parse()
            .ok()
    };
    for line in log.lines() {
        if let (Some(cov), Some(ft)) = (after(line, "cov: "), after(line, "ft: ")) {
            r.coverage = cov;
            r.features = ft;
            if let Some(c) = after(line, "corp: ") {
                r.corpus = c;
            }
        }
        // "Done 2000000 runs in 61 second(s)"
        if let Some(rest) = line.strip_prefix("Done ") {
            let mut words = rest.split_whitespace();
            r.executions = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            r.seconds = words.nth(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        }
        if line.contains("stat::number_of_executed_units:") {
            r.executions = after(line, "units: ").unwrap_or(r.executions);
        }
    }
    r
}

fn run_target(fuzz_dir: &Path, target: &str, opts: &Options) -> Result<Report> {
    let seeds = fuzz_dir.join("seeds").join(target);
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    let mut cmd = nightly();
    cmd.current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir))
        .env("CARGO_TARGET_DIR", process::target_dir().join("fuzz"))
        .args([
            "fuzz",
            "run",
            "--release",
            "--sanitizer",
            &opts.sanitizer,
            target,
        ])
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.args([
        "--".to_owned(),
        format!("-max_total_time={}", opts.seconds),
        "-print_final_stats=1".to_owned(),
    ]);
    if let Some(runs) = opts.runs {
        cmd.arg(format!("-runs={runs}"));
    }
    eprintln!(
        "xtask: fuzzing {target} for up to {} s (sanitizer: {})",
        opts.seconds, opts.sanitizer
    );
    let out = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cargo fuzz run {target}: {e}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let crashed = !out.status.success();
    if crashed {
        eprintln!("{log}");
    }
    Ok(parse(target, &log, crashed))
}

/// Runs every target (or the ones named) in turn and prints what each did.
pub fn run_all(opts: &Options) -> Result {
    ensure_tools()?;
    let mut all = Vec::new();
    for krate in FUZZ_CRATES {
        let dir = process::repo_root().join(krate);
        for t in targets(&dir)? {
            all.push((dir.clone(), t));
        }
    }
    let names: Vec<&str> = all.iter().map(|(_, t)| t.as_str()).collect();
    if let Some(t) = opts.targets.iter().find(|t| !names.contains(&t.as_str())) {
        return Err(format!(
            "no fuzz target {t:?} (there are: {})",
            names.join(", ")
        ));
    }
    let mut reports = Vec::new();
    for (dir, t) in &all {
        if opts.targets.is_empty() || opts.targets.contains(t) {
            reports.push(run_target(dir, t, opts)?);
        }
    }
    println!(
        "\n{:<16} {:>12} {:>8} {:>10} {:>8} {:>8}  result",
        "target", "executions", "seconds", "coverage", "features", "corpus"
    );
    for r in &reports {
        println!(
            "{:<16} {:>12} {:>8} {:>10} {:>8} {:>8}  {}",
            r.target,
            r.executions,
            r.seconds,
            r.coverage,
            r.features,
            r.corpus,
            if r.crashed { "CRASH" } else { "clean" }
        );
    }
    let crashed: Vec<&str> = reports
        .iter()
        .filter(|r| r.crashed)
        .map(|r| r.target.as_str())
        .collect();
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "crashes in {}: inputs under <crate>/fuzz/artifacts/",
            crashed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_figures() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 40Mb\n\
                   #2000000\tDONE   cov: 1234 ft: 5678 corp: 321/9kb lim: 4096 exec/s: 33333 rss: 300Mb\n\
                   Done 2000000 runs in 60 second(s)\n\
                   stat::number_of_executed_units: 2000001\n";
        let r = parse("token", log, false);
        assert_eq!(
            (r.executions, r.seconds, r.coverage, r.features, r.corpus),
            (2_000_001, 60, 1234, 5678, 321)
        );
        let crashed = parse("token", "", true);
        assert!(crashed.crashed && crashed.executions == 0);
    }
}
