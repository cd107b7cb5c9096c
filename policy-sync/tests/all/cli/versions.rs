//! The command line: versions, rollback, `bundle show`, and `serve`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_rollback_and_bundle_show() -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();

    // Nothing is published before a service has run.
    let out = cli(&url, &["versions"]).await?;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    let out = cli(&url, &["bundle", "show"]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr
            .contains("no version of tenant default is published"),
        "{out:?}"
    );

    let svc = support::service(&url).await?;
    let v1 = document_after(&svc, 0).await?;
    assert_eq!(v1.version, 1);
    let one = write(
        d,
        "one.cedar",
        "@id(\"one\")\npermit(principal, action == Action::\"GET\", resource);\n",
    )?;
    assert_eq!(cli(&url, &["policy", "put", &one]).await?.code, 0);
    let v2 = document_after(&svc, 1).await?;
    assert_eq!(v2.version, 2);
    let two = write(
        d,
        "two.cedar",
        "@id(\"two\")\nforbid(principal, action, resource);\n",
    )?;
    assert_eq!(cli(&url, &["policy", "put", &two]).await?.code, 0);
    let v3 = document_after(&svc, 2).await?;
    assert_eq!(v3.version, 3);
    assert!(v3.bundle.policies.contains("@id(\"two\")"));

    let out = cli(&url, &["versions"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let numbers: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert_eq!(numbers, ["3", "2", "1"], "{out:?}");
    for line in out.stdout.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert!(fields[1].ends_with('Z'), "{line}");
        assert_eq!(fields[2], "default", "{line}");
    }
    let out = cli(&url, &["versions", "--limit", "1"]).await?;
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(out.stdout.starts_with("3\t"), "{out:?}");

    // bundle show: the latest document, and the signed envelope around the same bytes.
    let out = cli(&url, &["bundle", "show"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let shown: BundleDocument = serde_json::from_str(&out.stdout)?;
    assert_eq!(shown, v3);
    let out = cli(&url, &["bundle", "show", "--signed"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let signed: SignedBundle = serde_json::from_str(&out.stdout)?;
    assert_eq!(signed.key_id, support::signer().key_id());
    assert_eq!(signed.verify(&support::signer().public_key())?, v3);
    let out = cli(&url, &["bundle", "show", "--tenant", "nope"]).await?;
    assert_eq!(out.code, 4, "{out:?}");

    // rollback needs the signing key, and a version that exists.
    let out = cli(&url, &["rollback", "--to", "2"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no signing key"), "{out:?}");
    let key = write_service_key(d)?;
    let out = cli(&url, &["rollback", "--to", "999", "--signing-key", &key]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("version 999 not found"), "{out:?}");
    assert_eq!(count(&pool, "SELECT max(version) FROM versions").await?, 3);

    let out = cli(&url, &["rollback", "--to", "2", "--signing-key", &key]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "rolled back to version 2: published as version 4"
    );
    assert_eq!(
        strings(&pool, "SELECT id FROM policies ORDER BY id").await?,
        ["one"]
    );
    let v4 = document_after(&svc, 3).await?;
    assert_eq!(v4.version, 4);
    assert_eq!(v4.bundle.policies, v2.bundle.policies);
    let out = cli(&url, &["versions", "--limit", "1"]).await?;
    assert!(
        out.stdout.starts_with("4\t") && out.stdout.trim_end().ends_with("rollback to version 2"),
        "{out:?}"
    );
    let out = cli(&url, &["bundle", "show"]).await?;
    assert_eq!(serde_json::from_str::<BundleDocument>(&out.stdout)?, v4);

    // Rolling back to what is already served publishes nothing.
    let out = cli(&url, &["rollback", "--to", "2", "--signing-key", &key]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("nothing published"), "{out:?}");
    assert_eq!(count(&pool, "SELECT max(version) FROM versions").await?, 4);

    // The admin API agrees on the sequence.
    let versions = svc.versions().await?;
    let numbers: Vec<i64> = versions
        .iter()
        .filter_map(|v| v["version"].as_i64())
        .collect();
    assert_eq!(numbers, [4, 3, 2, 1]);
    assert_eq!(versions[0]["rollbackOf"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_until_interrupted_and_refuses_bad_settings() -> TestResult {
    let url = support::empty_database()?;
    let dir = tempfile::tempdir()?;
    let key = write_service_key(dir.path())?;
    // Refusals before anything starts.
    let out = cli(&url, &["serve", "--listen", "127.0.0.1:0"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no signing key"), "{out:?}");
    let bad_key = write(dir.path(), "bad.key", "not a key")?;
    let out = cli(&url, &["serve", "--signing-key", &bad_key]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("32-byte Ed25519 seed"), "{out:?}");
    let out = cli(&url, &["serve", "--signing-key", &key, "--pool-size", "0"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    let down = format!(
        "postgres://postgres@127.0.0.1:{}/x?connect_timeout=1",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    );
    let out = cli(&down, &["serve", "--signing-key", &key]).await?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("Postgres"), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");

    // The real thing: migrates the empty database, publishes, answers, stops on SIGINT.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_policy-sync"))
        .args([
            "--database-url",
            &url,
            "serve",
            "--signing-key",
            &key,
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .env("PORTCULLIS_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let ready: Value = loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            break r.json().await?;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            return Err("policy-sync serve never became ready".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready, json!({"ready": true, "version": 1}));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        stdout.contains(&format!("policy-sync listening on http://127.0.0.1:{port}")),
        "{stdout}"
    );
    assert!(stdout.contains("stopped"), "{stdout}");
    Ok(())
}
