//! Arbitrary bytes as the host's encoded request headers, read in place; and the same bytes
//! made into a well-formed map (fields split at 0xFE, each field's first byte picking a header
//! name the engine reads, the rest any bytes at all, UTF-8 or not) that the whole engine
//! decides: token sources, routes, Cedar context. Nothing may panic: in Envoy a panic aborts
//! the VM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::http::header_map::encode;
use portcullis_core::{Engine, HeaderMap};

const NAMES: [&str; 8] = [
    ":method",
    ":path",
    ":authority",
    "authorization",
    "cookie",
    "x-tenant",
    "x-user",
    "x-other",
];

thread_local! {
    // The engine is per thread (it holds the token cache), as it is per VM in Envoy.
    // A configuration the engine refuses fails the first input (loudly), not every input quietly.
    static ENGINE: Engine = harness::devkeys::DevIssuer::generate().ok().and_then(|issuer| {
        let mut cfg = harness::demo::plugin_config(&issuer);
        cfg["request"] = serde_json::json!({
            "routes": [{"path": "/users/{id}/files/{rest*}", "action": "Files", "resource": "User::\"{id}:{rest}\""}],
            "contextHeaders": ["x-tenant", "cookie"],
            "contextQuery": ["q"],
        });
        cfg["tokenSources"] = serde_json::json!([
            {"header": "authorization", "prefix": "Bearer "},
            {"cookie": "session"},
            {"query": "access_token"},
        ]);
        Engine::from_json(cfg.to_string().as_bytes()).ok()
    }).expect("the fuzz configuration is valid");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = HeaderMap::parse(data) {
        for name in NAMES {
            let _ = (map.get(name), map.contains(name));
        }
    }
    let pairs: Vec<(&[u8], &[u8])> = data
        .split(|b| *b == 0xFE)
        .filter_map(|field| {
            let (pick, value) = field.split_first()?;
            Some((NAMES[usize::from(*pick) % NAMES.len()].as_bytes(), value))
        })
        .collect();
    let bytes = encode(&pairs);
    let map = HeaderMap::parse(&bytes).expect("a well-formed map is read");
    assert_eq!(map.len(), pairs.len());
    ENGINE.with(|e| {
        let _ = e.decide(&map, 1_800_000_000);
    });
});
