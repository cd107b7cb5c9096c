//! Cost of one filter decision (token verification + Cedar), natively through the core engine
//! and inside the built module through the wasmtime host, for a token seen for the first time
//! (token cache off: RS256 verified every time) and for a repeated token (cache hit). Every
//! iteration asserts the expected verdict, so a broken setup cannot look fast, and a setup step
//! that fails (no key, a refused configuration, no built module) ends the run with an error.
//!
//! The same host also runs a filter that does nothing (the ABI probe with configuration `noop`,
//! trimmed like the filter) on the same request; the difference is the filter's own work in
//! wasm, host calls included, which the closing table prints.

mod common;

use std::error::Error;
use std::hint::black_box;

use harness::devkeys::{DevIssuer, now};
use harness::host::{Host, Plugin, Request};
use portcullis_core::{Engine, StaticRequest, Verdict};
use serde_json::json;

fn main() -> Result<(), Box<dyn Error>> {
    let (mut c, out) = common::criterion("decision");
    let issuer = DevIssuer::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let cached_cfg = harness::demo::plugin_config(&issuer);
    let mut first_cfg = cached_cfg.clone();
    first_cfg
        .as_object_mut()
        .ok_or("the demo configuration is not an object")?
        .insert("tokenCache".into(), json!({"capacity": 0}));
    let cached = Engine::from_json(cached_cfg.to_string().as_bytes())?;
    let first = Engine::from_json(first_cfg.to_string().as_bytes())?;
    let t = now();
    let bob = issuer.token("bob", &["staff"]);
    let allow = StaticRequest::new("GET", "/api/hello").with_bearer(&bob);
    let deny = StaticRequest::new("GET", "/admin/users").with_bearer(&bob);
    let anon = StaticRequest::new("GET", "/api/hello");

    c.bench_function("native/rs256_first_sight_allow", |b| {
        b.iter(|| assert_eq!(first.check(black_box(&allow), t).verdict, Verdict::Allow));
    });
    c.bench_function("native/rs256_cached_allow", |b| {
        b.iter(|| assert_eq!(cached.check(black_box(&allow), t).verdict, Verdict::Allow));
    });
    c.bench_function("native/rs256_cached_forbid", |b| {
        b.iter(|| {
            assert_eq!(
                cached.check(black_box(&deny), t).verdict,
                Verdict::Forbidden
            )
        });
    });
    c.bench_function("native/rs256_authenticate_first_sight", |b| {
        b.iter(|| assert!(first.authenticate(black_box(&bob), t).is_ok()));
    });
    c.bench_function("native/rs256_authenticate_cached", |b| {
        b.iter(|| assert!(cached.authenticate(black_box(&bob), t).is_ok()));
    });
    c.bench_function("native/no_token", |b| {
        b.iter(|| {
            assert!(matches!(
                cached.check(black_box(&anon), t).verdict,
                Verdict::Unauthenticated(_)
            ));
        });
    });

    // The same decisions inside the built filter, through the wasmtime host (Cranelift):
    // the whole request path of the module (ABI calls included), not only the core.
    // `cargo xtask bench` builds the modules and names them.
    let plugin = Plugin::built().map_err(|e| format!("no built filter: {e}"))?;
    let noop = harness::paths::probe()
        .map_err(|e| e.to_string())
        .and_then(|p| std::fs::read(p).map_err(|e| e.to_string()))
        .and_then(|b| harness::trim::without_unused_callbacks(&b))
        .and_then(|b| Plugin::from_bytes(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("no ABI probe: {e}"))?;
    let mut noop_host = Host::new(&noop);
    // A filter that does nothing, and one that makes the host calls the filter makes on a
    // repeated request (all request headers in one call, the clock) and nothing else.
    for (id, config) in [
        ("noop_filter", "noop"),
        ("same_host_calls", "calls=1:pairs,1:time"),
    ] {
        let vm = noop_host
            .start_vm(common::vm(config.into()))
            .map_err(|e| format!("the probe refused `{config}`: {e}"))?;
        c.bench_function(&format!("wasm/{id}"), |b| {
            b.iter(|| {
                let req = Request::get("/api/hello").bearer(&bob);
                assert_eq!(noop_host.send(vm, req).map(|e| e.status()).ok(), Some(200));
            });
        });
    }
    let mut host = Host::new(&plugin);
    let vm_first = host.start_vm(common::vm(first_cfg.to_string().into_bytes()))?;
    let vm_cached = host.start_vm(common::vm(cached_cfg.to_string().into_bytes()))?;
    let mut run = |name: &str, vm: usize, path: &'static str, token: Option<&str>, status: u16| {
        c.bench_function(&format!("wasm/{name}"), |b| {
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
    c.final_summary();

    let mean = |id: &str| {
        let (group, id) = id.split_once('/').unwrap_or(("", id));
        common::mean_ns(&out, group, id)
    };
    let us = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{:.2} µs", x / 1e3));
    let (native, wasm, noop, calls) = (
        mean("native/rs256_cached_allow"),
        mean("wasm/rs256_cached_allow"),
        mean("wasm/noop_filter"),
        mean("wasm/same_host_calls"),
    );
    let minus = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
    println!(
        "\nrepeated token (token and decision cached), means:\n\
         {:<64} {:>10}\n{:<64} {:>10}\n{:<64} {:>10}\n{:<64} {:>10}\n\
         filter work in wasm:\n{:<64} {:>10}\n{:<64} {:>10}",
        "native: the whole decision",
        us(native),
        "wasm through the wasmtime host: the whole request",
        us(wasm),
        "wasm: a filter that does nothing, same request",
        us(noop),
        "wasm: a filter that only reads the headers and the clock",
        us(calls),
        "  over the do-nothing filter (the host's side of its calls too)",
        us(minus(wasm, noop)),
        "  over the same host calls (the filter's own code)",
        us(minus(wasm, calls)),
    );
    Ok(())
}
