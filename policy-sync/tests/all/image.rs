//! policy-sync's container image: built from the static binary, pushed to a real registry on
//! loopback, pulled back by digest and unpacked as a container runtime would; then the
//! unpacked binary runs the migration Job's and the Deployment's commands, as
//! `istio/base` spells them, against a real Postgres and serves a signed bundle.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use harness::oci::{self, Registry};
use harness::{paths, server_image};
use policy_sync::source::PolicyRow;
use policy_sync::store::{self, Role};
use serde_json::Value;

use crate::edge::{Serve, key_file};
use crate::support::{self, Res, TestResult};

/// The container of `file` in `istio/base` (the Deployment's or the Job's pod template).
fn container(file: &str) -> Res<Value> {
    let text = fs::read_to_string(paths::repo_root().join("istio/base").join(file))?;
    let doc: Value = serde_yaml_ng::from_str(&text)?;
    Ok(doc
        .pointer("/spec/template/spec/containers/0")
        .ok_or("no container")?
        .clone())
}

/// `args` of a container as strings.
fn args(container: &Value) -> Res<Vec<String>> {
    container["args"]
        .as_array()
        .ok_or("no args")?
        .iter()
        .map(|a| a.as_str().map(str::to_owned).ok_or_else(|| "arg".into()))
        .collect()
}

/// Every file under `root` (relative path → bytes and mode).
fn files(root: &Path) -> Res<BTreeMap<String, (Vec<u8>, u32)>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                let rel = entry.path().strip_prefix(root)?.display().to_string();
                let mode = meta.permissions().mode() & 0o777;
                out.insert(rel, (fs::read(entry.path())?, mode));
            }
        }
    }
    Ok(out)
}

#[test]
fn only_a_static_binary_makes_an_image() -> TestResult {
    let stat = fs::read(paths::static_policy_sync()?)?;
    server_image::check_static(&stat)?;
    // The test binary's own policy-sync links glibc dynamically: refused, with the reason.
    let dynamic = fs::read(env!("CARGO_BIN_EXE_policy-sync"))?;
    let why = server_image::check_static(&dynamic)
        .err()
        .ok_or("accepted")?;
    assert!(why.contains("dynamically linked"), "{why}");
    assert!(server_image::check_static(b"#!/bin/sh\n").is_err());
    let work = tempfile::tempdir()?;
    let refused = server_image::build(
        Path::new(env!("CARGO_BIN_EXE_policy-sync")),
        &work.path().join("layout"),
        "t",
    );
    assert!(refused.is_err());
    assert!(
        !work.path().join("layout").exists(),
        "nothing is written for a refused binary"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pulled_back_runs_the_manifests_commands_alone() -> TestResult {
    let binary = paths::static_policy_sync()?;
    let binary_bytes = fs::read(&binary)?;
    let work = tempfile::tempdir()?;
    let image = server_image::build(&binary, &work.path().join("layout"), "0.1.0-test")?;
    let again = server_image::build(&binary, &work.path().join("again"), "0.1.0-test")?;
    assert_eq!(
        image.manifest, again.manifest,
        "the same binary gives the same image"
    );
    assert_eq!(image.binary, oci::digest(&binary_bytes));

    let registry = Registry::start()?;
    let repo = format!("{}/portcullis/policy-sync", registry.host());
    let pushed = oci::push_layout(
        &image.layout,
        &image.tag,
        &format!("{repo}:0.1.0-test"),
        true,
    )?;
    assert_eq!(
        pushed, image.manifest,
        "the digest printed is the registry's"
    );
    let pulled = work.path().join("pulled");
    oci::pull_layout(&format!("{repo}@{pushed}"), &pulled, "pulled", true)?;
    assert_eq!(oci::manifest_digest_of(&pulled, "pulled")?, pushed);
    let bundle = work.path().join("bundle");
    oci::unpack(&pulled, "pulled", &bundle)?;

    // What a runtime runs: the entrypoint, as the manifests' user, and nothing else is there.
    let runtime: Value = serde_json::from_slice(&fs::read(bundle.join("config.json"))?)?;
    assert_eq!(
        runtime["process"]["args"],
        serde_json::json!([server_image::ENTRYPOINT])
    );
    let deployment: Value = serde_yaml_ng::from_str(&fs::read_to_string(
        paths::repo_root().join("istio/base/deployment.yaml"),
    )?)?;
    let pod = deployment
        .pointer("/spec/template/spec/securityContext")
        .ok_or("no pod securityContext")?;
    assert_eq!(runtime["process"]["user"]["uid"], pod["runAsUser"]);
    assert_eq!(runtime["process"]["user"]["gid"], pod["runAsGroup"]);
    let rootfs = bundle.join("rootfs");
    let files = files(&rootfs)?;
    let entry = server_image::ENTRYPOINT.trim_start_matches('/');
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        ["etc/group", "etc/passwd", entry]
    );
    assert!(
        files.get(entry) == Some(&(binary_bytes, 0o755)),
        "the binary is the built one, executable"
    );
    let passwd = files.get("etc/passwd").ok_or("no passwd")?;
    assert_eq!(passwd.0, server_image::PASSWD.as_bytes());
    assert!(
        server_image::PASSWD.contains(&format!(":{}:{}:", pod["runAsUser"], pod["runAsGroup"])),
        "the manifests' user has an account"
    );

    // The migration Job's command on an empty database, then the Deployment's.
    let unpacked = rootfs.join(entry);
    let url = support::empty_database()?;
    let job = container("migrate-job.yaml")?;
    let status = Command::new(&unpacked)
        .args(args(&job)?)
        .env_clear()
        .env("PORTCULLIS_DATABASE_URL", &url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()?;
    assert!(status.success(), "migrate: {status}");
    let pool = policy_sync::db::pool(&url, 2)?;
    let filter = store::create_token(&pool, "image-filter", Role::Filter).await?;
    store::put_policies(
        &pool,
        "default",
        &[PolicyRow {
            id: "from-image".into(),
            text: "permit(principal, action, resource);".into(),
            enabled: true,
        }],
    )
    .await?;

    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let server = container("deployment.yaml")?;
    let mut serve_args = args(&server)?;
    let listen = serve_args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| serve_args.get_mut(i + 1))
        .ok_or("the Deployment sets no --listen")?;
    *listen = addr.to_string();
    let keys = tempfile::tempdir()?;
    let mut cmd = Command::new(&unpacked);
    cmd.args(&serve_args)
        .env_clear()
        .env("PORTCULLIS_DATABASE_URL", &url)
        .env("PORTCULLIS_SIGNING_KEY_FILE", key_file(keys.path())?)
        .env("PORTCULLIS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let _serve = Serve::spawn(&mut cmd, addr).await?;
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/v1/bundles/default?after=0&wait=0"))
        .bearer_auth(&filter)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let signed: portcullis_core::bundle::signed::SignedBundle = r.json().await?;
    let document = signed.verify(&support::signer().public_key())?;
    assert!(
        serde_json::to_string(&document)?.contains("from-image"),
        "the bundle holds the stored policy"
    );
    Ok(())
}
