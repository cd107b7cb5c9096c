//! The variants `cargo xtask measure` compares (what each Envoy runs, and which of its counters
//! must count every answer), and the demo's decisions each must give before it is measured.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::{demo, http};
use portcullis_core::metrics;

use super::LOAD_PATH;
use crate::Result;

/// Envoy's names of the filter's counters the measured runs read (`portcullis_core::metrics`).
pub static ALLOWED_STAT: LazyLock<String> = LazyLock::new(|| envoy::stat_name(metrics::ALLOWED));
static TOKEN_CACHE_HITS_STAT: LazyLock<String> =
    LazyLock::new(|| envoy::stat_name(metrics::TOKEN_CACHE_HITS));
static DECISION_CACHE_HITS_STAT: LazyLock<String> =
    LazyLock::new(|| envoy::stat_name(metrics::DECISION_CACHE_HITS));
/// The same counters of the native module.
pub static NATIVE_ALLOWED_STAT: LazyLock<String> =
    LazyLock::new(|| envoy::native_stat_name(metrics::ALLOWED));
static NATIVE_TOKEN_CACHE_HITS_STAT: LazyLock<String> =
    LazyLock::new(|| envoy::native_stat_name(metrics::TOKEN_CACHE_HITS));
static NATIVE_DECISION_CACHE_HITS_STAT: LazyLock<String> =
    LazyLock::new(|| envoy::native_stat_name(metrics::DECISION_CACHE_HITS));

/// The modules the variants load.
#[derive(Debug, Clone, Copy)]
pub struct Modules<'a> {
    pub wasm: &'a Path,
    pub noop: &'a Path,
    pub native: &'a Path,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    NoFilter,
    /// The cheapest proxy-wasm filter the SDK builds: the ABI probe told to do nothing
    /// (`noop`), exporting only the callbacks the filter exports. What V8 and the proxy-wasm
    /// context lifecycle cost before a filter does any work.
    NoopWasm,
    JwtAuthnRbac,
    Portcullis,
    /// The same filter as Envoy's dynamic module (filter/native).
    Native,
}

impl Variant {
    pub const ALL: [Self; 5] = [
        Self::NoFilter,
        Self::NoopWasm,
        Self::JwtAuthnRbac,
        Self::Portcullis,
        Self::Native,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::NoFilter => "envoy, no filter",
            Self::NoopWasm => "envoy + no-op wasm",
            Self::JwtAuthnRbac => "envoy + jwt_authn+RBAC",
            Self::Portcullis => "envoy + portcullis",
            Self::Native => "envoy + portcullis native",
        }
    }

    pub fn config(self, ports: Ports, modules: Modules<'_>, issuer: &DevIssuer) -> Result<String> {
        // The demo configuration without its debug response header: what a deployment runs,
        // and no more work than the jwt_authn+RBAC variant does.
        let deployed = || {
            let mut plugin = demo::plugin_config(issuer);
            if let Some(o) = plugin.as_object_mut() {
                o.insert("debugHeaders".into(), false.into());
            }
            plugin
        };
        match self {
            Self::NoFilter => envoy::baseline_config(ports),
            Self::NoopWasm => envoy::config(ports, modules.noop, &"noop".into()),
            Self::JwtAuthnRbac => envoy::jwt_authn_rbac_config(
                ports,
                &issuer.issuer,
                &issuer.audience,
                &issuer.jwks(),
            ),
            Self::Portcullis => envoy::config(ports, modules.wasm, &deployed()),
            Self::Native => envoy::native_config(ports, modules.native, &deployed()),
        }
        .map_err(|e| e.to_string())
    }

    /// Counters that must grow by at least the number of answered requests under load: the
    /// filter allowed each one, and its token and decision caches (not a signature check or a
    /// policy evaluation) answered it.
    pub fn counters(self) -> Vec<&'static str> {
        match self {
            Self::NoFilter | Self::NoopWasm => Vec::new(),
            Self::JwtAuthnRbac => vec![
                "http.ingress.rbac.allowed",
                "http.ingress.jwt_authn.allowed",
                "http.ingress.jwt_authn.jwt_cache_hit",
            ],
            Self::Portcullis => vec![
                ALLOWED_STAT.as_str(),
                TOKEN_CACHE_HITS_STAT.as_str(),
                DECISION_CACHE_HITS_STAT.as_str(),
            ],
            Self::Native => vec![
                NATIVE_ALLOWED_STAT.as_str(),
                NATIVE_TOKEN_CACHE_HITS_STAT.as_str(),
                NATIVE_DECISION_CACHE_HITS_STAT.as_str(),
            ],
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Who {
    Nobody,
    Forged,
    Bob,
    Alice,
}

/// Requests sent to every variant before the measurements, with the status a filtered variant
/// must answer (the no-filter variant answers 200 to all): the demo's decisions.
const CHECKS: [(&str, &str, Who, u16); 6] = [
    ("GET", LOAD_PATH, Who::Nobody, 401),
    ("GET", LOAD_PATH, Who::Forged, 401),
    ("GET", LOAD_PATH, Who::Bob, 200),
    ("DELETE", "/api/items/7", Who::Bob, 403),
    ("GET", "/admin/users", Who::Bob, 403),
    ("DELETE", "/admin/users/9", Who::Alice, 200),
];

pub struct Tokens {
    pub bob: String,
    pub alice: String,
    pub forged: String,
}

impl Tokens {
    fn of(&self, who: Who) -> Option<&str> {
        match who {
            Who::Nobody => None,
            Who::Forged => Some(&self.forged),
            Who::Bob => Some(&self.bob),
            Who::Alice => Some(&self.alice),
        }
    }
}

/// The demo's decisions, asserted on this variant before anything is measured.
pub fn check_decisions(proxy: &Envoy, variant: Variant, tokens: &Tokens) -> Result {
    let agent = http::agent(Duration::from_secs(10));
    let mut seen = Vec::new();
    for (method, path, who, filtered) in CHECKS {
        let expected = if matches!(variant, Variant::NoFilter | Variant::NoopWasm) {
            200
        } else {
            filtered
        };
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(proxy.url(path));
        if let Some(t) = tokens.of(who) {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(()).map_err(|e| e.to_string())?;
        let resp = agent
            .run(req)
            .map_err(|e| format!("{method} {path} ({who:?}): {e}"))?;
        let status = resp.status().as_u16();
        let _ = http::text(resp);
        if status != expected {
            return Err(format!(
                "{}: {method} {path} as {who:?}: status {status}, expected {expected}",
                variant.name()
            ));
        }
        seen.push(format!("{method} {path} {who:?} {status}"));
    }
    println!("{}: checked {}", variant.name(), seen.join(", "));
    Ok(())
}
