//! Per-worker state and the per-request entry point: the [`Snapshot`] in force, the token and
//! decision caches and their counters. A proxy-wasm VM (one per Envoy worker) holds one
//! [`Engine`]; a new snapshot replaces the one in force whole ([`Engine::swap`]), and the
//! caches keep what is still valid under it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::auth::extractor::{self, Extracted};
use crate::auth::host_crypto::HostCrypto;
use crate::auth::routes::AuthMode;
use crate::auth::token;
use crate::auth::verifier;
use crate::authz::authorizer::{self, HttpRequest};
use crate::authz::tenants::{DEFAULT_SET, SetError, TenantSets};
use crate::bundle::BundleWire;
use crate::cache::decisions::{DecisionKey, DecisionStats, Decisions};
use crate::cache::tokens::{CacheStats, TokenCache, Verified};
use crate::config::{ConfigError, FilterConfig};
use crate::decision::{AuthError, Outcome, Verdict};
use crate::http::request;
use crate::http::request::RequestView;
use crate::snapshot::Snapshot;

/// One worker's engine: the snapshot in force and what the worker learns while it serves
/// requests (verified tokens, decisions, counters). Single-threaded, as a proxy-wasm VM is.
pub struct Engine {
    snapshot: RefCell<Arc<Snapshot>>,
    /// Bumped whenever the snapshot is replaced: cached decisions of older generations miss.
    generation: Cell<u64>,
    cache: RefCell<TokenCache>,
    anonymous: RefCell<Decisions>,
    host_crypto: Option<Box<dyn HostCrypto>>,
    decision_stats: Cell<DecisionStats>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("generation", &self.generation.get())
            .field("host_crypto", &self.host_crypto.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether a cache answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The request did not consult it (cache off, or not reached).
    Unused,
    Hit,
    Miss,
}

/// What [`Engine::decide`] did: the outcome and how it was reached.
#[derive(Debug, Clone)]
pub struct Decided {
    pub outcome: Rc<Outcome>,
    pub token_cache: CacheUse,
    pub decision_cache: CacheUse,
    /// Whether policies were evaluated (false for a cached decision or a request refused
    /// before authorization).
    pub evaluated: bool,
}

impl Decided {
    fn new(outcome: Rc<Outcome>) -> Self {
        Self {
            outcome,
            token_cache: CacheUse::Unused,
            decision_cache: CacheUse::Unused,
            evaluated: false,
        }
    }
}

impl TryFrom<FilterConfig> for Engine {
    type Error = ConfigError;

    /// Compiles `cfg` into a snapshot and an engine over it (no host crypto).
    fn try_from(cfg: FilterConfig) -> Result<Self, Self::Error> {
        Ok(Self::new(Arc::new(Snapshot::try_from(cfg)?), None))
    }
}

impl Engine {
    /// A worker's engine over `snapshot`. `host_crypto` (the host's signature checks) is used
    /// when the configuration allows it (`hostCrypto`, default true).
    #[must_use]
    pub fn new(snapshot: Arc<Snapshot>, host_crypto: Option<Box<dyn HostCrypto>>) -> Self {
        Self {
            cache: RefCell::new(TokenCache::new(snapshot.token_cache_capacity)),
            snapshot: RefCell::new(snapshot),
            generation: Cell::new(0),
            anonymous: RefCell::default(),
            host_crypto,
            decision_stats: Cell::default(),
        }
    }

    /// Parses and compiles a JSON configuration (no host crypto).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Ok(Self::new(Arc::new(Snapshot::from_json(bytes)?), None))
    }

    /// The snapshot in force.
    #[must_use]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Puts `next` in force. Decisions taken under the snapshot before are never served
    /// again; verified tokens stay cached when `next` has the same issuers.
    pub fn swap(&self, next: Arc<Snapshot>) {
        let same_issuers = self.snapshot.borrow().same_issuers(&next);
        if !same_issuers && let Ok(mut cache) = self.cache.try_borrow_mut() {
            *cache = TokenCache::new(next.token_cache_capacity);
        }
        if let Ok(mut anonymous) = self.anonymous.try_borrow_mut() {
            anonymous.clear();
        }
        self.generation.set(self.generation.get().wrapping_add(1));
        *self.snapshot.borrow_mut() = next;
    }

    /// Replaces a policy set's bundle (`default` or a tenant id); an invalid bundle changes
    /// nothing. Returns the version now in force.
    pub fn replace_bundle(&self, set: &str, wire: &BundleWire) -> Result<u64, SetError> {
        let next = self.snapshot().with_bundle(set, wire)?;
        let version = next.policy_sets().get(set).map_or(0, |s| s.version());
        self.swap(Arc::new(next));
        Ok(version)
    }

    /// The Cedar action and resource the policy set `set` gives a request, as text (for
    /// decision logs); `None` if no such set is in force.
    #[must_use]
    pub fn cedar_target(&self, set: &str, method: &str, path: &str) -> Option<(String, String)> {
        let set = if set.is_empty() { DEFAULT_SET } else { set };
        self.snapshot
            .borrow()
            .policy_sets()
            .get(set)
            .map(|s| s.cedar_target(method, path))
    }

    /// Whether debug headers are on.
    #[must_use]
    pub fn debug_headers(&self) -> bool {
        self.snapshot.borrow().debug_headers
    }

    /// Number of trusted issuers.
    #[must_use]
    pub fn issuer_count(&self) -> usize {
        self.snapshot.borrow().issuers.len()
    }

    /// Whether signatures go to the host's crypto (given, and allowed by the configuration).
    #[must_use]
    pub fn host_crypto_in_use(&self) -> bool {
        self.host_crypto.is_some() && self.snapshot.borrow().host_crypto
    }

    /// Token cache counters.
    #[must_use]
    pub fn cache_stats(&self) -> CacheStats {
        self.cache
            .try_borrow()
            .map(|c| c.stats())
            .unwrap_or_default()
    }

    /// Version of the default set's bundle in force.
    #[must_use]
    pub fn bundle_version(&self) -> u64 {
        self.snapshot.borrow().bundle_version()
    }

    /// Decision cache counters.
    #[must_use]
    pub fn decision_stats(&self) -> DecisionStats {
        self.decision_stats.get()
    }

    /// The policy sets in force.
    #[must_use]
    pub fn policy_sets(&self) -> TenantSets {
        self.snapshot.borrow().sets.clone()
    }

    /// Authenticates and authorizes one request. `now` is Unix time in seconds.
    pub fn check(&self, req: &dyn RequestView, now: u64) -> Outcome {
        Outcome::clone(&self.decide(req, now).outcome)
    }

    /// [`Engine::check`] without copying the outcome, and with how it was reached: a
    /// repeated request gets the outcome its first occurrence got, shared (the decision
    /// cache). The whole decision is taken under one snapshot.
    pub fn decide(&self, req: &dyn RequestView, now: u64) -> Decided {
        let snap = self.snapshot();
        let snap = &*snap;
        // Built only when the decision is not in the cache.
        let fresh = || Outcome {
            verdict: Verdict::Forbidden,
            principal: None,
            policies: Vec::new(),
            errors: Vec::new(),
            bundle_version: snap.bundle_version(),
            policy_set: String::new(),
            dry_run: None,
            shadow: None,
            remove_headers: snap.issuers.written_headers.clone(),
            set_headers: Vec::new(),
        };
        let refused = |e: AuthError| Decided::new(Rc::new(fresh().unauthenticated(e)));
        let method = req.header(":method").unwrap_or_default();
        let path = req.header(":path").unwrap_or_default();
        let host = req.header(":authority").unwrap_or_default();
        let inputs = snap.sets.inputs();
        let selected: Vec<(&str, &str)> = if inputs.headers {
            snap.context_headers
                .iter()
                .filter_map(|h| req.header(h).map(|v| (h.as_str(), v)))
                .collect()
        } else {
            Vec::new()
        };
        let query: Vec<(String, String)> = if inputs.query && !snap.context_query.is_empty() {
            request::query_params(path)
                .into_iter()
                .filter(|(k, _)| snap.context_query.contains(k))
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
        let mode = snap
            .routes
            .mode(host, path.split(['?', '#']).next().unwrap_or_default());
        let extracted = match mode {
            AuthMode::Public => Extracted::Missing,
            AuthMode::Required | AuthMode::Optional => extractor::extract(req, &snap.sources),
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
                let key = (snap.anonymous_capacity > 0).then(|| key(None));
                if let Some(hit) = key.as_ref().and_then(|k| self.cached(&self.anonymous, k)) {
                    return hit;
                }
                let mut outcome = fresh();
                outcome.principal = Some(snap.default_engine().anonymous().to_string());
                let none = serde_json::Map::new();
                let empty = authorizer::claims_value(&none);
                authorize(snap, None, (&none, &empty), http, &mut outcome);
                return self.remember(&self.anonymous, key, outcome, snap.anonymous_capacity);
            }
            Extracted::Missing => return refused(AuthError::Missing),
            Extracted::WrongScheme => return refused(AuthError::WrongScheme),
        };
        let (verified, token_cache) = match self.verify(snap, &token, now) {
            Ok(v) => v,
            Err(e) => {
                let mut d = refused(e);
                if snap.token_cache_capacity > 0 {
                    d.token_cache = CacheUse::Miss;
                }
                return d;
            }
        };
        let key = (snap.decisions_per_token > 0).then(|| key(token_header));
        if let Some(mut hit) = key
            .as_ref()
            .and_then(|k| self.cached(&verified.decisions, k))
        {
            hit.token_cache = token_cache;
            return hit;
        }
        let mut outcome = fresh();
        let claims = &*verified.claims;
        let Some(principal_id) = snap.default_engine().principal_id(claims) else {
            let mut d = refused(AuthError::NoSubject(
                snap.default_engine().principal_claim().to_owned(),
            ));
            d.token_cache = token_cache;
            return d;
        };
        outcome.principal = Some(format!("{}::{principal_id:?}", snap.principal_type));
        let cedar_claims = verified
            .cedar_claims
            .get_or_init(|| authorizer::claims_value(claims));
        authorize(
            snap,
            Some(principal_id),
            (claims, cedar_claims),
            http,
            &mut outcome,
        );
        if outcome.verdict == Verdict::Allow
            && let Some((_, outputs)) = snap.issuers.by_iss.get(&*verified.issuer)
        {
            outcome.set_headers = outputs.render(claims, &token);
            if !outputs.forward
                && let Some(h) = token_header
            {
                outcome.remove_headers.push(h.to_owned());
            }
        }
        let mut d = self.remember(&verified.decisions, key, outcome, snap.decisions_per_token);
        d.token_cache = token_cache;
        d
    }

    /// A decision taken before for the same request under the snapshot in force.
    fn cached(&self, decisions: &RefCell<Decisions>, key: &DecisionKey) -> Option<Decided> {
        let hit = decisions
            .try_borrow()
            .ok()
            .and_then(|d| d.get(key, self.generation.get()));
        let mut stats = self.decision_stats.get();
        if hit.is_some() {
            stats.hits += 1;
        } else {
            stats.misses += 1;
        }
        self.decision_stats.set(stats);
        hit.map(|outcome| Decided {
            decision_cache: CacheUse::Hit,
            ..Decided::new(outcome)
        })
    }

    /// Keeps a fresh decision (when there is a key to keep it under) and returns it.
    fn remember(
        &self,
        decisions: &RefCell<Decisions>,
        key: Option<DecisionKey>,
        outcome: Outcome,
        capacity: usize,
    ) -> Decided {
        let outcome = Rc::new(outcome);
        let decision_cache = if key.is_some() {
            CacheUse::Miss
        } else {
            CacheUse::Unused
        };
        if let (Some(key), Ok(mut d)) = (key, decisions.try_borrow_mut()) {
            d.insert(key, outcome.clone(), self.generation.get(), capacity);
        }
        Decided {
            decision_cache,
            evaluated: true,
            ..Decided::new(outcome)
        }
    }

    /// Verifies a token (or finds it in the cache) and returns its claims.
    pub fn authenticate(&self, token: &str, now: u64) -> Result<Verified, AuthError> {
        self.verify(&self.snapshot(), token, now).map(|(v, _)| v)
    }

    fn verify(
        &self,
        snap: &Snapshot,
        token: &str,
        now: u64,
    ) -> Result<(Verified, CacheUse), AuthError> {
        let leeway = snap.rules.leeway;
        let use_cache = snap.token_cache_capacity > 0;
        if use_cache
            && let Ok(mut cache) = self.cache.try_borrow_mut()
            && let Some(hit) = cache.get(token, now, leeway)
        {
            return Ok((hit, CacheUse::Hit));
        }
        let t = token::parse(token, snap.max_token_bytes)?;
        let iss = t
            .claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or(AuthError::NoIssuer)?;
        let issuer = snap
            .issuers
            .by_iss
            .get(iss)
            .map(|(issuer, _)| issuer)
            .ok_or_else(|| AuthError::UnknownIssuer(iss.to_owned()))?;
        let host = if snap.host_crypto {
            self.host_crypto.as_deref()
        } else {
            None
        };
        issuer.verify(&t, now, snap.rules, host)?;
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
        if use_cache && let Ok(mut cache) = self.cache.try_borrow_mut() {
            cache.insert(token, verified.clone(), now, leeway);
        }
        let used = if use_cache {
            CacheUse::Miss
        } else {
            CacheUse::Unused
        };
        Ok((verified, used))
    }
}

/// Selects the policy set and decides; fills the verdict and its explanation.
fn authorize(
    snap: &Snapshot,
    principal_id: Option<&str>,
    (claims, cedar_claims): (
        &serde_json::Map<String, serde_json::Value>,
        &cedar_policy_core::ast::Value,
    ),
    http: HttpRequest<'_>,
    outcome: &mut Outcome,
) {
    let token_claims = principal_id.map(|_| claims);
    let set = match snap.sets.select(http.host, token_claims) {
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

impl Outcome {
    fn unauthenticated(mut self, e: AuthError) -> Self {
        self.verdict = Verdict::Unauthenticated(e);
        self
    }
}
