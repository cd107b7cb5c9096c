//! The command line: `migrate`, `keygen` and the offline `policy validate`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_once_and_needs_a_database() -> TestResult {
    let url = support::empty_database()?;
    let out = cli(&url, &["migrate"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "applied migrations [1]", "{out:?}");
    let pool = policy_sync::db::pool(&url, 1)?;
    assert_eq!(
        strings(&pool, "SELECT version::text FROM portcullis_migrations").await?,
        ["1"]
    );
    assert_eq!(strings(&pool, "SELECT id FROM tenants").await?, ["default"]);

    // Again, the URL from the environment this time.
    let url2 = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_policy-sync"))
            .arg("migrate")
            .env("PORTCULLIS_DATABASE_URL", url2)
            .output()
    })
    .await??;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout)?.trim(),
        "the database is up to date"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM portcullis_migrations").await?,
        1
    );

    // No database at all: bad usage, said plainly.
    let out = cli_sync(None, &["migrate"])?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr
            .contains("no database: give --database-url or set PORTCULLIS_DATABASE_URL"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn keygen_writes_a_private_key_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("signing.key");
    let f = path(&file)?;
    let out = cli_sync(None, &["keygen", "--out", f])?;
    assert_eq!(out.code, 0, "{out:?}");
    let signer = policy_sync::signing::Signer::from_file(&file)?;
    assert!(
        out.stdout
            .contains(&format!("wrote the signing key to {f}")),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("key id:     {}\n", signer.key_id())),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("public key: {}\n", signer.public_key_text())),
        "{out:?}"
    );
    // The private key is nowhere in what was printed.
    let secret = std::fs::read_to_string(&file)?;
    assert!(!out.stdout.contains(secret.trim()));
    #[cfg(unix)]
    assert_eq!(mode(&file)?, 0o600);

    // A second run never overwrites a key.
    let out = cli_sync(None, &["keygen", "--out", f])?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("already exists; refusing to overwrite a signing key"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&file)?, secret);
    Ok(())
}

#[test]
fn policy_validate_positions_problems_in_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    // No database URL anywhere: validation is offline.
    let good = write(
        dir.path(),
        "good.cedar",
        "@id(\"a\")\npermit(principal, action == Action::\"GET\", resource);\n\n\
         @id(\"b\")\nforbid(principal, action == Action::\"GET\", resource == Path::\"/admin\");\n",
    )?;
    let out = cli_sync(None, &["policy", "validate", &good])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("{good}: 2 policies parse (no schema given)")
    );

    // A syntax error on line 8, column 3 (the missing comma before `resource`).
    let broken = write(
        dir.path(),
        "broken.cedar",
        "@id(\"a\")\npermit(principal, action == Action::\"GET\", resource);\n\n\
         @id(\"b\")\nforbid(\n  principal,\n  action == Action::\"GET\"\n  resource\n);\n",
    )?;
    let out = cli_sync(None, &["policy", "validate", &broken])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr.contains(&format!("{broken} does not parse")),
        "{out:?}"
    );
    // miette: "x FILE:8:3: unexpected token `resource`" and the snippet header "[FILE:8:3]".
    assert!(
        out.stderr
            .contains(&format!("{broken}:8:3: unexpected token `resource`")),
        "{out:?}"
    );
    assert!(out.stderr.contains(&format!("[{broken}:8:3]")), "{out:?}");

    // Against a schema: a type error on line 5, column 8.
    let schema = write(dir.path(), "schema.cedarschema", SCHEMA)?;
    let ill = write(
        dir.path(),
        "ill.cedar",
        "@id(\"a\")\npermit(principal, action == Action::\"GET\", resource);\n\
         @id(\"b\")\npermit(principal, action == Action::\"GET\", resource)\n\
         when { principal.dept == 3 };\n",
    )?;
    let out = cli_sync(None, &["policy", "validate", &ill])?;
    assert_eq!(out.code, 0, "without a schema it parses: {out:?}");
    let out = cli_sync(None, &["policy", "validate", &ill, "--schema", &schema])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("{ill} does not validate against the schema")),
        "{out:?}"
    );
    assert!(out.stderr.contains(&format!("[{ill}:5:8]")), "{out:?}");
    // (miette wraps the message to its width; the start is on the first line)
    assert!(
        out.stderr.contains("the types Long and String are not"),
        "{out:?}"
    );
    // The policy is named by its @id, not by Cedar's positional id.
    assert!(out.stderr.contains("for policy `b`"), "{out:?}");
    assert!(!out.stderr.contains("policy1"), "{out:?}");
    // A schema that does not parse is named by its file.
    let bad_schema = write(
        dir.path(),
        "bad.cedarschema",
        "entity User;
entity {",
    )?;
    let out = cli_sync(None, &["policy", "validate", &ill, "--schema", &bad_schema])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains(&format!("[{bad_schema}:2:")), "{out:?}");
    // The good file validates against the same schema.
    let out = cli_sync(None, &["policy", "validate", &good, "--schema", &schema])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("2 policies parse and validate against the schema"),
        "{out:?}"
    );
    // A file that cannot be read is bad input, not an invalid policy.
    let missing = path(&dir.path().join("nope.cedar"))?.to_owned();
    let out = cli_sync(None, &["policy", "validate", &missing])?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("cannot read"), "{out:?}");
    Ok(())
}
