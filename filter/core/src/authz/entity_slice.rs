//! The entities one decision can read, taken out of a bundle's store.
//!
//! A request whose principal the bundle does not define needs that principal added to the
//! entity store. Copying the whole store per request for that costs time in proportion to
//! the store (hundreds of µs at 10,000 entities). Cedar evaluation only ever reaches an entity
//! through an entity value: the request's principal, action and resource, an entity in the
//! context, an entity literal in a policy's conditions that is the operand of an attribute,
//! tag or `in` (left side), or an entity value in an attribute or tag of an entity it reached. (`in` reads only the left side's ancestors, which every entity
//! carries, so parents need not be present; scope constraints only compare uids.) The slice
//! is exactly those entities, found by following entity values from those roots, plus the
//! principal; decisions on it equal decisions on the whole store (a differential test in
//! `tests/all/index.rs` checks it on random bundles).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy_core::ast::{Context, Entity, EntityUID, Literal, PartialValue, Value, ValueKind};
use cedar_policy_core::entities::{Entities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;

use crate::authz::policy_reads::entity_literals;

/// A bundle's entities, indexed for slicing.
#[derive(Debug, Default)]
pub struct EntitySlicer {
    by_uid: HashMap<EntityUID, Arc<Entity>>,
    /// Entity literals a policy condition can dereference.
    literals: Vec<EntityUID>,
}

impl EntitySlicer {
    /// `literals`: the entity literals the policies' conditions can dereference
    /// ([`PolicyReads::literals`](crate::authz::policy_reads::PolicyReads)).
    #[must_use]
    pub fn new(store: &Entities, literals: &[EntityUID]) -> Self {
        let by_uid = store
            .iter()
            .map(|e| (e.uid().clone(), Arc::new(e.clone())))
            .collect();
        Self {
            by_uid,
            literals: literals.to_vec(),
        }
    }

    /// The entities reachable from `roots`, the policies' literals and the entity values in
    /// `context`, plus `principal` (which the store does not define).
    pub fn slice<'a>(
        &self,
        principal: Entity,
        roots: impl IntoIterator<Item = &'a EntityUID>,
        context: Option<&Context>,
    ) -> Result<Entities, String> {
        let mut queue: Vec<EntityUID> = roots.into_iter().cloned().collect();
        queue.extend(self.literals.iter().cloned());
        match context {
            Some(Context::Value(record)) => {
                for v in record.values() {
                    value_entities(v, &mut |u| queue.push(u.clone()));
                }
            }
            Some(Context::RestrictedResidual(record)) => {
                for e in record.values() {
                    entity_literals(e, &mut |u| queue.push(u.clone()));
                }
            }
            None => {}
        }
        // The principal's own attributes (none for a token's principal) can name entities.
        for (_, v) in principal.attrs().chain(principal.tags()) {
            partial_entities(v, &mut |u| queue.push(u.clone()));
        }
        let mut seen: HashSet<EntityUID> = HashSet::new();
        let mut found: Vec<Arc<Entity>> = Vec::new();
        while let Some(uid) = queue.pop() {
            if uid == *principal.uid() || !seen.insert(uid.clone()) {
                continue;
            }
            let Some(entity) = self.by_uid.get(&uid) else {
                continue;
            };
            for (_, v) in entity.attrs().chain(entity.tags()) {
                partial_entities(v, &mut |u| {
                    if !seen.contains(u) {
                        queue.push(u.clone());
                    }
                });
            }
            found.push(Arc::clone(entity));
        }
        found.push(Arc::new(principal));
        Entities::new()
            .add_entities(
                found,
                None::<&NoEntitiesSchema>,
                TCComputation::AssumeAlreadyComputed,
                Extensions::all_available(),
            )
            .map_err(|e| e.to_string())
    }
}

fn partial_entities(v: &PartialValue, f: &mut impl FnMut(&EntityUID)) {
    match v {
        PartialValue::Value(v) => value_entities(v, f),
        PartialValue::Residual(e) => entity_literals(e, f),
    }
}

fn value_entities(v: &Value, f: &mut impl FnMut(&EntityUID)) {
    match v.value_kind() {
        ValueKind::Lit(Literal::EntityUID(u)) => f(u),
        ValueKind::Lit(_) | ValueKind::ExtensionValue(_) => {}
        ValueKind::Set(s) => {
            for item in s.authoritative.iter() {
                value_entities(item, f);
            }
        }
        ValueKind::Record(r) => {
            for item in r.values() {
                value_entities(item, f);
            }
        }
    }
}
