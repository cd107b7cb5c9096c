//! The compiled configuration: immutable once built, replaced whole when a new bundle or new
//! keys arrive (the glue swaps an `Arc`). What changes per request (caches, counters) lives in
//! [`crate::Engine`], not here.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::auth::extractor::{TokenSource, TokenSourceError};
use crate::auth::jwks::KeySet;
use crate::auth::routes::Routes;
use crate::auth::verifier::{Issuer, TimeRules};
use crate::authz::action_routes::ActionRoutes;
use crate::authz::authorizer::{self, HttpAuthorizer, PrincipalMapping, RequestMapping};
use crate::authz::tenants::{DEFAULT_SET, SetError, TenantSets};
use crate::bundle::signed::BundleDocument;
use crate::bundle::{Bundle, BundleWire};
use crate::config::{ConfigError, FilterConfig, IssuerConfig};
use crate::http::claim_headers::{self, ClaimHeader, Outputs};
use crate::sync::SyncSettings;

/// The trusted issuers, compiled.
#[derive(Debug)]
pub struct Issuers {
    pub(crate) by_iss: HashMap<String, (Issuer, Outputs)>,
    /// Every header any issuer writes: client copies are removed from every request.
    pub(crate) written_headers: Vec<String>,
    /// What they were compiled from (a new document with the same issuers keeps these).
    configs: Vec<IssuerConfig>,
}

impl TryFrom<Vec<IssuerConfig>> for Issuers {
    type Error = ConfigError;

    fn try_from(configs: Vec<IssuerConfig>) -> Result<Self, Self::Error> {
        if configs.is_empty() {
            return Err(ConfigError::NoIssuers);
        }
        let mut by_iss = HashMap::with_capacity(configs.len());
        let mut written_headers: Vec<String> = Vec::new();
        for i in &configs {
            let (wire, shared) = match (&i.jwks, &i.shared_secrets) {
                (Some(w), None) => (w, false),
                (None, Some(w)) => (w, true),
                _ => return Err(ConfigError::KeySource(i.issuer.clone())),
            };
            let keys = KeySet::try_from(wire).map_err(|source| ConfigError::Jwks {
                issuer: i.issuer.clone(),
                source,
            })?;
            match (shared, keys.is_shared_secret()) {
                (false, true) => return Err(ConfigError::SecretInJwks(i.issuer.clone())),
                (true, false) => return Err(ConfigError::PublicInSecrets(i.issuer.clone())),
                _ => {}
            }
            if by_iss.contains_key(&i.issuer) {
                return Err(ConfigError::DuplicateIssuer(i.issuer.clone()));
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
                if !claim_headers::valid_header_name(h) {
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
                audiences: i.audiences.clone(),
                keys,
                required_claims: i.required_claims.clone(),
                max_lifetime: i.max_lifetime.map(|d| d.0.as_secs()),
            };
            by_iss.insert(i.issuer.clone(), (issuer, outputs));
        }
        Ok(Self {
            by_iss,
            written_headers,
            configs,
        })
    }
}

impl Issuers {
    /// Number of trusted issuers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_iss.len()
    }

    /// Whether there are none (only in the trial compile of a configuration waiting for
    /// its first document).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_iss.is_empty()
    }

    /// Whether `iss` is trusted.
    #[must_use]
    pub fn contains(&self, iss: &str) -> bool {
        self.by_iss.contains_key(iss)
    }
}

/// Why a document could not become the snapshot in force. Nothing changes when it is refused.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("the document's issuers: {0}")]
    Issuers(ConfigError),
    #[error("{0}")]
    Bundle(SetError),
}

/// Everything the filter needs per request, compiled from [`FilterConfig`]; never changed
/// after it is built.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) issuers: Arc<Issuers>,
    pub(crate) sources: Vec<TokenSource>,
    pub(crate) routes: Routes,
    pub(crate) sets: TenantSets,
    pub(crate) rules: TimeRules,
    pub(crate) max_token_bytes: usize,
    pub(crate) debug_headers: bool,
    pub(crate) principal_type: String,
    pub(crate) host_crypto: bool,
    pub(crate) context_headers: Vec<String>,
    pub(crate) context_query: Vec<String>,
    pub(crate) token_cache_capacity: usize,
    /// Decisions kept per cached token, and for requests without a token.
    pub(crate) decisions_per_token: usize,
    pub(crate) anonymous_capacity: usize,
}

/// Refuses cache sizes and limits outside their documented bounds.
fn check_limits(cfg: &FilterConfig) -> Result<(), ConfigError> {
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
        return Err(TokenSourceError::Empty.into());
    }
    Ok(())
}

fn mappings(cfg: &FilterConfig) -> Result<(PrincipalMapping, RequestMapping), ConfigError> {
    let principal = PrincipalMapping {
        entity_type: authorizer::type_name(&cfg.principal.entity_type)?,
        id_claim: cfg.principal.id_claim.clone(),
        groups_claim: cfg.principal.groups_claim.clone(),
        group_type: authorizer::type_name(&cfg.principal.group_entity_type)?,
        anonymous: authorizer::entity_uid(&cfg.principal.anonymous)?,
    };
    let mapping = RequestMapping {
        action_type: authorizer::type_name(&cfg.request.action_entity_type)?,
        resource_type: authorizer::type_name(&cfg.request.resource_entity_type)?,
        routes: ActionRoutes::try_from(cfg.request.routes.as_slice())?,
    };
    if let Some(h) = cfg
        .request
        .context_headers
        .iter()
        .find(|h| !claim_headers::valid_header_name(h) && h.as_str() != "host")
    {
        return Err(ConfigError::ContextHeader(h.clone()));
    }
    Ok((principal, mapping))
}

impl TryFrom<FilterConfig> for Snapshot {
    type Error = ConfigError;

    fn try_from(cfg: FilterConfig) -> Result<Self, Self::Error> {
        Self::compile(cfg, true)
    }
}

/// What a configuration starts as.
#[derive(Debug)]
pub enum Start {
    /// Everything is there: the snapshot to put in force.
    Ready(Arc<Snapshot>),
    /// `sync` will bring what is missing (the bundles of these sets, and the issuers when
    /// `issuers` is set); everything else has been checked. Until then the filter answers
    /// 503.
    Pending { bundles: Vec<String>, issuers: bool },
}

impl Start {
    /// Checks `cfg` whole. Without `sync` every bundle and an issuer are required; with it,
    /// what is missing is left for the first documents, and the rest is compiled as a trial
    /// (with empty bundles in the missing places) so that anything wrong is refused now.
    pub fn new(cfg: &FilterConfig) -> Result<Self, ConfigError> {
        Self::with_sync_settings(cfg).map(|(start, _)| start)
    }

    /// [`Start::new`], with the checked `sync` section it read (for a host to follow
    /// policy-sync with, without reading it again).
    pub fn with_sync_settings(
        cfg: &FilterConfig,
    ) -> Result<(Self, Option<SyncSettings>), ConfigError> {
        let sync = cfg.sync_settings()?;
        let missing: Vec<String> = cfg
            .missing_bundles()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let no_issuers = cfg.issuers.is_empty();
        if sync.is_none() || (missing.is_empty() && !no_issuers) {
            let snapshot = Snapshot::try_from(cfg.clone())?;
            return Ok((Start::Ready(Arc::new(snapshot)), sync));
        }
        let mut trial = cfg.clone();
        let empty = || Some(BundleWire::default());
        if trial.bundle.is_none() {
            trial.bundle = empty();
        }
        for t in &mut trial.tenants {
            if t.bundle.is_none() {
                t.bundle = empty();
            }
        }
        Snapshot::compile(trial, false)?;
        let pending = Start::Pending {
            bundles: missing,
            issuers: no_issuers,
        };
        Ok((pending, sync))
    }
}

impl Snapshot {
    fn compile(mut cfg: FilterConfig, require_issuers: bool) -> Result<Self, ConfigError> {
        let issuers = if !require_issuers && cfg.issuers.is_empty() {
            Issuers {
                by_iss: HashMap::new(),
                written_headers: Vec::new(),
                configs: Vec::new(),
            }
        } else {
            Issuers::try_from(std::mem::take(&mut cfg.issuers))?
        };
        check_limits(&cfg)?;
        let sources = cfg
            .token_sources
            .iter()
            .map(TokenSource::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let routes = Routes::try_from(cfg.routes.as_slice())?;
        let (principal, mapping) = mappings(&cfg)?;
        let bundle = cfg
            .bundle
            .as_ref()
            .ok_or_else(|| ConfigError::NoBundle(DEFAULT_SET.to_owned()))?;
        let sets = TenantSets::new(
            (bundle, cfg.dry_run, cfg.shadow_bundle.as_ref()),
            &cfg.tenants,
            cfg.tenant_claim,
            &principal,
            &mapping,
        )
        .map_err(|e| match e {
            // The default set's bundle is the configuration's `bundle`.
            SetError::Bundle { set, source } if set == DEFAULT_SET => ConfigError::Bundle(source),
            SetError::NoBundle(set) => ConfigError::NoBundle(set),
            e => ConfigError::TenantSets(e),
        })?;
        Ok(Self {
            issuers: Arc::new(issuers),
            sources,
            routes,
            sets,
            rules: TimeRules {
                leeway: cfg.clock_skew.0.as_secs(),
            },
            max_token_bytes: cfg.max_token_bytes,
            debug_headers: cfg.debug_headers,
            principal_type: cfg.principal.entity_type,
            host_crypto: cfg.host_crypto,
            context_headers: cfg.request.context_headers,
            context_query: cfg.request.context_query,
            token_cache_capacity: cfg.token_cache.capacity,
            // Decisions live in token-cache entries: without that cache there is nowhere to
            // keep them.
            decisions_per_token: if cfg.token_cache.capacity == 0 {
                0
            } else {
                cfg.decision_cache.per_token
            },
            anonymous_capacity: cfg.decision_cache.anonymous,
        })
    }
}

impl Snapshot {
    /// Parses and compiles a JSON configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::try_from(FilterConfig::from_json(bytes)?)
    }

    /// Whether 403 replies name the determining policies.
    #[must_use]
    pub fn debug_headers(&self) -> bool {
        self.debug_headers
    }

    /// Whether the configuration lets the host verify signatures (`hostCrypto`).
    #[must_use]
    pub fn host_crypto_allowed(&self) -> bool {
        self.host_crypto
    }

    /// The trusted issuers.
    #[must_use]
    pub fn issuers(&self) -> &Issuers {
        &self.issuers
    }

    /// Version of the default set's bundle.
    #[must_use]
    pub fn bundle_version(&self) -> u64 {
        self.sets.default_set().version()
    }

    /// The policy sets.
    #[must_use]
    pub fn policy_sets(&self) -> &TenantSets {
        &self.sets
    }

    /// The default set's engine (principal mapping, anonymous principal).
    pub(crate) fn default_engine(&self) -> &HttpAuthorizer {
        &self.sets.default_set().engine
    }

    /// This snapshot with one set's bundle (`default` or a tenant id) replaced; the other
    /// sets and the issuers are shared, not recompiled.
    pub fn with_bundle(&self, set: &str, wire: &BundleWire) -> Result<Self, SetError> {
        let mut next = self.clone();
        next.sets = self.sets.with_bundle(set, wire)?;
        Ok(next)
    }

    /// This snapshot with a verified document applied: the tenant's bundle replaced and, when
    /// the document lists issuers, those issuers (keys and token settings) in place of the
    /// ones in force. Issuers equal to the ones in force are kept as they are (and with them
    /// the tokens verified against them).
    pub fn with_document(&self, doc: &BundleDocument) -> Result<Self, DocumentError> {
        self.with_document_compiled(doc, None)
    }

    /// [`Snapshot::with_document`] given the document's bundle already compiled (`compiled`,
    /// when the caller has it: the worker that checked the document).
    pub fn with_document_compiled(
        &self,
        doc: &BundleDocument,
        compiled: Option<Bundle>,
    ) -> Result<Self, DocumentError> {
        let sets = match compiled {
            Some(bundle) => self.sets.with_compiled(&doc.tenant, bundle),
            None => self.sets.with_bundle(&doc.tenant, &doc.bundle),
        }
        .map_err(DocumentError::Bundle)?;
        let mut next = self.clone();
        next.sets = sets;
        if !doc.issuers.is_empty() {
            let configs = doc.issuer_configs();
            if configs != self.issuers.configs {
                next.issuers =
                    Arc::new(Issuers::try_from(configs).map_err(DocumentError::Issuers)?);
            }
        }
        Ok(next)
    }

    /// Whether tokens verified under `self` are verified under `other` too (same issuers).
    #[must_use]
    pub fn same_issuers(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.issuers, &other.issuers)
    }
}

/// One snapshot may serve every thread of a process (the native build shares one per Envoy
/// process): it must stay `Send + Sync`, which this fails to compile without.
const _: () = {
    const fn shared_by_threads<T: Send + Sync>() {}
    shared_by_threads::<Snapshot>();
};
