//! The policies of a bundle as a worker keeps them: for each policy its id, effect and scope,
//! and Cedar's compiled policy only where the scope alone does not decide it.
//!
//! A bundle is checked with Cedar's whole machinery (parse, validation against the schema),
//! but a worker keeps less than Cedar's `PolicySet` holds: most policies of a large bundle
//! (one grant per user or per document) have no `when`/`unless` clause, and the policy index
//! decides them by their scope alone (see `index`), so their syntax trees, annotations, source
//! text and the set's maps would be memory every worker holds for nothing.

use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Effect, Policy, PolicyId, PrincipalConstraint, ResourceConstraint,
};

/// One policy of a bundle.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    id: PolicyId,
    effect: Effect,
    principal: PrincipalConstraint,
    action: ActionConstraint,
    resource: ResourceConstraint,
    /// Cedar's policy, kept when the index must evaluate it (see [`Self::decided_by_scope`]).
    evaluated: Option<Policy>,
}

impl CompiledPolicy {
    /// `policy` as a bundle keeps it; `None` for a template-linked policy (bundles have none).
    #[must_use]
    pub fn new(policy: &Policy) -> Option<Self> {
        if !policy.is_static() {
            return None;
        }
        let principal = policy.principal_constraint();
        let resource = policy.resource_constraint();
        let by_scope = !policy.has_non_scope_constraint()
            && !matches!(principal, PrincipalConstraint::IsIn(..))
            && !matches!(resource, ResourceConstraint::IsIn(..));
        Some(Self {
            id: policy.id().clone(),
            effect: policy.effect(),
            principal,
            action: policy.action_constraint(),
            resource,
            evaluated: (!by_scope).then(|| policy.clone()),
        })
    }

    #[must_use]
    pub fn id(&self) -> &PolicyId {
        &self.id
    }

    #[must_use]
    pub fn effect(&self) -> Effect {
        self.effect
    }

    #[must_use]
    pub fn principal(&self) -> &PrincipalConstraint {
        &self.principal
    }

    #[must_use]
    pub fn action(&self) -> &ActionConstraint {
        &self.action
    }

    #[must_use]
    pub fn resource(&self) -> &ResourceConstraint {
        &self.resource
    }

    /// Whether the policy is satisfied whenever its scope matches: no `when`/`unless` clause
    /// and no `is T in E` scope (whose type test is left to Cedar).
    #[must_use]
    pub fn decided_by_scope(&self) -> bool {
        self.evaluated.is_none()
    }

    /// Cedar's policy, for the policies not decided by their scope.
    #[must_use]
    pub fn evaluated(&self) -> Option<&Policy> {
        self.evaluated.as_ref()
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
        let mut by_scope: Vec<(String, bool)> = set
            .policies()
            .map(|p| {
                let c = CompiledPolicy::new(p).unwrap();
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
}
