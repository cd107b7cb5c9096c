//! Arbitrary bytes as a token, through every place a token can come from, the parser and the
//! whole engine (issuer lookup, key selection, signature and claim checks, Cedar), and as the
//! path, query, host, selected headers and client address a request maps to Cedar with
//! (route table, context, tenant selection). Nothing may panic: in Envoy a panic aborts the VM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::auth::extractor::{self, TokenSource};
use portcullis_core::auth::token;
use portcullis_core::{Engine, StaticRequest};

thread_local! {
    // The engine is per thread (it holds the token cache), as it is per VM in Envoy.
    static ENGINE: Option<Engine> = harness::devkeys::DevIssuer::generate().ok().and_then(|issuer| {
        let mut cfg = harness::demo::plugin_config(&issuer);
        cfg["request"] = serde_json::json!({
            "routes": [{"path": "/users/{id}/files/{rest*}", "action": "Files", "resource": "User::\"{id}:{rest}\""}],
            "contextHeaders": ["x-tenant", "cookie"],
            "contextQuery": ["q", "access_token"],
        });
        cfg["tenantClaim"] = serde_json::json!("tenant");
        cfg["tenants"] = serde_json::json!([{"id": "t1", "hosts": ["*.t1.example"],
            "bundle": {"policies": "permit (principal, action, resource) when { context.query has q };"}}]);
        Engine::from_json(cfg.to_string().as_bytes()).ok()
    });
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = token::parse(s, 65_536);
    let sources = [
        TokenSource::bearer(),
        TokenSource::Cookie("session".into()),
        TokenSource::Query("access_token".into()),
    ];
    let req = StaticRequest::new("GET", s)
        .with_header("authorization", s)
        .with_header("cookie", s)
        .with_header(":authority", s)
        .with_header("x-tenant", s)
        .with_source(s);
    let _ = extractor::extract(&req, &sources);
    ENGINE.with(|e| {
        if let Some(e) = e {
            let _ = e.check(
                &StaticRequest::new("GET", "/api").with_bearer(s),
                1_800_000_000,
            );
            let _ = e.check(&req, 1_800_000_000);
        }
    });
});
