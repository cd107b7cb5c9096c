//! The command line: policies, schemas, tenants and entities stored, listed and removed.

use super::*;

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
