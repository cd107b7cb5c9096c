//! The route table that maps an HTTP request to a Cedar action and resource: method + path
//! template (`/users/{id}/orders`) → action id, and optionally a resource uid built from the
//! template's variables (`User::"{id}"`). First match wins; no match means the defaults
//! (`Action::"<METHOD>"`, `Path::"<path>"`).
//!
//! Variables only ever become the *id* of an entity uid, built with
//! `EntityUid::from_type_name_and_id`: request data is never parsed as Cedar text.

use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use serde::Deserialize;

/// One route as configured.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionRouteConfig {
    /// Methods this route applies to (upper case). Default: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path template: literal segments, `{name}` for exactly one non-empty segment, and a
    /// final `{name*}` for the (possibly empty) rest of the path.
    pub path: String,
    /// Action id, an entity of the action type (`Action::"<action>"`). Default: the method.
    #[serde(default)]
    pub action: Option<String>,
    /// Resource uid template, `Type::"text with {name} variables"`. Default: the path.
    #[serde(default)]
    pub resource: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(String),
    Rest(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(String),
}

#[derive(Debug, Clone)]
struct ResourceTemplate {
    ty: EntityTypeName,
    id: Vec<Piece>,
}

#[derive(Debug, Clone)]
struct Route {
    methods: Vec<String>,
    segments: Vec<Segment>,
    action: Option<String>,
    resource: Option<ResourceTemplate>,
}

/// What a matched route says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The action id, when the route names one.
    pub action: Option<String>,
    /// The resource, when the route builds one.
    pub resource: Option<EntityUid>,
}

/// The compiled route table.
#[derive(Debug, Clone, Default)]
pub struct ActionRoutes(Vec<Route>);

/// Why a route of the request table was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionRouteError {
    #[error("route path {0:?} must start with '/'")]
    NoLeadingSlash(String),
    #[error("route path {path:?}: bad variable {segment:?}")]
    BadVariable { path: String, segment: String },
    #[error("route path {path:?}: variable {name:?} appears twice")]
    RepeatedVariable { path: String, name: String },
    #[error("route path {path:?}: {{{name}*}} must be the last segment")]
    RestNotLast { path: String, name: String },
    #[error("route path {path:?}: a variable must be a whole segment ({segment:?})")]
    PartialVariable { path: String, segment: String },
    #[error("resource template {0:?} must look like Type::\"id with {{vars}}\"")]
    ResourceShape(String),
    #[error("{template:?}: {source}")]
    ResourceType {
        template: String,
        source: Box<cedar_policy::ParseErrors>,
    },
    #[error("resource template {template:?} uses {{{name}}}, which the path does not define")]
    UnknownVariable { template: String, name: String },
    #[error("route {path:?}: method {method:?} must be upper case")]
    Method { path: String, method: String },
    #[error("route {0:?}: empty action")]
    EmptyAction(String),
}

fn parse_path(path: &str) -> Result<Vec<Segment>, ActionRouteError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ActionRouteError::NoLeadingSlash(path.to_owned()));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len().saturating_sub(1);
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let var = p.strip_prefix('{').and_then(|v| v.strip_suffix('}'));
        let seg = match var {
            Some(v) => {
                let (name, rest) = match v.strip_suffix('*') {
                    Some(n) => (n, true),
                    None => (v, false),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(ActionRouteError::BadVariable {
                        path: path.to_owned(),
                        segment: (*p).to_owned(),
                    });
                }
                if seen.contains(&name) {
                    return Err(ActionRouteError::RepeatedVariable {
                        path: path.to_owned(),
                        name: name.to_owned(),
                    });
                }
                seen.push(name);
                if rest {
                    if i != last {
                        return Err(ActionRouteError::RestNotLast {
                            path: path.to_owned(),
                            name: name.to_owned(),
                        });
                    }
                    Segment::Rest(name.to_owned())
                } else {
                    Segment::Var(name.to_owned())
                }
            }
            None if p.contains(['{', '}']) => {
                return Err(ActionRouteError::PartialVariable {
                    path: path.to_owned(),
                    segment: (*p).to_owned(),
                });
            }
            None => Segment::Literal((*p).to_owned()),
        };
        out.push(seg);
    }
    Ok(out)
}

fn parse_resource(t: &str, vars: &[Segment]) -> Result<ResourceTemplate, ActionRouteError> {
    let bad = || ActionRouteError::ResourceShape(t.to_owned());
    let (ty, quoted) = t.split_once("::").ok_or_else(bad)?;
    let id = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .ok_or_else(bad)?;
    if id.contains(['"', '\\']) {
        return Err(bad());
    }
    let ty = EntityTypeName::from_str(ty).map_err(|e| ActionRouteError::ResourceType {
        template: t.to_owned(),
        source: Box::new(e),
    })?;
    let mut pieces = Vec::new();
    let mut rest = id;
    while let Some(open) = rest.find('{') {
        let (text, after) = rest.split_at(open);
        let close = after.find('}').ok_or_else(bad)?;
        let name = after.get(1..close).ok_or_else(bad)?;
        let known = vars
            .iter()
            .any(|s| matches!(s, Segment::Var(n) | Segment::Rest(n) if n == name));
        if !known {
            return Err(ActionRouteError::UnknownVariable {
                template: t.to_owned(),
                name: name.to_owned(),
            });
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_owned()));
        }
        pieces.push(Piece::Var(name.to_owned()));
        rest = after.get(close + 1..).unwrap_or_default();
    }
    if rest.contains('}') {
        return Err(bad());
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(ResourceTemplate { ty, id: pieces })
}

impl TryFrom<&[ActionRouteConfig]> for ActionRoutes {
    type Error = ActionRouteError;

    fn try_from(routes: &[ActionRouteConfig]) -> Result<Self, Self::Error> {
        routes
            .iter()
            .map(|r| {
                let segments = parse_path(&r.path)?;
                let resource = r
                    .resource
                    .as_deref()
                    .map(|t| parse_resource(t, &segments))
                    .transpose()?;
                if let Some(m) = r
                    .methods
                    .iter()
                    .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
                {
                    return Err(ActionRouteError::Method {
                        path: r.path.clone(),
                        method: m.clone(),
                    });
                }
                if r.action.as_deref() == Some("") {
                    return Err(ActionRouteError::EmptyAction(r.path.clone()));
                }
                Ok(Route {
                    methods: r.methods.clone(),
                    segments,
                    action: r.action.clone(),
                    resource,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

impl ActionRoutes {
    /// Whether no route is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first route matching `method` and `path` (no query string).
    #[must_use]
    pub fn find(&self, method: &str, path: &str) -> Option<Matched> {
        let rest = path.strip_prefix('/')?;
        self.0.iter().find_map(|r| {
            if !r.methods.is_empty() && !r.methods.iter().any(|m| m == method) {
                return None;
            }
            let vars = match_segments(&r.segments, rest)?;
            let resource = r.resource.as_ref().map(|t| {
                let mut id = String::new();
                for p in &t.id {
                    match p {
                        Piece::Text(s) => id.push_str(s),
                        Piece::Var(name) => {
                            if let Some((_, v)) = vars.iter().find(|(n, _)| n == name) {
                                id.push_str(v);
                            }
                        }
                    }
                }
                EntityUid::from_type_name_and_id(t.ty.clone(), EntityId::new(id))
            });
            Some(Matched {
                action: r.action.clone(),
                resource,
            })
        })
    }
}

/// Matches `rest` (the path without its leading '/') against the segments; returns the
/// variables' values.
fn match_segments<'p>(segments: &'p [Segment], rest: &'p str) -> Option<Vec<(&'p str, &'p str)>> {
    let mut vars = Vec::new();
    let mut remaining = Some(rest);
    for seg in segments {
        if let Segment::Rest(name) = seg {
            vars.push((name.as_str(), remaining.unwrap_or_default()));
            return Some(vars);
        }
        let current = remaining?;
        let (part, tail) = match current.split_once('/') {
            Some((p, t)) => (p, Some(t)),
            None => (current, None),
        };
        match seg {
            Segment::Literal(l) if l == part => {}
            Segment::Var(name) if !part.is_empty() => vars.push((name.as_str(), part)),
            _ => return None,
        }
        remaining = tail;
    }
    // Every path segment must have been consumed.
    remaining.is_none().then_some(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(v: serde_json::Value) -> Result<ActionRoutes, String> {
        let cfg: Vec<ActionRouteConfig> = serde_json::from_value(v).map_err(|e| e.to_string())?;
        ActionRoutes::try_from(cfg.as_slice()).map_err(|e| e.to_string())
    }

    #[test]
    fn templates_match_and_build_resources() {
        let r = routes(serde_json::json!([
            {"methods": ["GET"], "path": "/users/{id}/orders", "action": "ListOrders",
             "resource": "User::\"{id}\""},
            {"methods": ["POST"], "path": "/users/{id}/orders", "action": "CreateOrder",
             "resource": "User::\"{id}\""},
            {"path": "/files/{bucket}/{key*}", "action": "File", "resource": "File::\"{bucket}:{key}\""},
            {"path": "/health"},
        ]))
        .unwrap();
        let m = r.find("GET", "/users/42/orders").unwrap();
        assert_eq!(m.action.as_deref(), Some("ListOrders"));
        assert_eq!(m.resource.unwrap().to_string(), r#"User::"42""#);
        assert_eq!(
            r.find("POST", "/users/7/orders").unwrap().action.as_deref(),
            Some("CreateOrder")
        );
        assert_eq!(r.find("DELETE", "/users/7/orders"), None);
        assert_eq!(r.find("GET", "/users//orders"), None);
        assert_eq!(r.find("GET", "/users/7/orders/x"), None);
        assert_eq!(r.find("GET", "/users/7"), None);
        let f = r.find("PUT", "/files/b1/a/b/c.txt").unwrap();
        assert_eq!(f.resource.unwrap().to_string(), r#"File::"b1:a/b/c.txt""#);
        let f = r.find("PUT", "/files/b1/").unwrap();
        assert_eq!(f.resource.unwrap().to_string(), r#"File::"b1:""#);
        let h = r.find("GET", "/health").unwrap();
        assert_eq!((h.action, h.resource), (None, None));
        // Request data never becomes Cedar syntax: quotes stay inside the id.
        let q = r.find("GET", r#"/users/a"b::c/orders"#).unwrap();
        assert_eq!(q.resource.unwrap().id().unescaped(), r#"a"b::c"#);
    }

    #[test]
    fn bad_templates_are_refused() {
        for (bad, why) in [
            (serde_json::json!([{"path": "users"}]), "start with '/'"),
            (serde_json::json!([{"path": "/a/{x}{y}"}]), "bad variable"),
            (serde_json::json!([{"path": "/a/x{y}"}]), "whole segment"),
            (serde_json::json!([{"path": "/{x}/{x}"}]), "twice"),
            (serde_json::json!([{"path": "/{x*}/a"}]), "last segment"),
            (
                serde_json::json!([{"path": "/{x}", "resource": "User::\"{y}\""}]),
                "does not define",
            ),
            (
                serde_json::json!([{"path": "/{x}", "resource": "User:{x}"}]),
                "must look like",
            ),
            (
                serde_json::json!([{"path": "/{x}", "resource": "no such::\"{x}\""}]),
                "no such",
            ),
            (
                serde_json::json!([{"path": "/", "methods": ["get"]}]),
                "upper case",
            ),
            (
                serde_json::json!([{"path": "/", "action": ""}]),
                "empty action",
            ),
        ] {
            let err = routes(bad.clone()).err().unwrap();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
