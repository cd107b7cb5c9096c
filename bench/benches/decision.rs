//! Cost of one filter decision (token verification + Cedar), natively through the core engine
//! and inside the built module through the wasmtime host, for a token seen for the first time
//! (token cache off: RS256 verified every time) and for a repeated token (cache hit). Every
//! iteration asserts the expected verdict, so a broken setup cannot look fast.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use harness::devkeys::{DevIssuer, now};
use harness::host::{Host, Plugin, Request, VmOptions};
use portcullis_core::{Engine, StaticRequest, Verdict};
use serde_json::json;

fn decision(c: &mut Criterion) {
    let Ok(issuer) = DevIssuer::generate() else {
        return;
    };
    let cached_cfg = harness::demo::plugin_config(&issuer);
    let mut first_cfg = cached_cfg.clone();
    if let Some(o) = first_cfg.as_object_mut() {
        o.insert("tokenCache".into(), json!({"capacity": 0}));
    }
    let (Ok(cached), Ok(first)) = (
        Engine::from_json(cached_cfg.to_string().as_bytes()),
        Engine::from_json(first_cfg.to_string().as_bytes()),
    ) else {
        return;
    };
    let t = now();
    let bob = issuer.token("bob", &["staff"]);
    let allow = StaticRequest::new("GET", "/api/hello").with_bearer(&bob);
    let deny = StaticRequest::new("GET", "/admin/users").with_bearer(&bob);
    let anon = StaticRequest::new("GET", "/api/hello");

    let mut g = c.benchmark_group("native");
    g.bench_function("rs256_first_sight_allow", |b| {
        b.iter(|| assert_eq!(first.check(black_box(&allow), t).verdict, Verdict::Allow));
    });
    g.bench_function("rs256_cached_allow", |b| {
        b.iter(|| assert_eq!(cached.check(black_box(&allow), t).verdict, Verdict::Allow));
    });
    g.bench_function("rs256_cached_forbid", |b| {
        b.iter(|| {
            assert_eq!(
                cached.check(black_box(&deny), t).verdict,
                Verdict::Forbidden
            )
        });
    });
    g.bench_function("rs256_authenticate_first_sight", |b| {
        b.iter(|| assert!(first.authenticate(black_box(&bob), t).is_ok()));
    });
    g.bench_function("rs256_authenticate_cached", |b| {
        b.iter(|| assert!(cached.authenticate(black_box(&bob), t).is_ok()));
    });
    g.bench_function("no_token", |b| {
        b.iter(|| {
            assert!(matches!(
                cached.check(black_box(&anon), t).verdict,
                Verdict::Unauthenticated(_)
            ));
        });
    });
    g.finish();

    // The same decisions inside the built filter, through the wasmtime host (Cranelift):
    // the whole request path of the module (ABI calls included), not only the core.
    let plugin = match Plugin::built() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipping wasm benchmarks: {e}");
            return;
        }
    };
    let mut host = Host::new(&plugin);
    let (Ok(vm_first), Ok(vm_cached)) = (
        host.start_vm(VmOptions::new(first_cfg.to_string().into_bytes())),
        host.start_vm(VmOptions::new(cached_cfg.to_string().into_bytes())),
    ) else {
        return;
    };
    let mut g = c.benchmark_group("wasm");
    let mut run = |name: &str, vm: usize, path: &'static str, token: Option<&str>, status: u16| {
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = Request::get(path);
                let req = match token {
                    Some(t) => req.bearer(t),
                    None => req,
                };
                assert_eq!(host.send(vm, req).map(|e| e.status()).ok(), Some(status));
            });
        });
    };
    run(
        "rs256_first_sight_allow",
        vm_first,
        "/api/hello",
        Some(&bob),
        200,
    );
    run(
        "rs256_cached_allow",
        vm_cached,
        "/api/hello",
        Some(&bob),
        200,
    );
    run(
        "rs256_cached_forbid",
        vm_cached,
        "/admin/users",
        Some(&bob),
        403,
    );
    run("no_token", vm_cached, "/api/hello", None, 401);
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
