//! A scope index over a bundle's policies: a request evaluates only the policies whose scope
//! matches it, and none at all of those that have no `when`/`unless` clause.
//!
//! Cedar's [`Authorizer`] evaluates every policy of the set it is given, so its cost grows with
//! the set (docs/performance.md). A policy's condition is `principal-scope && action-scope && resource-scope &&
//! when && !unless`, evaluated left to right with short-circuiting, and the scope tests never
//! fail: they are `==`, `in` and `is` on entity uids. So a policy whose scope does not match
//! the request is neither satisfied nor in error, and leaving it out changes nothing in the
//! response; and a policy with no `when`/`unless` whose scope matches is satisfied, without
//! error. [`PolicyIndex`] relies on exactly this:
//!
//! * every policy gets one key per scope dimension: `== E` → `E`; `in E` and `is T in E` → "in
//!   `E`"; `is T` → "of type `T`"; none → wildcard. `action in [A, B]` is filed under "in `A`"
//!   and under "in `B`";
//! * policies are filed in buckets by (action key, principal key, resource key). In a bucket,
//!   policies with a `when`/`unless` clause or an `is T in E` scope are evaluated one by one
//!   with Cedar's evaluator (the call Cedar's authorizer makes for each policy of a set, on
//!   Cedar's compiled form of the policy as the bundle keeps it, see `bundle::policies`); the
//!   others are only listed, with their effect;
//! * a request visits, per dimension, the keys its uid matches: `== uid`, "in `E`" for `uid`
//!   and each of its ancestors in the request's entity store (as Cedar's `in` does), "of type
//!   `type(uid)`", and the wildcard. The listed policies of the buckets reached are satisfied;
//!   the others are evaluated, with one evaluator per request; everything is combined as Cedar
//!   combines policies: satisfied forbids deny (their ids are the reasons), else satisfied
//!   permits allow, else deny with no reasons; errors are the union.
//!
//! Matching uses the entity store of the request, so the index does not depend on any store and
//! stays right when the store changes. A policy can be reached twice only through two entries
//! of one `action in [...]` list that are both ancestors of the action; reasons and errors are
//! deduplicated (evaluation is deterministic). The whole set is evaluated instead when the
//! request has an unknown principal, action or resource (partial evaluation) or when the set
//! holds template-linked policies (bundles have none); an index of a bundle's policies
//! ([`PolicyIndex::of`]) holds no whole set, and denies such a request (`undecided`).

use crate::bundle::policies::{CompiledPolicy, Policies, Shared};
use cedar_policy::{
    AuthorizationError, Authorizer, Decision, Effect, Entities, EntityUid, PolicyId, PolicySet,
    Request, Response,
};
use cedar_policy_core::ast;
use cedar_policy_core::authorizer;
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;
use hashbrown::HashMap;
use std::sync::Arc;

/// The Cedar API this module speaks, for crates that use the index without depending on
/// `cedar-policy` themselves (the benchmarks).
pub use cedar_policy as cedar;

/// Cedar's response, in a canonical form: reasons sorted, errors sorted by policy id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedResponse {
    pub decision: Decision,
    /// The policies that determined the decision, sorted.
    pub reasons: Vec<PolicyId>,
    /// The policies that failed to evaluate (and were skipped, as Cedar specifies), sorted by
    /// policy id. Each is Cedar's own error, so it renders exactly as Cedar's would; its source
    /// location is that of the condition's first occurrence when policies indexed together have
    /// the same condition (one copy is kept, see `bundle::policies`).
    pub errors: Vec<AuthorizationError>,
    /// True when the index could not decide and holds no whole set to ask Cedar (an index of
    /// a bundle's policies, for a request with unknowns, which the filter never makes): the
    /// decision is then Deny, with no reasons.
    pub undecided: bool,
}

impl IndexedResponse {
    /// The canonical form of a response of [`Authorizer::is_authorized`].
    #[must_use]
    pub fn from_response(response: &Response) -> Self {
        let mut reasons: Vec<PolicyId> = response.diagnostics().reason().cloned().collect();
        reasons.sort_unstable();
        let mut errors: Vec<AuthorizationError> =
            response.diagnostics().errors().cloned().collect();
        errors.sort_by(|a, b| error_id(a).cmp(error_id(b)));
        Self {
            decision: response.decision(),
            reasons,
            errors,
            undecided: false,
        }
    }

    /// The ids of the policies in error, sorted.
    #[must_use]
    pub fn error_ids(&self) -> Vec<PolicyId> {
        self.errors.iter().map(|e| error_id(e).clone()).collect()
    }

    /// This response as a Cedar [`Response`] (for code written against `is_authorized`).
    #[must_use]
    pub fn into_response(self) -> Response {
        Response::new(
            self.decision,
            self.reasons.into_iter().collect(),
            self.errors,
        )
    }
}

/// The id of the policy an authorization error is about.
#[must_use]
pub fn error_id(e: &AuthorizationError) -> &PolicyId {
    match e {
        AuthorizationError::PolicyEvaluationError(e) => e.policy_id(),
    }
}

/// Figures about an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    /// Policies in the indexed set.
    pub policies: usize,
    /// Buckets (distinct scope keys).
    pub buckets: usize,
    /// Policies in the largest bucket.
    pub largest_bucket: usize,
    /// Policies with a wildcard scope in every dimension (reached by every request).
    pub everywhere: usize,
    /// Policies decided by their scope alone (never given to Cedar).
    pub by_scope: usize,
    /// Policies summed over buckets: more than `policies` when `action in` lists have several
    /// entries.
    pub placements: usize,
    /// True when the set could not be indexed (it holds template-linked policies) and every
    /// request evaluates the whole set.
    pub unindexed: bool,
}

/// What a request reaches in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reach {
    /// Buckets reached.
    pub buckets: usize,
    /// Policies decided by their scope (no evaluation).
    pub by_scope: usize,
    /// Policies given to Cedar.
    pub evaluated: usize,
    /// Buckets with policies to evaluate (one Cedar evaluator per request serves them all).
    pub evaluated_buckets: usize,
}

/// A policy's key in one scope dimension; uids and types by their numbers in [`Names`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Any,
    Eq(u32),
    /// `in E`, `is T in E` (the type is left to Cedar).
    In(u32),
    Is(u32),
}

/// The entity uids and types that policy scopes name, numbered: levels are keyed by number,
/// so each uid is held once, however many levels name it (and shared with the policies).
#[derive(Debug, Clone, Default)]
struct Names {
    uids: HashMap<Arc<ast::EntityUID>, u32>,
    types: HashMap<Arc<ast::EntityType>, u32>,
}

impl Names {
    /// The number of `uid`, numbering it if new; `None` only past `u32::MAX` uids.
    fn uid(&mut self, uid: &Arc<ast::EntityUID>) -> Option<u32> {
        number(&mut self.uids, uid)
    }

    /// The number of `ty`, numbering it if new.
    fn ty(&mut self, ty: &Arc<ast::EntityType>) -> Option<u32> {
        number(&mut self.types, ty)
    }

    /// The key of a principal or resource scope.
    fn key(&mut self, scope: &ast::PrincipalOrResourceConstraint) -> Option<Key> {
        use ast::EntityReference::EUID;
        use ast::PrincipalOrResourceConstraint as C;
        Some(match scope {
            C::Any => Key::Any,
            C::Eq(EUID(uid)) => Key::Eq(self.uid(uid)?),
            C::In(EUID(uid)) | C::IsIn(_, EUID(uid)) => Key::In(self.uid(uid)?),
            C::Is(ty) => Key::Is(self.ty(ty)?),
            // A slot: only templates have them, and they are not indexed.
            C::Eq(_) | C::In(_) | C::IsIn(..) => return None,
        })
    }
}

/// The number of `key` in `numbers`, numbering it next if new; `None` only past `u32::MAX`.
fn number<T: std::hash::Hash + Eq>(
    numbers: &mut HashMap<Arc<T>, u32>,
    key: &Arc<T>,
) -> Option<u32> {
    if let Some(n) = numbers.get(key.as_ref()) {
        return Some(*n);
    }
    let next = u32::try_from(numbers.len()).ok()?;
    numbers.insert(Arc::clone(key), next);
    Some(next)
}

/// One scope dimension, for every node of the dimension before it (the actions have one
/// node, 0): under each (node, key), the number of a node of the next dimension (for the
/// resources, a bucket). One map per kind of key for all nodes, not maps per node: most keys of
/// a large bundle (one user, one document) hold a single entry, and maps per node cost more
/// than the policies.
#[derive(Debug, Clone, Default)]
struct Dimension {
    any: HashMap<u32, u32>,
    eq: HashMap<(u32, u32), u32>,
    within: HashMap<(u32, u32), u32>,
    of_type: HashMap<(u32, u32), u32>,
    /// Nodes of the next dimension made so far.
    next: u32,
}

impl Dimension {
    /// The node under (`node`, `key`), made if new; `None` only past `u32::MAX` nodes.
    fn slot(&mut self, node: u32, key: Key) -> Option<u32> {
        let fresh = self.next;
        let at = match key {
            Key::Any => *self.any.entry(node).or_insert(fresh),
            Key::Eq(uid) => *self.eq.entry((node, uid)).or_insert(fresh),
            Key::In(uid) => *self.within.entry((node, uid)).or_insert(fresh),
            Key::Is(ty) => *self.of_type.entry((node, ty)).or_insert(fresh),
        };
        if at == fresh {
            self.next = fresh.checked_add(1)?;
        }
        Some(at)
    }

    /// The nodes under `node` that a request uid reaches.
    fn reached<'a>(&'a self, node: u32, scope: &'a Scope) -> impl Iterator<Item = u32> + 'a {
        let uid = scope.uid;
        let ancestors: &[u32] = if self.within.is_empty() {
            &[]
        } else {
            &scope.ancestors
        };
        uid.and_then(|u| self.eq.get(&(node, u)))
            .into_iter()
            .chain(uid.and_then(|u| self.within.get(&(node, u))))
            .chain(
                ancestors
                    .iter()
                    .filter_map(move |a| self.within.get(&(node, *a))),
            )
            .chain(scope.of_type.and_then(|t| self.of_type.get(&(node, t))))
            .chain(self.any.get(&node))
            .copied()
    }

    fn shrink_to_fit(&mut self) {
        self.any.shrink_to_fit();
        self.eq.shrink_to_fit();
        self.within.shrink_to_fit();
        self.of_type.shrink_to_fit();
    }
}

/// A request uid, its type and its ancestors in the request's store (what `in` tests), by
/// their numbers; what no policy names has none, and matches no key but the wildcard.
#[derive(Debug)]
struct Scope {
    uid: Option<u32>,
    of_type: Option<u32>,
    ancestors: Vec<u32>,
}

impl Scope {
    fn new(names: &Names, uid: &EntityUid, entities: &Entities, with_ancestors: bool) -> Self {
        let ancestors = match with_ancestors.then(|| entities.ancestors(uid)).flatten() {
            Some(a) => a
                .filter_map(|a| names.uids.get(a.as_ref()).copied())
                .collect(),
            None => Vec::new(),
        };
        let uid: &ast::EntityUID = uid.as_ref();
        Self {
            uid: names.uids.get(uid).copied(),
            of_type: names.types.get(uid.entity_type()).copied(),
            ancestors,
        }
    }
}

/// Policies under one (action, principal, resource) key.
#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Satisfied whenever the bucket is reached.
    by_scope: Vec<(PolicyId, Effect)>,
    /// Evaluated one by one, as Cedar's authorizer evaluates each policy of a set.
    evaluated: Vec<(PolicyId, ast::Policy)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct AncestorsUsed {
    action: bool,
    principal: bool,
    resource: bool,
}

/// The policies of a set, bucketed by scope. See the module documentation.
#[derive(Debug, Clone)]
pub struct PolicyIndex {
    names: Names,
    /// action → principal node.
    actions: Dimension,
    /// (principal node, principal) → resource node.
    principals: Dimension,
    /// (resource node, resource) → bucket.
    resources: Dimension,
    buckets: Vec<Bucket>,
    /// Whether some policy uses `in` in that dimension (else ancestors are not looked up).
    ancestors_used: AncestorsUsed,
    /// The whole set, for the requests the buckets cannot answer; none for an index of a
    /// bundle's policies, which keeps no Cedar set (such a request is then denied).
    full: Option<Arc<PolicySet>>,
    stats: IndexStats,
}

impl PolicyIndex {
    /// Indexes a copy of `policies`; see [`Self::shared`].
    #[must_use]
    pub fn new(policies: &PolicySet) -> Self {
        Self::shared(Arc::new(policies.clone()))
    }

    /// Indexes `policies`, keeping the set shared with its other holders, for the requests the
    /// index cannot answer. A set with template-linked policies is kept whole (every request
    /// evaluates all of it).
    #[must_use]
    pub fn shared(policies: Arc<PolicySet>) -> Self {
        let mut shared = Shared::default();
        let compiled: Option<Vec<CompiledPolicy>> = policies
            .policies()
            .map(|p| CompiledPolicy::new(p, p.id().clone(), &mut shared))
            .collect();
        let count = policies.policies().count();
        match compiled {
            Some(compiled) => Self::build(compiled.iter(), count, Some(policies)),
            None => {
                let mut index = Self::empty(Some(policies));
                index.stats.unindexed = true;
                index.stats = index.compute_stats(count);
                index
            }
        }
    }

    /// Indexes a bundle's policies. The index holds no whole set: a request it cannot answer
    /// (one with unknowns, which the filter never makes) is denied as `undecided`.
    #[must_use]
    pub fn of(policies: &Policies) -> Self {
        Self::build(policies.iter(), policies.len(), None)
    }

    fn build<'p>(
        policies: impl Iterator<Item = &'p CompiledPolicy>,
        count: usize,
        full: Option<Arc<PolicySet>>,
    ) -> Self {
        let mut index = Self::empty(full.clone());
        let mut policies = policies;
        let indexed = policies.all(|policy| index.place(policy).is_some());
        if indexed {
            index.actions.shrink_to_fit();
            index.principals.shrink_to_fit();
            index.resources.shrink_to_fit();
            index.buckets.shrink_to_fit();
            for bucket in &mut index.buckets {
                bucket.by_scope.shrink_to_fit();
                bucket.evaluated.shrink_to_fit();
            }
        } else {
            // Past `u32::MAX` names: every request goes to the whole set, or is undecided.
            index = Self::empty(full);
            index.stats.unindexed = true;
        }
        index.stats = index.compute_stats(count);
        index
    }

    /// An index of nothing, over `full`.
    fn empty(full: Option<Arc<PolicySet>>) -> Self {
        Self {
            names: Names::default(),
            actions: Dimension::default(),
            principals: Dimension::default(),
            resources: Dimension::default(),
            buckets: Vec::new(),
            ancestors_used: AncestorsUsed::default(),
            full,
            stats: IndexStats::default(),
        }
    }

    /// Files `policy` under its keys; `None` past `u32::MAX` names, or for a scope with a
    /// template slot (static policies, all a bundle holds, have none).
    fn place(&mut self, policy: &CompiledPolicy) -> Option<()> {
        let names = &mut self.names;
        let principal = names.key(policy.principal())?;
        let resource = names.key(policy.resource())?;
        let mut actions: Vec<Key> = Vec::new();
        match policy.action() {
            ast::ActionConstraint::Any => actions.push(Key::Any),
            ast::ActionConstraint::Eq(uid) => actions.push(Key::Eq(names.uid(uid)?)),
            // `action in []` matches nothing: filed nowhere.
            ast::ActionConstraint::In(uids) => {
                for uid in uids {
                    let key = Key::In(names.uid(uid)?);
                    if !actions.contains(&key) {
                        actions.push(key);
                    }
                }
            }
        }
        self.ancestors_used.principal |= matches!(principal, Key::In(_));
        self.ancestors_used.resource |= matches!(resource, Key::In(_));
        self.ancestors_used.action |= matches!(actions.first(), Some(Key::In(_)));
        // Decided by the scope when reached: no clause, and no type test left to Cedar.
        let evaluated: Option<&ast::Policy> = policy.evaluated();
        for action in &actions {
            let at = self.actions.slot(0, *action)?;
            let at = self.principals.slot(at, principal)?;
            let at = usize::try_from(self.resources.slot(at, resource)?).ok()?;
            if at == self.buckets.len() {
                self.buckets.push(Bucket::default());
            }
            let bucket = self.buckets.get_mut(at)?;
            // Most buckets of a large bundle hold one policy: the first push takes room for
            // one, not the four a `Vec` takes (the high-water mark is what a worker keeps).
            match evaluated {
                None => {
                    if bucket.by_scope.capacity() == 0 {
                        bucket.by_scope.reserve_exact(1);
                    }
                    bucket.by_scope.push((policy.id().clone(), policy.effect()));
                }
                Some(ast) => {
                    if bucket.evaluated.capacity() == 0 {
                        bucket.evaluated.reserve_exact(1);
                    }
                    bucket.evaluated.push((policy.id().clone(), ast.clone()));
                }
            }
        }
        Some(())
    }

    fn compute_stats(&self, policies: usize) -> IndexStats {
        if self.stats.unindexed {
            return IndexStats {
                policies,
                buckets: 1,
                largest_bucket: policies,
                everywhere: policies,
                by_scope: 0,
                placements: policies,
                unindexed: true,
            };
        }
        let mut stats = IndexStats {
            policies,
            ..IndexStats::default()
        };
        let mut by_scope = std::collections::HashSet::new();
        for bucket in &self.buckets {
            let n = bucket.by_scope.len() + bucket.evaluated.len();
            stats.buckets += 1;
            stats.placements += n;
            stats.largest_bucket = stats.largest_bucket.max(n);
            by_scope.extend(bucket.by_scope.iter().map(|(id, _)| id));
        }
        stats.by_scope = by_scope.len();
        let principals = self.actions.any.get(&0);
        let resources = principals.and_then(|at| self.principals.any.get(at));
        let bucket = resources.and_then(|at| self.resources.any.get(at));
        stats.everywhere = bucket
            .and_then(|at| self.buckets.get(usize::try_from(*at).ok()?))
            .map_or(0, |b| b.by_scope.len() + b.evaluated.len());
        stats
    }

    /// Figures about the index.
    #[must_use]
    pub fn stats(&self) -> IndexStats {
        self.stats
    }

    /// Authorizes `request` as `authorizer.is_authorized(request, policies, entities)` would on
    /// the whole set: same decision, reasons and errors.
    #[must_use]
    pub fn is_authorized(
        &self,
        authorizer: &Authorizer,
        request: &Request,
        entities: &Entities,
    ) -> IndexedResponse {
        let mut combined = Combined::default();
        // One evaluator for every bucket reached, made when the first one needs it.
        let mut evaluator: Option<Evaluator<'_>> = None;
        let mut complete = true;
        let reached = self.visit(request, entities, |bucket| {
            for (id, effect) in &bucket.by_scope {
                combined.satisfied(id, *effect);
            }
            if bucket.evaluated.is_empty() {
                return;
            }
            let eval = evaluator.get_or_insert_with(|| {
                Evaluator::new(
                    request.as_ref().clone(),
                    entities.as_ref(),
                    Extensions::all_available(),
                )
            });
            for (id, policy) in &bucket.evaluated {
                complete &= combined.evaluate(eval, id, policy);
            }
        });
        match (reached, &self.full) {
            (Some(()), _) if complete => combined.finish(),
            (_, Some(full)) => {
                IndexedResponse::from_response(&authorizer.is_authorized(request, full, entities))
            }
            (_, None) => IndexedResponse {
                decision: Decision::Deny,
                reasons: Vec::new(),
                errors: Vec::new(),
                undecided: true,
            },
        }
    }

    /// What [`Self::is_authorized`] reaches for this request: `None` when it evaluates the
    /// whole set instead (see the module documentation).
    #[must_use]
    pub fn reach(&self, request: &Request, entities: &Entities) -> Option<Reach> {
        let mut reach = Reach::default();
        self.visit(request, entities, |bucket| {
            reach.buckets += 1;
            reach.by_scope += bucket.by_scope.len();
            reach.evaluated += bucket.evaluated.len();
            reach.evaluated_buckets += usize::from(!bucket.evaluated.is_empty());
        })?;
        Some(reach)
    }

    /// Calls `f` on every bucket the request reaches; `None` (and no call) when the whole set
    /// must be evaluated.
    fn visit(
        &self,
        request: &Request,
        entities: &Entities,
        mut f: impl FnMut(&Bucket),
    ) -> Option<()> {
        if self.stats.unindexed {
            return None;
        }
        let names = &self.names;
        let used = self.ancestors_used;
        let action = Scope::new(names, request.action()?, entities, used.action);
        let principal = Scope::new(names, request.principal()?, entities, used.principal);
        let resource = Scope::new(names, request.resource()?, entities, used.resource);
        for p in self.actions.reached(0, &action) {
            for r in self.principals.reached(p, &principal) {
                for at in self.resources.reached(r, &resource) {
                    if let Some(bucket) =
                        usize::try_from(at).ok().and_then(|at| self.buckets.get(at))
                    {
                        f(bucket);
                    }
                }
            }
        }
        Some(())
    }
}

/// Bucket results combined as Cedar combines policies.
#[derive(Debug, Default)]
struct Combined {
    forbids: Vec<PolicyId>,
    permits: Vec<PolicyId>,
    errors: Vec<AuthorizationError>,
}

impl Combined {
    fn satisfied(&mut self, id: &PolicyId, effect: Effect) {
        match effect {
            Effect::Permit => self.permits.push(id.clone()),
            Effect::Forbid => self.forbids.push(id.clone()),
        }
    }

    /// Evaluates one policy as Cedar's authorizer does (the same evaluator call): satisfied,
    /// not satisfied, or in error (then skipped, and the error kept). False when the result is
    /// a residual, which a request without unknowns cannot give; the caller then evaluates the
    /// whole set with Cedar's authorizer.
    fn evaluate(&mut self, eval: &Evaluator<'_>, id: &PolicyId, policy: &ast::Policy) -> bool {
        match eval.partial_evaluate(policy) {
            Ok(result) => match result.left() {
                Some(true) => self.satisfied(id, policy.effect()),
                Some(false) => {}
                None => return false,
            },
            Err(error) => self.errors.push(
                authorizer::AuthorizationError::PolicyEvaluationError {
                    id: policy.id().clone(),
                    error,
                }
                .into(),
            ),
        }
        true
    }

    fn finish(self) -> IndexedResponse {
        let (decision, mut reasons) = if !self.forbids.is_empty() {
            (Decision::Deny, self.forbids)
        } else if !self.permits.is_empty() {
            (Decision::Allow, self.permits)
        } else {
            (Decision::Deny, Vec::new())
        };
        reasons.sort_unstable();
        reasons.dedup();
        let mut errors = self.errors;
        errors.sort_by(|a, b| error_id(a).cmp(error_id(b)));
        errors.dedup_by(|a, b| error_id(a) == error_id(b));
        IndexedResponse {
            decision,
            reasons,
            errors,
            undecided: false,
        }
    }
}

#[cfg(test)]
mod tests;
