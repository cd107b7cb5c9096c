//! The policy bundle: Cedar policies, an optional schema and static entities, as one versioned
//! snapshot. The same wire format is served by `policy-sync` and accepted inline in the filter
//! configuration.

use std::str::FromStr;

use cedar_policy::{Entities, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use serde::{Deserialize, Serialize};

use crate::bundle::chunks::Chunks;
use crate::bundle::policies::{CompiledPolicy, Policies, Shared};

pub(crate) mod chunks;
pub mod policies;
pub mod signed;

pub use policies::id_annotation;

/// A bundle as it travels (JSON).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleWire {
    /// Monotonically increasing version; 0 for an inline bundle that has none.
    #[serde(default)]
    pub version: u64,
    /// Cedar policies in Cedar's policy syntax. A policy's `@id("...")` annotation names it in
    /// decisions and logs; without one Cedar's positional id (`policy0`, ...) is used.
    pub policies: String,
    /// Optional Cedar schema (Cedar schema syntax). When present, policies are validated
    /// against it (strict mode) and entities must conform to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Static entities in Cedar's entity JSON format.
    #[serde(default = "empty_array")]
    pub entities: serde_json::Value,
}

impl Default for BundleWire {
    fn default() -> Self {
        Self {
            version: 0,
            policies: String::new(),
            schema: None,
            entities: empty_array(),
        }
    }
}

fn empty_array() -> serde_json::Value {
    serde_json::Value::Array(Vec::new())
}

/// Why a bundle was refused. The whole bundle is refused; nothing of it is used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("policies do not parse: {0}")]
    Parse(String),
    #[error("policy templates are not supported in bundles (found {0})")]
    Template(String),
    #[error("two policies share the id {0:?}")]
    DuplicateId(String),
    #[error("schema does not parse: {0}")]
    Schema(String),
    #[error("policies do not validate against the schema: {0}")]
    Validation(String),
    #[error("entities are invalid: {0}")]
    Entities(String),
}

/// A compiled, validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub version: u64,
    /// The policies, as a worker keeps them (`bundle_policies`).
    pub policies: Policies,
    pub schema: Option<Schema>,
    pub entities: Entities,
    /// The policies by chunk of the text, for compiling the next version (`bundle_chunks`).
    chunks: Chunks,
}

impl TryFrom<&BundleWire> for Bundle {
    type Error = BundleError;

    fn try_from(wire: &BundleWire) -> Result<Self, Self::Error> {
        Self::compile(wire, &Chunks::default())
    }
}

impl Bundle {
    /// The policies of this bundle by chunk of its text.
    #[must_use]
    pub fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    /// Compiles `wire`, parsing only the chunks of its text that `previous` does not hold
    /// (the chunks of the version before); the result is the one [`Bundle::try_from`] gives.
    /// The chunks are parsed and validated a batch at a time, so that only one batch's Cedar
    /// policies are held at once; when that cannot be done (or something is refused), the
    /// whole text is parsed and checked at once, which also gives the error.
    pub fn compile(wire: &BundleWire, previous: &Chunks) -> Result<Self, BundleError> {
        let schema = match &wire.schema {
            None => None,
            Some(src) => match Schema::from_cedarschema_str(src) {
                Ok((schema, _warnings)) => Some((schema, chunks::key(src))),
                Err(_) => return Self::compile_whole(wire),
            },
        };
        let validator = schema.as_ref().map(|(s, _)| Validator::new(s.clone()));
        let mut check = |batch: &PolicySet| match &validator {
            None => true,
            Some(v) => v
                .validate(batch, ValidationMode::Strict)
                .validation_passed(),
        };
        let schema_key = schema.as_ref().map(|(_, k)| *k);
        let Some((policies, chunks)) =
            chunks::parse(&wire.policies, previous, schema_key, &mut check)
        else {
            return Self::compile_whole(wire);
        };
        let schema = schema.map(|(s, _)| s);
        let entities = Entities::from_json_value(wire.entities.clone(), schema.as_ref())
            .map_err(|e| BundleError::Entities(render(&e)))?;
        Ok(Self {
            version: wire.version,
            policies,
            schema,
            entities,
            chunks,
        })
    }

    /// Compiles `wire` from its whole text, with no chunks for the next version.
    fn compile_whole(wire: &BundleWire) -> Result<Self, BundleError> {
        let mut policies = PolicySet::new();
        for p in parse_whole(&wire.policies)? {
            let id = p.id().to_string();
            policies.add(p).map_err(|_| BundleError::DuplicateId(id))?;
        }
        let schema = match &wire.schema {
            None => None,
            Some(src) => {
                let (schema, _warnings) = Schema::from_cedarschema_str(src)
                    .map_err(|e| BundleError::Schema(render(&e)))?;
                let result =
                    Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
                if !result.validation_passed() {
                    let msgs: Vec<String> = result.validation_errors().map(|e| render(e)).collect();
                    return Err(BundleError::Validation(msgs.join("; ")));
                }
                Some(schema)
            }
        };
        let entities = Entities::from_json_value(wire.entities.clone(), schema.as_ref())
            .map_err(|e| BundleError::Entities(render(&e)))?;
        let mut shared = Shared::default();
        let compiled: Vec<CompiledPolicy> = policies
            .policies()
            .map(|p| {
                CompiledPolicy::new(p, p.id().clone(), &mut shared)
                    .ok_or_else(|| BundleError::Template(p.id().to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            version: wire.version,
            policies: Policies::new(vec![compiled.into()]),
            schema,
            entities,
            chunks: Chunks::default(),
        })
    }
}

/// The policies of the whole text, named by their `@id`s (else Cedar's positional ids).
fn parse_whole(text: &str) -> Result<Vec<Policy>, BundleError> {
    let parsed = PolicySet::from_str(text).map_err(|e| BundleError::Parse(render(&e)))?;
    if let Some(t) = parsed.templates().next() {
        return Err(BundleError::Template(t.id().to_string()));
    }
    Ok(parsed
        .policies()
        .map(|p| match id_annotation(p) {
            Some(id) => p.new_id(PolicyId::new(id)),
            None => p.clone(),
        })
        .collect())
}

/// Renders an error with its sources and Cedar's help text, on one line.
pub fn render(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(policies: &str) -> BundleWire {
        BundleWire {
            policies: policies.to_owned(),
            ..BundleWire::default()
        }
    }

    #[test]
    fn ids_come_from_annotations() {
        let b = Bundle::try_from(&wire(
            r#"@id("a") permit(principal, action, resource); permit(principal, action, resource);"#,
        ))
        .unwrap();
        let mut ids: Vec<String> = b.policies.iter().map(|p| p.id().to_string()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "policy1"]);
    }

    #[test]
    fn refuses_bad_bundles() {
        assert!(matches!(
            Bundle::try_from(&wire("permit(")),
            Err(BundleError::Parse(_))
        ));
        assert!(matches!(
            Bundle::try_from(&wire(r#"@id("x") permit(principal, action, resource); @id("x") forbid(principal, action, resource);"#)),
            Err(BundleError::DuplicateId(id)) if id == "x"
        ));
        assert!(matches!(
            Bundle::try_from(&wire("permit(principal == ?principal, action, resource);")),
            Err(BundleError::Template(_))
        ));
        let mut w =
            wire(r#"permit(principal, action == Action::"GET", resource) when { context.nope };"#);
        w.schema = Some(r#"entity User; entity Path; action "GET" appliesTo { principal: User, resource: Path, context: {} };"#.into());
        assert!(matches!(
            Bundle::try_from(&w),
            Err(BundleError::Validation(_))
        ));
        let mut w = wire("");
        w.entities = serde_json::json!([{"uid": "nope"}]);
        assert!(matches!(
            Bundle::try_from(&w),
            Err(BundleError::Entities(_))
        ));
    }
}
