//! First sight of a token, per signature algorithm: the full decision (verification + Cedar,
//! token cache off) natively through the core and inside the built module through the wasmtime
//! host, plus verification alone natively. Every iteration asserts the verdict. At the end a
//! table gives the means and the wasm/native ratio.
//!
//! The wasmtime host has no `verify_signature` foreign function, so the wasm figures are the
//! filter's own Rust crypto compiled to wasm — the fallback path. Inside Envoy, RSA and ECDSA
//! are checked by Envoy's BoringSSL instead (`cargo xtask measure` measures that).
//!
//! For the native module's signature checks (ring, `auth::native_crypto`), verification alone
//! is also measured with ring for RS256, ES256 and ES384, and beside it OpenSSL's own
//! verification on the same CPU in the same run (`openssl speed`, when the binary is there).

mod common;

use std::hint::black_box;

use std::process::Command;
use std::sync::Arc;

use harness::devkeys::{DevIssuer, now, sign_fixed};
use harness::host::{Host, Plugin, Request};
use portcullis_core::auth::native_crypto::RingCrypto;
use portcullis_core::{Engine, Snapshot, StaticRequest, Verdict};
use serde_json::{Value, json};

const ALGS: [&str; 7] = [
    "RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256", "HS512",
];

/// The demo configuration trusting `alg`'s key, with the token cache off, and a token for bob.
fn setup(issuer: &DevIssuer, alg: &str) -> Option<(Value, String)> {
    let claims = json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob",
        "groups": ["staff"], "exp": now() + 3600});
    let mut cfg = harness::demo::plugin_config(issuer);
    let issuer_cfg = cfg.get_mut("issuers")?.get_mut(0)?.as_object_mut()?;
    let token = if alg.starts_with("RS") || alg.starts_with("PS") {
        issuer_cfg.insert("jwks".into(), issuer.jwks_any_rsa_alg());
        issuer.sign_alg(alg, &claims).ok()?
    } else {
        let (token, source, keys) = sign_fixed(alg, &claims).ok()?;
        issuer_cfg.remove("jwks");
        issuer_cfg.insert(source.into(), keys);
        token
    };
    cfg.as_object_mut()?
        .insert("tokenCache".into(), json!({"capacity": 0}));
    Some((cfg, token))
}

/// The algorithms the native module hands to ring (`HostCrypto` takes PKCS #1 v1.5 and ECDSA).
const RING_ALGS: [&str; 3] = ["RS256", "ES256", "ES384"];

/// An engine over `cfg` whose RSA and ECDSA checks go to ring, as in the native module.
fn ring_engine(cfg: &Value) -> Option<Engine> {
    let snapshot = Snapshot::from_json(cfg.to_string().as_bytes()).ok()?;
    let crypto = RingCrypto::new(Box::new(|ring| {
        assert!(ring, "ring declined a valid signature")
    }));
    Some(Engine::new(Arc::new(snapshot), Some(Box::new(crypto))))
}

/// OpenSSL's time for one verification (µs) of RS256 with a 2,048-bit key, ES256 and ES384, from
/// `openssl speed -mr` on this CPU: `+F2:<i>:<bits>:<signs/s>:<verifies/s>` for RSA and
/// `+F4:<i>:<bits>:<signs/s>:<verifies/s>` for ECDSA. `None` without the binary.
fn openssl_verify_us() -> Option<Vec<(&'static str, f64)>> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-mr",
            "-seconds",
            "2",
            "rsa2048",
            "ecdsap256",
            "ecdsap384",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let (kind, bits, verify) = match fields.as_slice() {
            [kind, _, bits, _, verify, ..] => (*kind, *bits, *verify),
            _ => continue,
        };
        let alg = match (kind, bits) {
            ("+F2", "2048") => "RS256",
            ("+F4", "256") => "ES256",
            ("+F4", "384") => "ES384",
            _ => continue,
        };
        if let Ok(per_second) = verify.parse::<f64>()
            && per_second > 0.0
        {
            found.push((alg, 1e6 / per_second));
        }
    }
    (!found.is_empty()).then_some(found)
}

fn main() {
    let (mut c, out) = common::criterion("algorithms");
    let Ok(issuer) = DevIssuer::generate() else {
        eprintln!("cannot generate a key");
        return;
    };
    let plugin = Plugin::built()
        .map_err(|e| eprintln!("no wasm benchmarks: {e}"))
        .ok();
    let mut host = plugin.as_ref().map(Host::new);
    let t = now();
    for alg in ALGS {
        let Some((cfg, token)) = setup(&issuer, alg) else {
            eprintln!("{alg}: setup failed");
            continue;
        };
        let Ok(engine) = Engine::from_json(cfg.to_string().as_bytes()) else {
            eprintln!("{alg}: configuration refused");
            continue;
        };
        let req = StaticRequest::new("GET", "/api/hello").with_bearer(&token);
        c.bench_function(&format!("verify_native/{alg}"), |b| {
            b.iter(|| assert!(engine.authenticate(black_box(&token), t).is_ok()));
        });
        if let Some(ring) = RING_ALGS
            .contains(&alg)
            .then(|| ring_engine(&cfg))
            .flatten()
        {
            c.bench_function(&format!("verify_ring/{alg}"), |b| {
                b.iter(|| assert!(ring.authenticate(black_box(&token), t).is_ok()));
            });
        }
        c.bench_function(&format!("decision_native/{alg}"), |b| {
            b.iter(|| assert_eq!(engine.check(black_box(&req), t).verdict, Verdict::Allow));
        });
        if let Some(host) = host.as_mut()
            && let Ok(vm) = host.start_vm(common::vm(cfg.to_string().into_bytes()))
        {
            c.bench_function(&format!("decision_wasm/{alg}"), |b| {
                b.iter(|| {
                    let req = Request::get("/api/hello").bearer(&token);
                    assert_eq!(host.send(vm, req).map(|e| e.status()).ok(), Some(200));
                });
            });
        }
    }
    c.final_summary();

    println!(
        "\nfirst sight of a token (cache off), means:\n{:<7} {:>14} {:>16} {:>14} {:>11}",
        "alg", "verify native", "decision native", "decision wasm", "wasm/native"
    );
    for alg in ALGS {
        let v = common::mean_ns(&out, "verify_native", alg);
        let n = common::mean_ns(&out, "decision_native", alg);
        let w = common::mean_ns(&out, "decision_wasm", alg);
        let us =
            |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{:.1} µs", x / 1e3));
        let ratio = match (w, n) {
            (Some(w), Some(n)) if n > 0.0 => format!("{:.1}×", w / n),
            _ => "-".to_owned(),
        };
        println!(
            "{alg:<7} {:>14} {:>16} {:>14} {ratio:>11}",
            us(v),
            us(n),
            us(w)
        );
    }
    let openssl = openssl_verify_us();
    println!(
        "\nverification alone, natively: the core's Rust, ring (the native module), OpenSSL ({}):\n{:<7} {:>12} {:>12} {:>12} {:>14}",
        if openssl.is_some() {
            "openssl speed, same run"
        } else {
            "openssl not found"
        },
        "alg",
        "Rust",
        "ring",
        "OpenSSL",
        "ring/OpenSSL"
    );
    for alg in RING_ALGS {
        let rust = common::mean_ns(&out, "verify_native", alg).map(|x| x / 1e3);
        let ring = common::mean_ns(&out, "verify_ring", alg).map(|x| x / 1e3);
        let theirs = openssl
            .as_ref()
            .and_then(|o| o.iter().find(|(a, _)| *a == alg).map(|(_, us)| *us));
        let us = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.1} µs"));
        let ratio = match (ring, theirs) {
            (Some(r), Some(o)) if o > 0.0 => format!("{:.2}×", r / o),
            _ => "-".to_owned(),
        };
        println!(
            "{alg:<7} {:>12} {:>12} {:>12} {ratio:>14}",
            us(rust),
            us(ring),
            us(theirs)
        );
    }
    println!(
        "(verification includes the token's parse and claim checks for Rust and ring, not for OpenSSL)"
    );
}
