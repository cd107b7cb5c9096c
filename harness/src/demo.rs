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

/// [`plugin_config`] with the bundle of [`padded_policies`]`(n)` instead of the demo's.
#[must_use]
pub fn padded_plugin_config(issuer: &DevIssuer, n: usize) -> Value {
    let mut plugin = plugin_config(issuer);
    if let Some(o) = plugin.as_object_mut() {
        o.insert(
            "bundle".into(),
            json!({ "version": 1, "policies": padded_policies(n) }),
        );
    }
    plugin
}

/// The demo policies padded to `n` policies in all with per-user grants of the shape a large
/// deployment has (one user, one document, a condition on the host), none of which the demo's
/// users match: a bundle of `n` policies that decides as the demo bundle does.
#[must_use]
pub fn padded_policies(n: usize) -> String {
    let mut text = String::from(DEMO_POLICIES);
    for i in 0..n.saturating_sub(3) {
        text.push_str(&format!(
            "@id(\"grant-{i}\")\npermit (principal == User::\"user-{i}\", action in [Action::\"GET\", Action::\"HEAD\"], resource == Path::\"/docs/{i}\")\nwhen {{ context.host == \"docs.example.com\" }};\n"
        ));
    }
    text
}
