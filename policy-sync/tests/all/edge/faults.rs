//! Faults between the filter and its sources, each with a request stream running that checks
//! every answer against the policies in force: a proxy that cuts, corrupts, delays, replays or
//! re-signs documents, or answers 502; Postgres stopped; policy-sync and Postgres both down.
//! Each fault starts with a commit that flips the answer: the flip must not reach a request
//! until the fault is gone (the bundle in force stays), the failure is counted under its
//! cause, and once the fault is gone the newest version is picked up.

use std::net::SocketAddr;
use std::time::Duration;

use deadpool_postgres::Pool;
use harness::devkeys::DevIssuer;
use harness::envoy::Envoy;
use harness::postgres::Cluster;
use policy_sync::source::PolicyRow;
use policy_sync::store::{self, Role};
use serde_json::json;

use super::fault_proxy::{Fault, FaultProxy};
use super::follow::{ALLOW, DENY};
use super::{
    Build, Serve, Watch, envoy_following_with, eventually, failures, key_file, refused,
    signing_key, until_all,
};
use crate::support::{Res, TestResult};

/// Flips the `deny` policy (present → removed, absent → stored); the status `/api` gets once
/// the commit is in force.
async fn flip(pool: &Pool, denying: &mut bool) -> Res<u16> {
    if *denying {
        store::delete_policy(pool, "default", "deny").await?;
    } else {
        let row = PolicyRow {
            id: "deny".into(),
            text: DENY.into(),
            enabled: true,
        };
        store::put_policies(pool, "default", &[row]).await?;
    }
    *denying = !*denying;
    Ok(if *denying { 403 } else { 200 })
}

/// Waits for the new status at every connection while the stream accepts either answer,
/// then holds the stream to it.
async fn settle(envoy: &Envoy, watch: &Watch, token: &str, status: u16) -> Res<Duration> {
    watch.expect(None);
    let took = until_all(envoy, token, status, Duration::from_secs(15)).await?;
    watch.expect(Some(status));
    Ok(took)
}

struct Setup {
    cluster: Cluster,
    url: String,
    addr: SocketAddr,
    key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup() -> Res<(Setup, Pool, String)> {
    let cluster = Cluster::start()?;
    cluster.stop_when_process_exits()?;
    let url = cluster.create_database("faults")?;
    let pool = policy_sync::db::pool(&url, 2)?;
    policy_sync::db::migrate(&pool).await?;
    let filter = store::create_token(&pool, "faults-filter", Role::Filter).await?;
    let row = |id: &str, text: &str| PolicyRow {
        id: id.into(),
        text: text.into(),
        enabled: true,
    };
    store::put_policies(&pool, "default", &[row("allow", ALLOW), row("deny", DENY)]).await?;
    let dir = tempfile::tempdir()?;
    let key = key_file(dir.path())?;
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    Ok((
        Setup {
            cluster,
            url,
            addr,
            key,
            _dir: dir,
        },
        pool,
        filter,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_fault_lets_a_denied_request_through() -> TestResult {
    through_faults(Build::Wasm).await
}

/// The same with the native module.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_no_fault_lets_a_denied_request_through() -> TestResult {
    through_faults(Build::Native).await
}

async fn through_faults(build: Build) -> TestResult {
    let (s, mut pool, filter) = setup().await?;
    let mut serve = Some(Serve::start(&s.url, s.addr, &s.key).await?);
    let proxy = FaultProxy::start(s.addr).await?;
    let issuer = DevIssuer::generate()?;
    let plugin = json!({
        "issuers": [{"issuer": issuer.issuer, "audiences": [issuer.audience], "jwks": issuer.jwks()}],
        "sync": {
            "cluster": "policy-sync",
            "authority": s.addr.to_string(),
            "token": filter,
            "signingKeys": [signing_key()],
            "wait": "2s",
            "timeout": "1s",
            "maxStaleness": "300s",
            "retry": {"initial": "100ms", "max": "500ms"},
        },
    });
    let (envoy, _) = envoy_following_with(build, &plugin, proxy.addr.port(), 4)?;
    let token = issuer.token("bob", &[]);
    until_all(&envoy, &token, 403, Duration::from_secs(15)).await?;
    // Before the first document, requests were refused (503): counted from here on, once
    // the filter's next once-a-second flush has reported them.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refused_before = refused(&envoy).await?;
    let watch = Watch::start(&envoy, &token, 403, 4)?;
    let mut denying = true;

    let cases: [(Fault, &[&str]); 6] = [
        // Envoy answers a cut upstream answer with a 503 of its own.
        (Fault::Cut, &["unreachable", "status"]),
        (Fault::Corrupt, &["malformed", "bad_signature"]),
        (Fault::Delay(Duration::from_secs(6)), &["timeout"]),
        (Fault::Replay, &["not_newer"]),
        (Fault::UnknownKey, &["unknown_key"]),
        (Fault::Status(502), &["status"]),
    ];
    for (fault, causes) in cases {
        let before = failures(&envoy, causes).await?;
        let faulted = proxy.faulted();
        proxy.set(fault);
        let next = flip(&pool, &mut denying).await?;
        // Counters reach Envoy's stats at the filter's once-a-second flush.
        let counted = eventually(
            Duration::from_secs(15),
            &format!("{fault:?} counted"),
            || async { Ok(failures(&envoy, causes).await? > before) },
        )
        .await;
        if let Err(e) = counted {
            let stats =
                tokio::task::block_in_place(|| envoy.admin("/stats?filter=portcullis.sync"))?;
            return Err(format!("{e}\n{stats}\n{}", envoy.log()).into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        watch.check(&format!("{fault:?}"))?;
        assert!(
            proxy.faulted() > faulted,
            "{fault:?}: no document was faulted"
        );
        proxy.set(Fault::Pass);
        let took = settle(&envoy, &watch, &token, next).await?;
        eprintln!(
            "{fault:?}: held the bundle in force; newest in force {took:?} after the fault ended"
        );
    }

    // Postgres stops: policy-sync answers 503 (or nothing); the bundle in force stays.
    let before = failures(&envoy, &["status", "unreachable", "timeout"]).await?;
    s.cluster.stop()?;
    eventually(Duration::from_secs(15), "Postgres down counted", || async {
        Ok(failures(&envoy, &["status", "unreachable", "timeout"]).await? > before)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch.check("Postgres stopped")?;
    s.cluster.restart()?;
    pool = policy_sync::db::pool(&s.url, 2)?;
    let next = flip(&pool, &mut denying).await?;
    let took = settle(&envoy, &watch, &token, next).await?;
    eprintln!("Postgres back: the commit made after it in force {took:?} later");

    // Both down: policy-sync killed, Postgres stopped; a commit waits in Postgres.
    if let Some(serve) = serve.take() {
        serve.kill()?;
    }
    s.cluster.stop()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.check("policy-sync and Postgres down")?;
    s.cluster.restart()?;
    pool = policy_sync::db::pool(&s.url, 2)?;
    let next = flip(&pool, &mut denying).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.check("Postgres back, policy-sync still down")?;
    // policy-sync publishes the waiting commit as it starts, and a filter may poll it before
    // its readiness is seen here: from now on either version may answer.
    watch.expect(None);
    serve = Some(Serve::start(&s.url, s.addr, &s.key).await?);
    let took = settle(&envoy, &watch, &token, next).await?;
    eprintln!("both back: newest in force {took:?} after policy-sync was ready");

    let checked = watch.stop().await?;
    eprintln!("{checked} answers checked, none wrong");
    assert!(checked > 200, "only {checked} answers were checked");
    assert_eq!(
        refused(&envoy).await?,
        refused_before,
        "requests refused as stale during the faults"
    );
    drop(serve);
    Ok(())
}
