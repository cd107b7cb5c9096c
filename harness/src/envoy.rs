//! Running a real Envoy with the filter.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Error, Result, paths};

/// The Envoy configuration template (`envoy/test-template.yaml`).
pub const TEMPLATE: &str = include_str!("../../envoy/test-template.yaml");

/// The native comparison template (`envoy/jwt-authn-rbac.yaml`): Envoy's `jwt_authn` and `rbac`
/// filters with rules mirroring the demo policies.
pub const JWT_AUTHN_RBAC_TEMPLATE: &str = include_str!("../../envoy/jwt-authn-rbac.yaml");

/// The edge gateway sample (`envoy/edge-gateway.yaml`): two upstreams, the module fetched from
/// a `remote` HTTP source with its sha256.
pub const EDGE_GATEWAY_TEMPLATE: &str = include_str!("../../envoy/edge-gateway.yaml");

/// The edge gateway with the native module (`envoy/native-gateway.yaml`).
pub const NATIVE_GATEWAY_TEMPLATE: &str = include_str!("../../envoy/native-gateway.yaml");

/// The edge gateway following policy-sync (`envoy/gateway-sync.yaml`).
pub const GATEWAY_SYNC_TEMPLATE: &str = include_str!("../../envoy/gateway-sync.yaml");

/// Where the edge gateway's upstreams and module server listen (127.0.0.1).
#[derive(Debug, Clone, Copy)]
pub struct EdgePorts {
    pub api: u16,
    pub site: u16,
    pub module: u16,
}

/// The edge gateway sample for `ports` (its `upstream` unused), fetching the module from
/// `edge.module` and loading it only if its hex sha256 is `sha256_hex`.
pub fn edge_gateway_config(
    ports: Ports,
    edge: EdgePorts,
    sha256_hex: &str,
    plugin_config: &Value,
) -> Result<String> {
    render(
        EDGE_GATEWAY_TEMPLATE,
        &edge_vars(ports, edge, sha256_hex, plugin_config)?,
    )
}

/// The native edge gateway sample for `ports` (its `upstream` unused) and `edge` (its `module`
/// unused), loading the native module at `native`.
pub fn native_gateway_config(
    ports: Ports,
    edge: EdgePorts,
    native: &Path,
    plugin_config: &Value,
) -> Result<String> {
    render(
        NATIVE_GATEWAY_TEMPLATE,
        &[
            ("ADMIN_PORT", ports.admin.to_string()),
            ("PORT", ports.listener.to_string()),
            ("API_PORT", edge.api.to_string()),
            ("SITE_PORT", edge.site.to_string()),
            ("NATIVE", native.display().to_string()),
            ("PLUGIN_CONFIG", quoted(plugin_config)?),
        ],
    )
}

/// The gateway following policy-sync on 127.0.0.1:`policy_sync` (`sync.cluster` is
/// `policy-sync`).
pub fn gateway_sync_config(
    ports: Ports,
    edge: EdgePorts,
    sha256_hex: &str,
    plugin_config: &Value,
    policy_sync: u16,
) -> Result<String> {
    let mut vars = edge_vars(ports, edge, sha256_hex, plugin_config)?;
    vars.push(("POLICY_SYNC_HOST", "127.0.0.1".to_owned()));
    vars.push(("POLICY_SYNC_PORT", policy_sync.to_string()));
    render(GATEWAY_SYNC_TEMPLATE, &vars)
}

fn edge_vars(
    ports: Ports,
    edge: EdgePorts,
    sha256_hex: &str,
    plugin_config: &Value,
) -> Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("ADMIN_PORT", ports.admin.to_string()),
        ("PORT", ports.listener.to_string()),
        ("API_PORT", edge.api.to_string()),
        ("SITE_PORT", edge.site.to_string()),
        ("MODULE_PORT", edge.module.to_string()),
        ("MODULE_SHA256", sha256_hex.to_owned()),
        ("PLUGIN_CONFIG", quoted(plugin_config)?),
    ])
}

/// The ports one Envoy uses, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub listener: u16,
    pub admin: u16,
    pub upstream: u16,
}

impl Ports {
    /// Three ports that were free a moment ago.
    pub fn free() -> Result<Self> {
        // Hold all three listeners at once so the kernel hands out three distinct ports.
        let a = TcpListener::bind("127.0.0.1:0")?;
        let b = TcpListener::bind("127.0.0.1:0")?;
        let c = TcpListener::bind("127.0.0.1:0")?;
        Ok(Self {
            listener: a.local_addr()?.port(),
            admin: b.local_addr()?.port(),
            upstream: c.local_addr()?.port(),
        })
    }
}

/// Fills `${NAME}` placeholders; any placeholder left over is an error.
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    // Comments may mention placeholders; only uncommented lines must be complete.
    if let Some(line) = out
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && l.contains("${"))
    {
        return Err(Error::Template(format!("unfilled placeholder in {line:?}")));
    }
    Ok(out)
}

/// The Envoy configuration for `ports`, the filter at `wasm`, configured with `plugin_config`.
pub fn config(ports: Ports, wasm: &Path, plugin_config: &Value) -> Result<String> {
    filter_config(Module::Wasm(wasm), ports, plugin_config, None)
}

/// [`config`] with the native module at `native` (Envoy's dynamic-module filter) in place of
/// the Wasm module.
pub fn native_config(ports: Ports, native: &Path, plugin_config: &Value) -> Result<String> {
    filter_config(Module::Native(native), ports, plugin_config, None)
}

/// [`config`] with the `policy-sync` cluster, reaching policy-sync on 127.0.0.1:`policy_sync`:
/// for a filter whose `sync.cluster` is `policy-sync`.
pub fn config_following(
    ports: Ports,
    wasm: &Path,
    plugin_config: &Value,
    policy_sync: u16,
) -> Result<String> {
    filter_config(Module::Wasm(wasm), ports, plugin_config, Some(policy_sync))
}

/// [`native_config`] with the `policy-sync` cluster on 127.0.0.1:`policy_sync`: the native
/// module following policy-sync.
pub fn native_config_following(
    ports: Ports,
    native: &Path,
    plugin_config: &Value,
    policy_sync: u16,
) -> Result<String> {
    filter_config(
        Module::Native(native),
        ports,
        plugin_config,
        Some(policy_sync),
    )
}

/// Which build of the filter the template's Envoy loads, and from where.
#[derive(Debug, Clone, Copy)]
enum Module<'a> {
    Wasm(&'a Path),
    Native(&'a Path),
}

/// The template with the filter block of `module` (the other one left out), and the
/// `policy-sync` cluster when `policy_sync` gives its port.
fn filter_config(
    module: Module<'_>,
    ports: Ports,
    plugin_config: &Value,
    policy_sync: Option<u16>,
) -> Result<String> {
    let (other_block, (var, path)) = match module {
        Module::Wasm(path) => ("native-module", ("WASM", path)),
        Module::Native(path) => ("portcullis", ("NATIVE", path)),
    };
    let mut template = without_block(TEMPLATE, other_block)?;
    let mut vars = vec![
        ("ADMIN_PORT", ports.admin.to_string()),
        ("PORT", ports.listener.to_string()),
        ("UPSTREAM_PORT", ports.upstream.to_string()),
        (var, path.display().to_string()),
        ("PLUGIN_CONFIG", quoted(plugin_config)?),
    ];
    match policy_sync {
        Some(port) => vars.push(("POLICY_SYNC_PORT", port.to_string())),
        None => template = without_block(&template, "policy-sync")?,
    }
    render(&template, &vars)
}

/// The plugin configuration as a YAML scalar: a JSON string literal is a valid YAML
/// double-quoted scalar.
fn quoted(plugin_config: &Value) -> Result<String> {
    serde_json::to_string(&plugin_config.to_string()).map_err(|e| Error::Template(e.to_string()))
}

/// `template` without the lines between `# BEGIN name` and `# END name`.
fn without_block(template: &str, name: &str) -> Result<String> {
    let (begin, end) = (format!("# BEGIN {name}"), format!("# END {name}"));
    let mut out = String::new();
    let mut skipping = false;
    for line in template.lines() {
        if line.contains(&begin) {
            skipping = true;
        } else if line.contains(&end) {
            skipping = false;
        } else if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if skipping {
        return Err(Error::Template(format!("BEGIN {name} without END")));
    }
    Ok(out)
}

/// The same Envoy without the filter: the baseline for measurements.
pub fn baseline_config(ports: Ports) -> Result<String> {
    let out = without_block(&without_block(TEMPLATE, "portcullis")?, "policy-sync")?;
    let out = without_block(&out, "native-module")?;
    render(
        &out,
        &[
            ("ADMIN_PORT", ports.admin.to_string()),
            ("PORT", ports.listener.to_string()),
            ("UPSTREAM_PORT", ports.upstream.to_string()),
        ],
    )
}

/// Envoy's native `jwt_authn` (trusting `issuer` for `audience`, keys `jwks` inline, jwt cache
/// on) and `rbac` (the demo policies as RBAC rules) for `ports`: the native comparison.
pub fn jwt_authn_rbac_config(
    ports: Ports,
    issuer: &str,
    audience: &str,
    jwks: &Value,
) -> Result<String> {
    // JSON string literals are valid YAML double-quoted scalars.
    let quote = |s: &str| serde_json::to_string(s).map_err(|e| Error::Template(e.to_string()));
    render(
        JWT_AUTHN_RBAC_TEMPLATE,
        &[
            ("ADMIN_PORT", ports.admin.to_string()),
            ("PORT", ports.listener.to_string()),
            ("UPSTREAM_PORT", ports.upstream.to_string()),
            ("ISSUER", quote(issuer)?),
            ("AUDIENCE", quote(audience)?),
            ("JWKS", quote(&jwks.to_string())?),
        ],
    )
}

/// Envoy's name for one of the filter's stats (`portcullis_core::metrics`): Envoy puts a Wasm
/// module's own stats under `wasmcustom.`.
#[must_use]
pub fn stat_name(metric: &str) -> String {
    format!("wasmcustom.{metric}")
}

/// The dynamic-module ABI version the native module reports (`filter/native/src/abi.rs`),
/// which the Envoy the project ships must say it matched.
pub const NATIVE_ABI_VERSION: &str = "v0.2.0";

/// Envoy's name for one of the native module's stats: Envoy files a dynamic module's stats
/// under `dynamicmodulescustom.`.
#[must_use]
pub fn native_stat_name(metric: &str) -> String {
    format!("dynamicmodulescustom.{metric}")
}

/// Checks a configuration with `envoy --mode validate`.
pub fn validate(config_yaml: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("envoy.yaml");
    fs::write(&path, config_yaml)?;
    let out = Command::new(paths::envoy()?)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "error",
            "-c",
        ])
        .arg(&path)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Envoy(format!(
            "configuration invalid: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A running Envoy, killed when dropped.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    pub ports: Ports,
    started: Instant,
    log: PathBuf,
    // Keeps the config and log alive while Envoy runs.
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy on `config_yaml` with `concurrency` worker threads.
    pub fn start(config_yaml: &str, ports: Ports, concurrency: u32) -> Result<Self> {
        Self::start_patched(config_yaml, None, ports, concurrency)
    }

    /// [`Envoy::start`] with `patch` (a bootstrap fragment, YAML or JSON) merged into the
    /// configuration by Envoy itself (`--config-yaml`: fields replaced, lists appended), as
    /// Istio merges an EnvoyFilter's bootstrap patch.
    pub fn start_patched(
        config_yaml: &str,
        patch: Option<&str>,
        ports: Ports,
        concurrency: u32,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-envoy")
            .tempdir()?;
        let cfg = dir.path().join("envoy.yaml");
        let log = dir.path().join("envoy.log");
        fs::write(&cfg, config_yaml)?;
        let started = Instant::now();
        let mut cmd = Command::new(paths::envoy()?);
        if let Some(patch) = patch {
            cmd.arg("--config-yaml").arg(patch);
        }
        let child = cmd
            .arg("-c")
            .arg(&cfg)
            .args(["--disable-hot-restart", "--concurrency"])
            .arg(concurrency.to_string())
            .args(["-l", "warning", "--component-log-level"])
            // Envoy's default level for the filter's lines (the Wasm module's and the native
            // module's loggers); `PORTCULLIS_ENVOY_LOG=debug` shows every decision (and slows
            // every request down by writing it).
            .arg({
                let level =
                    std::env::var("PORTCULLIS_ENVOY_LOG").unwrap_or_else(|_| "info".to_owned());
                format!("wasm:{level},dynamic_modules:{level}")
            })
            .arg("--log-path")
            .arg(&log)
            // Envoy writes its log file in buffers flushed every 10 s by default; tests and
            // measurements read it while Envoy runs.
            .args(["--file-flush-interval-msec", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            ports,
            started,
            log,
            _dir: dir,
        })
    }

    /// Base URL of the filtered listener.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.listener)
    }

    /// Envoy's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (Linux `/proc`).
    #[must_use]
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU time Envoy's threads have run so far (Linux `/proc/<pid>/task/*/schedstat`, in
    /// nanoseconds; time the hypervisor took from the VM is not counted).
    #[must_use]
    pub fn cpu_time(&self) -> Option<Duration> {
        let mut ns = 0u64;
        for task in fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()? {
            let stat = fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(Duration::from_nanos(ns))
    }

    /// Waits until the filtered listener answers an HTTP request; returns the time from start
    /// to that first answer. Fails early, with Envoy's log, if Envoy exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let agent = crate::http::agent(Duration::from_secs(2));
        let url = self.url("/");
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(Error::Envoy(format!(
                    "exited with {status} before serving:\n{}",
                    self.log()
                )));
            }
            if agent.get(&url).call().is_ok() {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > timeout {
                return Err(Error::Envoy(format!(
                    "not serving after {timeout:?}:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A counter or gauge from the admin `/stats` endpoint.
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        let agent = crate::http::agent(Duration::from_secs(5));
        let url = format!(
            "http://127.0.0.1:{}/stats?filter=^{name}$",
            self.ports.admin
        );
        let body = crate::http::text(
            agent
                .get(&url)
                .call()
                .map_err(|e| Error::Envoy(e.to_string()))?,
        );
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
            .and_then(|v| v.trim().parse().ok()))
    }

    /// The text of an admin endpoint (`/stats?filter=...`, `/clusters`, ...).
    pub fn admin(&self, path_and_query: &str) -> Result<String> {
        let agent = crate::http::agent(Duration::from_secs(5));
        let url = format!("http://127.0.0.1:{}{path_and_query}", self.ports.admin);
        Ok(crate::http::text(
            agent
                .get(&url)
                .call()
                .map_err(|e| Error::Envoy(e.to_string()))?,
        ))
    }

    /// [`Envoy::stat`], polled until it reads `want` or 3 s have passed (then its last value):
    /// the filter hands its counts to Envoy once a second.
    pub fn wait_stat(&self, name: &str, want: u64) -> Result<Option<u64>> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let value = self.stat(name)?;
            if value == Some(want) || Instant::now() > deadline {
                return Ok(value);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
