//! The plugin configuration: arbitrary bytes as the whole configuration, and (structure-aware)
//! arbitrary JSON put into one field of a valid configuration, chosen by the first byte, so
//! that the fuzzer reaches each field's own checks (issuers and their keys, bundle, tenants,
//! routes, token sources, caches). A configuration the engine takes must then decide a
//! request without panicking; one it refuses is an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::{Engine, StaticRequest};
use serde_json::Value;

/// Where the fuzzed value goes: a JSON pointer into the base configuration.
const FIELDS: [&str; 16] = [
    "/issuers/0/jwks",
    "/issuers/0/audiences",
    "/issuers/0/claimToHeaders",
    "/issuers/0/maxLifetime",
    "/bundle",
    "/bundle/policies",
    "/bundle/entities",
    "/shadowBundle",
    "/tenants",
    "/tenantClaim",
    "/principal",
    "/routes",
    "/request",
    "/tokenSources",
    "/decisionCache",
    "/clockSkew",
];

thread_local! {
    static BASE: (Value, String) = {
        let issuer = harness::devkeys::DevIssuer::generate().expect("a dev key");
        let token = issuer.token("bob", &["staff"]);
        (harness::demo::plugin_config(&issuer), token)
    };
}

fn decide(engine: &Engine, token: &str) {
    let req = StaticRequest::new("GET", "/api/hello?x=1")
        .with_header(":authority", "a.example")
        .with_source("10.0.0.1:5")
        .with_bearer(token);
    let _ = engine.check(&req, 1_800_000_000);
    let _ = engine.check(&StaticRequest::new("DELETE", "/admin"), 1_800_000_000);
}

fuzz_target!(|data: &[u8]| {
    BASE.with(|(base, token)| {
        if let Ok(engine) = Engine::from_json(data) {
            decide(&engine, token);
        }
        let Some((&which, rest)) = data.split_first() else {
            return;
        };
        let Ok(value) = serde_json::from_slice::<Value>(rest) else {
            return;
        };
        let field = FIELDS[usize::from(which) % FIELDS.len()];
        let mut cfg = base.clone();
        let (parent, key) = field.rsplit_once('/').unwrap_or(("", field));
        match cfg.pointer_mut(parent) {
            Some(Value::Object(o)) => {
                o.insert(key.to_owned(), value);
            }
            Some(Value::Array(a)) => {
                if let Some(slot) = key.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    *slot = value;
                }
            }
            _ => return,
        }
        if let Ok(engine) = Engine::from_json(cfg.to_string().as_bytes()) {
            decide(&engine, token);
        }
    });
});
