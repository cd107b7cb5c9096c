//! The `policy-sync` command line end to end: the built binary against a real Postgres, each
//! case checking the exit code, what is printed, and what the database holds afterwards.
//! Tokens and documents are checked the way a filter checks them (portcullis-core).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_postgres::Pool;
use portcullis_core::bundle::signed::{BundleDocument, SignedBundle};
use portcullis_core::{Engine, StaticRequest, Verdict};
use serde_json::{Value, json};

use crate::support::{self, Res, TestResult};

mod dev_token;
mod issuers;
mod setup;
mod store;
mod versions;

const SCHEMA: &str = r#"entity Group;
entity User in [Group] { dept: String };
entity Path;
action "GET" appliesTo { principal: User, resource: Path, context: {} };
"#;

/// What one run of the binary did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `policy-sync ARGS` (with `--database-url URL` when given), with none of the
/// `PORTCULLIS_*` variables of the environment the tests run in.
fn cli_sync(url: Option<&str>, args: &[&str]) -> Res<Out> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_policy-sync"));
    for var in [
        "PORTCULLIS_DATABASE_URL",
        "PORTCULLIS_SIGNING_KEY",
        "PORTCULLIS_SIGNING_KEY_FILE",
        "PORTCULLIS_REPLICA_URL",
        "PORTCULLIS_LOG",
    ] {
        cmd.env_remove(var);
    }
    if let Some(url) = url {
        cmd.args(["--database-url", url]);
    }
    let out = cmd.args(args).output()?;
    Ok(Out {
        code: out.status.code().ok_or("killed by a signal")?,
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    })
}

/// [`cli_sync`] off the async runtime's workers (the in-process service keeps serving).
async fn cli(url: &str, args: &[&str]) -> Res<Out> {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_sync(Some(&url), &args).map_err(|e| e.to_string())
    })
    .await?
    .map_err(Into::into)
}

fn path(p: &Path) -> Res<&str> {
    Ok(p.to_str().ok_or("a non-UTF-8 temporary path")?)
}

/// Writes `text` to `dir/name`; returns the path as a string.
fn write(dir: &Path, name: &str, text: &str) -> Res<String> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(path(&p)?.to_owned())
}

async fn count(pool: &Pool, sql: &str) -> Res<i64> {
    Ok(pool.get().await?.query_one(sql, &[]).await?.get(0))
}

async fn strings(pool: &Pool, sql: &str) -> Res<Vec<String>> {
    Ok(pool
        .get()
        .await?
        .query(sql, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The first document of `tenant` newer than `after` that satisfies `ok`, as the service
/// publishes them (polled: publishing follows a change asynchronously).
async fn document_where(
    svc: &support::Service,
    tenant: &str,
    after: u64,
    ok: impl Fn(&BundleDocument) -> bool,
) -> Res<BundleDocument> {
    let started = Instant::now();
    loop {
        if let (200, Some(doc)) = svc.document(tenant, i64::try_from(after)?).await?
            && ok(&doc)
        {
            return Ok(doc);
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(
                format!("no document of {tenant} after version {after} as expected").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn document_after(svc: &support::Service, after: u64) -> Res<BundleDocument> {
    document_where(svc, "default", after, |_| true).await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The JSON of one base64url segment of a JWT (0 header, 1 payload).
fn jwt_part(token: &str, n: usize) -> Res<Value> {
    let part = token.split('.').nth(n).ok_or("not a JWT")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part)?)?)
}

#[cfg(unix)]
fn mode(p: &Path) -> Res<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

/// The fixed signing key of the test service (seed [42; 32]) as `keygen` writes key files.
fn write_service_key(dir: &Path) -> Res<String> {
    write(
        dir,
        "service.key",
        &format!("{}\n", URL_SAFE_NO_PAD.encode([42u8; 32])),
    )
}
