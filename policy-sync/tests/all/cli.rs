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

// ---------------------------------------------------------------------------------------------
// migrate, keygen

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

// ---------------------------------------------------------------------------------------------
// policy validate (offline)

const SCHEMA: &str = r#"entity Group;
entity User in [Group] { dept: String };
entity Path;
action "GET" appliesTo { principal: User, resource: Path, context: {} };
"#;

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

// ---------------------------------------------------------------------------------------------
// policy put / list / get / rm, schema, tenants

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_stored_listed_and_removed() -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let policies = |tenant: &'static str| {
        let pool = pool.clone();
        async move {
            strings(
                &pool,
                &format!("SELECT id FROM policies WHERE tenant = '{tenant}' ORDER BY id"),
            )
            .await
        }
    };

    // Several policies, each named by @id.
    let two = write(
        d,
        "two.cedar",
        "@id(\"read\")\npermit(principal, action == Action::\"GET\", resource);\n\n\
         @id(\"no-admin\")\nforbid(principal, action == Action::\"GET\", resource == Path::\"/admin\");\n",
    )?;
    let out = cli(&url, &["policy", "put", &two]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "stored in tenant default: read, no-admin"
    );
    assert_eq!(policies("default").await?, ["no-admin", "read"]);
    // The same file again changes nothing.
    let out = cli(&url, &["policy", "put", &two]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with("unchanged in tenant default"),
        "{out:?}"
    );

    // One policy named by --id, stored disabled.
    let one = write(
        d,
        "one.cedar",
        "permit(principal, action == Action::\"GET\", resource == Path::\"/health\");\n",
    )?;
    let out = cli(
        &url,
        &["policy", "put", &one, "--id", "health", "--disabled"],
    )
    .await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "stored in tenant default: health");
    let out = cli(&url, &["policy", "list"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "health\tdisabled\nno-admin\tenabled\nread\tenabled\n"
    );
    let out = cli(&url, &["policy", "get", "health"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "// disabled\npermit(principal, action == Action::\"GET\", resource == Path::\"/health\");"
    );
    let out = cli(&url, &["policy", "get", "read"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("permit(principal, action == Action::\"GET\", resource);"),
        "{out:?}"
    );

    // Refused files leave everything as it was.
    let before = cli(&url, &["policy", "list"]).await?.stdout;
    let unnamed = write(
        d,
        "unnamed.cedar",
        "@id(\"x\")\npermit(principal, action, resource);\nforbid(principal, action, resource);\n",
    )?;
    let out = cli(&url, &["policy", "put", &unnamed]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("{unnamed}: a policy has no @id annotation")),
        "{out:?}"
    );
    let out = cli(&url, &["policy", "put", &unnamed, "--id", "y"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("holds 2 policies"), "{out:?}");
    let lone = write(d, "lone.cedar", "permit(principal, action, resource);\n")?;
    let out = cli(&url, &["policy", "put", &lone]).await?;
    assert_eq!(out.code, 2, "a single policy needs @id or --id: {out:?}");
    let empty = write(d, "empty.cedar", "// nothing\n")?;
    let out = cli(&url, &["policy", "put", &empty, "--id", "e"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("holds no policy"), "{out:?}");
    let syntax = write(
        d,
        "syntax.cedar",
        "@id(\"s\")\npermit(principal action, resource);\n",
    )?;
    let out = cli(&url, &["policy", "put", &syntax]).await?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains(&format!("[{syntax}:2:")), "{out:?}");
    // --id that contradicts the policy's own @id.
    let named = write(
        d,
        "named.cedar",
        "@id(\"z\")\npermit(principal, action, resource);\n",
    )?;
    let out = cli(&url, &["policy", "put", &named, "--id", "other"]).await?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("differs from the policy id"), "{out:?}");
    assert_eq!(cli(&url, &["policy", "list"]).await?.stdout, before);
    assert_eq!(count(&pool, "SELECT count(*) FROM policies").await?, 3);

    // A schema, then a policy that does not type-check against it: refused whole.
    let schema = write(d, "schema.cedarschema", SCHEMA)?;
    let out = cli(&url, &["schema", "put", &schema]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "schema of tenant default stored");
    let out = cli(&url, &["schema", "get"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), SCHEMA.trim());
    let mixed = write(
        d,
        "mixed.cedar",
        "@id(\"fine\")\npermit(principal, action == Action::\"GET\", resource == Path::\"/ok\");\n\
         @id(\"ill\")\npermit(principal, action == Action::\"GET\", resource)\n\
         when { principal.dept == 3 };\n",
    )?;
    let out = cli(&url, &["policy", "put", &mixed]).await?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("refused: the change is invalid; nothing was changed"),
        "{out:?}"
    );
    // Positioned in the stored policy's text (line 3 of `@id("ill")\npermit(...)\nwhen ...`).
    assert!(out.stderr.contains("policy \"ill\":3:8:"), "{out:?}");
    assert!(out.stderr.contains("[policy \"ill\":3:8]"), "{out:?}");
    assert_eq!(cli(&url, &["policy", "list"]).await?.stdout, before);
    assert_eq!(policies("default").await?, ["health", "no-admin", "read"]);
    // The same file is also refused offline against the tenant's stored schema.
    let out = cli(&url, &["policy", "validate", &mixed, "--tenant", "default"]).await?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains(&format!("[{mixed}:5:8]")), "{out:?}");

    // Tenants: an unknown one is not found; a new one takes policies of its own.
    for args in [
        vec!["policy", "list", "--tenant", "nope"],
        vec!["policy", "put", two.as_str(), "--tenant", "nope"],
        vec!["policy", "get", "read", "--tenant", "nope"],
    ] {
        let out = cli(&url, &args).await?;
        assert_eq!(out.code, 4, "{args:?}: {out:?}");
        assert!(out.stderr.contains("tenant \"nope\" not found"), "{out:?}");
    }
    let out = cli(&url, &["tenant", "add", "t1"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "tenant t1 created");
    let out = cli(&url, &["tenant", "add", "t1"]).await?;
    assert_eq!(out.stdout.trim(), "tenant t1 exists already", "{out:?}");
    assert_eq!(
        cli(&url, &["tenant", "list"]).await?.stdout,
        "default\nt1\n"
    );
    let out = cli(
        &url,
        &["policy", "put", &one, "--id", "t1-health", "--tenant", "t1"],
    )
    .await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "stored in tenant t1: t1-health");
    assert_eq!(
        cli(&url, &["policy", "list", "--tenant", "t1"])
            .await?
            .stdout,
        "t1-health\tenabled\n"
    );
    assert_eq!(policies("t1").await?, ["t1-health"]);
    assert_eq!(policies("default").await?, ["health", "no-admin", "read"]);

    // rm, and what is not there.
    let out = cli(&url, &["policy", "rm", "health"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "policy health removed from tenant default"
    );
    assert_eq!(policies("default").await?, ["no-admin", "read"]);
    for args in [["policy", "rm", "health"], ["policy", "get", "health"]] {
        let out = cli(&url, &args).await?;
        assert_eq!(out.code, 4, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("policy \"health\" not found"),
            "{out:?}"
        );
    }
    assert_eq!(policies("default").await?, ["no-admin", "read"]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// entities

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_stored_listed_and_removed() -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let alice = json!({"uid": {"type": "User", "id": "alice"}, "attrs": {"dept": "eng"},
                       "parents": [{"type": "Group", "id": "staff"}]});
    let staff = json!({"uid": {"type": "Group", "id": "staff"}, "attrs": {}, "parents": []});
    let file = write(d, "entities.json", &json!([alice, staff]).to_string())?;
    let out = cli(&url, &["entity", "put", &file]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "2 entities stored in tenant default");
    let uids = "SELECT uid FROM entities ORDER BY uid";
    assert_eq!(
        strings(&pool, uids).await?,
        ["Group::\"staff\"", "User::\"alice\""]
    );
    // One object (not an array) is one entity.
    let bob = json!({"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": []});
    let single = write(d, "bob.json", &bob.to_string())?;
    let out = cli(&url, &["entity", "put", &single]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "1 entities stored in tenant default");

    let out = cli(&url, &["entity", "list"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let listed: Vec<Value> = out
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(listed, [staff.clone(), alice.clone(), bob.clone()]);

    // Invalid entities: nothing of the file is stored.
    let bad = write(
        d,
        "bad.json",
        &json!([
            {"uid": {"type": "User", "id": "carol"}, "attrs": {}, "parents": []},
            {"uid": {"type": "User"}, "attrs": {}, "parents": []},
        ])
        .to_string(),
    )?;
    let out = cli(&url, &["entity", "put", &bad]).await?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("refused: the change is invalid; nothing was changed"),
        "{out:?}"
    );
    let not_json = write(d, "not.json", "{\"uid\": ")?;
    let out = cli(&url, &["entity", "put", &not_json]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("is not JSON"), "{out:?}");
    assert_eq!(
        strings(&pool, uids).await?,
        ["Group::\"staff\"", "User::\"alice\"", "User::\"bob\""]
    );

    let out = cli(&url, &["entity", "rm", "User::\"alice\""]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "entity User::\"alice\" removed");
    assert_eq!(
        strings(&pool, uids).await?,
        ["Group::\"staff\"", "User::\"bob\""]
    );
    let out = cli(&url, &["entity", "rm", "User::\"alice\""]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains("entity User::\"alice\" not found"),
        "{out:?}"
    );
    let out = cli(&url, &["entity", "list", "--tenant", "nope"]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// issuers and keys

/// A 1024-bit RSA modulus, generated once with `openssl genrsa 1024` and converted to
/// base64url (`openssl rsa -noout -modulus | xxd -r -p | base64 | tr '+/' '-_' | tr -d =`).
/// The `rsa` crate is not a dependency of policy-sync, and a key this weak is the point.
const RSA_1024_N: &str = "oikfZChH8lqW0A-YVnfUIk9gUtbvi3S3r0nYQnOP0EmHxkbt1t8qquyPOdyb8LYPFfmCD4rV2lCxmkzdyEZeSyRBMBCY0LQxHUexLXgdTe85obKCRB6MxyOgYnH7o6prwkDPWUCDds8ey2692aaggGkFpn3vtp2QKkKSHU3O8rE";

fn ed25519_jwk(seed: u8, kid: Option<&str>) -> Value {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
                         "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())});
    if let (Some(kid), Some(o)) = (kid, jwk.as_object_mut()) {
        o.insert("kid".into(), kid.into());
    }
    jwk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_and_keys() -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let iss = "https://issuer.example";

    let out = cli(
        &url,
        &[
            "issuer",
            "add",
            iss,
            "--audience",
            "a",
            "--jwks-uri",
            "http://127.0.0.1:1/jwks",
            "--settings",
            r#"{"requiredClaims": ["email"]}"#,
        ],
    )
    .await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), format!("issuer {iss} stored"));
    let out = cli(&url, &["issuer", "list"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let listed: Vec<Value> = out
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(listed.len(), 1, "{out:?}");
    assert_eq!(listed[0]["issuer"], iss);
    assert_eq!(listed[0]["audiences"], json!(["a"]));
    assert_eq!(listed[0]["jwksUri"], "http://127.0.0.1:1/jwks");
    assert_eq!(listed[0]["settings"], json!({"requiredClaims": ["email"]}));
    assert_eq!(listed[0]["minRefreshS"], 60);

    // Bad settings: refused, the stored issuer unchanged.
    for (settings, want) in [
        ("{not json", "--settings is not JSON"),
        (r#"{"nope": 1}"#, "settings: unknown field `nope`"),
        (r#"{"jwks": {"keys": []}}"#, "settings cannot set \"jwks\""),
        ("[1]", "settings must be an object"),
    ] {
        let out = cli(&url, &["issuer", "add", iss, "--settings", settings]).await?;
        assert_eq!(out.code, 2, "{settings}: {out:?}");
        assert!(out.stderr.contains(want), "{settings}: {out:?}");
    }
    let out = cli(&url, &["issuer", "add", iss, "--jwks-uri", "ftp://x/jwks"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("is not an http(s) URL"), "{out:?}");
    assert_eq!(
        strings(&pool, "SELECT settings::text FROM issuers").await?,
        [r#"{"requiredClaims": ["email"]}"#]
    );
    assert_eq!(
        strings(&pool, "SELECT jwks_uri FROM issuers").await?,
        ["http://127.0.0.1:1/jwks"]
    );

    // Keys.
    let good = write(d, "k1.json", &ed25519_jwk(3, Some("k1")).to_string())?;
    let out = cli(&url, &["key", "add", "--issuer", iss, &good]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), format!("key k1 of issuer {iss} stored"));
    let no_kid = write(d, "nokid.json", &ed25519_jwk(4, None).to_string())?;
    let out = cli(&url, &["key", "add", "--issuer", iss, &no_kid]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("an uploaded key needs a kid"),
        "{out:?}"
    );
    let weak = write(
        d,
        "weak.json",
        &json!({"kty": "RSA", "alg": "RS256", "kid": "weak", "n": RSA_1024_N, "e": "AQAB"})
            .to_string(),
    )?;
    let out = cli(&url, &["key", "add", "--issuer", iss, &weak]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("RSA modulus of 1024 bits is below the 2048-bit minimum"),
        "{out:?}"
    );
    let not_jwk = write(d, "notjwk.json", r#"{"hello": "world"}"#)?;
    let out = cli(&url, &["key", "add", "--issuer", iss, &not_jwk]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    let out = cli(&url, &["key", "add", "--issuer", "https://nobody", &good]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains("issuer \"https://nobody\" not found"),
        "{out:?}"
    );
    assert_eq!(
        strings(
            &pool,
            "SELECT issuer || ' ' || kid || ' ' || origin FROM keys"
        )
        .await?,
        [format!("{iss} k1 uploaded")]
    );

    let out = cli(&url, &["key", "list"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let line = out.stdout.trim();
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields.len(), 4, "{out:?}");
    assert_eq!(fields[..3], [iss, "k1", "uploaded"]);
    assert_eq!(
        serde_json::from_str::<Value>(fields[3])?,
        ed25519_jwk(3, Some("k1"))
    );
    let out = cli(&url, &["key", "list", "--issuer", "https://nobody"]).await?;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");

    let out = cli(&url, &["key", "rm", "--issuer", iss, "k1"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), format!("key k1 of issuer {iss} removed"));
    assert_eq!(count(&pool, "SELECT count(*) FROM keys").await?, 0);
    let out = cli(&url, &["key", "rm", "--issuer", iss, "k1"]).await?;
    assert_eq!(out.code, 4, "{out:?}");

    let out = cli(&url, &["issuer", "rm", iss]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM issuers").await?, 0);
    let out = cli(&url, &["issuer", "rm", iss]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// API tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_work_until_revoked() -> TestResult {
    let url = support::database().await?;
    let svc = support::service(&url).await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let bundle = |token: String| {
        let req = svc
            .http
            .get(format!("{}/v1/bundles/default?wait=0", svc.base))
            .bearer_auth(token);
        async move { Ok::<u16, reqwest::Error>(req.send().await?.status().as_u16()) }
    };

    let out = cli(&url, &["token", "create", "edge-1", "--role", "filter"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let token = out.stdout.trim().to_owned();
    assert!(token.starts_with("pcs_"), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    // Stored only as its hash, with the role.
    let row = pool
        .get()
        .await?
        .query_one(
            "SELECT role, token_hash, revoked_at IS NULL FROM admin_tokens WHERE name = 'edge-1'",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "filter");
    assert_eq!(
        row.get::<_, Vec<u8>>(1),
        policy_sync::store::token_hash(&token)
    );
    assert!(row.get::<_, bool>(2));

    assert_eq!(bundle(token.clone()).await?, 200);
    // A filter token is no admin token.
    let r = svc
        .http
        .get(format!("{}/v1/admin/versions", svc.base))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 403);

    let out = cli(&url, &["token", "create", "edge-1"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr
            .contains("a token named \"edge-1\" exists already"),
        "{out:?}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM admin_tokens WHERE name = 'edge-1'"
        )
        .await?,
        1
    );
    assert_eq!(
        bundle(token.clone()).await?,
        200,
        "the first token still works"
    );

    let out = cli(&url, &["token", "revoke", "edge-1"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "token edge-1 revoked");
    assert_eq!(bundle(token.clone()).await?, 401);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM admin_tokens WHERE name = 'edge-1' AND revoked_at IS NOT NULL"
        )
        .await?,
        1
    );
    let out = cli(&url, &["token", "revoke", "edge-1"]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains("active token \"edge-1\" not found"),
        "{out:?}"
    );

    // An admin token (the default role) reaches the admin API.
    let out = cli(&url, &["token", "create", "ops"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let r = svc
        .http
        .get(format!("{}/v1/admin/versions", svc.base))
        .bearer_auth(out.stdout.trim())
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// dev-token, through to the filter engine

/// A filter engine configured from a verified document: every issuer in it with its keys,
/// and the tenant's bundle inline.
fn engine_from(doc: &BundleDocument) -> Res<Engine> {
    let config = json!({"issuers": doc.issuer_configs(), "bundle": doc.bundle});
    Ok(Engine::from_json(config.to_string().as_bytes())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_pass_the_filter() -> TestResult {
    let url = support::database().await?;
    let pool = policy_sync::db::pool(&url, 1)?;
    let dir = tempfile::tempdir()?;
    let allow_all = write(
        dir.path(),
        "all.cedar",
        "permit(principal, action, resource);\n",
    )?;
    let out = cli(&url, &["policy", "put", &allow_all, "--id", "allow-all"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let svc = support::service(&url).await?;
    let first = document_after(&svc, 0).await?;
    assert!(first.issuers.is_empty());

    let key_file = dir.path().join("dev-issuer.key");
    let kf = path(&key_file)?;
    let args = [
        "dev-token",
        "--sub",
        "bob",
        "--groups",
        "staff",
        "--key-file",
        kf,
    ];
    let out = cli(&url, &args).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("for demos and tests only"), "{out:?}");
    let token = out.stdout.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{out:?}");
    #[cfg(unix)]
    assert_eq!(mode(&key_file)?, 0o600);
    let header = jwt_part(&token, 0)?;
    let claims = jwt_part(&token, 1)?;
    let dev_key = policy_sync::signing::Signer::from_file(&key_file)?;
    let kid = format!("dev-{}", dev_key.key_id());
    assert_eq!(header, json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}));
    assert_eq!(claims["iss"], policy_sync::dev_token::DEV_ISSUER);
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["aud"], "portcullis-demo");
    assert_eq!(claims["groups"], json!(["staff"]));
    let (iat, exp) = (
        claims["iat"].as_u64().ok_or("iat")?,
        claims["exp"].as_u64().ok_or("exp")?,
    );
    assert_eq!(exp - iat, 3600);
    // The dev issuer and its key are in the database.
    assert_eq!(
        strings(
            &pool,
            "SELECT issuer || ' ' || audiences::text FROM issuers"
        )
        .await?,
        [format!(
            "{} {{portcullis-demo}}",
            policy_sync::dev_token::DEV_ISSUER
        )]
    );
    assert_eq!(
        strings(&pool, "SELECT kid FROM keys").await?,
        [kid.as_str()]
    );

    // The service publishes the new key; the document checks out with the service's key.
    let doc = document_where(&svc, "default", first.version, |d| {
        d.issuers.iter().any(|i| {
            i.issuer == policy_sync::dev_token::DEV_ISSUER
                && i.jwks
                    .keys
                    .iter()
                    .any(|k| k.kid.as_deref() == Some(kid.as_str()))
        })
    })
    .await?;
    let engine = engine_from(&doc)?;
    let allowed = engine.check(
        &StaticRequest::new("GET", "/anything").with_bearer(&token),
        now(),
    );
    assert_eq!(allowed.verdict, Verdict::Allow, "{allowed:?}");
    assert_eq!(allowed.principal.as_deref(), Some("User::\"bob\""));
    assert_eq!(allowed.policies, ["allow-all"]);

    // A changed payload under the same signature is refused; so is no token at all.
    let mut forged = claims.clone();
    forged["sub"] = "mallory".into();
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged.to_string()),
        parts[2]
    );
    let refused = engine.check(
        &StaticRequest::new("GET", "/anything").with_bearer(&tampered),
        now(),
    );
    assert!(
        matches!(refused.verdict, Verdict::Unauthenticated(_)),
        "{refused:?}"
    );
    let anonymous = engine.check(&StaticRequest::new("GET", "/anything"), now());
    assert!(
        matches!(anonymous.verdict, Verdict::Unauthenticated(_)),
        "{anonymous:?}"
    );

    // Again with the same key file: the same key, nothing new registered.
    let out = cli(&url, &args).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let again = out.stdout.trim();
    assert_eq!(jwt_part(again, 0)?["kid"], kid.as_str());
    assert_eq!(count(&pool, "SELECT count(*) FROM keys").await?, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM issuers").await?, 1);
    let ok = engine.check(&StaticRequest::new("GET", "/x").with_bearer(again), now());
    assert_eq!(ok.verdict, Verdict::Allow, "{ok:?}");

    // A bad --ttl or --claim is bad usage.
    let out = cli(&url, &["dev-token", "--key-file", kf, "--ttl", "soon"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--ttl"), "{out:?}");
    let out = cli(&url, &["dev-token", "--key-file", kf, "--claim", "novalue"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// versions, rollback, bundle show

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

// ---------------------------------------------------------------------------------------------
// serve

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
