//! The policies of a bundle as a worker keeps them: for each policy its id and a lean copy of
//! Cedar's compiled policy, and whether the scope alone decides it.
//!
//! A bundle is checked with Cedar's whole machinery (parse, validation against the schema),
//! but a worker keeps less than Cedar's `PolicySet` holds. Each policy keeps Cedar's compiled
//! form rebuilt without what deciding never reads: its annotations (the `@id` is the policy's
//! id; the map was the largest part of a small policy), its own text and location, and its
//! own copies of the uids and types its scope names (one copy each, without source locations,
//! for the policies compiled together). Conditions are Cedar's own expressions, one copy of each
//! distinct one; they keep their source locations, and with them the text of the parse batch
//! they came from. Most policies of a large bundle (one grant per user or per document) have
//! no `when`/`unless` clause: the policy index decides them by their scope alone (see
//! `index`), and evaluates the others with Cedar's evaluator on this form.

use std::hash::Hash;
use std::sync::Arc;

use cedar_policy::{Effect, Policy, PolicyId};
use cedar_policy_core::ast;
use hashbrown::HashSet;

/// One policy of a bundle.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    id: PolicyId,
    /// Cedar's compiled policy, lean (see the module's comment); named `id`.
    policy: ast::Policy,
    /// Satisfied whenever its scope matches (see [`Self::decided_by_scope`]).
    by_scope: bool,
}

/// What the policies compiled together share: one empty annotation map, one copy of each
/// entity uid and type their scopes name (without source locations), and one of each distinct
/// condition (a large bundle is mostly grants written from one pattern, whose conditions are
/// the same expression: Cedar compares expressions by structure, not by source location).
#[derive(Debug)]
pub struct Shared {
    annotations: Arc<ast::Annotations>,
    uids: HashSet<Arc<ast::EntityUID>>,
    types: HashSet<Arc<ast::EntityType>>,
    conditions: HashSet<Arc<ast::Expr>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            annotations: Arc::new(ast::Annotations::new()),
            uids: HashSet::new(),
            types: HashSet::new(),
            conditions: HashSet::new(),
        }
    }
}

/// The copy of `value` that `set` holds, or the one `make` gives, held from now on.
fn held<T: Hash + Eq>(
    set: &mut HashSet<Arc<T>>,
    value: &T,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    if let Some(held) = set.get(value) {
        return Arc::clone(held);
    }
    let made = make();
    set.insert(Arc::clone(&made));
    made
}

impl Shared {
    fn uid(&mut self, uid: &Arc<ast::EntityUID>) -> Arc<ast::EntityUID> {
        if let Some(held) = self.uids.get(uid) {
            return Arc::clone(held);
        }
        // By value: a clone shares the held name's parts.
        let ty = self.ty(uid.entity_type());
        let made = Arc::new(ast::EntityUID::from_components(
            ty.as_ref().clone(),
            uid.eid().clone(),
            None,
        ));
        self.uids.insert(Arc::clone(&made));
        made
    }

    fn condition(&mut self, c: &Arc<ast::Expr>) -> Arc<ast::Expr> {
        held(&mut self.conditions, c, || Arc::clone(c))
    }

    fn ty(&mut self, ty: &ast::EntityType) -> Arc<ast::EntityType> {
        held(&mut self.types, ty, || Arc::new(ty.with_loc(None)))
    }

    fn reference(&mut self, r: &ast::EntityReference) -> ast::EntityReference {
        match r {
            ast::EntityReference::EUID(uid) => ast::EntityReference::EUID(self.uid(uid)),
            slot @ ast::EntityReference::Slot(_) => slot.clone(),
        }
    }

    fn scope(
        &mut self,
        c: &ast::PrincipalOrResourceConstraint,
    ) -> ast::PrincipalOrResourceConstraint {
        use ast::PrincipalOrResourceConstraint as C;
        match c {
            C::Any => C::Any,
            C::In(r) => C::In(self.reference(r)),
            C::Eq(r) => C::Eq(self.reference(r)),
            C::Is(ty) => C::Is(self.ty(ty)),
            C::IsIn(ty, r) => C::IsIn(self.ty(ty), self.reference(r)),
        }
    }

    fn action(&mut self, c: &ast::ActionConstraint) -> ast::ActionConstraint {
        match c {
            ast::ActionConstraint::Any => ast::ActionConstraint::Any,
            ast::ActionConstraint::Eq(uid) => ast::ActionConstraint::Eq(self.uid(uid)),
            ast::ActionConstraint::In(uids) => {
                ast::ActionConstraint::In(uids.iter().map(|u| self.uid(u)).collect())
            }
        }
    }
}

impl CompiledPolicy {
    /// `policy` as a bundle keeps it, named `id`, sharing what it can with the other policies
    /// compiled with `shared`; `None` for a template-linked policy (bundles have none).
    #[must_use]
    pub fn new(policy: &Policy, id: PolicyId, shared: &mut Shared) -> Option<Self> {
        if !policy.is_static() {
            return None;
        }
        let cedar: &ast::Policy = policy.as_ref();
        let t = cedar.template();
        let principal = shared.scope(t.principal_constraint().as_inner());
        let resource = shared.scope(t.resource_constraint().as_inner());
        let by_scope = t.non_scope_constraints().is_none()
            && !matches!(principal, ast::PrincipalOrResourceConstraint::IsIn(..))
            && !matches!(resource, ast::PrincipalOrResourceConstraint::IsIn(..));
        let lean = ast::Template::new_shared(
            AsRef::<ast::PolicyID>::as_ref(&id).clone(),
            None,
            Arc::clone(&shared.annotations),
            t.effect(),
            ast::PrincipalConstraint::new(principal),
            shared.action(t.action_constraint()),
            ast::ResourceConstraint::new(resource),
            t.non_scope_constraints_arc().map(|c| shared.condition(c)),
        );
        Some(Self {
            id,
            policy: ast::StaticPolicy::try_from(lean).ok()?.into(),
            by_scope,
        })
    }

    #[must_use]
    pub fn id(&self) -> &PolicyId {
        &self.id
    }

    #[must_use]
    pub fn effect(&self) -> Effect {
        // The public API's `Effect` is the core's.
        self.policy.effect()
    }

    #[must_use]
    pub fn principal(&self) -> &ast::PrincipalOrResourceConstraint {
        self.policy.template().principal_constraint().as_inner()
    }

    #[must_use]
    pub fn action(&self) -> &ast::ActionConstraint {
        self.policy.action_constraint()
    }

    #[must_use]
    pub fn resource(&self) -> &ast::PrincipalOrResourceConstraint {
        self.policy.template().resource_constraint().as_inner()
    }

    /// Whether the policy is satisfied whenever its scope matches: no `when`/`unless` clause
    /// and no `is T in E` scope (whose type test is left to Cedar).
    #[must_use]
    pub fn decided_by_scope(&self) -> bool {
        self.by_scope
    }

    /// Cedar's policy, for the policies not decided by their scope.
    #[must_use]
    pub fn evaluated(&self) -> Option<&ast::Policy> {
        (!self.by_scope).then_some(&self.policy)
    }
}

/// A bundle's policies, in the order of its text: the chunks of the text (`bundle_chunks`),
/// each shared with the cache of chunks that the next version reuses. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    chunks: Vec<Arc<[CompiledPolicy]>>,
    len: usize,
}

impl Policies {
    /// The policies of these chunks, in order.
    #[must_use]
    pub fn new(chunks: Vec<Arc<[CompiledPolicy]>>) -> Self {
        let len = chunks.iter().map(|c| c.len()).sum();
        Self { chunks, len }
    }

    /// Number of policies.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The policies in order.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The policy named `id` (a linear search: for tools and tests, not per request).
    #[must_use]
    pub fn get(&self, id: &PolicyId) -> Option<&CompiledPolicy> {
        self.iter().find(|p| p.id() == id)
    }

    /// The chunks, in order.
    #[cfg(test)]
    pub(crate) fn chunks(&self) -> &[Arc<[CompiledPolicy]>] {
        &self.chunks
    }
}

/// A policy's `@id("...")` annotation. Read from the annotations as they are: Cedar's
/// `annotation(key)` parses the key with its full parser on every call, which made naming the
/// policies of a large bundle cost as much as parsing them.
#[must_use]
pub fn id_annotation(p: &cedar_policy::Policy) -> Option<&str> {
    p.annotations().find(|(k, _)| *k == "id").map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn only_what_the_scope_cannot_decide_keeps_cedars_policy() {
        let set = cedar_policy::PolicySet::from_str(
            r#"permit(principal == User::"a", action, resource in Folder::"f");
               forbid(principal, action, resource) when { context.x };
               permit(principal is User in Group::"g", action, resource);
               permit(principal, action in [Action::"a", Action::"b"], resource is Doc);"#,
        )
        .unwrap();
        let mut shared = Shared::default();
        let mut by_scope: Vec<(String, bool)> = set
            .policies()
            .map(|p| {
                let c = CompiledPolicy::new(p, p.id().clone(), &mut shared).unwrap();
                assert_eq!(c.evaluated().is_some(), !c.decided_by_scope());
                (p.id().to_string(), c.decided_by_scope())
            })
            .collect();
        by_scope.sort();
        assert_eq!(
            by_scope,
            [
                ("policy0".to_owned(), true),
                ("policy1".to_owned(), false),
                ("policy2".to_owned(), false),
                ("policy3".to_owned(), true)
            ]
        );
    }

    #[test]
    fn keeps_no_annotations_and_one_copy_of_each_scope_uid_and_condition() {
        let set = cedar_policy::PolicySet::from_str(
            r#"@id("a") @note("x") permit(principal == User::"u", action == Action::"GET", resource) when { context.x };
               @id("b") forbid(principal == User::"u", action in [Action::"GET"], resource is Doc);
               permit(principal, action, resource) when {
                 context.x
               };"#,
        )
        .unwrap();
        let mut shared = Shared::default();
        let mut kept: Vec<CompiledPolicy> = set
            .policies()
            .map(|p| CompiledPolicy::new(p, p.id().clone(), &mut shared).unwrap())
            .collect();
        kept.sort_by(|x, y| x.id().cmp(y.id()));
        let uid = |c: &CompiledPolicy| match c.principal() {
            ast::PrincipalOrResourceConstraint::Eq(ast::EntityReference::EUID(u)) => Arc::clone(u),
            other => panic!("unexpected scope {other:?}"),
        };
        let [a, b, c] = kept.as_slice() else {
            panic!("three policies expected")
        };
        let condition =
            |p: &CompiledPolicy| Arc::clone(p.policy.non_scope_constraints_arc().unwrap());
        assert!(Arc::ptr_eq(&condition(a), &condition(c)));
        assert!(Arc::ptr_eq(&uid(a), &uid(b)));
        let action = |c: &CompiledPolicy| match c.action() {
            ast::ActionConstraint::Eq(u) => Arc::clone(u),
            ast::ActionConstraint::In(us) => Arc::clone(&us[0]),
            ast::ActionConstraint::Any => panic!("unexpected action scope"),
        };
        assert!(Arc::ptr_eq(&action(a), &action(b)));
        for p in &kept {
            assert_eq!(p.policy.annotations().count(), 0);
            assert!(p.policy.loc().is_none());
            assert_eq!(p.policy.id(), p.id().as_ref());
        }
        assert!(uid(a).loc().is_none());
        assert!(uid(a).entity_type().loc().is_none());
        // The condition is Cedar's own, unchanged.
        let original: &ast::Policy = set.policy(a.id()).unwrap().as_ref();
        assert_eq!(
            a.evaluated().unwrap().condition().to_string(),
            original.condition().to_string()
        );
    }
}
