//! The source state in Postgres and how it becomes bundles: one per tenant, each validated as
//! the filter will validate it, with positioned problems when it is not valid.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use cedar_policy::{Entities, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use deadpool_postgres::GenericClient;
use portcullis_core::auth::jwks::{JwkSetWire, JwkWire};
use portcullis_core::bundle::signed::IssuerKeys;
use portcullis_core::config::IssuerSettings;
use portcullis_core::{Bundle, BundleWire};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::db::DbError;
use crate::diagnostics::Problem;

/// Every tenant's policies, schema and entities. Stored with each version (for rollback).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    pub tenants: BTreeMap<String, TenantSource>,
}

/// One tenant's source rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSource {
    pub policies: Vec<PolicyRow>,
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub entities: Vec<serde_json::Value>,
}

/// One stored policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRow {
    pub id: String,
    pub text: String,
    pub enabled: bool,
}

/// Policy ids: letters, digits and `_ . : -`, starting with a letter or digit, at most 128.
pub fn valid_policy_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// Tenant ids: letters, digits and `_ . -`, starting with a letter or digit, at most 63.
pub fn valid_tenant_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Reads the source of every tenant (or of one).
pub async fn load(c: &impl GenericClient, only: Option<&str>) -> Result<Source, DbError> {
    let mut tenants: BTreeMap<String, TenantSource> = BTreeMap::new();
    for row in c
        .query(
            "SELECT id FROM tenants WHERE $1::text IS NULL OR id = $1 ORDER BY id",
            &[&only],
        )
        .await?
    {
        tenants.insert(row.get(0), TenantSource::default());
    }
    for row in c
        .query(
            "SELECT tenant, id, text, enabled FROM policies
             WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, id",
            &[&only],
        )
        .await?
    {
        if let Some(t) = tenants.get_mut(row.get::<_, &str>(0)) {
            t.policies.push(PolicyRow {
                id: row.get(1),
                text: row.get(2),
                enabled: row.get(3),
            });
        }
    }
    for row in c
        .query(
            "SELECT tenant, text FROM schemas WHERE $1::text IS NULL OR tenant = $1",
            &[&only],
        )
        .await?
    {
        if let Some(t) = tenants.get_mut(row.get::<_, &str>(0)) {
            t.schema = Some(row.get(1));
        }
    }
    for row in c
        .query(
            "SELECT tenant, entity FROM entities
             WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, uid",
            &[&only],
        )
        .await?
    {
        if let Some(t) = tenants.get_mut(row.get::<_, &str>(0)) {
            t.entities.push(row.get(1));
        }
    }
    Ok(Source { tenants })
}

/// Reads every issuer with its keys, sorted, as they go into documents.
///
/// Settings and keys were checked when they were written; a row that no longer reads as the
/// filter's types (edited by hand) is left out with a warning: its issuer's tokens, or that
/// key's, are then refused, never accepted under settings the filter cannot read.
pub async fn load_issuers(c: &impl GenericClient) -> Result<Vec<IssuerKeys>, DbError> {
    let mut issuers: Vec<IssuerKeys> = Vec::new();
    for row in c
        .query(
            "SELECT issuer, audiences, settings FROM issuers ORDER BY issuer",
            &[],
        )
        .await?
    {
        let issuer: String = row.get(0);
        match serde_json::from_value::<IssuerSettings>(row.get(2)) {
            Ok(settings) => issuers.push(IssuerKeys {
                issuer,
                audiences: row.get(1),
                jwks: JwkSetWire { keys: Vec::new() },
                settings,
            }),
            Err(e) => tracing::warn!(issuer, "stored settings unreadable, issuer left out: {e}"),
        }
    }
    let mut keys: BTreeMap<String, Vec<JwkWire>> = BTreeMap::new();
    for row in c
        .query("SELECT issuer, jwk FROM keys ORDER BY issuer, kid", &[])
        .await?
    {
        let issuer: String = row.get(0);
        match serde_json::from_value::<JwkWire>(row.get(1)) {
            Ok(jwk) => keys.entry(issuer).or_default().push(jwk),
            Err(e) => tracing::warn!(issuer, "stored key unreadable, left out: {e}"),
        }
    }
    for issuer in &mut issuers {
        if let Some(k) = keys.remove(&issuer.issuer) {
            issuer.jwks.keys = k;
        }
    }
    // An issuer without keys (not fetched yet, or its keys went stale) verifies nothing; it
    // is left out, so its tokens are refused as from an unknown issuer and every document
    // stays one a filter can load.
    issuers.retain(|i| !i.jwks.keys.is_empty());
    Ok(issuers)
}

impl TenantSource {
    /// The bundle for this tenant, checked policy by policy (with positions), then as a whole
    /// exactly as the filter checks it.
    pub fn bundle(&self, version: u64) -> Result<BundleWire, Vec<Problem>> {
        self.build(version, true)
    }

    /// The bundle, checked policy by policy and its entities as a set, without parsing the
    /// assembled text once more. Publishing uses this: every write was given the full check
    /// before it committed, and the assembly cannot change what a policy means (each text is
    /// one policy on its own, joined with newlines, named by the `@id` it already carries or
    /// is given; `tests` below check the assembly on awkward texts). At 10,000 policies the
    /// second parse was half the time of a publish.
    pub fn bundle_for_publishing(&self, version: u64) -> Result<BundleWire, Vec<Problem>> {
        self.build(version, false)
    }

    fn build(&self, version: u64, full_check: bool) -> Result<BundleWire, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut set = PolicySet::new();
        let mut texts: BTreeMap<String, Arc<str>> = BTreeMap::new();
        let mut out = String::new();
        for row in self.policies.iter().filter(|p| p.enabled) {
            let name = format!("policy {:?}", row.id);
            let text: Arc<str> = Arc::from(row.text.as_str());
            if !valid_policy_id(&row.id) {
                problems.push(Problem::plain(&name, "invalid policy id"));
                continue;
            }
            match parse_cached(&row.id, &row.text) {
                Err(e) => problems.extend(Problem::from_diagnostic(&name, &text, &*e)),
                Ok(p) => {
                    if let Some(a) =
                        portcullis_core::bundle::id_annotation(&p).filter(|a| *a != row.id)
                    {
                        problems.push(Problem::plain(
                            &name,
                            format!("its @id annotation {a:?} differs from the policy id"),
                        ));
                        continue;
                    }
                    if portcullis_core::bundle::id_annotation(&p).is_none() {
                        out.push_str(&format!("@id({:?})\n", row.id));
                    }
                    out.push_str(row.text.trim_end());
                    out.push_str("\n\n");
                    if set.add(p).is_err() {
                        problems.push(Problem::plain(&name, "duplicate policy id"));
                    }
                    texts.insert(row.id.clone(), text);
                }
            }
        }
        let schema = match &self.schema {
            None => None,
            Some(src) => {
                let text: Arc<str> = Arc::from(src.as_str());
                match Schema::from_cedarschema_str(src) {
                    Ok((s, _warnings)) => Some(s),
                    Err(e) => {
                        problems.extend(Problem::from_diagnostic("schema", &text, &e));
                        None
                    }
                }
            }
        };
        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
            for e in result.validation_errors() {
                let id = e.policy_id().to_string();
                let name = format!("policy {id:?}");
                match texts.get(&id) {
                    Some(text) => problems.extend(Problem::from_diagnostic(&name, text, e)),
                    None => problems.push(Problem::plain(&name, e.to_string())),
                }
            }
        }
        for entity in &self.entities {
            if let Err(e) = Entities::from_json_value(
                serde_json::Value::Array(vec![entity.clone()]),
                schema.as_ref(),
            ) {
                let uid = entity
                    .get("uid")
                    .map_or_else(|| "?".to_owned(), ToString::to_string);
                problems.push(Problem::plain(format!("entity {uid}"), render(&e)));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let wire = BundleWire {
            version,
            policies: out,
            schema: self.schema.clone(),
            entities: serde_json::Value::Array(self.entities.clone()),
        };
        if full_check {
            // The filter's own check, on exactly what it will receive.
            Bundle::try_from(&wire).map_err(|e| vec![Problem::plain("bundle", e.to_string())])?;
        } else {
            Entities::from_json_value(wire.entities.clone(), schema.as_ref())
                .map_err(|e| vec![Problem::plain("entities", render(&e))])?;
        }
        Ok(wire)
    }
}

/// Parsed policies by id and text, so that publishing after a change re-parses only what
/// changed (parsing is most of the cost of a tenant with thousands of policies). Entries not
/// used by the latest full build are dropped by [`sweep_parse_cache`].
#[derive(Default)]
struct ParseCache {
    generation: u64,
    policies: HashMap<[u8; 32], (u64, String, String, Policy)>,
}

static PARSED: LazyLock<Mutex<ParseCache>> = LazyLock::new(Mutex::default);

fn parse_key(id: &str, text: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    h.finalize().into()
}

fn parse_cached(id: &str, text: &str) -> Result<Policy, Box<cedar_policy::ParseErrors>> {
    let key = parse_key(id, text);
    {
        let mut cache = PARSED.lock().unwrap_or_else(|e| e.into_inner());
        let generation = cache.generation;
        if let Some((used, cached_id, cached_text, policy)) = cache.policies.get_mut(&key)
            && cached_id == id
            && cached_text == text
        {
            *used = generation;
            return Ok(policy.clone());
        }
    }
    let policy = Policy::parse(Some(PolicyId::new(id)), text).map_err(Box::new)?;
    let mut cache = PARSED.lock().unwrap_or_else(|e| e.into_inner());
    let generation = cache.generation;
    cache.policies.insert(
        key,
        (generation, id.to_owned(), text.to_owned(), policy.clone()),
    );
    Ok(policy)
}

/// Drops cached parses the build that just finished did not use, and starts a new generation.
pub fn sweep_parse_cache() {
    let mut cache = PARSED.lock().unwrap_or_else(|e| e.into_inner());
    let current = cache.generation;
    cache.policies.retain(|_, (used, ..)| *used == current);
    cache.generation = current.wrapping_add(1);
}

/// An error with its sources, on one line (the same rendering the filter uses).
pub use portcullis_core::bundle::render;

/// The uid of an entity in Cedar's JSON format, as Cedar prints it (`Type::"id"`); the error
/// says why the entity is not valid.
pub fn entity_uid(entity: &serde_json::Value) -> Result<String, String> {
    let parsed = Entities::from_json_value(serde_json::Value::Array(vec![entity.clone()]), None)
        .map_err(|e| render(&e))?;
    parsed
        .iter()
        .next()
        .map(|e| e.uid().to_string())
        .ok_or_else(|| "no entity given".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, text: &str) -> PolicyRow {
        PolicyRow {
            id: id.into(),
            text: text.into(),
            enabled: true,
        }
    }

    /// The assembled text means what the policies meant one by one: same ids, same policies.
    #[test]
    fn assembly_keeps_every_policy_as_it_was() {
        let src = TenantSource {
            policies: vec![
                row(
                    "a",
                    "permit(principal, action, resource); // a trailing comment",
                ),
                row(
                    "b",
                    "@id(\"b\")\n@doc(\"x\")\nforbid(principal, action, resource)\nwhen { context.s == \"// not a comment; @id(\\\"z\\\")\" };",
                ),
                row(
                    "c",
                    "  \n permit(principal == User::\"é\", action, resource);\n// end",
                ),
                row(
                    "d",
                    "permit(principal, action, resource) when { context.s like \"*\\\"*\" };",
                ),
            ],
            ..TenantSource::default()
        };
        let wire = src.bundle_for_publishing(1).unwrap();
        let full = src.bundle(1).unwrap();
        assert_eq!(wire, full);
        let bundle = Bundle::try_from(&wire).unwrap();
        let mut ids: Vec<String> = bundle.policies.iter().map(|p| p.id().to_string()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        // The same policy, apart from the `@id` annotation the assembly adds.
        let without_id = |p: &Policy| {
            let mut json = p.to_json().unwrap();
            let obj = json.as_object_mut().unwrap();
            if let Some(a) = obj.get_mut("annotations").and_then(|a| a.as_object_mut()) {
                a.remove("id");
                if a.is_empty() {
                    obj.remove("annotations");
                }
            }
            json
        };
        let whole: cedar_policy::PolicySet = wire.policies.parse().unwrap();
        for r in &src.policies {
            let alone = Policy::parse(Some(PolicyId::new(&r.id)), &r.text).unwrap();
            let assembled = whole
                .policies()
                .find(|p| portcullis_core::bundle::id_annotation(p) == Some(r.id.as_str()))
                .unwrap();
            assert_eq!(without_id(&alone), without_id(assembled), "{}", r.id);
        }
    }
}
