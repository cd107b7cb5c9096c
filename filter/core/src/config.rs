//! Plugin configuration: the JSON Envoy passes to the filter, parsed once in `on_configure`.
//!
//! Every struct refuses unknown fields, so a typo is an error rather than a silently ignored
//! setting. Defaults are documented on each field.

use std::time::Duration;

use serde::Deserialize;

use crate::auth::extractor::{TokenSourceConfig, TokenSourceError};
use crate::auth::jwks::JwksError;
use crate::auth::routes::{RouteConfig, RouteError};
use crate::authz::action_routes::{ActionRouteConfig, ActionRouteError};
use crate::authz::authorizer::NameError;
use crate::authz::tenants::{SetError, TenantConfig};
use crate::bundle::signed::BundleDocument;
use crate::bundle::{BundleError, BundleWire};
use crate::duration::ConfigDuration;
use crate::sync::config::{SyncConfig, SyncConfigError, SyncSettings};

// The issuers are part of the configuration; their types live with the rest of authentication.
pub use crate::auth::issuer::{ClaimToHeader, IssuerConfig, IssuerSettings};

/// Top-level filter configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterConfig {
    /// Trusted token issuers (at least one, unless `sync` brings them: the issuers of a
    /// document from policy-sync replace these).
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// The default policy set's bundle, inline. Required unless `sync` is configured; with
    /// `sync` it is served until the first verified document arrives.
    #[serde(default)]
    pub bundle: Option<BundleWire>,
    /// Follow policy-sync: its signed documents replace the bundles and issuers in force.
    /// Default: none (the configuration's bundles stay until the configuration changes).
    #[serde(default)]
    pub sync: Option<SyncConfig>,
    /// The default policy set evaluates and records but enforces nothing. Default false.
    #[serde(default)]
    pub dry_run: bool,
    /// A candidate bundle shadow-evaluated next to `bundle` (decisions recorded, never
    /// enforced). Default: none.
    #[serde(default)]
    pub shadow_bundle: Option<BundleWire>,
    /// Tenants' policy sets, selected by host or by `tenantClaim`. Default: none.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Claim whose value names the tenant of a verified token. Default: none.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// How token claims become the Cedar principal.
    #[serde(default)]
    pub principal: PrincipalConfig,
    /// Cedar entity types for the action (`Action::"GET"`) and resource (`Path::"/x"`).
    #[serde(default)]
    pub request: RequestConfig,
    /// Allowed clock skew for `exp`, `nbf` and `iat`. Default `"60s"`.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: ConfigDuration,
    /// Largest token accepted, checked before any parsing. Default 8192 bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Paths that need no token (`public`) or accept one (`optional`); first match wins,
    /// others require a token. Default: none (every path requires a token).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Where tokens are looked for, in order; the first source present wins.
    /// Default: `[{"header": "authorization", "prefix": "Bearer "}]`.
    #[serde(default = "default_sources")]
    pub token_sources: Vec<TokenSourceConfig>,
    /// Verified-token cache (on by default).
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
    /// Decision cache (on by default): a request that repeats an earlier one (same token,
    /// method, path, host and context inputs) gets the earlier decision without evaluating the
    /// policies again. Decisions never outlive their token or the bundle they came from.
    #[serde(default)]
    pub decision_cache: DecisionCacheConfig,
    /// Name the determining policies in a `x-portcullis-policies` header on 403 replies, and
    /// the policy set and bundle version that decided (`x-portcullis-bundle: default@17`) on
    /// the filter's replies and on allowed requests to the upstream. Default false: clients
    /// learn nothing about policies.
    #[serde(default)]
    pub debug_headers: bool,
    /// Let the host check RSA (RS256/384/512) and ECDSA (ES256/384) signatures natively when
    /// it can — Envoy ≥ 1.30 through its `verify_signature` foreign function (BoringSSL) —
    /// falling back to the filter's own Rust code where it cannot. Default true.
    #[serde(default = "default_true")]
    pub host_crypto: bool,
}

fn default_sources() -> Vec<TokenSourceConfig> {
    vec![TokenSourceConfig {
        header: Some("authorization".into()),
        prefix: Some("Bearer ".into()),
        cookie: None,
        query: None,
    }]
}

fn default_clock_skew() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

fn default_max_token_bytes() -> usize {
    8192
}

fn default_true() -> bool {
    true
}

/// The verified-token cache.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Entries kept per worker; 0 turns the cache off. Default 1024.
    #[serde(default = "default_cache_capacity")]
    pub capacity: usize,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            capacity: default_cache_capacity(),
        }
    }
}

fn default_cache_capacity() -> usize {
    1024
}

/// The decision cache.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionCacheConfig {
    /// Decisions kept per cached token (they live in the token's cache entry); 0 turns caching
    /// of token-carrying requests off. Default 64.
    #[serde(default = "default_decisions_per_token")]
    pub per_token: usize,
    /// Decisions kept per worker for requests without a token (public and optional routes);
    /// 0 turns them off. Default 1024.
    #[serde(default = "default_anonymous_decisions")]
    pub anonymous: usize,
}

impl Default for DecisionCacheConfig {
    fn default() -> Self {
        Self {
            per_token: default_decisions_per_token(),
            anonymous: default_anonymous_decisions(),
        }
    }
}

fn default_decisions_per_token() -> usize {
    64
}

fn default_anonymous_decisions() -> usize {
    1024
}

/// Claims → Cedar principal.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Entity type of the principal. Default `"User"`.
    #[serde(default = "default_user_type")]
    pub entity_type: String,
    /// Claim holding the principal id. Default `"sub"`.
    #[serde(default = "default_id_claim")]
    pub id_claim: String,
    /// Claim listing the principal's groups (array of strings, or a space-separated string);
    /// each becomes a parent entity. Default `"groups"`; `null` turns it off.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: Option<String>,
    /// Entity type of those parents. Default `"Group"`.
    #[serde(default = "default_group_type")]
    pub group_entity_type: String,
    /// The principal of requests without a token on public and optional routes.
    /// Default `Anonymous::"anonymous"`.
    #[serde(default = "default_anonymous")]
    pub anonymous: String,
}

impl Default for PrincipalConfig {
    fn default() -> Self {
        Self {
            entity_type: default_user_type(),
            id_claim: default_id_claim(),
            groups_claim: default_groups_claim(),
            group_entity_type: default_group_type(),
            anonymous: default_anonymous(),
        }
    }
}

fn default_user_type() -> String {
    "User".to_owned()
}
fn default_id_claim() -> String {
    "sub".to_owned()
}
#[expect(
    clippy::unnecessary_wraps,
    reason = "serde default for an Option field"
)]
fn default_groups_claim() -> Option<String> {
    Some("groups".to_owned())
}
fn default_anonymous() -> String {
    r#"Anonymous::"anonymous""#.to_owned()
}
fn default_group_type() -> String {
    "Group".to_owned()
}

/// HTTP request → Cedar action and resource.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestConfig {
    /// Entity type of actions; the id is the HTTP method. Default `"Action"`.
    #[serde(default = "default_action_type")]
    pub action_entity_type: String,
    /// Entity type of resources; the id is the path without query. Default `"Path"`.
    #[serde(default = "default_resource_type")]
    pub resource_entity_type: String,
    /// Route table: method + path template → action id and resource uid template; the first
    /// match wins, others use the defaults above. Default: none.
    #[serde(default)]
    pub routes: Vec<ActionRouteConfig>,
    /// Request headers copied into `context.headers` (lower-case names). Default: none.
    #[serde(default)]
    pub context_headers: Vec<String>,
    /// Query parameters copied into `context.query` (percent-decoded). Default: none.
    #[serde(default)]
    pub context_query: Vec<String>,
}

impl Default for RequestConfig {
    fn default() -> Self {
        Self {
            action_entity_type: default_action_type(),
            resource_entity_type: default_resource_type(),
            routes: Vec::new(),
            context_headers: Vec::new(),
            context_query: Vec::new(),
        }
    }
}

fn default_action_type() -> String {
    "Action".to_owned()
}
fn default_resource_type() -> String {
    "Path".to_owned()
}

/// Why a configuration was refused. The filter then refuses to start (fail closed).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration is not valid JSON for this filter: {0}")]
    Json(serde_json::Error),
    #[error("at least one issuer must be configured")]
    NoIssuers,
    #[error("policy set {0:?} has no bundle: give one inline, or configure `sync` to fetch it")]
    NoBundle(String),
    #[error("{0}")]
    Sync(#[from] SyncConfigError),
    #[error("issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    #[error("issuer {issuer:?}: {source}")]
    Jwks { issuer: String, source: JwksError },
    #[error("issuer {0:?}: give exactly one of `jwks` (public keys) and `sharedSecrets` (HMAC)")]
    KeySource(String),
    #[error("issuer {0:?}: `jwks` holds public keys only; shared secrets go in `sharedSecrets`")]
    SecretInJwks(String),
    #[error("issuer {0:?}: `sharedSecrets` holds `oct` keys only")]
    PublicInSecrets(String),
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    TenantSets(#[from] SetError),
    #[error(transparent)]
    EntityType(#[from] NameError),
    #[error(
        "issuer {issuer:?}: {header:?} cannot be an output header (lower-case HTTP token names only; not host, authorization, framing or pseudo-headers)"
    )]
    Header { issuer: String, header: String },
    #[error(transparent)]
    TokenSource(#[from] TokenSourceError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    ActionRoute(#[from] ActionRouteError),
    #[error("request.contextHeaders: {0:?} is not a lower-case header name")]
    ContextHeader(String),
    #[error("tokenCache.capacity must be at most 1000000, got {0}")]
    CacheCapacity(usize),
    #[error("decisionCache.{0} must be at most {1}, got {2}")]
    DecisionCache(&'static str, usize, usize),
    #[error("maxTokenBytes must be between 256 and 65536, got {0}")]
    MaxTokenBytes(usize),
}

impl FilterConfig {
    /// Parses the configuration bytes Envoy hands the filter.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        serde_json::from_slice(bytes).map_err(ConfigError::Json)
    }

    /// The checked `sync` section, if there is one.
    pub fn sync_settings(&self) -> Result<Option<SyncSettings>, ConfigError> {
        let tenants: Vec<&str> = self.tenants.iter().map(|t| t.id.as_str()).collect();
        self.sync
            .as_ref()
            .map(|s| SyncSettings::new(s, &tenants))
            .transpose()
            .map_err(ConfigError::from)
    }

    /// The policy sets that have no bundle yet (`default` or tenant ids).
    #[must_use]
    pub fn missing_bundles(&self) -> Vec<&str> {
        let default = self
            .bundle
            .is_none()
            .then_some(crate::authz::tenants::DEFAULT_SET);
        default
            .into_iter()
            .chain(
                self.tenants
                    .iter()
                    .filter(|t| t.bundle.is_none())
                    .map(|t| t.id.as_str()),
            )
            .collect()
    }

    /// Puts a verified document's bundle in its tenant's place and, when it lists issuers,
    /// its issuers in place of the configured ones (how a filter that started without them
    /// gets its first snapshot). A tenant that is not configured is an error.
    pub fn apply_document(&mut self, doc: &BundleDocument) -> Result<(), ConfigError> {
        let slot = if doc.tenant == crate::authz::tenants::DEFAULT_SET {
            &mut self.bundle
        } else {
            &mut self
                .tenants
                .iter_mut()
                .find(|t| t.id == doc.tenant)
                .ok_or_else(|| SetError::Unknown(doc.tenant.clone()))?
                .bundle
        };
        *slot = Some(doc.bundle.clone());
        if !doc.issuers.is_empty() {
            self.issuers = doc.issuer_configs();
        }
        Ok(())
    }
}
