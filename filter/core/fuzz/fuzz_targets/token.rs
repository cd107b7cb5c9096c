//! Arbitrary bytes as a token, through every place a token can come from, the parser and the
//! whole engine (issuer lookup, key selection, signature and claim checks, Cedar). Nothing may
//! panic: in Envoy a panic aborts the VM.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_core::extractor::{self, TokenSource};
use portcullis_core::{Engine, StaticRequest, token};

fn engine() -> Option<&'static Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let issuer = harness::devkeys::DevIssuer::generate().ok()?;
            let cfg = harness::demo::plugin_config(&issuer);
            Engine::from_json(cfg.to_string().as_bytes()).ok()
        })
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = token::parse(s, 65_536);
    let sources = [
        TokenSource::bearer(),
        TokenSource::Cookie("session".into()),
        TokenSource::Query("access_token".into()),
    ];
    let req = StaticRequest::new("GET", s).with_header("authorization", s).with_header("cookie", s);
    let _ = extractor::extract(&req, &sources);
    if let Some(e) = engine() {
        let _ = e.check(&StaticRequest::new("GET", "/api").with_bearer(s), 1_800_000_000);
        let _ = e.check(&req, 1_800_000_000);
    }
});
