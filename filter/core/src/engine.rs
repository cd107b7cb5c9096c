//! The compiled, immutable configuration snapshot and the per-request entry point.

use hashbrown::HashMap;

use crate::bundle::Bundle;
use crate::config::{ConfigError, FilterConfig};
use crate::decision::{AuthError, Outcome, Verdict};
use crate::extractor::{self, Extracted};
use crate::jwks::KeySet;
use crate::policy::{self, HttpRequest, PolicyEngine, PrincipalMapping, RequestMapping};
use crate::request::RequestView;
use crate::token;
use crate::verifier::{Issuer, TimeRules};

/// Everything the filter needs per request, compiled from [`FilterConfig`].
#[derive(Debug)]
pub struct Engine {
    issuers: HashMap<String, Issuer>,
    policy: PolicyEngine,
    rules: TimeRules,
    max_token_bytes: usize,
    debug_headers: bool,
    principal_type: String,
}

impl TryFrom<FilterConfig> for Engine {
    type Error = ConfigError;

    fn try_from(cfg: FilterConfig) -> Result<Self, Self::Error> {
        if cfg.issuers.is_empty() {
            return Err(ConfigError::NoIssuers);
        }
        if !(256..=65536).contains(&cfg.max_token_bytes) {
            return Err(ConfigError::MaxTokenBytes(cfg.max_token_bytes));
        }
        let mut issuers = HashMap::with_capacity(cfg.issuers.len());
        for i in cfg.issuers {
            let keys = KeySet::try_from(&i.jwks).map_err(|source| ConfigError::Jwks {
                issuer: i.issuer.clone(),
                source,
            })?;
            if issuers.contains_key(&i.issuer) {
                return Err(ConfigError::DuplicateIssuer(i.issuer));
            }
            issuers.insert(
                i.issuer.clone(),
                Issuer {
                    iss: i.issuer,
                    audiences: i.audiences,
                    keys,
                },
            );
        }
        let bundle = Bundle::try_from(&cfg.bundle)?;
        let principal = PrincipalMapping {
            entity_type: policy::type_name(&cfg.principal.entity_type)
                .map_err(ConfigError::EntityType)?,
            id_claim: cfg.principal.id_claim,
            groups_claim: cfg.principal.groups_claim,
            group_type: policy::type_name(&cfg.principal.group_entity_type)
                .map_err(ConfigError::EntityType)?,
        };
        let mapping = RequestMapping {
            action_type: policy::type_name(&cfg.request.action_entity_type)
                .map_err(ConfigError::EntityType)?,
            resource_type: policy::type_name(&cfg.request.resource_entity_type)
                .map_err(ConfigError::EntityType)?,
        };
        Ok(Self {
            issuers,
            policy: PolicyEngine::new(bundle, principal, mapping),
            rules: TimeRules {
                leeway: cfg.clock_skew.0.as_secs(),
            },
            max_token_bytes: cfg.max_token_bytes,
            debug_headers: cfg.debug_headers,
            principal_type: cfg.principal.entity_type,
        })
    }
}

impl Engine {
    /// Parses and compiles a JSON configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::try_from(FilterConfig::from_json(bytes)?)
    }

    /// Whether 403 replies name the determining policies.
    #[must_use]
    pub fn debug_headers(&self) -> bool {
        self.debug_headers
    }

    /// Number of trusted issuers.
    #[must_use]
    pub fn issuer_count(&self) -> usize {
        self.issuers.len()
    }

    /// Version of the bundle in force.
    #[must_use]
    pub fn bundle_version(&self) -> u64 {
        self.policy.bundle().version
    }

    /// Authenticates and authorizes one request. `now` is Unix time in seconds.
    pub fn check(&self, req: &dyn RequestView, now: u64) -> Outcome {
        let mut outcome = Outcome {
            verdict: Verdict::Forbidden,
            principal: None,
            policies: Vec::new(),
            errors: Vec::new(),
            bundle_version: self.bundle_version(),
        };
        let token = match extractor::bearer(req) {
            Extracted::Token(t) => t,
            Extracted::Missing => return outcome.unauthenticated(AuthError::Missing),
            Extracted::WrongScheme => return outcome.unauthenticated(AuthError::WrongScheme),
        };
        let claims = match self.authenticate(&token, now) {
            Ok(c) => c,
            Err(e) => return outcome.unauthenticated(e),
        };
        let Some(principal_id) = self.policy.principal_id(&claims) else {
            return outcome.unauthenticated(AuthError::NoSubject(
                self.policy.principal_claim().to_owned(),
            ));
        };
        outcome.principal = Some(format!("{}::{principal_id:?}", self.principal_type));
        let method = req.header(":method").unwrap_or_default();
        let path = req.header(":path").unwrap_or_default();
        let host = req.header(":authority").unwrap_or_default();
        let d = self.policy.decide(
            principal_id,
            &claims,
            HttpRequest {
                method: &method,
                path: &path,
                host: &host,
            },
        );
        outcome.verdict = if d.allow {
            Verdict::Allow
        } else {
            Verdict::Forbidden
        };
        outcome.policies = d.policies;
        outcome.errors = d.errors;
        outcome
    }

    /// Verifies a token and returns its claims.
    pub fn authenticate(
        &self,
        token: &str,
        now: u64,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let t = token::parse(token, self.max_token_bytes)?;
        let iss = t
            .claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or(AuthError::NoIssuer)?;
        let issuer = self
            .issuers
            .get(iss)
            .ok_or_else(|| AuthError::UnknownIssuer(iss.to_owned()))?;
        issuer.verify(&t, now, self.rules)?;
        Ok(t.claims)
    }
}

impl Outcome {
    fn unauthenticated(mut self, e: AuthError) -> Self {
        self.verdict = Verdict::Unauthenticated(e);
        self
    }
}
