//! The authorization half: HTTP → Cedar mapping (route table, context, static entities),
//! decision fixtures, the default schema, tenants, dry run and shadow bundles, and bundle
//! replacement that keeps the last good bundle.

use std::error::Error;

use cedar_policy::{PolicySet, Schema, ValidationMode, Validator};
use harness::devkeys::{DevIssuer, now};
use portcullis_core::authz::authorizer::HttpRequest;
use portcullis_core::{BundleWire, DecisionError, Engine, StaticRequest, Verdict};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn Error>>;

const SCHEMA: &str = include_str!("../../schema/portcullis.cedarschema");

const POLICIES: &str = r#"
@id("read")
permit (principal is User, action == Action::"GET", resource);

@id("own-orders")
permit (principal, action in [Action::"ListOrders", Action::"CreateOrder"], resource)
when { resource == principal };

@id("staff-area")
permit (principal in Group::"staff", action, resource)
when { context.path like "/staff/*" };

@id("no-writes-from-outside")
forbid (principal, action, resource)
when { context.method != "GET" && context has source && !context.source.isInRange(ip("10.0.0.0/8")) };

@id("maintenance-header")
forbid (principal, action, resource)
when { context.headers has "x-maintenance" && context.headers["x-maintenance"] == "on" };

@id("preview-query")
permit (principal is Anonymous, action == Action::"GET", resource == Path::"/preview")
when { context.query has "token" && context.query["token"] == "open" };
"#;

/// Static entities: admins are a subgroup of staff (the hierarchy only the bundle knows).
fn entities() -> Value {
    json!([
        {"uid": {"type": "Group", "id": "admins"}, "attrs": {}, "parents": [{"type": "Group", "id": "staff"}]},
        {"uid": {"type": "Group", "id": "staff"}, "attrs": {}, "parents": []},
    ])
}

/// An engine with this file's bundle, route table and context inputs; `extra` overrides
/// configuration keys.
pub(crate) fn engine_with(issuer: &DevIssuer, extra: Value) -> Result<Engine, Box<dyn Error>> {
    let mut cfg = harness::demo::plugin_config(issuer);
    let o = cfg.as_object_mut().ok_or("config")?;
    o.insert(
        "bundle".into(),
        json!({"version": 7, "policies": POLICIES, "entities": entities()}),
    );
    o.insert(
        "request".into(),
        json!({
            "routes": [
                {"methods": ["GET"], "path": "/users/{id}/orders", "action": "ListOrders", "resource": "User::\"{id}\""},
                {"methods": ["POST"], "path": "/users/{id}/orders", "action": "CreateOrder", "resource": "User::\"{id}\""},
            ],
            "contextHeaders": ["x-maintenance"],
            "contextQuery": ["token"],
        }),
    );
    o.insert(
        "routes".into(),
        json!([{"path": "/preview", "auth": "optional"}]),
    );
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            o.insert(k.clone(), v.clone());
        }
    }
    Ok(Engine::from_json(cfg.to_string().as_bytes())?)
}

/// One fixture: who asks what, and the expected decision with its determining policies.
struct Case {
    name: &'static str,
    /// `None`: no token.
    user: Option<(&'static str, &'static [&'static str])>,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    source: Option<&'static str>,
    allow: bool,
    policies: &'static [&'static str],
}

#[test]
fn decision_fixtures() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let e = engine_with(&issuer, json!({}))?;
    let cases = [
        Case {
            name: "bob reads",
            user: Some(("bob", &[])),
            method: "GET",
            path: "/api/x",
            headers: &[],
            source: None,
            allow: true,
            policies: &["read"],
        },
        Case {
            name: "bob lists his own orders (route table: resource User::\"bob\")",
            user: Some(("bob", &[])),
            method: "GET",
            path: "/users/bob/orders",
            headers: &[],
            source: None,
            allow: true,
            policies: &["own-orders"],
        },
        Case {
            name: "bob lists alice's orders",
            user: Some(("bob", &[])),
            method: "GET",
            path: "/users/alice/orders",
            headers: &[],
            source: None,
            allow: false,
            policies: &[],
        },
        Case {
            name: "bob creates an order from inside",
            user: Some(("bob", &[])),
            method: "POST",
            path: "/users/bob/orders",
            headers: &[],
            source: Some("10.1.2.3:4000"),
            allow: true,
            policies: &["own-orders"],
        },
        Case {
            name: "bob creates an order from outside: forbid wins",
            user: Some(("bob", &[])),
            method: "POST",
            path: "/users/bob/orders",
            headers: &[],
            source: Some("203.0.113.9:4000"),
            allow: false,
            policies: &["no-writes-from-outside"],
        },
        Case {
            name: "admin in staff area through the group hierarchy",
            user: Some(("alice", &["admins"])),
            method: "DELETE",
            path: "/staff/rota",
            headers: &[],
            source: Some("10.0.0.1:1"),
            allow: true,
            policies: &["staff-area"],
        },
        Case {
            name: "no group, no staff area",
            user: Some(("carol", &["guests"])),
            method: "DELETE",
            path: "/staff/rota",
            headers: &[],
            source: Some("10.0.0.1:1"),
            allow: false,
            policies: &[],
        },
        Case {
            name: "maintenance header forbids even reads",
            user: Some(("bob", &[])),
            method: "GET",
            path: "/api/x",
            headers: &[("x-maintenance", "on")],
            source: None,
            allow: false,
            policies: &["maintenance-header"],
        },
        Case {
            name: "anonymous preview with the query token",
            user: None,
            method: "GET",
            path: "/preview?token=open",
            headers: &[],
            source: None,
            allow: true,
            policies: &["preview-query"],
        },
        Case {
            name: "anonymous preview without it",
            user: None,
            method: "GET",
            path: "/preview?token=closed",
            headers: &[],
            source: None,
            allow: false,
            policies: &[],
        },
    ];
    // Tokens made once, so that both passes carry the same ones.
    let tokens: Vec<Option<String>> = cases
        .iter()
        .map(|c| c.user.map(|(sub, groups)| issuer.token(sub, groups)))
        .collect();
    // The second pass is answered from the decision cache, and must decide alike.
    for pass in 0..2 {
        for (c, token) in cases.iter().zip(&tokens) {
            let mut req =
                StaticRequest::new(c.method, c.path).with_header(":authority", "api.example.com");
            if let Some(token) = token {
                req = req.with_bearer(token);
            }
            for (k, v) in c.headers {
                req = req.with_header(k, v);
            }
            if let Some(s) = c.source {
                req = req.with_source(s);
            }
            let out = e.check(&req, now());
            let want = if c.allow {
                Verdict::Allow
            } else {
                Verdict::Forbidden
            };
            assert_eq!(out.verdict, want, "{}: {out:?}", c.name);
            assert_eq!(out.policies, c.policies, "{}", c.name);
            assert!(out.errors.is_empty(), "{}: {:?}", c.name, out.errors);
            assert_eq!(
                (out.policy_set.as_str(), out.bundle_version),
                ("default", 7),
                "{}",
                c.name
            );
        }
        let stats = e.decision_stats();
        let n = u64::try_from(cases.len())?;
        assert_eq!((stats.hits, stats.misses), (n * pass, n), "pass {pass}");
    }
    Ok(())
}

#[test]
fn default_schema_validates_the_mapping() -> TestResult {
    let schema = Schema::from_cedarschema_str(SCHEMA)
        .map_err(|e| format!("{e:?}"))?
        .0;
    let validator = Validator::new(schema.clone());
    // The demo policies validate in strict mode.
    let demo: PolicySet = include_str!("../../../../envoy/demo-policies.cedar").parse()?;
    let r = validator.validate(&demo, ValidationMode::Strict);
    assert!(
        r.validation_passed(),
        "{:?}",
        r.validation_errors().collect::<Vec<_>>()
    );
    // Not vacuous: an undeclared context attribute and a wrong type are reported.
    for bad in [
        r#"permit (principal, action, resource) when { context.nope == 1 };"#,
        r#"permit (principal, action, resource) when { context.time == "noon" };"#,
        r#"permit (principal, action, resource) when { principal.age > 3 };"#,
    ] {
        let set: PolicySet = bad.parse()?;
        assert!(
            !validator
                .validate(&set, ValidationMode::Strict)
                .validation_passed(),
            "{bad}"
        );
    }
    // The context the filter builds for a real request conforms to the schema.
    let issuer = DevIssuer::generate()?;
    let e = Engine::from_json(harness::demo::plugin_config(&issuer).to_string().as_bytes())?;
    let sets = e.policy_sets();
    let policy = &sets.default_set().engine;
    let claims = json!({"iss": issuer.issuer, "sub": "bob", "exp": 2_000_000_000u64, "iat": 1_900_000_000u64, "groups": ["staff"]});
    let claims = claims.as_object().ok_or("claims")?;
    let http = HttpRequest {
        method: "GET",
        path: "/api/x?y=1",
        host: "api.example.com",
        headers: &[],
        query: &[],
        source: Some("192.0.2.1"),
        time: 1_900_000_100,
    };
    policy.cedar_request(
        Some("bob"),
        &portcullis_core::authz::authorizer::claims_value(claims),
        http,
        Some(&schema),
    )?;
    let anonymous = HttpRequest {
        source: None,
        ..http
    };
    policy.cedar_request(
        None,
        &portcullis_core::authz::authorizer::claims_value(&serde_json::Map::new()),
        anonymous,
        Some(&schema),
    )?;
    // A bundle carrying the schema is validated when it loads.
    let mut cfg = harness::demo::plugin_config(&issuer);
    cfg["bundle"]["schema"] = json!(SCHEMA);
    Engine::from_json(cfg.to_string().as_bytes())?;
    cfg["bundle"]["policies"] =
        json!("permit (principal, action, resource) when { context.nope };");
    let err = Engine::from_json(cfg.to_string().as_bytes())
        .err()
        .ok_or("accepted")?;
    assert!(err.to_string().contains("do not validate"), "{err}");
    Ok(())
}

#[test]
fn tenants_by_host_and_by_claim() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let only = |id: &str, version: u64| json!({"version": version, "policies": format!("@id(\"{id}-all\") permit (principal, action, resource);")});
    let e = engine_with(
        &issuer,
        json!({
            "tenantClaim": "tenant",
            "tenants": [
                {"id": "acme", "hosts": ["acme.example.com", "*.acme.example.com"], "bundle": only("acme", 3)},
                {"id": "globex", "bundle": only("globex", 4)},
            ],
        }),
    )?;
    let t = now();
    let token = |tenant: Option<&str>| {
        let mut claims =
            json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "exp": t + 600});
        if let Some(x) = tenant {
            claims["tenant"] = json!(x);
        }
        issuer.sign(&claims)
    };
    let ask = |host: &str, tok: &str| {
        e.check(
            &StaticRequest::new("DELETE", "/x")
                .with_header(":authority", host)
                .with_bearer(tok),
            t,
        )
    };
    // By host (with port, any case): acme's set, whatever the claim says.
    for host in ["acme.example.com", "API.acme.example.com:8443"] {
        let out = ask(host, &token(Some("globex")));
        assert_eq!(
            (out.verdict, out.policy_set.as_str(), out.bundle_version),
            (Verdict::Allow, "acme", 3)
        );
        assert_eq!(out.policies, ["acme-all"]);
    }
    // By claim on another host.
    let out = ask("api.example.com", &token(Some("globex")));
    assert_eq!(
        (out.verdict, out.policy_set.as_str(), out.bundle_version),
        (Verdict::Allow, "globex", 4)
    );
    // No claim: the default set (DELETE is not allowed there).
    let out = ask("api.example.com", &token(None));
    assert_eq!(
        (out.verdict, out.policy_set.as_str()),
        (Verdict::Forbidden, "default")
    );
    // A tenant nobody configured: denied, never judged by another tenant's policies.
    let out = ask("api.example.com", &token(Some("initech")));
    assert_eq!(out.verdict, Verdict::Forbidden);
    assert!(
        out.errors
            .contains(&DecisionError::UnknownTenant("initech".into())),
        "{out:?}"
    );
    // Bad tenant configuration is refused.
    for bad in [
        json!({"tenants": [{"id": "default", "bundle": only("x", 1)}]}),
        json!({"tenants": [{"id": "a", "bundle": only("x", 1)}, {"id": "a", "bundle": only("y", 1)}]}),
        json!({"tenants": [{"id": "a", "hosts": ["bad host"], "bundle": only("x", 1)}]}),
        json!({"tenants": [{"id": "a", "bundle": {"policies": "permit ("}}]}),
    ] {
        assert!(engine_with(&issuer, bad.clone()).is_err(), "{bad}");
    }
    Ok(())
}

#[test]
fn dry_run_and_shadow_bundles_enforce_nothing_new() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let bob = issuer.token("bob", &[]);
    let delete = StaticRequest::new("DELETE", "/api/x").with_bearer(&bob);
    let get = StaticRequest::new("GET", "/api/x").with_bearer(&bob);
    // Dry run: the DELETE the policies deny goes through, recorded as a would-be deny.
    let e = engine_with(&issuer, json!({"dryRun": true}))?;
    let out = e.check(&delete, now());
    assert_eq!((out.verdict, out.dry_run), (Verdict::Allow, Some(false)));
    let out = e.check(&get, now());
    assert_eq!(
        (out.verdict, out.dry_run, out.policies.as_slice()),
        (Verdict::Allow, Some(true), &["read".to_owned()][..])
    );
    // Shadow: the bundle in force decides; the candidate's decision is recorded.
    let e = engine_with(
        &issuer,
        json!({"shadowBundle": {"version": 8,
        "policies": "@id(\"everything\") permit (principal, action, resource);"}}),
    )?;
    let out = e.check(&delete, now());
    assert_eq!(out.verdict, Verdict::Forbidden);
    assert_eq!(out.dry_run, None);
    assert_eq!(out.shadow, Some((true, vec!["everything".to_owned()])));
    let out = e.check(&get, now());
    assert_eq!(
        (out.verdict, out.shadow),
        (Verdict::Allow, Some((true, vec!["everything".to_owned()])))
    );
    Ok(())
}

#[test]
fn an_invalid_bundle_keeps_the_last_good_one() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let e = engine_with(&issuer, json!({}))?;
    let del = StaticRequest::new("DELETE", "/api/x").with_bearer(&issuer.token("bob", &[]));
    assert_eq!(e.check(&del, now()).verdict, Verdict::Forbidden);
    for bad in [
        json!({"version": 8, "policies": "permit (principal, action"}),
        json!({"version": 8, "policies": "permit (principal, action, resource);", "schema": SCHEMA,
               "entities": [{"uid": {"type": "User", "id": "x"}, "attrs": {"age": 3}, "parents": []}]}),
        json!({"version": 8, "policies": "permit (principal, action, resource) when { context.nope };", "schema": SCHEMA}),
    ] {
        let wire: BundleWire = serde_json::from_value(bad.clone())?;
        assert!(e.replace_bundle("default", &wire).is_err(), "{bad}");
        assert_eq!(e.bundle_version(), 7, "{bad}");
        assert_eq!(e.check(&del, now()).verdict, Verdict::Forbidden, "{bad}");
    }
    let good: BundleWire = serde_json::from_value(
        json!({"version": 9, "policies": "permit (principal, action, resource);"}),
    )?;
    assert_eq!(e.replace_bundle("default", &good)?, 9);
    assert_eq!(e.check(&del, now()).verdict, Verdict::Allow);
    assert!(e.replace_bundle("nobody", &good).is_err());
    Ok(())
}

/// A request that counts how often the client address is asked for.
struct Counting {
    inner: StaticRequest,
    asked: std::cell::Cell<u32>,
}

impl portcullis_core::RequestView for Counting {
    fn header(&self, name: &str) -> Option<&str> {
        self.inner.header(name)
    }
    fn source_address(&self) -> Option<String> {
        self.asked.set(self.asked.get() + 1);
        self.inner.source_address()
    }
}

#[test]
fn the_client_address_is_asked_for_only_when_a_policy_can_read_it() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let req = Counting {
        inner: StaticRequest::new("GET", "/api/x")
            .with_bearer(&issuer.token("bob", &[]))
            .with_source("10.0.0.1:5"),
        asked: std::cell::Cell::new(0),
    };
    // No policy of the demo bundle reads `context.source`.
    let demo = Engine::from_json(harness::demo::plugin_config(&issuer).to_string().as_bytes())?;
    assert_eq!(demo.check(&req, now()).verdict, Verdict::Allow);
    assert_eq!(req.asked.get(), 0);
    // This file's bundle does (`no-writes-from-outside`).
    let e = engine_with(&issuer, json!({}))?;
    assert_eq!(e.check(&req, now()).verdict, Verdict::Allow);
    assert_eq!(req.asked.get(), 1);
    // A policy that reads it through an escaped name reads it all the same.
    let escaped = engine_with(
        &issuer,
        json!({"bundle": {"version": 1, "policies": r#"permit (principal, action, resource)
            unless { context["\u{73}ource"].isLoopback() };"#}}),
    )?;
    assert_eq!(escaped.check(&req, now()).verdict, Verdict::Allow);
    assert_eq!(req.asked.get(), 2);
    Ok(())
}
