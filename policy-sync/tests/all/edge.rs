//! Real parts end to end: a real Envoy (four workers) running the built filter, following the
//! real `policy-sync serve` process over a real Postgres. A commit reaches every worker; one
//! long-poll per Envoy is parked at a time; policy-sync killed changes nothing that is in
//! force, and coming back brings the newest version.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use serde_json::json;

use policy_sync::store::{self, Role};

use crate::support::{self, Res, TestResult};

const ALLOW: &str = "permit (principal, action, resource);";
const DENY: &str = "forbid (principal, action, resource) when { resource == Path::\"/api\" };";

/// `policy-sync serve` on `addr`, killed when dropped.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Serve {
    async fn start(url: &str, addr: SocketAddr, key: &std::path::Path) -> Res<Self> {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_policy-sync"))
            .args([
                "--database-url",
                url,
                "serve",
                "--max-wait",
                "20",
                "--listen",
            ])
            .arg(addr.to_string())
            .arg("--signing-key")
            .arg(key)
            .env("PORTCULLIS_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let serve = Self(child);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_follows_policy_sync() -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 2)?;
    let admin = store::create_token(&pool, "edge-admin", Role::Admin).await?;
    let filter = store::create_token(&pool, "edge-filter", Role::Filter).await?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("service.key");
    std::fs::write(&key, format!("{}\n", URL_SAFE_NO_PAD.encode([42u8; 32])))?;
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let serve = Serve::start(&url, addr, &key).await?;
    let http = reqwest::Client::new();
    let policy = |method: reqwest::Method, id: &str| {
        http.request(
            method,
            format!("http://{addr}/v1/admin/tenants/default/policies/{id}"),
        )
        .bearer_auth(&admin)
    };
    let r = policy(reqwest::Method::PUT, "allow")
        .json(&json!({"text": ALLOW}))
        .send()
        .await?;
    assert!(r.status().is_success(), "{}", r.status());
    let issuer = DevIssuer::generate()?;
    let plugin = json!({
        "issuers": [{"issuer": issuer.issuer, "audiences": [issuer.audience], "jwks": issuer.jwks()}],
        "debugHeaders": true,
        "sync": {
            "cluster": "policy-sync",
            "authority": addr.to_string(),
            "token": filter,
            "signingKeys": [URL_SAFE_NO_PAD.encode(support::signer().public_key().as_bytes())],
            "wait": "20s",
            "maxStaleness": "120s",
            "retry": {"initial": "100ms", "max": "500ms"},
        },
    });
    let ports = Ports::free()?;
    let wasm = harness::paths::wasm()?;
    let config = envoy::config_following(ports, &wasm, &plugin, addr.port())?;
    envoy::validate(&config)?;
    let mut envoy = Envoy::start(&config, ports, 4)?;
    envoy.wait_ready(Duration::from_secs(30))?;
    let token = issuer.token("bob", &[]);
    // No inline bundle: 503 until the first document, then policy-sync's policies.
    until_all(&envoy, &token, 200, Duration::from_secs(15)).await?;
    // From policy-sync's side: one long-poll parked for the whole Envoy, never more.
    assert_eq!(
        most_parked(addr).await?,
        1,
        "long-polls parked for one Envoy of four workers"
    );

    // A commit: every worker denies within a fraction of a second.
    let r = policy(reqwest::Method::PUT, "deny")
        .json(&json!({"text": DENY}))
        .send()
        .await?;
    assert!(r.status().is_success(), "{}", r.status());
    let took = until_all(&envoy, &token, 403, Duration::from_secs(5)).await?;
    eprintln!("commit to 403 at every connection: {took:?}");
    assert!(
        statuses(&envoy, &token, 64)
            .await?
            .iter()
            .all(|s| *s == 403)
    );
    // Every denial becomes a decision-log row in Postgres (shipped by the poller's worker,
    // at least once a second).
    let c = pool.get().await?;
    let started = Instant::now();
    let denied = loop {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM decision_logs WHERE decision = 'deny' AND resource = '/api'
                 AND principal = 'User::\"bob\"' AND policies = ARRAY['deny']",
                &[],
            )
            .await?
            .get(0);
        if n >= 80 || started.elapsed() > Duration::from_secs(5) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(denied >= 80, "{denied} denials logged, 80 or more sent");
    drop(c);

    // policy-sync is killed: the policies in force stay in force.
    serve.kill()?;
    for _ in 0..10 {
        assert!(statuses(&envoy, &token, 8).await?.iter().all(|s| *s == 403));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Meanwhile the policy changes in Postgres (through the CLI's store, as an operator
    // would with policy-sync down); policy-sync comes back on the same address.
    let source = policy_sync::store::delete_policy(&pool, "default", "deny").await;
    assert!(source.is_ok(), "{source:?}");
    let back = Serve::start(&url, addr, &key).await?;
    let took = until_all(&envoy, &token, 200, Duration::from_secs(10)).await?;
    eprintln!("policy-sync back with the deny removed: every connection allowed after {took:?}");
    envoy.wait_stat("wasmcustom.portcullis.sync.failure.unreachable", 1)?;
    let failures: u64 = ["unreachable", "timeout", "status"]
        .iter()
        .filter_map(|c| {
            envoy
                .stat(&format!("wasmcustom.portcullis.sync.failure.{c}"))
                .ok()
                .flatten()
        })
        .sum();
    assert!(failures >= 1, "the outage was counted");
    assert_eq!(most_parked(addr).await?, 1);
    drop(back);
    Ok(())
}
