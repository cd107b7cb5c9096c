//! Real parts end to end: a real Envoy (four workers) running the built filter, following a
//! real `policy-sync serve` process over a real Postgres.
//!
//! - `follow`: a commit reaches every worker, one long-poll per Envoy, policy-sync killed and
//!   back.
//! - `faults`: with a request stream running, a fault-injecting proxy between Envoy and
//!   policy-sync, Postgres stopped, both restarted: no request the policies in force deny is
//!   ever allowed.
//! - `keys`: an issuer rotates its keys; the filter asks policy-sync to refresh, policy-sync
//!   fetches the new key set, and tokens signed by the new key are accepted.
//! - `gateway_sample`: `envoy/gateway-sync.yaml` as a user runs it.
//! - `monitoring`: a real Prometheus scrapes both and evaluates the shipped rules; every
//!   dashboard query and every metric a rule reads has series.

mod fault_proxy;
mod faults;
mod follow;
mod gateway_sample;
mod keys;
mod monitoring;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use harness::envoy::Envoy;
use policy_sync::source::PolicyRow;
use policy_sync::store::{self, Role};

use crate::support::{self, Res};

/// Writes the tests' service signing key (the seed `support::signer` uses) to a file in `dir`.
pub(crate) fn key_file(dir: &std::path::Path) -> Res<std::path::PathBuf> {
    let key = dir.join("service.key");
    std::fs::write(&key, format!("{}\n", URL_SAFE_NO_PAD.encode([42u8; 32])))?;
    Ok(key)
}

/// The public signing key a filter accepts, as its configuration spells it.
fn signing_key() -> String {
    URL_SAFE_NO_PAD.encode(support::signer().public_key().as_bytes())
}

/// A fresh database with an admin and a filter token and `policies` (id, text) in the
/// `default` tenant, and the service's signing key file.
struct Seeded {
    url: String,
    admin: String,
    filter: String,
    key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Seeded {
    async fn new(name: &str, policies: &[(&str, &str)]) -> Res<Self> {
        let url = support::database().await?;
        let pool = policy_sync::db::pool(&url, 2)?;
        let admin = store::create_token(&pool, &format!("{name}-admin"), Role::Admin).await?;
        let filter = store::create_token(&pool, &format!("{name}-filter"), Role::Filter).await?;
        let rows: Vec<PolicyRow> = policies
            .iter()
            .map(|(id, text)| PolicyRow {
                id: (*id).into(),
                text: (*text).into(),
                enabled: true,
            })
            .collect();
        store::put_policies(&pool, "default", &rows).await?;
        let dir = tempfile::tempdir()?;
        let key = key_file(dir.path())?;
        Ok(Self {
            url,
            admin,
            filter,
            key,
            _dir: dir,
        })
    }
}

/// The `sync` section of a filter following policy-sync at `addr` with `token` (the `sync`
/// cluster of `envoy::config_following`), retrying quickly; tests add to it.
fn sync_section(addr: SocketAddr, token: &str) -> serde_json::Value {
    serde_json::json!({
        "cluster": "policy-sync",
        "authority": addr.to_string(),
        "token": token,
        "signingKeys": [signing_key()],
        "wait": "20s",
        "retry": {"initial": "100ms", "max": "500ms"},
    })
}

/// Which build of the filter an Envoy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    Wasm,
    Native,
}

/// A real Envoy of `workers` workers running the built filter with `plugin`, its `policy-sync`
/// cluster reaching 127.0.0.1:`port`; serving, and its ports.
fn envoy_following(
    plugin: &serde_json::Value,
    port: u16,
    workers: u32,
) -> Res<(Envoy, harness::envoy::Ports)> {
    envoy_following_with(Build::Wasm, plugin, port, workers)
}

/// [`envoy_following`] with either build.
fn envoy_following_with(
    build: Build,
    plugin: &serde_json::Value,
    port: u16,
    workers: u32,
) -> Res<(Envoy, harness::envoy::Ports)> {
    let ports = harness::envoy::Ports::free()?;
    let config = match build {
        Build::Wasm => {
            harness::envoy::config_following(ports, &harness::paths::wasm()?, plugin, port)?
        }
        Build::Native => harness::envoy::native_config_following(
            ports,
            &harness::paths::native()?,
            plugin,
            port,
        )?,
    };
    harness::envoy::validate(&config)?;
    let mut envoy = Envoy::start(&config, ports, workers)?;
    envoy.wait_ready(Duration::from_secs(30))?;
    Ok((envoy, ports))
}

/// Registers `issuer` (tokens for `audience`) through the admin API; policy-sync fetches its
/// keys from `jwks_uri`, refreshing every `refresh` (min, max) seconds.
async fn add_issuer(
    addr: SocketAddr,
    admin: &str,
    issuer: &str,
    audience: &str,
    jwks_uri: &str,
    (min, max): (u64, u64),
) -> Res<()> {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/admin/issuers"))
        .bearer_auth(admin)
        .json(&serde_json::json!({
            "issuer": issuer,
            "audiences": [audience],
            "jwksUri": jwks_uri,
            "minRefreshS": min,
            "maxRefreshS": max,
        }))
        .send()
        .await?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("issuer {issuer}: {} {}", r.status(), r.text().await?).into())
    }
}

/// `policy-sync serve` on `addr`, killed when dropped.
pub(crate) struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Serve {
    async fn start(url: &str, addr: SocketAddr, key: &std::path::Path) -> Res<Self> {
        Self::start_with(url, addr, key, &[]).await
    }

    /// With more `serve` arguments.
    async fn start_with(
        url: &str,
        addr: SocketAddr,
        key: &std::path::Path,
        extra: &[&str],
    ) -> Res<Self> {
        let mut cmd = Self::command(url, addr, key);
        cmd.args(["--max-wait", "20"]).args(extra);
        Self::spawn(&mut cmd, addr).await
    }

    /// `policy-sync --database-url url serve --listen addr --signing-key key`, logging warnings.
    pub(crate) fn command(
        url: &str,
        addr: SocketAddr,
        key: &std::path::Path,
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_policy-sync"));
        cmd.args(["--database-url", url, "serve", "--listen"])
            .arg(addr.to_string())
            .arg("--signing-key")
            .arg(key)
            .env("PORTCULLIS_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        cmd
    }

    /// Starts `cmd` and waits until the service on `addr` is ready.
    pub(crate) async fn spawn(cmd: &mut std::process::Command, addr: SocketAddr) -> Res<Self> {
        let serve = Self(cmd.spawn()?);
        let started = Instant::now();
        while reqwest::get(format!("http://{addr}/readyz"))
            .await
            .map(|r| r.status().as_u16())
            .ok()
            != Some(200)
        {
            if started.elapsed() > Duration::from_secs(20) {
                return Err("policy-sync did not become ready".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(serve)
    }

    /// SIGKILL: connections are cut, nothing is said to anyone.
    fn kill(mut self) -> Res<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }
}

/// The most long-polls policy-sync reported parked at once over a second.
async fn most_parked(addr: SocketAddr) -> Res<u64> {
    let mut most = 0;
    for _ in 0..20 {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await?
            .text()
            .await?;
        let parked = text
            .lines()
            .find_map(|l| l.strip_prefix("policy_sync_long_poll_waiters "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or("no waiters gauge in /metrics")?;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a small gauge"
        )]
        let parked = parked as u64;
        most = most.max(parked);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(most)
}

/// Statuses of `n` concurrent requests for `/api`, each on its own connection (spread over
/// the workers).
async fn statuses(envoy: &Envoy, token: &str, n: usize) -> Res<Vec<u16>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = envoy.url("/api");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, url, token) = (client.clone(), url.clone(), token.to_owned());
        set.spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

/// Waits until every one of 16 requests gets `want`; the time it took.
async fn until_all(envoy: &Envoy, token: &str, want: u16, within: Duration) -> Res<Duration> {
    let started = Instant::now();
    loop {
        let got = statuses(envoy, token, 16).await?;
        if got.iter().all(|s| *s == want) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(
                format!("not all {want} within {within:?}: {got:?}\n{}", envoy.log()).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request for `/api` on a new client: its status and the value of response header `name`.
async fn get_api(envoy: &Envoy, token: &str, name: &str) -> Res<(u16, Option<String>)> {
    let r = reqwest::Client::new()
        .get(envoy.url("/api"))
        .bearer_auth(token)
        .send()
        .await?;
    let value = r
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((r.status().as_u16(), value))
}

/// The sum of the sync failure counters for `causes`, by the Prometheus names both builds
/// export (`portcullis_sync_failures_total{cause="..."}`).
async fn failures(envoy: &Envoy, causes: &[&str]) -> Res<u64> {
    let text = tokio::task::block_in_place(|| envoy.admin("/stats/prometheus"))?;
    Ok(causes
        .iter()
        .map(|cause| {
            prometheus_value(
                &text,
                "portcullis_sync_failures_total",
                Some(("cause", cause)),
            )
        })
        .sum())
}

/// A counter of Envoy's Prometheus text: family `name`, with `label` when given (0 when absent).
fn prometheus_value(text: &str, name: &str, label: Option<(&str, &str)>) -> u64 {
    let want = label.map(|(k, v)| format!("{k}=\"{v}\""));
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| want.as_ref().is_none_or(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The requests refused for want of a bundle or for staleness, from either build.
async fn refused(envoy: &Envoy) -> Res<u64> {
    let text = tokio::task::block_in_place(|| envoy.admin("/stats/prometheus"))?;
    Ok(prometheus_value(
        &text,
        "portcullis_sync_refused_requests_total",
        None,
    ))
}

/// A stream of requests for `/api` (each on a new connection, so spread over the workers),
/// every answer checked against the status the test says the policies in force give. While
/// the test says a change is under way (`expect(None)`), either answer is right; a request
/// whose expectation changed while it was in flight is not judged.
struct Watch {
    expect: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    checked: Arc<AtomicU64>,
    wrong: Arc<Mutex<Vec<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Watch {
    fn start(envoy: &Envoy, token: &str, expect: u16, streams: usize) -> Res<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut watch = Self {
            expect: Arc::new(AtomicU16::new(expect)),
            stop: Arc::new(AtomicBool::new(false)),
            checked: Arc::new(AtomicU64::new(0)),
            wrong: Arc::new(Mutex::new(Vec::new())),
            tasks: tokio::task::JoinSet::new(),
        };
        for _ in 0..streams {
            let (client, url, token) = (client.clone(), envoy.url("/api"), token.to_owned());
            let (want, stop) = (Arc::clone(&watch.expect), Arc::clone(&watch.stop));
            let (checked, wrong) = (Arc::clone(&watch.checked), Arc::clone(&watch.wrong));
            watch.tasks.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let before = want.load(Ordering::SeqCst);
                    let got = client.get(&url).bearer_auth(&token).send().await;
                    let after = want.load(Ordering::SeqCst);
                    if before == 0 || before != after {
                        continue;
                    }
                    checked.fetch_add(1, Ordering::SeqCst);
                    let got = got.map(|r| r.status().as_u16());
                    if got.as_ref().ok() != Some(&before) {
                        wrong
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(format!("wanted {before}, got {got:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        Ok(watch)
    }

    /// What every answer must be from now on; `None` while a change is under way.
    fn expect(&self, status: Option<u16>) {
        self.expect.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    fn checked(&self) -> u64 {
        self.checked.load(Ordering::SeqCst)
    }

    /// Fails on the first wrong answer seen so far.
    fn check(&self, during: &str) -> Res<()> {
        let wrong = self.wrong.lock().unwrap_or_else(PoisonError::into_inner);
        match wrong.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} wrong answers by the end of {during}; the first: {first}",
                wrong.len()
            )
            .into()),
        }
    }

    async fn stop(mut self) -> Res<u64> {
        self.stop.store(true, Ordering::SeqCst);
        while self.tasks.join_next().await.is_some() {}
        self.check("the run")?;
        Ok(self.checked())
    }
}

/// Waits up to `within` for `f` to hold, checking every 100 ms.
async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F) -> Res<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Res<bool>>,
{
    let started = Instant::now();
    while !f().await? {
        if started.elapsed() > within {
            return Err(format!("{what}: not within {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
