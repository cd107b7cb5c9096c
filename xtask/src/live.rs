//! `cargo xtask demo --live`: the demo with its policies in Postgres, published by
//! policy-sync. A private Postgres cluster (initdb/pg_ctl, removed afterwards), `policy-sync
//! serve` with a fresh signing key, the demo policies stored with `policy-sync policy put`,
//! tokens from `policy-sync dev-token`, and Envoy's filter configured from the document
//! policy-sync serves (its bundle and the dev issuer's keys).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::postgres::Cluster;
use portcullis_core::bundle::signed::{SignedBundle, parse_public_key};

use crate::Result;
use crate::install;
use crate::process::{self, cargo};

/// A child process killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the live demo set up, for the Envoy part of the demo.
pub struct Live {
    /// Envoy plugin configuration built from the published document.
    pub plugin_config: serde_json::Value,
    pub alice: String,
    pub bob: String,
    pub version: u64,
    pub api: String,
    pub filter_token: String,
    pub admin_token: String,
    pub database_url: String,
    pub binary: PathBuf,
    /// policy-sync's port on 127.0.0.1 (the Envoy `policy-sync` cluster).
    pub port: u16,
    pub dir: tempfile::TempDir,
    _server: Guard,
    _cluster: Cluster,
}

/// Runs the policy-sync CLI against `url`; its standard output.
pub fn policy_sync(binary: &Path, url: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(binary)
        .args(args)
        .env("PORTCULLIS_DATABASE_URL", url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run policy-sync: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "policy-sync {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Starts Postgres and policy-sync, stores the demo policies and mints the demo tokens.
pub fn start(policies: &Path) -> Result<Live> {
    install::ensure_postgres()?;
    eprintln!("xtask: building policy-sync");
    process::run(
        cargo().args(["build", "--quiet", "-p", "policy-sync"]),
        "cargo build -p policy-sync",
    )?;
    let binary = process::target_dir().join("debug/policy-sync");
    let cluster = Cluster::start().map_err(|e| e.to_string())?;
    let url = cluster
        .create_database("portcullis")
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = dir.path().join("signing.key");
    let keygen = policy_sync(&binary, &url, &["keygen", "--out", &key.to_string_lossy()])?;
    policy_sync(&binary, &url, &["migrate"])?;
    let policies = policy_sync(
        &binary,
        &url,
        &["policy", "put", &policies.to_string_lossy()],
    )?;
    let admin_token = policy_sync(&binary, &url, &["token", "create", "demo-admin"])?;
    let filter_token = policy_sync(
        &binary,
        &url,
        &["token", "create", "demo-filter", "--role", "filter"],
    )?;
    let dev_key = dir.path().join("dev-issuer.key");
    let dev = |sub: &str, groups: &str| {
        policy_sync(
            &binary,
            &url,
            &[
                "dev-token",
                "--sub",
                sub,
                "--groups",
                groups,
                "--key-file",
                &dev_key.to_string_lossy(),
            ],
        )
    };
    let alice = dev("alice", "admins")?;
    let bob = dev("bob", "staff")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = Command::new(&binary)
        .args(["serve", "--listen", &listen, "--signing-key"])
        .arg(&key)
        .env("PORTCULLIS_DATABASE_URL", &url)
        .env("PORTCULLIS_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start policy-sync: {e}"))?;
    let server = Guard(server);
    let api = format!("http://{listen}");
    // The document policy-sync publishes: wait until it serves one.
    let agent = harness::http::agent(Duration::from_secs(5));
    let started = Instant::now();
    let signed: SignedBundle = loop {
        let got = agent
            .get(format!("{api}/v1/bundles/default?wait=0"))
            .header("authorization", format!("Bearer {filter_token}"))
            .call();
        if let Ok(r) = got
            && r.status() == 200
        {
            break serde_json::from_str(&harness::http::text(r)).map_err(|e| e.to_string())?;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("policy-sync did not publish within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Checked as a filter checks it: the signature with the public key keygen printed.
    let public_text = keygen
        .lines()
        .find_map(|l| l.strip_prefix("public key:"))
        .map(str::trim)
        .ok_or("policy-sync keygen printed no public key")?;
    let public = parse_public_key(public_text).ok_or("policy-sync keygen printed a bad key")?;
    let doc = signed
        .verify(&public)
        .map_err(|e| format!("the published document: {e}"))?;
    let version = doc.version;
    // No inline bundle or issuers: the filter takes both from policy-sync's documents and
    // follows every new version (one long-poll for the whole Envoy).
    let plugin_config = serde_json::json!({
        "debugHeaders": true,
        "sync": {
            "cluster": "policy-sync",
            "authority": listen,
            "token": filter_token,
            "signingKeys": [public_text],
            "retry": {"initial": "100ms", "max": "2s"},
        },
    });
    println!(
        "policy-sync {api} (Postgres on 127.0.0.1:{})",
        cluster.port()
    );
    println!("{}", keygen.lines().skip(1).collect::<Vec<_>>().join("\n"));
    println!("policies stored: {policies}");
    println!("published version {version}; the filter follows policy-sync from there\n");
    Ok(Live {
        plugin_config,
        alice,
        bob,
        version,
        api,
        filter_token,
        admin_token,
        database_url: url,
        binary,
        port,
        dir,
        _server: server,
        _cluster: cluster,
    })
}

/// An Envoy of `workers` workers whose filter follows this policy-sync, ready.
pub fn start_following(live: &Live, wasm: &Path, workers: u32) -> Result<harness::envoy::Envoy> {
    use harness::envoy::{self, Envoy, Ports};
    let ports = Ports::free().map_err(|e| e.to_string())?;
    let config = envoy::config_following(ports, wasm, &live.plugin_config, live.port)
        .map_err(|e| e.to_string())?;
    let mut proxy = Envoy::start(&config, ports, workers).map_err(|e| e.to_string())?;
    proxy
        .wait_ready(Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    Ok(proxy)
}

/// The live demo's point: a request denied, one `policy-sync` command, the same request
/// allowed, and the time from the command's commit to the first allowed answer.
pub fn flip(live: &Live, url: &str, bob: &str) -> Result {
    let agent = harness::http::agent(Duration::from_secs(5));
    let delete = || -> Result<u16> {
        let req = ureq::http::Request::builder()
            .method("DELETE")
            .uri(url)
            .header("authorization", format!("Bearer {bob}"))
            .body(())
            .map_err(|e| e.to_string())?;
        Ok(agent.run(req).map_err(|e| e.to_string())?.status().as_u16())
    };
    let file = live.dir.path().join("staff-may-delete.cedar");
    std::fs::write(
        &file,
        "@id(\"staff-may-delete\")\npermit (principal in Group::\"staff\", action == Action::\"DELETE\", resource);\n",
    )
    .map_err(|e| e.to_string())?;
    println!("\nLive update (policy-sync pushes it; nothing restarts):");
    println!(
        "  [{}] curl -i -X DELETE -H \"authorization: Bearer $BOB\" {url}",
        delete()?
    );
    let command = format!("{} policy put {}", live.binary.display(), file.display());
    let file_arg = file.to_string_lossy().into_owned();
    policy_sync(
        &live.binary,
        &live.database_url,
        &["policy", "put", &file_arg],
    )?;
    // The command has committed when it returns.
    let committed = Instant::now();
    let status = loop {
        let s = delete()?;
        if s == 200 || committed.elapsed() > Duration::from_secs(10) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = committed.elapsed();
    println!("  $ {command}");
    println!(
        "  [{status}] curl -i -X DELETE -H \"authorization: Bearer $BOB\" {url}    # {took:.1?} after the commit"
    );
    if status != 200 {
        return Err(format!(
            "the new policy was not in force 10 s after the commit (last answer {status})"
        ));
    }
    Ok(())
}
