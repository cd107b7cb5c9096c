//! The embedded default: the plugin configuration `cargo xtask demo` and the end-to-end tests
//! give the filter (a dev issuer and the policies in `envoy/demo-policies.cedar`).

use serde_json::{Value, json};

use crate::devkeys::DevIssuer;

/// The demo's Cedar policies.
pub const DEMO_POLICIES: &str = include_str!("../../envoy/demo-policies.cedar");

/// The filter configuration trusting `issuer`, with the demo bundle inline.
#[must_use]
pub fn plugin_config(issuer: &DevIssuer) -> Value {
    json!({
        "issuers": [{
            "issuer": issuer.issuer,
            "audiences": [issuer.audience],
            "jwks": issuer.jwks(),
        }],
        "bundle": { "version": 1, "policies": DEMO_POLICIES },
        "debugHeaders": true,
    })
}
