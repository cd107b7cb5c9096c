//! Building the filter to `.wasm`, on whatever Rust toolchain this machine can offer:
//!
//! 1. the active toolchain already has a wasm32 target (`wasm32-wasip1` preferred, as the
//!    proxy-wasm SDK recommends; `wasm32-unknown-unknown` also loads in Envoy);
//! 2. else `rustup target add wasm32-wasip1`, bounded in time;
//! 3. else Debian's `rustc-web`/`cargo-web`/`rust-web-src` (+ `lld`, `wasi-libc`) with
//!    `/usr/bin/cargo` and `-Zbuild-std` (std rebuilt from source for the target).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;
use crate::install;
use crate::process::{self, cargo, run};

const PACKAGE: &str = "portcullis-filter";
const ARTIFACT: &str = "portcullis_filter.wasm";
/// The harness's ABI probe plugin, built alongside (tiny) for the host tests.
const PROBE_PACKAGE: &str = "abi-probe";
const PROBE_ARTIFACT: &str = "abi_probe.wasm";
/// The Cedar-only plugin `cargo xtask measure` starts Envoy with (built only there).
const FLOOR_PACKAGE: &str = "cedar-floor";
const FLOOR_ARTIFACT: &str = "cedar_floor.wasm";
const RUSTUP_TIMEOUT: Duration = Duration::from_secs(90);
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "lld-22",
    "wasi-libc",
];

#[derive(Debug, Clone, Copy)]
enum Toolchain {
    /// The active (rustup or other) toolchain with the target's std installed.
    Installed(&'static str),
    /// Debian's rustc-web with std built from source.
    Debian,
}

pub(crate) fn sysroot() -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

pub(crate) fn has_target(sysroot: &Path, target: &str) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
}

/// `rustup target add <target>`, killed after `RUSTUP_TIMEOUT`.
pub(crate) fn rustup_add(target: &str) -> bool {
    let Ok(mut child) = Command::new("rustup")
        .args(["target", "add", target])
        .stdout(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if started.elapsed() < RUSTUP_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("xtask: rustup target add timed out after {RUSTUP_TIMEOUT:?}");
                return false;
            }
        }
    }
}

fn detect() -> Result<Toolchain> {
    if let Some(root) = sysroot() {
        for target in ["wasm32-wasip1", "wasm32-unknown-unknown"] {
            if has_target(&root, target) {
                eprintln!(
                    "xtask: wasm toolchain: case 1, {target} is installed for the active toolchain"
                );
                return Ok(Toolchain::Installed(target));
            }
        }
        if rustup_add("wasm32-wasip1") && sysroot().is_some_and(|r| has_target(&r, "wasm32-wasip1"))
        {
            eprintln!("xtask: wasm toolchain: case 2, installed wasm32-wasip1 with rustup");
            return Ok(Toolchain::Installed("wasm32-wasip1"));
        }
    }
    eprintln!(
        "xtask: wasm toolchain: case 3, no wasm32 target from rustup; using Debian's rustc-web with -Zbuild-std"
    );
    install::apt_install(DEBIAN_PACKAGES).map_err(|e| {
        format!("no way to build for wasm32 here: no installed target, rustup could not add one, and Debian's rust-web packages could not be installed ({e})")
    })?;
    Ok(Toolchain::Debian)
}

/// Debian's wasm linker (`wasm-ld-22` from lld-22, or any `wasm-ld`).
fn wasm_ld() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/bin")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "wasm-ld" || n.starts_with("wasm-ld-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The wasm target installed for the active toolchain, if any (for linting the glue).
pub fn rustup_target() -> Option<&'static str> {
    let root = sysroot()?;
    ["wasm32-wasip1", "wasm32-unknown-unknown"]
        .into_iter()
        .find(|t| has_target(&root, t))
}

/// The built modules.
#[derive(Debug)]
pub struct Built {
    pub filter: PathBuf,
    pub probe: PathBuf,
}

/// Builds the filter and returns the path of the `.wasm`.
pub fn build() -> Result<PathBuf> {
    build_all().map(|b| b.filter)
}

/// Builds the filter and the ABI probe.
pub fn build_all() -> Result<Built> {
    let started = Instant::now();
    let release = build_packages(&[PACKAGE, PROBE_PACKAGE])?;
    let wasm = release.join(ARTIFACT);
    let probe = release.join(PROBE_ARTIFACT);
    for f in [&wasm, &probe] {
        if !f.is_file() {
            return Err(format!("build succeeded but {} is missing", f.display()));
        }
    }
    trim_callbacks(&wasm)?;
    let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "xtask: built {} ({} KiB) in {:.1?}",
        wasm.display(),
        size / 1024,
        started.elapsed()
    );
    Ok(Built {
        filter: wasm,
        probe,
    })
}

/// Builds the Cedar-only plugin (`harness/cedar-floor`) and returns the path of its `.wasm`.
pub fn build_floor() -> Result<PathBuf> {
    let floor = build_packages(&[FLOOR_PACKAGE])?.join(FLOOR_ARTIFACT);
    if !floor.is_file() {
        return Err(format!(
            "build succeeded but {} is missing",
            floor.display()
        ));
    }
    Ok(floor)
}

/// Builds `packages` for wasm in release and returns the directory their artifacts are in.
fn build_packages(packages: &[&str]) -> Result<PathBuf> {
    let toolchain = match std::env::var("PORTCULLIS_WASM_TOOLCHAIN").as_deref() {
        // Lets the Debian path be exercised on a machine where rustup works too.
        Ok("debian") => {
            install::apt_install(DEBIAN_PACKAGES)?;
            Toolchain::Debian
        }
        _ => detect()?,
    };
    let (target, mut cmd) = match toolchain {
        Toolchain::Installed(target) => (target, cargo()),
        Toolchain::Debian => {
            let target = "wasm32-wasip1";
            // Debian's rustc has no self-contained wasi-libc or rust-lld: link with Debian's
            // wasm-ld against Debian's wasi-libc.
            let linker = wasm_ld().ok_or("no wasm-ld found (Debian package lld-22)")?;
            let flags = format!(
                "-C target-feature=+simd128 -C linker={} -C linker-flavor=wasm-ld \
                 -C link-self-contained=no -L native=/usr/lib/wasm32-wasi",
                linker.display()
            );
            let mut c = Command::new("/usr/bin/cargo");
            c.current_dir(process::repo_root())
                .env("CARGO_TARGET_DIR", process::target_dir().join("debian"))
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS", flags)
                .env_remove("RUSTUP_TOOLCHAIN")
                .arg("-Zbuild-std=std,panic_abort");
            (target, c)
        }
    };
    cmd.args(["build", "--release", "--target", target]);
    for package in packages {
        cmd.args(["-p", package]);
    }
    run(
        &mut cmd,
        &format!("building {} for wasm", packages.join(", ")),
    )?;
    let base = match toolchain {
        Toolchain::Installed(_) => process::target_dir(),
        Toolchain::Debian => process::target_dir().join("debian"),
    };
    Ok(base.join(target).join("release"))
}

/// Rewrites the built filter without the callbacks it leaves to the SDK's defaults
/// ([`harness::trim`]; idempotent).
fn trim_callbacks(wasm: &Path) -> Result {
    let bytes = std::fs::read(wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    let trimmed = harness::trim::without_unused_callbacks(&bytes)
        .map_err(|e| format!("{}: {e}", wasm.display()))?;
    if trimmed != bytes {
        std::fs::write(wasm, trimmed).map_err(|e| format!("{}: {e}", wasm.display()))?;
    }
    Ok(())
}

/// Writes `src` to `dst` trimmed like the filter (the measurements' no-op filter, from the
/// probe, which keeps its own callbacks for the host tests).
pub fn trimmed_copy(src: &Path, dst: &Path) -> Result {
    let bytes = std::fs::read(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let trimmed = harness::trim::without_unused_callbacks(&bytes)
        .map_err(|e| format!("{}: {e}", src.display()))?;
    std::fs::write(dst, trimmed).map_err(|e| format!("{}: {e}", dst.display()))
}
