//! Cost of one Cedar decision as the bundle grows: `Authorizer::is_authorized` on the whole set
//! against `PolicyIndex::is_authorized` (only the policies whose scope can match), for bundles
//! of 10, 1,000 and 10,000 policies of a realistic shape: a few role policies and forbids with
//! conditions, the rest per-user grants on one document each. The request is allowed by one
//! per-user grant; every iteration asserts the decision and its reason. At the end a table
//! gives the means and the 10,000/10 ratio of each. A setup step that fails (a bundle that does
//! not compile, a refused configuration, no built module) ends the run with an error.

mod common;

use std::error::Error;
use std::hint::black_box;

use std::time::Instant;

use criterion::Criterion;
use portcullis_core::authz::index::PolicyIndex;
use portcullis_core::authz::index::cedar::{
    Authorizer, Context, Decision, Entities, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression,
};
use portcullis_core::bundle::{Bundle, BundleWire, id_annotation};
use serde_json::json;

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// Role policies and forbids, then per-user grants up to `n` policies in all.
fn wire(n: usize) -> Option<BundleWire> {
    let mut policies = String::from(
        r#"@id("admins") permit(principal in Group::"admins", action, resource);
@id("staff-read") permit(principal in Group::"staff", action == Action::"GET", resource in Path::"/public");
@id("no-delete") forbid(principal, action == Action::"DELETE", resource) unless { principal in Group::"admins" };
@id("blocked") forbid(principal, action, resource) when { context has blocked && context.blocked };
@id("after-hours") forbid(principal in Group::"contractors", action, resource) when { context.hour > 20 };
"#,
    );
    for i in 0..n.checked_sub(5)? {
        policies.push_str(&format!(
            "@id(\"u{i}-doc\") permit(principal == User::\"u{i}\", action == Action::\"GET\", resource == Path::\"/docs/{i}\");\n"
        ));
    }
    let entities = json!([
        {"uid": {"type": "User", "id": "u3"}, "attrs": {}, "parents": [{"type": "Group", "id": "staff"}]},
        {"uid": {"type": "User", "id": "root"}, "attrs": {}, "parents": [{"type": "Group", "id": "admins"}]},
        {"uid": {"type": "Group", "id": "staff"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Group", "id": "admins"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Group", "id": "contractors"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Path", "id": "/docs/3"}, "attrs": {}, "parents": [{"type": "Path", "id": "/docs"}]},
    ]);
    Some(BundleWire {
        policies,
        entities,
        ..BundleWire::default()
    })
}

fn bundle(n: usize) -> Option<Bundle> {
    let bundle = Bundle::try_from(&wire(n)?).ok()?;
    (bundle.policies.len() == n).then_some(bundle)
}

/// `User::"u3"` reads `Path::"/docs/3"` at 10:00: allowed by `u3-doc` alone.
fn request() -> Option<Request> {
    let uid = |s: &str| s.parse::<EntityUid>().ok();
    let context = Context::from_pairs([
        ("hour".to_owned(), RestrictedExpression::new_long(10)),
        ("blocked".to_owned(), RestrictedExpression::new_bool(false)),
    ])
    .ok()?;
    Request::new(
        uid(r#"User::"u3""#)?,
        uid(r#"Action::"GET""#)?,
        uid(r#"Path::"/docs/3""#)?,
        context,
        None,
    )
    .ok()
}

fn cedar_policy_set(src: &str) -> Option<PolicySet> {
    src.parse().ok()
}

/// The policies of `src` as one Cedar set, named by their `@id`s as a bundle names them.
fn named_policy_set(src: &str) -> Option<PolicySet> {
    let parsed = cedar_policy_set(src)?;
    PolicySet::from_policies(
        parsed
            .policies()
            .map(|p| p.new_id(PolicyId::new(id_annotation(p).unwrap_or_default()))),
    )
    .ok()
}

fn main() -> Result<(), Box<dyn Error>> {
    let (mut c, out) = common::criterion("policies");
    let req = request().ok_or("cannot build the request")?;
    let authorizer = Authorizer::new();
    let reason = PolicyId::new("u3-doc");
    // The fixed cost of one call, and of one policy whose scope does not match.
    let empty = Entities::empty();
    let none = cedar_policy_set("").ok_or("the empty policy set does not parse")?;
    let one = cedar_policy_set(r#"permit(principal in Group::"admins", action, resource);"#)
        .ok_or("the one-policy set does not parse")?;
    c.bench_function("cedar_call/empty_set", |bch| {
        bch.iter(|| {
            let r = authorizer.is_authorized(black_box(&req), &none, &empty);
            assert_eq!(r.decision(), Decision::Deny);
        });
    });
    c.bench_function("cedar_call/one_policy", |bch| {
        bch.iter(|| {
            let r = authorizer.is_authorized(black_box(&req), &one, &empty);
            assert_eq!(r.decision(), Decision::Deny);
        });
    });
    for n in SIZES {
        let started = Instant::now();
        let b = bundle(n).ok_or_else(|| format!("cannot build the bundle of {n} policies"))?;
        eprintln!("{n} policies: bundle compiled in {:.1?}", started.elapsed());
        let index = PolicyIndex::of(&b.policies);
        let entities: &Entities = &b.entities;
        let w = wire(n).ok_or_else(|| format!("cannot build the wire bundle of {n} policies"))?;
        let whole = named_policy_set(&w.policies)
            .ok_or_else(|| format!("the {n} policies do not make one set"))?;
        eprintln!(
            "{n} policies: {:?}; the request reaches {:?}",
            index.stats(),
            index.reach(&req, entities)
        );
        c.bench_function(&format!("cedar_whole_set/{n}"), |bch| {
            bch.iter(|| {
                let r = authorizer.is_authorized(black_box(&req), &whole, entities);
                assert_eq!(r.decision(), Decision::Allow);
                assert!(r.diagnostics().reason().eq([&reason]));
            });
        });
        c.bench_function(&format!("policy_index/{n}"), |bch| {
            bch.iter(|| {
                let r = index.is_authorized(&authorizer, black_box(&req), entities);
                assert_eq!(r.decision, Decision::Allow);
                assert_eq!(r.reasons, std::slice::from_ref(&reason));
            });
        });
        // What a worker spends compiling a new version's policies (parse, name, schema,
        // entities), against Cedar's parse alone.
        c.bench_function(&format!("bundle_compile/{n}"), |bch| {
            bch.iter(|| {
                let compiled = Bundle::try_from(black_box(&w));
                assert!(compiled.as_ref().is_ok_and(|b| b.policies.len() == n));
                compiled
            });
        });
        c.bench_function(&format!("cedar_parse/{n}"), |bch| {
            bch.iter(|| {
                let parsed = black_box(&w.policies).parse::<PolicySet>().ok();
                assert!(parsed.as_ref().is_some_and(|p| p.policies().count() == n));
                parsed
            });
        });
        c.bench_function(&format!("index_build/{n}"), |bch| {
            bch.iter(|| {
                let i = PolicyIndex::of(black_box(&b.policies));
                assert_eq!(i.stats().policies, n);
                i
            });
        });
    }
    filter_decisions(&mut c)?;
    entity_store_decisions(&mut c)?;
    c.final_summary();

    let us = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{:.2} µs", x / 1e3));
    println!(
        "\none allowed request, means:\n{:>8} {:>16} {:>14} {:>14} {:>13}",
        "policies", "cedar whole set", "policy index", "index/whole", "index build"
    );
    for n in SIZES {
        let whole = common::mean_ns(&out, "cedar_whole_set", &n.to_string());
        let idx = common::mean_ns(&out, "policy_index", &n.to_string());
        let build = common::mean_ns(&out, "index_build", &n.to_string());
        let ratio = match (idx, whole) {
            (Some(i), Some(w)) if w > 0.0 => format!("{:.3}", i / w),
            _ => "-".to_owned(),
        };
        println!(
            "{n:>8} {:>16} {:>14} {ratio:>14} {:>13}",
            us(whole),
            us(idx),
            us(build)
        );
    }
    let growth = |group: &str| match (
        common::mean_ns(&out, group, "10000"),
        common::mean_ns(&out, group, "10"),
    ) {
        (Some(big), Some(small)) if small > 0.0 => format!("{:.1}×", big / small),
        _ => "-".to_owned(),
    };
    println!(
        "ratio 10000/10 policies: cedar whole set {}, policy index {}",
        growth("cedar_whole_set"),
        growth("policy_index")
    );
    println!(
        "whole filter decision (cached token), 10 → 10000 policies: native {} → {} ({}), in wasm {} → {} ({})",
        us(common::mean_ns(&out, "filter_native", "10")),
        us(common::mean_ns(&out, "filter_native", "10000")),
        growth("filter_native"),
        us(common::mean_ns(&out, "filter_wasm", "10")),
        us(common::mean_ns(&out, "filter_wasm", "10000")),
        growth("filter_wasm"),
    );
    println!(
        "whole filter decision (cached token, principal not in the bundle), 10 → 10000 entities: native {} → {} ({}), in wasm {} → {} ({})",
        us(common::mean_ns(&out, "entities_native", "10")),
        us(common::mean_ns(&out, "entities_native", "10000")),
        growth("entities_native"),
        us(common::mean_ns(&out, "entities_wasm", "10")),
        us(common::mean_ns(&out, "entities_wasm", "10000")),
        growth("entities_wasm"),
    );
    Ok(())
}

/// The whole filter as the bundle's entity store grows, for a principal the bundle does not
/// define (the usual case: users come from tokens, the bundle holds groups and resources):
/// `alice` in `admins` (from her token) reads `/docs/3`, allowed by `admins`.
fn entity_store_decisions(c: &mut Criterion) -> Result<(), Box<dyn Error>> {
    use harness::devkeys::{DevIssuer, now};
    use harness::host::{Host, Plugin, Request as HostRequest};
    use portcullis_core::{Engine, StaticRequest, Verdict};
    let issuer = DevIssuer::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let token = issuer.token("alice", &["admins"]);
    let plugin = Plugin::built().map_err(|e| format!("no built filter: {e}"))?;
    let mut host = Host::new(&plugin);
    for m in [10_usize, 10_000] {
        let mut w = wire(10).ok_or("no bundle of 10 policies")?;
        if let Some(all) = w.entities.as_array_mut() {
            for i in 0..m {
                all.push(json!({"uid": {"type": "Path", "id": format!("/files/{i}")},
                                "attrs": {}, "parents": [{"type": "Path", "id": "/files"}]}));
            }
        }
        let cfg = with_bundle(&issuer, &w)?;
        let engine = Engine::from_json(cfg.to_string().as_bytes())
            .map_err(|e| format!("configuration with {m} entities refused: {e}"))?;
        let req = StaticRequest::new("GET", "/docs/3").with_bearer(&token);
        let t = now();
        c.bench_function(&format!("entities_native/{m}"), |bch| {
            bch.iter(|| {
                let out = engine.check(black_box(&req), t);
                assert_eq!(out.verdict, Verdict::Allow);
                assert_eq!(out.policies, ["admins"]);
            });
        });
        let vm = host.start_vm(common::vm(cfg.to_string().into_bytes()))?;
        c.bench_function(&format!("entities_wasm/{m}"), |bch| {
            bch.iter(|| {
                let r = HostRequest::get("/docs/3").bearer(&token);
                assert_eq!(host.send(vm, r).map(|e| e.status()).ok(), Some(200));
            });
        });
    }
    Ok(())
}

/// The demo configuration with `bundle` inline.
fn with_bundle(
    issuer: &harness::devkeys::DevIssuer,
    bundle: &BundleWire,
) -> Result<serde_json::Value, Box<dyn Error>> {
    let mut cfg = harness::demo::plugin_config(issuer);
    cfg.as_object_mut()
        .ok_or("the demo configuration is not an object")?
        .insert("bundle".into(), serde_json::to_value(bundle)?);
    Ok(cfg)
}

/// The whole filter with the bundle inline in its configuration: natively through the core
/// engine and inside the built module through the wasmtime host, a cached token for `u3`
/// reading `/docs/3` (allowed by `u3-doc`).
fn filter_decisions(c: &mut Criterion) -> Result<(), Box<dyn Error>> {
    use harness::devkeys::{DevIssuer, now};
    use harness::host::{Host, Plugin, Request as HostRequest};
    use portcullis_core::{Engine, StaticRequest, Verdict};
    let issuer = DevIssuer::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let token = issuer.token("u3", &["staff"]);
    let plugin = Plugin::built().map_err(|e| format!("no built filter: {e}"))?;
    let mut host = Host::new(&plugin);
    for n in [10, 10_000] {
        let w = wire(n).ok_or_else(|| format!("no bundle of {n} policies"))?;
        let cfg = with_bundle(&issuer, &w)?;
        let engine = Engine::from_json(cfg.to_string().as_bytes())
            .map_err(|e| format!("configuration with {n} policies refused: {e}"))?;
        let req = StaticRequest::new("GET", "/docs/3").with_bearer(&token);
        let t = now();
        c.bench_function(&format!("filter_native/{n}"), |bch| {
            bch.iter(|| {
                let out = engine.check(black_box(&req), t);
                assert_eq!(out.verdict, Verdict::Allow);
                assert_eq!(out.policies, ["u3-doc"]);
            });
        });
        let vm = host.start_vm(common::vm(cfg.to_string().into_bytes()))?;
        c.bench_function(&format!("filter_wasm/{n}"), |bch| {
            bch.iter(|| {
                let r = HostRequest::get("/docs/3").bearer(&token);
                assert_eq!(host.send(vm, r).map(|e| e.status()).ok(), Some(200));
            });
        });
    }
    Ok(())
}
