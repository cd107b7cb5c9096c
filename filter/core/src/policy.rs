//! HTTP request + verified claims → Cedar request → decision.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entity, EntityId, EntityTypeName, EntityUid,
    ExpressionConstructionError, Request, RestrictedExpression,
};
use serde_json::{Map, Value};

use crate::bundle::Bundle;

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
}

/// The outcome of evaluating the bundle for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub allow: bool,
    /// The policies that determined the decision (Cedar's "reason").
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (skipped, as Cedar specifies), and request errors.
    pub errors: Vec<String>,
}

impl PolicyDecision {
    fn deny_error(e: impl std::fmt::Display) -> Self {
        Self {
            allow: false,
            policies: Vec::new(),
            errors: vec![e.to_string()],
        }
    }
}

/// A compiled bundle plus the mapping from HTTP to Cedar.
#[derive(Debug)]
pub struct PolicyEngine {
    bundle: Bundle,
    principal: PrincipalMapping,
    mapping: RequestMapping,
    authorizer: Authorizer,
}

/// The HTTP side of a request, as Cedar sees it.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
}

impl PolicyEngine {
    #[must_use]
    pub fn new(bundle: Bundle, principal: PrincipalMapping, mapping: RequestMapping) -> Self {
        Self {
            bundle,
            principal,
            mapping,
            authorizer: Authorizer::new(),
        }
    }

    /// The bundle in force.
    #[must_use]
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
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

    /// Evaluates the bundle. Any failure to build the Cedar request denies (fail closed).
    #[must_use]
    /// `principal_id` is `None` for the anonymous principal.
    pub fn decide(
        &self,
        principal_id: Option<&str>,
        claims: &Map<String, Value>,
        http: HttpRequest<'_>,
    ) -> PolicyDecision {
        let principal = match principal_id {
            Some(id) => uid(&self.principal.entity_type, id),
            None => self.principal.anonymous.clone(),
        };
        let action = uid(&self.mapping.action_type, http.method);
        let path = http.path.split(['?', '#']).next().unwrap_or_default();
        let resource = uid(&self.mapping.resource_type, path);

        let claims_expr = match claims_record(claims) {
            Ok(c) => c,
            Err(e) => return PolicyDecision::deny_error(e),
        };
        let context = Context::from_pairs([
            ("claims".to_owned(), claims_expr),
            (
                "method".to_owned(),
                RestrictedExpression::new_string(http.method.to_owned()),
            ),
            (
                "path".to_owned(),
                RestrictedExpression::new_string(path.to_owned()),
            ),
            (
                "host".to_owned(),
                RestrictedExpression::new_string(http.host.to_owned()),
            ),
        ]);
        let context = match context {
            Ok(c) => c,
            Err(e) => return PolicyDecision::deny_error(e),
        };
        let request = match Request::new(principal.clone(), action, resource, context, None) {
            Ok(r) => r,
            Err(e) => return PolicyDecision::deny_error(e),
        };

        // The principal comes from the token unless the bundle defines it (then the bundle's
        // attributes and parents are authoritative).
        let response = if principal_id.is_none() || self.bundle.entities.get(&principal).is_some() {
            self.authorizer
                .is_authorized(&request, &self.bundle.policies, &self.bundle.entities)
        } else {
            let parents = self.group_parents(claims);
            let entity = Entity::new_no_attrs(principal, parents);
            match self.bundle.entities.clone().add_entities([entity], None) {
                Ok(entities) => {
                    self.authorizer
                        .is_authorized(&request, &self.bundle.policies, &entities)
                }
                Err(e) => return PolicyDecision::deny_error(e),
            }
        };
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        policies.sort_unstable();
        PolicyDecision {
            allow: response.decision() == Decision::Allow,
            policies,
            errors: response
                .diagnostics()
                .errors()
                .map(ToString::to_string)
                .collect(),
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
pub fn entity_uid(s: &str) -> Result<EntityUid, String> {
    EntityUid::from_str(s).map_err(|e| format!("{s:?} is not a Cedar entity uid: {e}"))
}

/// Parses a Cedar entity type name from configuration.
pub fn type_name(s: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(s).map_err(|e| format!("{s:?} is not a Cedar entity type name: {e}"))
}

/// Claims as a Cedar record. JSON values with no Cedar counterpart (null, non-integer numbers)
/// are left out rather than failing the request.
fn claims_record(
    claims: &Map<String, Value>,
) -> Result<RestrictedExpression, ExpressionConstructionError> {
    let fields: HashMap<String, RestrictedExpression> = claims
        .iter()
        .filter_map(|(k, v)| json_to_cedar(v).map(|e| (k.clone(), e)))
        .collect();
    RestrictedExpression::new_record(fields)
}

fn json_to_cedar(v: &Value) -> Option<RestrictedExpression> {
    Some(match v {
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Number(n) => RestrictedExpression::new_long(n.as_i64()?),
        Value::Array(a) => RestrictedExpression::new_set(a.iter().filter_map(json_to_cedar)),
        Value::Object(o) => RestrictedExpression::new_record(
            o.iter()
                .filter_map(|(k, v)| json_to_cedar(v).map(|e| (k.clone(), e))),
        )
        .ok()?,
        Value::Null => return None,
    })
}
