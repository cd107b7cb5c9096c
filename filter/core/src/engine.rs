//! The compiled, immutable configuration snapshot and the per-request entry point.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use hashbrown::HashMap;

use crate::action_routes::ActionRoutes;
use crate::bundle::BundleWire;
use crate::config::{ConfigError, FilterConfig};
use crate::decision::{AuthError, Outcome, Verdict};
use crate::decision_cache::{DecisionKey, DecisionStats, Decisions};
use crate::extractor::{self, Extracted, TokenSource};
use crate::headers::{self, ClaimHeader, Outputs};
use crate::host_crypto::HostCrypto;
use crate::jwks::KeySet;
use crate::policy::{self, HttpRequest, PolicyEngine, PrincipalMapping, RequestMapping};
use crate::policy_sets::{DEFAULT_SET, PolicySets, SetError};
use crate::request;
use crate::request::RequestView;
use crate::routes::{AuthMode, Routes};
use crate::token;
use crate::token_cache::{CacheStats, TokenCache, Verified};
use crate::verifier::{self, Issuer, TimeRules};

/// Everything the filter needs per request, compiled from [`FilterConfig`].
#[derive(Debug)]
pub struct Engine {
    issuers: HashMap<String, (Issuer, Outputs)>,
    /// Every header any issuer writes: client copies are removed from every request.
    written_headers: Vec<String>,
    cache: RefCell<TokenCache>,
    sources: Vec<TokenSource>,
    routes: Routes,
    sets: PolicySets,
    rules: TimeRules,
    max_token_bytes: usize,
    debug_headers: bool,
    principal_type: String,
    host_crypto_allowed: bool,
    context_headers: Vec<String>,
    context_query: Vec<String>,
    host_crypto: Option<Box<dyn HostCrypto>>,
    /// Decisions kept per cached token, and for requests without a token.
    decisions_per_token: usize,
    anonymous_capacity: usize,
    anonymous: RefCell<Decisions>,
    /// Bumped whenever a bundle is replaced: cached decisions of older generations miss.
    generation: u64,
    decision_stats: Cell<DecisionStats>,
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
        if cfg.token_cache.capacity > 1_000_000 {
            return Err(ConfigError::CacheCapacity(cfg.token_cache.capacity));
        }
        if cfg.decision_cache.per_token > 65_536 {
            return Err(ConfigError::DecisionCache(
                "perToken",
                65_536,
                cfg.decision_cache.per_token,
            ));
        }
        if cfg.decision_cache.anonymous > 1_000_000 {
            return Err(ConfigError::DecisionCache(
                "anonymous",
                1_000_000,
                cfg.decision_cache.anonymous,
            ));
        }
        if cfg.token_sources.is_empty() {
            return Err(ConfigError::TokenSource(
                "tokenSources must not be empty".into(),
            ));
        }
        let sources = cfg
            .token_sources
            .iter()
            .map(TokenSource::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::TokenSource)?;
        let routes = Routes::try_from(cfg.routes.as_slice()).map_err(ConfigError::Route)?;
        let mut issuers = HashMap::with_capacity(cfg.issuers.len());
        let mut written_headers: Vec<String> = Vec::new();
        for i in cfg.issuers {
            let (wire, shared) = match (&i.jwks, &i.shared_secrets) {
                (Some(w), None) => (w, false),
                (None, Some(w)) => (w, true),
                _ => return Err(ConfigError::KeySource(i.issuer)),
            };
            let keys = KeySet::try_from(wire).map_err(|source| ConfigError::Jwks {
                issuer: i.issuer.clone(),
                source,
            })?;
            match (shared, keys.is_shared_secret()) {
                (false, true) => return Err(ConfigError::SecretInJwks(i.issuer)),
                (true, false) => return Err(ConfigError::PublicInSecrets(i.issuer)),
                _ => {}
            }
            if issuers.contains_key(&i.issuer) {
                return Err(ConfigError::DuplicateIssuer(i.issuer));
            }
            let outputs = Outputs {
                claim_headers: i
                    .claim_to_headers
                    .iter()
                    .map(|c| ClaimHeader {
                        claim: c.claim.split('.').map(str::to_owned).collect(),
                        header: c.header.clone(),
                    })
                    .collect(),
                payload_header: i.payload_header.clone(),
                forward: i.forward,
            };
            for h in outputs.written() {
                if !headers::valid_header_name(h) {
                    return Err(ConfigError::Header {
                        issuer: i.issuer.clone(),
                        header: h.to_owned(),
                    });
                }
                if !written_headers.iter().any(|w| w == h) {
                    written_headers.push(h.to_owned());
                }
            }
            let issuer = Issuer {
                iss: i.issuer.clone(),
                audiences: i.audiences,
                keys,
                required_claims: i.required_claims,
                max_lifetime: i.max_lifetime.map(|d| d.0.as_secs()),
            };
            issuers.insert(i.issuer, (issuer, outputs));
        }

        let principal = PrincipalMapping {
            entity_type: policy::type_name(&cfg.principal.entity_type)
                .map_err(ConfigError::EntityType)?,
            id_claim: cfg.principal.id_claim,
            groups_claim: cfg.principal.groups_claim,
            group_type: policy::type_name(&cfg.principal.group_entity_type)
                .map_err(ConfigError::EntityType)?,
            anonymous: policy::entity_uid(&cfg.principal.anonymous)
                .map_err(ConfigError::EntityType)?,
        };
        let mapping = RequestMapping {
            action_type: policy::type_name(&cfg.request.action_entity_type)
                .map_err(ConfigError::EntityType)?,
            resource_type: policy::type_name(&cfg.request.resource_entity_type)
                .map_err(ConfigError::EntityType)?,
            routes: ActionRoutes::try_from(cfg.request.routes.as_slice())
                .map_err(ConfigError::Route)?,
        };
        if let Some(h) = cfg
            .request
            .context_headers
            .iter()
            .find(|h| !headers::valid_header_name(h) && h.as_str() != "host")
        {
            return Err(ConfigError::Route(format!(
                "request.contextHeaders: {h:?} is not a lower-case header name"
            )));
        }
        let sets = PolicySets::new(
            (&cfg.bundle, cfg.dry_run, cfg.shadow_bundle.as_ref()),
            &cfg.tenants,
            cfg.tenant_claim,
            &principal,
            &mapping,
        )
        .map_err(|e| match e {
            // The default set's bundle is the configuration's `bundle`.
            SetError::Bundle { set, source } if set == DEFAULT_SET => ConfigError::Bundle(source),
            e => ConfigError::PolicySets(e),
        })?;
        Ok(Self {
            issuers,
            written_headers,
            cache: RefCell::new(TokenCache::new(cfg.token_cache.capacity)),
            sources,
            routes,
            sets,
            rules: TimeRules {
                leeway: cfg.clock_skew.0.as_secs(),
            },
            max_token_bytes: cfg.max_token_bytes,
            debug_headers: cfg.debug_headers,
            principal_type: cfg.principal.entity_type,
            host_crypto_allowed: cfg.host_crypto,
            context_headers: cfg.request.context_headers,
            context_query: cfg.request.context_query,
            host_crypto: None,
            // Decisions live in token-cache entries: without that cache there is nowhere to
            // keep them.
            decisions_per_token: if cfg.token_cache.capacity == 0 {
                0
            } else {
                cfg.decision_cache.per_token
            },
            anonymous_capacity: cfg.decision_cache.anonymous,
            anonymous: RefCell::default(),
            generation: 0,
            decision_stats: Cell::default(),
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

    /// Token cache counters.
    #[must_use]
    pub fn cache_stats(&self) -> CacheStats {
        self.cache
            .try_borrow()
            .map(|c| c.stats())
            .unwrap_or_default()
    }

    /// Version of the bundle in force.
    #[must_use]
    pub fn bundle_version(&self) -> u64 {
        self.sets.default_set().version()
    }

    /// Decision cache counters.
    #[must_use]
    pub fn decision_stats(&self) -> DecisionStats {
        self.decision_stats.get()
    }

    /// Authenticates and authorizes one request. `now` is Unix time in seconds.
    pub fn check(&self, req: &dyn RequestView, now: u64) -> Outcome {
        Outcome::clone(&self.decide(req, now))
    }

    /// [`Engine::check`] without copying the outcome: a repeated request gets the outcome
    /// its first occurrence got, shared (the decision cache).
    pub fn decide(&self, req: &dyn RequestView, now: u64) -> Rc<Outcome> {
        // Built only when the decision is not in the cache.
        let fresh = || Outcome {
            verdict: Verdict::Forbidden,
            principal: None,
            policies: Vec::new(),
            errors: Vec::new(),
            bundle_version: self.bundle_version(),
            policy_set: String::new(),
            dry_run: None,
            shadow: None,
            remove_headers: self.written_headers.clone(),
            set_headers: Vec::new(),
        };
        let method = req.header(":method").unwrap_or_default();
        let path = req.header(":path").unwrap_or_default();
        let host = req.header(":authority").unwrap_or_default();
        let inputs = self.sets.inputs();
        let selected: Vec<(&str, &str)> = if inputs.headers {
            self.context_headers
                .iter()
                .filter_map(|h| req.header(h).map(|v| (h.as_str(), v)))
                .collect()
        } else {
            Vec::new()
        };
        let query: Vec<(String, String)> = if inputs.query && !self.context_query.is_empty() {
            request::query_params(path)
                .into_iter()
                .filter(|(k, _)| self.context_query.contains(k))
                .collect()
        } else {
            Vec::new()
        };
        let source = if inputs.source {
            req.source_address()
        } else {
            None
        };
        let http = HttpRequest {
            method,
            path,
            host,
            headers: &selected,
            query: &query,
            source: source.as_deref().map(request::address_ip),
            time: now,
        };
        let mode = self
            .routes
            .mode(host, path.split(['?', '#']).next().unwrap_or_default());
        let extracted = match mode {
            AuthMode::Public => Extracted::Missing,
            AuthMode::Required | AuthMode::Optional => extractor::extract(req, &self.sources),
        };
        // Everything the decision depends on besides the token and the policies: the path
        // holds the query, and an input no policy can read is left out.
        let key = |token_header: Option<&str>| {
            let mut k = DecisionKey::with_capacity(64 + path.len() + host.len());
            k.field(method.as_bytes())
                .field(path.as_bytes())
                .field(host.as_bytes());
            for (name, value) in &selected {
                k.field(name.as_bytes()).field(value.as_bytes());
            }
            if inputs.source {
                k.optional(source.as_deref().map(str::as_bytes));
            }
            if inputs.time {
                k.field(&now.to_le_bytes());
            }
            k.optional(token_header.map(str::as_bytes));
            k
        };
        let (token, token_header) = match extracted {
            Extracted::Token { token, header } => (token, header),
            Extracted::Missing | Extracted::WrongScheme if mode != AuthMode::Required => {
                // No credentials on a public or optional route: the anonymous principal.
                let key = (self.anonymous_capacity > 0).then(|| key(None));
                if let Some(hit) = key.as_ref().and_then(|k| self.cached(&self.anonymous, k)) {
                    return hit;
                }
                let mut outcome = fresh();
                outcome.principal = Some(self.policy().anonymous().to_string());
                let none = serde_json::Map::new();
                let empty = policy::claims_value(&none);
                self.authorize(None, (&none, &empty), http, &mut outcome);
                return self.remember(&self.anonymous, key, outcome, self.anonymous_capacity);
            }
            Extracted::Missing => return Rc::new(fresh().unauthenticated(AuthError::Missing)),
            Extracted::WrongScheme => {
                return Rc::new(fresh().unauthenticated(AuthError::WrongScheme));
            }
        };
        let verified = match self.authenticate(&token, now) {
            Ok(v) => v,
            Err(e) => return Rc::new(fresh().unauthenticated(e)),
        };
        let key = (self.decisions_per_token > 0).then(|| key(token_header));
        if let Some(hit) = key
            .as_ref()
            .and_then(|k| self.cached(&verified.decisions, k))
        {
            return hit;
        }
        let mut outcome = fresh();
        let claims = &*verified.claims;
        let Some(principal_id) = self.policy().principal_id(claims) else {
            return Rc::new(outcome.unauthenticated(AuthError::NoSubject(
                self.policy().principal_claim().to_owned(),
            )));
        };
        outcome.principal = Some(format!("{}::{principal_id:?}", self.principal_type));
        let cedar_claims = verified
            .cedar_claims
            .get_or_init(|| policy::claims_value(claims));
        self.authorize(
            Some(principal_id),
            (claims, cedar_claims),
            http,
            &mut outcome,
        );
        if outcome.verdict == Verdict::Allow
            && let Some((_, outputs)) = self.issuers.get(&*verified.issuer)
        {
            outcome.set_headers = outputs.render(claims, &token);
            if !outputs.forward
                && let Some(h) = token_header
            {
                outcome.remove_headers.push(h.to_owned());
            }
        }
        self.remember(&verified.decisions, key, outcome, self.decisions_per_token)
    }

    /// A decision taken before for the same request under the policies in force.
    fn cached(&self, decisions: &RefCell<Decisions>, key: &DecisionKey) -> Option<Rc<Outcome>> {
        let hit = decisions
            .try_borrow()
            .ok()
            .and_then(|d| d.get(key, self.generation));
        let mut stats = self.decision_stats.get();
        if hit.is_some() {
            stats.hits += 1;
        } else {
            stats.misses += 1;
        }
        self.decision_stats.set(stats);
        hit
    }

    /// Keeps a fresh decision (when there is a key to keep it under) and returns it.
    fn remember(
        &self,
        decisions: &RefCell<Decisions>,
        key: Option<DecisionKey>,
        outcome: Outcome,
        capacity: usize,
    ) -> Rc<Outcome> {
        let outcome = Rc::new(outcome);
        if let (Some(key), Ok(mut d)) = (key, decisions.try_borrow_mut()) {
            d.insert(key, outcome.clone(), self.generation, capacity);
        }
        outcome
    }

    /// The default set's mapping (principal claims, anonymous principal).
    fn policy(&self) -> &PolicyEngine {
        &self.sets.default_set().engine
    }

    /// The policy sets.
    #[must_use]
    pub fn policy_sets(&self) -> &PolicySets {
        &self.sets
    }

    /// Replaces a policy set's bundle (`default` or a tenant id); an invalid bundle changes
    /// nothing. Returns the version now in force.
    pub fn replace_bundle(&mut self, set: &str, wire: &BundleWire) -> Result<u64, SetError> {
        let version = self.sets.replace_bundle(set, wire)?;
        // Decisions taken under the old bundle are never served again.
        self.generation += 1;
        self.anonymous.get_mut().clear();
        Ok(version)
    }

    /// Selects the policy set and decides; fills the verdict and its explanation.
    fn authorize(
        &self,
        principal_id: Option<&str>,
        (claims, cedar_claims): (
            &serde_json::Map<String, serde_json::Value>,
            &cedar_policy_core::ast::Value,
        ),
        http: HttpRequest<'_>,
        outcome: &mut Outcome,
    ) {
        let token_claims = principal_id.map(|_| claims);
        let set = match self.sets.select(http.host, token_claims) {
            Ok(set) => set,
            Err(e) => {
                outcome.verdict = Verdict::Forbidden;
                outcome.errors.push(e);
                return;
            }
        };
        let d = set.decide(principal_id, claims, cedar_claims, http);
        outcome.policy_set.clone_from(&set.id);
        outcome.bundle_version = set.version();
        outcome.shadow = d.shadow.map(|s| (s.allow, s.policies));
        outcome.verdict = if d.enforced.allow || set.dry_run {
            Verdict::Allow
        } else {
            Verdict::Forbidden
        };
        if set.dry_run {
            outcome.dry_run = Some(d.enforced.allow);
        }
        outcome.policies = d.enforced.policies;
        outcome.errors = d.enforced.errors;
    }

    /// Lets the host verify RSA and ECDSA signatures (unless the configuration says
    /// `hostCrypto: false`); returns whether it will be used.
    pub fn set_host_crypto(&mut self, host: Box<dyn HostCrypto>) -> bool {
        if self.host_crypto_allowed {
            self.host_crypto = Some(host);
        }
        self.host_crypto_allowed
    }

    /// Verifies a token (or finds it in the cache) and returns its claims.
    pub fn authenticate(&self, token: &str, now: u64) -> Result<Verified, AuthError> {
        let leeway = self.rules.leeway;
        if let Ok(mut cache) = self.cache.try_borrow_mut()
            && let Some(hit) = cache.get(token, now, leeway)
        {
            return Ok(hit);
        }
        let t = token::parse(token, self.max_token_bytes)?;
        let iss = t
            .claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or(AuthError::NoIssuer)?;
        let issuer = self
            .issuers
            .get(iss)
            .map(|(issuer, _)| issuer)
            .ok_or_else(|| AuthError::UnknownIssuer(iss.to_owned()))?;
        issuer.verify(&t, now, self.rules, self.host_crypto.as_deref())?;
        let exp = t
            .claims
            .get("exp")
            .and_then(verifier::numeric_date)
            .ok_or(AuthError::NoExpiry)?;
        let verified = Verified {
            cedar_claims: Rc::default(),
            decisions: Rc::default(),
            claims: Rc::new(t.claims),
            issuer: Rc::from(issuer.iss.as_str()),
            exp,
        };
        if let Ok(mut cache) = self.cache.try_borrow_mut() {
            cache.insert(token, verified.clone(), now, leeway);
        }
        Ok(verified)
    }
}

impl Outcome {
    fn unauthenticated(mut self, e: AuthError) -> Self {
        self.verdict = Verdict::Unauthenticated(e);
        self
    }
}
