//! Policy sets: the default one and one per tenant, selected per request by host or by a
//! tenant claim. Each set enforces its bundle or runs in dry run (evaluate and record, enforce
//! nothing), and may shadow-evaluate a candidate bundle next to the one in force.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::routes::{HostMatcher, RouteError, host_matcher, host_name};
use crate::authz::authorizer::{
    HttpAuthorizer, HttpRequest, PolicyDecision, PrincipalMapping, RequestMapping,
};
use crate::authz::policy_reads::{ContextInputs, ContextReads};
use crate::bundle::{Bundle, BundleError, BundleWire};
use crate::decision::DecisionError;

/// Id of the policy set used when no tenant is selected.
pub const DEFAULT_SET: &str = "default";

/// One tenant's policy set as configured.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant id: the value of the tenant claim that selects this set, and its name in logs
    /// and metrics.
    pub id: String,
    /// Hosts (`:authority` without port; exact or `*.example.com`) served by this tenant.
    /// Default: none (selected by claim only).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The tenant's bundle, inline. Required unless `sync` is configured (then it is served
    /// until the first verified document for the tenant arrives).
    #[serde(default)]
    pub bundle: Option<BundleWire>,
    /// Evaluate and record, enforce nothing. Default false.
    #[serde(default)]
    pub dry_run: bool,
    /// A candidate bundle evaluated next to `bundle` for every request, never enforced.
    #[serde(default)]
    pub shadow_bundle: Option<BundleWire>,
}

/// A compiled policy set.
#[derive(Debug)]
pub struct TenantSet {
    pub id: String,
    pub engine: HttpAuthorizer,
    pub dry_run: bool,
    pub shadow: Option<Arc<HttpAuthorizer>>,
    /// What the policies of this set and of its shadow can read of the context.
    reads: ContextReads,
}

/// What a policy set decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDecision {
    /// The bundle in force.
    pub enforced: PolicyDecision,
    /// The shadow bundle's decision, when the set has one.
    pub shadow: Option<PolicyDecision>,
}

impl TenantSet {
    fn compile(
        id: &str,
        bundle: &BundleWire,
        dry_run: bool,
        shadow: Option<&BundleWire>,
        principal: &PrincipalMapping,
        mapping: &RequestMapping,
    ) -> Result<Self, SetError> {
        let engine_of = |wire: &BundleWire| {
            Bundle::try_from(wire)
                .map(|b| HttpAuthorizer::new(b, principal.clone(), mapping.clone()))
                .map_err(|source| SetError::Bundle {
                    set: id.to_owned(),
                    source,
                })
        };
        let engine = engine_of(bundle)?;
        let shadow = shadow.map(engine_of).transpose()?.map(Arc::new);
        Ok(Self {
            id: id.to_owned(),
            reads: reads_of(&engine, shadow.as_deref()),
            engine,
            dry_run,
            shadow,
        })
    }

    /// What the policies of this set (and of its shadow) can read of the context.
    #[must_use]
    pub fn context_reads(&self) -> &ContextReads {
        &self.reads
    }

    /// Evaluates the bundle in force and, if any, the shadow bundle.
    #[must_use]
    pub fn decide(
        &self,
        principal_id: Option<&str>,
        claims: &Map<String, Value>,
        cedar_claims: &cedar_policy_core::ast::Value,
        http: HttpRequest<'_>,
    ) -> SetDecision {
        SetDecision {
            enforced: self.engine.decide(principal_id, claims, cedar_claims, http),
            shadow: self
                .shadow
                .as_ref()
                .map(|s| s.decide(principal_id, claims, cedar_claims, http)),
        }
    }

    /// Version of the bundle in force.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.engine.bundle().version
    }

    /// The Cedar action and resource this set gives a request, as text (`Action::"GET"`,
    /// `Path::"/api"`); `path` may carry a query.
    #[must_use]
    pub fn cedar_target(&self, method: &str, path: &str) -> (String, String) {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let (action, resource) = self.engine.action_and_resource(method, path);
        (action.to_string(), resource.to_string())
    }
}

fn reads_of(engine: &HttpAuthorizer, shadow: Option<&HttpAuthorizer>) -> ContextReads {
    match shadow {
        Some(s) => engine.context_reads().union(s.context_reads()),
        None => engine.context_reads().clone(),
    }
}

/// Why policy sets were refused.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("policy set {set:?}: bundle refused: {source}")]
    Bundle { set: String, source: BundleError },
    #[error("tenant id {0:?} is empty, \"default\", or used twice")]
    TenantId(String),
    #[error("tenant {tenant:?}: {source}")]
    Host { tenant: String, source: RouteError },
    #[error("no policy set {0:?}")]
    Unknown(String),
    #[error("policy set {0:?} has no bundle: give one inline, or configure `sync` to fetch it")]
    NoBundle(String),
}

/// All policy sets of a filter. Each compiled set is shared: a snapshot that replaces one
/// set's bundle shares the others with the snapshot it came from.
#[derive(Debug, Clone)]
pub struct TenantSets {
    default: Arc<TenantSet>,
    tenants: Vec<Arc<TenantSet>>,
    /// Host pattern → index into `tenants`, in configuration order.
    hosts: Vec<(HostMatcher, usize)>,
    tenant_claim: Option<String>,
    /// The optional inputs some set's policies can read (kept up to date on replacement).
    inputs: ContextInputs,
}

impl TenantSets {
    /// Compiles the default set and the tenants' sets; any invalid bundle refuses them all.
    pub fn new(
        default: (&BundleWire, bool, Option<&BundleWire>),
        tenants: &[TenantConfig],
        tenant_claim: Option<String>,
        principal: &PrincipalMapping,
        mapping: &RequestMapping,
    ) -> Result<Self, SetError> {
        let (bundle, dry_run, shadow) = default;
        let default = TenantSet::compile(DEFAULT_SET, bundle, dry_run, shadow, principal, mapping)?;
        let mut compiled: Vec<Arc<TenantSet>> = Vec::with_capacity(tenants.len());
        let mut hosts = Vec::new();
        for t in tenants {
            if t.id.is_empty() || t.id == DEFAULT_SET || compiled.iter().any(|c| c.id == t.id) {
                return Err(SetError::TenantId(t.id.clone()));
            }
            for h in &t.hosts {
                let m = host_matcher(h).map_err(|source| SetError::Host {
                    tenant: t.id.clone(),
                    source,
                })?;
                hosts.push((m, compiled.len()));
            }
            let bundle = t
                .bundle
                .as_ref()
                .ok_or_else(|| SetError::NoBundle(t.id.clone()))?;
            compiled.push(Arc::new(TenantSet::compile(
                &t.id,
                bundle,
                t.dry_run,
                t.shadow_bundle.as_ref(),
                principal,
                mapping,
            )?));
        }
        let mut sets = Self {
            default: Arc::new(default),
            tenants: compiled,
            hosts,
            tenant_claim,
            inputs: ContextInputs::default(),
        };
        sets.inputs = sets.derive_inputs();
        Ok(sets)
    }

    /// The optional request inputs some policy of some set can read: the engine computes
    /// those and no others.
    #[must_use]
    pub fn inputs(&self) -> ContextInputs {
        self.inputs
    }

    fn derive_inputs(&self) -> ContextInputs {
        let all = std::iter::once(&self.default)
            .chain(&self.tenants)
            .fold(ContextReads::default(), |acc, s| acc.union(&s.reads));
        ContextInputs::from(&all)
    }

    /// The default set.
    #[must_use]
    pub fn default_set(&self) -> &TenantSet {
        &self.default
    }

    /// Number of sets, the default one included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tenants.len() + 1
    }

    /// Always false: the default set exists.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The set for a request: by host first, then by the tenant claim of a verified token
    /// (`claims`), else the default set. A tenant claim naming no configured tenant is an
    /// error: the request is denied rather than judged by another tenant's policies.
    pub fn select(
        &self,
        authority: &str,
        claims: Option<&Map<String, Value>>,
    ) -> Result<&TenantSet, DecisionError> {
        let host = host_name(authority);
        if let Some((_, i)) = self.hosts.iter().find(|(m, _)| m.matches(host)) {
            return self
                .tenants
                .get(*i)
                .map(|t| &**t)
                .ok_or(DecisionError::TenantIndex);
        }
        let tenant = self
            .tenant_claim
            .as_deref()
            .and_then(|c| claims?.get(c))
            .and_then(Value::as_str);
        match tenant {
            None => Ok(&self.default),
            Some(id) => self
                .tenants
                .iter()
                .find(|t| t.id == id)
                .map(|t| &**t)
                .ok_or_else(|| DecisionError::UnknownTenant(id.to_owned())),
        }
    }

    /// These sets with one set's bundle replaced (a live update); the other sets are shared.
    /// The new bundle is compiled first; if it is invalid, the error says why.
    pub fn with_bundle(&self, set: &str, wire: &BundleWire) -> Result<Self, SetError> {
        // The policies the set's bundle in force parsed are not parsed again.
        let previous = self
            .get(set)
            .map(|s| s.engine.bundle().chunks().clone())
            .unwrap_or_default();
        let bundle = Bundle::compile(wire, &previous).map_err(|source| SetError::Bundle {
            set: set.to_owned(),
            source,
        })?;
        self.with_compiled(set, bundle)
    }

    /// [`TenantSets::with_bundle`] with a bundle already compiled.
    pub fn with_compiled(&self, set: &str, bundle: Bundle) -> Result<Self, SetError> {
        let mut next = self.clone();
        let target = if set == DEFAULT_SET {
            &mut next.default
        } else {
            next.tenants
                .iter_mut()
                .find(|t| t.id == set)
                .ok_or_else(|| SetError::Unknown(set.to_owned()))?
        };
        let engine = target.engine.with_bundle(bundle);
        // The shadow bundle (if any) stays, and so do its reads.
        let shadow = target.shadow.clone();
        *target = Arc::new(TenantSet {
            id: target.id.clone(),
            reads: reads_of(&engine, shadow.as_deref()),
            engine,
            dry_run: target.dry_run,
            shadow,
        });
        next.inputs = next.derive_inputs();
        Ok(next)
    }

    /// The set with id `set` (`default` or a tenant id).
    #[must_use]
    pub fn get(&self, set: &str) -> Option<&TenantSet> {
        if set == DEFAULT_SET {
            Some(&self.default)
        } else {
            self.tenants.iter().find(|t| t.id == set).map(|t| &**t)
        }
    }
}
