//! HTTP request + verified claims → Cedar request → decision.

use std::collections::HashSet;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request,
    RestrictedExpression,
};
use cedar_policy_core::ast::{Value as CedarValue, ValueKind};
use serde_json::{Map, Value};

use crate::authz::action_routes::ActionRoutes;
use crate::authz::entity_slice::EntitySlicer;
use crate::authz::index::{self, PolicyIndex};
use crate::authz::policy_reads::{ContextReads, PolicyReads};
use crate::bundle::Bundle;
use crate::decision::DecisionError;

/// How claims become the Cedar principal.
#[derive(Debug, Clone)]
pub struct PrincipalMapping {
    pub entity_type: EntityTypeName,
    pub id_claim: String,
    pub groups_claim: Option<String>,
    pub group_type: EntityTypeName,
    /// Principal of requests without a token (public and optional routes).
    pub anonymous: EntityUid,
}

/// What the request maps to, besides the principal.
#[derive(Debug, Clone)]
pub struct RequestMapping {
    pub action_type: EntityTypeName,
    pub resource_type: EntityTypeName,
    /// Method + path template → action and resource; first match wins.
    pub routes: ActionRoutes,
}

/// The outcome of evaluating the bundle for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub allow: bool,
    /// The policies that determined the decision (Cedar's "reason").
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (skipped, as Cedar specifies), and request errors.
    pub errors: Vec<DecisionError>,
}

impl PolicyDecision {
    fn deny_error(e: impl std::fmt::Display) -> Self {
        Self {
            allow: false,
            policies: Vec::new(),
            errors: vec![DecisionError::Request(e.to_string())],
        }
    }
}

/// A compiled bundle plus the mapping from HTTP to Cedar.
#[derive(Debug)]
pub struct HttpAuthorizer {
    bundle: Bundle,
    /// Pre-indexed policies: only those whose scope can match a request are evaluated.
    index: PolicyIndex,
    principal: PrincipalMapping,
    mapping: RequestMapping,
    authorizer: Authorizer,
    /// The bundle's entities, indexed to take out what one decision can read.
    slicer: EntitySlicer,
    /// The context attributes the bundle's policies can read.
    reads: ContextReads,
}

/// The HTTP side of a request, as Cedar sees it.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The path with its query string.
    pub path: &'a str,
    pub host: &'a str,
    /// Selected request headers (configured names, lower case) that are present.
    pub headers: &'a [(&'a str, &'a str)],
    /// Selected query parameters that are present (percent-decoded).
    pub query: &'a [(String, String)],
    /// The client's address (no port), when the host tells it.
    pub source: Option<&'a str>,
    /// Request time, Unix seconds.
    pub time: u64,
}

impl HttpAuthorizer {
    #[must_use]
    pub fn new(bundle: Bundle, principal: PrincipalMapping, mapping: RequestMapping) -> Self {
        let reads = PolicyReads::of_bundle(&bundle.policies);
        Self {
            index: PolicyIndex::of(&bundle.policies),
            slicer: EntitySlicer::new(bundle.entities.as_ref(), &reads.literals),
            reads: reads.context,
            bundle,
            principal,
            mapping,
            authorizer: Authorizer::new(),
        }
    }

    /// The same mapping over another bundle.
    #[must_use]
    pub fn with_bundle(&self, bundle: Bundle) -> Self {
        Self::new(bundle, self.principal.clone(), self.mapping.clone())
    }

    /// The bundle in force.
    #[must_use]
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The context attributes the bundle's policies can read.
    #[must_use]
    pub fn context_reads(&self) -> &ContextReads {
        &self.reads
    }

    /// The anonymous principal.
    #[must_use]
    pub fn anonymous(&self) -> &EntityUid {
        &self.principal.anonymous
    }

    /// The claim that names the principal.
    #[must_use]
    pub fn principal_claim(&self) -> &str {
        &self.principal.id_claim
    }

    /// The principal id taken from the claims, if the configured claim is a string.
    #[must_use]
    pub fn principal_id<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c str> {
        claims.get(&self.principal.id_claim).and_then(Value::as_str)
    }

    /// The Cedar action and resource of a request (`path` without its query): from the route
    /// table, else the method and the path.
    #[must_use]
    pub fn action_and_resource(&self, method: &str, path: &str) -> (EntityUid, EntityUid) {
        let matched = self.mapping.routes.find(method, path);
        let action_id = matched
            .as_ref()
            .and_then(|m| m.action.as_deref())
            .unwrap_or(method);
        let action = uid(&self.mapping.action_type, action_id);
        let resource = matched
            .and_then(|m| m.resource)
            .unwrap_or_else(|| uid(&self.mapping.resource_type, path));
        (action, resource)
    }

    /// The Cedar request for an HTTP request: principal (`None`: the anonymous principal),
    /// action and resource from the route table or the defaults, and the context record
    /// (`claims`, `method`, `path`, `host`, `headers`, `query`, `time`, and `source` when
    /// known), the shape the default schema (`filter/core/schema/portcullis.cedarschema`)
    /// declares. With `schema`, Cedar checks the request against it.
    pub fn cedar_request(
        &self,
        principal_id: Option<&str>,
        claims: &CedarValue,
        http: HttpRequest<'_>,
        schema: Option<&cedar_policy::Schema>,
    ) -> Result<Request, String> {
        let principal = match principal_id {
            Some(id) => uid(&self.principal.entity_type, id),
            None => self.principal.anonymous.clone(),
        };
        let path = http.path.split(['?', '#']).next().unwrap_or_default();
        let (action, resource) = self.action_and_resource(http.method, path);

        // The record is assembled from values directly: the claims part was converted once
        // per token, and nothing here needs Cedar's expression evaluator.
        let mut fields: Vec<(&str, CedarValue)> = vec![
            ("claims", claims.clone()),
            ("method", CedarValue::from(http.method)),
            ("path", CedarValue::from(path)),
            ("host", CedarValue::from(http.host)),
            ("headers", pairs(http.headers)),
            ("query", pairs(http.query)),
            (
                "time",
                CedarValue::from(i64::try_from(http.time).unwrap_or(i64::MAX)),
            ),
        ];
        if let Some(ip) = http.source.and_then(ip_value) {
            fields.push(("source", ip));
        }
        let record = match CedarValue::record(fields, None).value {
            ValueKind::Record(r) => r,
            _ => return Err("context is not a record".to_owned()),
        };
        let context = Context::from(cedar_policy_core::ast::Context::Value(record));
        Request::new(principal, action, resource, context, schema).map_err(|e| e.to_string())
    }

    /// The entities a request is evaluated against: the bundle's, plus the token's principal
    /// (parents from the groups claim) unless the bundle defines it. The principal's ancestors
    /// are computed here from the bundle's (already closed) hierarchy, and the principal joins
    /// only the slice of the store the decision can read (`entity_slice`), so the cost does
    /// not grow with the store.
    fn entities_for(
        &self,
        principal: &EntityUid,
        claims: &Map<String, Value>,
        request: &Request,
    ) -> Result<Option<Entities>, String> {
        let store = &self.bundle.entities;
        if store.get(principal).is_some() {
            return Ok(None);
        }
        let parents = self.group_parents(claims);
        let mut closure = parents.clone();
        for p in &parents {
            if let Some(ancestors) = store.ancestors(p) {
                closure.extend(ancestors.cloned());
            }
        }
        let entity = Entity::new_no_attrs(principal.clone(), closure);
        let roots = [request.action(), request.resource()]
            .into_iter()
            .flatten()
            .map(AsRef::as_ref);
        let slice = self.slicer.slice(
            entity.as_ref().clone(),
            roots,
            request.context().map(AsRef::as_ref),
        )?;
        Ok(Some(Entities::from(slice)))
    }

    /// Evaluates the bundle. Any failure to build the Cedar request denies (fail closed).
    /// `principal_id` is `None` for the anonymous principal.
    #[must_use]
    pub fn decide(
        &self,
        principal_id: Option<&str>,
        claims: &Map<String, Value>,
        cedar_claims: &CedarValue,
        http: HttpRequest<'_>,
    ) -> PolicyDecision {
        let request = match self.cedar_request(principal_id, cedar_claims, http, None) {
            Ok(r) => r,
            Err(e) => return PolicyDecision::deny_error(e),
        };
        let extra = match (principal_id, request.principal()) {
            (Some(_), Some(p)) => match self.entities_for(p, claims, &request) {
                Ok(e) => e,
                Err(e) => return PolicyDecision::deny_error(e),
            },
            _ => None,
        };
        let entities = extra.as_ref().unwrap_or(&self.bundle.entities);
        // Same decision, reasons and errors as `Authorizer::is_authorized` on the whole set
        // (tests/all/index.rs checks it on random bundles), at a cost that does not grow with
        // the number of policies that cannot apply.
        let response = self
            .index
            .is_authorized(&self.authorizer, &request, entities);
        let mut errors: Vec<DecisionError> = response
            .errors
            .iter()
            .map(|e| DecisionError::Policy {
                policy: index::error_id(e).to_string(),
                message: e.to_string(),
            })
            .collect();
        if response.undecided {
            errors.push(DecisionError::Undecided);
        }
        PolicyDecision {
            allow: response.decision == Decision::Allow && !response.undecided,
            policies: response.reasons.iter().map(ToString::to_string).collect(),
            errors,
        }
    }

    fn group_parents(&self, claims: &Map<String, Value>) -> HashSet<EntityUid> {
        let Some(claim) = &self.principal.groups_claim else {
            return HashSet::new();
        };
        let to_uid = |v: &Value| v.as_str().map(|g| uid(&self.principal.group_type, g));
        match claims.get(claim) {
            Some(Value::Array(items)) => items.iter().filter_map(to_uid).collect(),
            // A space-separated string, as OAuth `scope`-like claims are.
            Some(Value::String(s)) => s
                .split_ascii_whitespace()
                .map(|g| uid(&self.principal.group_type, g))
                .collect(),
            _ => HashSet::new(),
        }
    }
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

/// Parses a Cedar entity uid (`Type::"id"`) from configuration.
pub fn entity_uid(s: &str) -> Result<EntityUid, NameError> {
    EntityUid::from_str(s).map_err(|source| NameError::EntityUid {
        text: s.to_owned(),
        source: Box::new(source),
    })
}

/// Parses a Cedar entity type name from configuration.
pub fn type_name(s: &str) -> Result<EntityTypeName, NameError> {
    EntityTypeName::from_str(s).map_err(|source| NameError::TypeName {
        text: s.to_owned(),
        source: Box::new(source),
    })
}

/// A name in the configuration that Cedar does not parse.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("{text:?} is not a Cedar entity uid: {source}")]
    EntityUid {
        text: String,
        source: Box<cedar_policy::ParseErrors>,
    },
    #[error("{text:?} is not a Cedar entity type name: {source}")]
    TypeName {
        text: String,
        source: Box<cedar_policy::ParseErrors>,
    },
}

/// Claims as a Cedar record value. JSON values with no Cedar counterpart (null, non-integer
/// numbers) are left out rather than failing the request.
#[must_use]
pub fn claims_value(claims: &Map<String, Value>) -> CedarValue {
    CedarValue::record(
        claims
            .iter()
            .filter_map(|(k, v)| json_to_cedar(v).map(|e| (k.as_str(), e))),
        None,
    )
}

fn json_to_cedar(v: &Value) -> Option<CedarValue> {
    Some(match v {
        Value::Bool(b) => CedarValue::from(*b),
        Value::String(s) => CedarValue::from(s.as_str()),
        Value::Number(n) => CedarValue::from(n.as_i64()?),
        Value::Array(a) => CedarValue::set(a.iter().filter_map(json_to_cedar), None),
        Value::Object(o) => CedarValue::record(
            o.iter()
                .filter_map(|(k, v)| json_to_cedar(v).map(|e| (k.as_str(), e))),
            None,
        ),
        Value::Null => return None,
    })
}

/// An `ipaddr` value for a textual IP address (through Cedar's own extension constructor).
fn ip_value(ip: &str) -> Option<CedarValue> {
    ip.parse::<std::net::IpAddr>().ok()?;
    let ctx = Context::from_pairs([("ip".to_owned(), RestrictedExpression::new_ip(ip))]).ok()?;
    match ctx.as_ref() {
        cedar_policy_core::ast::Context::Value(m) => m.get("ip").cloned(),
        cedar_policy_core::ast::Context::RestrictedResidual(_) => None,
    }
}

/// A Cedar record of name/value string pairs.
fn pairs<K: AsRef<str>, V: AsRef<str>>(kv: &[(K, V)]) -> CedarValue {
    CedarValue::record(
        kv.iter()
            .map(|(k, v)| (k.as_ref(), CedarValue::from(v.as_ref()))),
        None,
    )
}
