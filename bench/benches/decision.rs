//! Native cost of one filter decision (token verification + Cedar) through the core engine.
//! Every iteration asserts the expected verdict, so a broken setup cannot look fast.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use harness::devkeys::{DevIssuer, now};
use harness::host::{Host, Plugin, Request, VmOptions};
use portcullis_core::{Engine, StaticRequest, Verdict};

fn decision(c: &mut Criterion) {
    let Ok(issuer) = DevIssuer::generate() else {
        return;
    };
    let cfg = harness::demo::plugin_config(&issuer).to_string();
    let Ok(engine) = Engine::from_json(cfg.as_bytes()) else {
        return;
    };
    let t = now();
    let allow =
        StaticRequest::new("GET", "/api/hello").with_bearer(&issuer.token("bob", &["staff"]));
    let deny =
        StaticRequest::new("GET", "/admin/users").with_bearer(&issuer.token("bob", &["staff"]));
    let anon = StaticRequest::new("GET", "/api/hello");

    let mut g = c.benchmark_group("native");
    g.bench_function("rs256_allow", |b| {
        b.iter(|| assert_eq!(engine.check(black_box(&allow), t).verdict, Verdict::Allow));
    });
    g.bench_function("rs256_forbid", |b| {
        b.iter(|| {
            assert_eq!(
                engine.check(black_box(&deny), t).verdict,
                Verdict::Forbidden
            )
        });
    });
    let bob = issuer.token("bob", &["staff"]);
    g.bench_function("rs256_authenticate_only", |b| {
        b.iter(|| assert!(engine.authenticate(black_box(&bob), t).is_ok()));
    });
    g.bench_function("no_token", |b| {
        b.iter(|| {
            assert!(matches!(
                engine.check(black_box(&anon), t).verdict,
                Verdict::Unauthenticated(_)
            ))
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
    let Ok(vm) = host.start_vm(VmOptions::new(cfg.into_bytes())) else {
        return;
    };
    let bob = issuer.token("bob", &["staff"]);
    let mut g = c.benchmark_group("wasm");
    g.bench_function("rs256_allow", |b| {
        b.iter(|| {
            let ex = host.send(vm, Request::get("/api/hello").bearer(&bob));
            assert_eq!(ex.map(|e| e.status()).ok(), Some(200));
        });
    });
    g.bench_function("rs256_forbid", |b| {
        b.iter(|| {
            let ex = host.send(vm, Request::get("/admin/users").bearer(&bob));
            assert_eq!(ex.map(|e| e.status()).ok(), Some(403));
        });
    });
    g.bench_function("no_token", |b| {
        b.iter(|| {
            let ex = host.send(vm, Request::get("/api/hello"));
            assert_eq!(ex.map(|e| e.status()).ok(), Some(401));
        });
    });
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
