//! A scope index over a bundle's policies: a request evaluates only the policies whose scope
//! matches it, and none at all of those that have no `when`/`unless` clause.
//!
//! Cedar's [`Authorizer`] evaluates every policy of the set it is given (about 0.5–1 µs each,
//! natively). A policy's condition is `principal-scope && action-scope && resource-scope &&
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
//!   policies with a `when`/`unless` clause or an `is T in E` scope form a [`PolicySet`] (ids
//!   unchanged) that Cedar evaluates; the others are only listed, with their effect;
//! * a request visits, per dimension, the keys its uid matches: `== uid`, "in `E`" for `uid`
//!   and each of its ancestors in the request's entity store (as Cedar's `in` does), "of type
//!   `type(uid)`", and the wildcard. The listed policies of the buckets reached are satisfied;
//!   the sets are evaluated by the caller's [`Authorizer`]; everything is combined as Cedar
//!   combines policies: satisfied forbids deny (their ids are the reasons), else satisfied
//!   permits allow, else deny with no reasons; errors are the union.
//!
//! Matching uses the entity store of the request, so the index does not depend on any store and
//! stays right when the store changes. A policy can be reached twice only through two entries
//! of one `action in [...]` list that are both ancestors of the action; reasons and errors are
//! deduplicated (evaluation is deterministic). The whole set is evaluated instead when the
//! request has an unknown principal, action or resource (partial evaluation) or when the set
//! holds template-linked policies (bundles have none).

use cedar_policy::{
    ActionConstraint, AuthorizationError, Authorizer, Decision, Effect, Entities, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint,
    Response,
};
use hashbrown::HashMap;

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
    /// policy id. Each is Cedar's own error, so it renders exactly as Cedar's would.
    pub errors: Vec<AuthorizationError>,
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
    /// Calls to `Authorizer::is_authorized`.
    pub cedar_calls: usize,
}

/// A policy's key in one scope dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Any,
    Eq(EntityUid),
    /// `in E`, `is T in E` (the type is left to Cedar).
    In(EntityUid),
    Is(EntityTypeName),
}

/// One scope dimension: the policies (or the next dimension) under each key.
#[derive(Debug, Clone)]
struct Level<T> {
    any: Option<T>,
    eq: HashMap<EntityUid, T>,
    within: HashMap<EntityUid, T>,
    of_type: HashMap<EntityTypeName, T>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self {
            any: None,
            eq: HashMap::new(),
            within: HashMap::new(),
            of_type: HashMap::new(),
        }
    }
}

impl<T: Default> Level<T> {
    fn slot(&mut self, key: &Key) -> &mut T {
        match key {
            Key::Any => self.any.get_or_insert_with(T::default),
            Key::Eq(uid) => self.eq.entry(uid.clone()).or_default(),
            Key::In(uid) => self.within.entry(uid.clone()).or_default(),
            Key::Is(ty) => self.of_type.entry(ty.clone()).or_default(),
        }
    }
}

impl<T> Level<T> {
    /// The entries a request uid reaches.
    fn reached<'a>(&'a self, scope: &'a Scope<'a>) -> impl Iterator<Item = &'a T> + 'a {
        let uid = scope.uid;
        let ancestors: &[&EntityUid] = if self.within.is_empty() {
            &[]
        } else {
            &scope.ancestors
        };
        self.eq
            .get(uid)
            .into_iter()
            .chain(self.within.get(uid))
            .chain(ancestors.iter().filter_map(|a| self.within.get(*a)))
            .chain(self.of_type.get(uid.type_name()))
            .chain(self.any.as_ref())
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.eq
            .values()
            .chain(self.within.values())
            .chain(self.of_type.values())
            .chain(self.any.as_ref())
    }
}

/// A request uid and its ancestors in the request's store (what `in` tests).
#[derive(Debug)]
struct Scope<'a> {
    uid: &'a EntityUid,
    ancestors: Vec<&'a EntityUid>,
}

impl<'a> Scope<'a> {
    fn new(uid: &'a EntityUid, entities: &'a Entities, with_ancestors: bool) -> Self {
        let ancestors = match with_ancestors.then(|| entities.ancestors(uid)).flatten() {
            Some(a) => a.collect(),
            None => Vec::new(),
        };
        Self { uid, ancestors }
    }
}

/// Policies under one (action, principal, resource) key.
#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Satisfied whenever the bucket is reached.
    by_scope: Vec<(PolicyId, Effect)>,
    /// Evaluated by Cedar.
    evaluated: Option<PolicySet>,
    evaluated_len: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct AncestorsUsed {
    action: bool,
    principal: bool,
    resource: bool,
}

/// action → principal → resource → bucket.
type Buckets = Level<Level<Level<Bucket>>>;

/// The policies of a set, bucketed by scope. See the module documentation.
#[derive(Debug, Clone)]
pub struct PolicyIndex {
    buckets: Buckets,
    /// Whether some policy uses `in` in that dimension (else ancestors are not looked up).
    ancestors_used: AncestorsUsed,
    /// The whole set, for the requests the buckets cannot answer.
    full: PolicySet,
    stats: IndexStats,
}

impl PolicyIndex {
    /// Indexes `policies`. A set with template-linked policies is kept whole (every request
    /// evaluates all of it); bundles have none.
    #[must_use]
    pub fn new(policies: &PolicySet) -> Self {
        let mut index = Self {
            buckets: Buckets::default(),
            ancestors_used: AncestorsUsed::default(),
            full: policies.clone(),
            stats: IndexStats::default(),
        };
        for policy in policies.policies() {
            if !index.place(policy) {
                index.buckets = Buckets::default();
                index.ancestors_used = AncestorsUsed::default();
                index.stats.unindexed = true;
                break;
            }
        }
        index.stats = index.compute_stats(policies.policies().count());
        index
    }

    /// Files `policy` under its keys; false if it cannot be (not a static policy).
    fn place(&mut self, policy: &Policy) -> bool {
        if !policy.is_static() {
            return false;
        }
        let (principal, principal_typed_in) = match policy.principal_constraint() {
            PrincipalConstraint::Any => (Key::Any, false),
            PrincipalConstraint::Eq(uid) => (Key::Eq(uid), false),
            PrincipalConstraint::In(uid) => (Key::In(uid), false),
            PrincipalConstraint::Is(ty) => (Key::Is(ty), false),
            PrincipalConstraint::IsIn(_, uid) => (Key::In(uid), true),
        };
        let (resource, resource_typed_in) = match policy.resource_constraint() {
            ResourceConstraint::Any => (Key::Any, false),
            ResourceConstraint::Eq(uid) => (Key::Eq(uid), false),
            ResourceConstraint::In(uid) => (Key::In(uid), false),
            ResourceConstraint::Is(ty) => (Key::Is(ty), false),
            ResourceConstraint::IsIn(_, uid) => (Key::In(uid), true),
        };
        let mut actions: Vec<Key> = Vec::new();
        match policy.action_constraint() {
            ActionConstraint::Any => actions.push(Key::Any),
            ActionConstraint::Eq(uid) => actions.push(Key::Eq(uid)),
            // `action in []` matches nothing: filed nowhere.
            ActionConstraint::In(uids) => {
                for uid in uids {
                    let key = Key::In(uid);
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
        let by_scope =
            !policy.has_non_scope_constraint() && !principal_typed_in && !resource_typed_in;
        for action in &actions {
            let bucket = self.buckets.slot(action).slot(&principal).slot(&resource);
            if by_scope {
                bucket.by_scope.push((policy.id().clone(), policy.effect()));
            } else {
                let set = bucket.evaluated.get_or_insert_with(PolicySet::new);
                if set.add(policy.clone()).is_err() {
                    return false;
                }
                bucket.evaluated_len += 1;
            }
        }
        true
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
        for bucket in self
            .buckets
            .values()
            .flat_map(Level::values)
            .flat_map(Level::values)
        {
            let n = bucket.by_scope.len() + bucket.evaluated_len;
            stats.buckets += 1;
            stats.placements += n;
            stats.largest_bucket = stats.largest_bucket.max(n);
            by_scope.extend(bucket.by_scope.iter().map(|(id, _)| id));
        }
        stats.by_scope = by_scope.len();
        stats.everywhere = self
            .buckets
            .any
            .as_ref()
            .and_then(|p| p.any.as_ref())
            .and_then(|r| r.any.as_ref())
            .map_or(0, |b| b.by_scope.len() + b.evaluated_len);
        stats
    }

    /// Figures about the index.
    #[must_use]
    pub fn stats(&self) -> IndexStats {
        self.stats
    }

    /// The set the index was built from.
    #[must_use]
    pub fn policies(&self) -> &PolicySet {
        &self.full
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
        let reached = self.visit(request, entities, |bucket| {
            for (id, effect) in &bucket.by_scope {
                match effect {
                    Effect::Permit => combined.permits.push(id.clone()),
                    Effect::Forbid => combined.forbids.push(id.clone()),
                }
            }
            if let Some(set) = &bucket.evaluated {
                combined.add(&authorizer.is_authorized(request, set, entities));
            }
        });
        match reached {
            Some(()) => combined.finish(),
            None => IndexedResponse::from_response(
                &authorizer.is_authorized(request, &self.full, entities),
            ),
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
            reach.evaluated += bucket.evaluated_len;
            reach.cedar_calls += usize::from(bucket.evaluated.is_some());
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
        let action = Scope::new(request.action()?, entities, self.ancestors_used.action);
        let principal = Scope::new(
            request.principal()?,
            entities,
            self.ancestors_used.principal,
        );
        let resource = Scope::new(request.resource()?, entities, self.ancestors_used.resource);
        for by_principal in self.buckets.reached(&action) {
            for by_resource in by_principal.reached(&principal) {
                for bucket in by_resource.reached(&resource) {
                    f(bucket);
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
    fn add(&mut self, response: &Response) {
        let reasons = response.diagnostics().reason().cloned();
        match response.decision() {
            // A set denies with reasons only when some forbid in it is satisfied, and then its
            // reasons are exactly its satisfied forbids (its satisfied permits, if any, do not
            // matter: the whole denies too).
            Decision::Deny => self.forbids.extend(reasons),
            Decision::Allow => self.permits.extend(reasons),
        }
        self.errors.extend(response.diagnostics().errors().cloned());
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
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use cedar_policy::{Context, Entity, EntityUid, Request, RestrictedExpression, SlotId};

    use super::*;

    fn uid(s: &str) -> EntityUid {
        EntityUid::from_str(s).unwrap()
    }

    /// A set whose policies are named by their `@id` annotations, as bundles name them.
    fn set(src: &str) -> PolicySet {
        let parsed = PolicySet::from_str(src).unwrap();
        let mut out = PolicySet::new();
        for p in parsed.policies() {
            let id = PolicyId::new(p.annotation("id").unwrap());
            out.add(p.new_id(id)).unwrap();
        }
        out
    }

    /// `U::"<p>"` does `Action::"<a>"` on `R::"<r>"`, with `context.n`.
    fn request(p: &str, a: &str, r: &str, n: i64) -> Request {
        let ctx = Context::from_pairs([("n".to_owned(), RestrictedExpression::new_long(n))]);
        let (p, a, r) = (
            uid(&format!(r#"U::"{p}""#)),
            uid(&format!(r#"Action::"{a}""#)),
            uid(&format!(r#"R::"{r}""#)),
        );
        Request::new(p, a, r, ctx.unwrap(), None).unwrap()
    }

    /// `GET` and `HEAD` in `read`, `read` and `DELETE` in `all`; `U::"a"` in `G::"admins"`,
    /// `R::"x"` in `R::"docs"`.
    fn store() -> Entities {
        let e = |id: &str, parents: &[&str]| {
            Entity::new_no_attrs(uid(id), parents.iter().map(|p| uid(p)).collect())
        };
        let entities = [
            e(r#"Action::"all""#, &[]),
            e(r#"Action::"read""#, &[r#"Action::"all""#]),
            e(r#"Action::"GET""#, &[r#"Action::"read""#]),
            e(r#"Action::"HEAD""#, &[r#"Action::"read""#]),
            e(r#"Action::"DELETE""#, &[r#"Action::"all""#]),
            e(r#"U::"a""#, &[r#"G::"admins""#]),
            e(r#"R::"x""#, &[r#"R::"docs""#]),
        ];
        Entities::from_entities(entities, None).unwrap()
    }

    /// Answers with the index, checks that Cedar on the whole set answers the same, returns
    /// the decision, the reasons and the policies in error.
    fn decide(
        index: &PolicyIndex,
        req: &Request,
        entities: &Entities,
    ) -> (Decision, Vec<String>, Vec<String>) {
        let a = Authorizer::new();
        let whole = a.is_authorized(req, index.policies(), entities);
        let got = index.is_authorized(&a, req, entities);
        assert_eq!(got, IndexedResponse::from_response(&whole), "{req}");
        let strings = |ids: &[PolicyId]| ids.iter().map(ToString::to_string).collect();
        (
            got.decision,
            strings(&got.reasons),
            strings(&got.error_ids()),
        )
    }

    fn reasons(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn empty_set_denies() {
        let index = PolicyIndex::new(&PolicySet::new());
        assert_eq!(index.stats(), IndexStats::default());
        let req = request("a", "GET", "x", 0);
        let got = decide(&index, &req, &Entities::empty());
        assert_eq!(got, (Decision::Deny, vec![], vec![]));
        assert_eq!(
            index.reach(&req, &Entities::empty()),
            Some(Reach::default())
        );
    }

    #[test]
    fn scopes_are_matched_by_the_index() {
        let index = PolicyIndex::new(&set(r#"
            @id("eq") permit(principal == U::"a", action == Action::"GET", resource == R::"x");
            @id("role") permit(principal in G::"admins", action, resource);
            @id("read") permit(principal, action in [Action::"read"], resource in R::"docs");
            @id("typed") forbid(principal is U, action in Action::"all", resource is R)
                when { context.n > 3 };
            @id("typed-in") permit(principal is U in G::"admins", action, resource);
        "#));
        let expected = IndexStats {
            policies: 5,
            // role and typed-in share (any action, in admins, any resource).
            buckets: 4,
            largest_bucket: 2,
            everywhere: 0,
            by_scope: 3,
            placements: 5,
            unindexed: false,
        };
        assert_eq!(index.stats(), expected);

        let e = &store();
        let all = reasons(&["eq", "read", "role", "typed-in"]);
        let got = decide(&index, &request("a", "GET", "x", 0), e);
        assert_eq!(got, (Decision::Allow, all, vec![]));
        // eq, role, read by scope; typed, typed-in evaluated in two calls.
        let reach = Reach {
            buckets: 4,
            by_scope: 3,
            evaluated: 2,
            cedar_calls: 2,
        };
        assert_eq!(index.reach(&request("a", "GET", "x", 0), e), Some(reach));
        let got = decide(&index, &request("a", "HEAD", "x", 5), e);
        assert_eq!(got, (Decision::Deny, reasons(&["typed"]), vec![]));
        // Not in the store: `in` holds only for the entity itself.
        let got = decide(&index, &request("b", "PUT", "y", 5), e);
        assert_eq!(got, (Decision::Deny, vec![], vec![]));
        let reach = index.reach(&request("b", "PUT", "y", 5), e);
        assert_eq!(reach, Some(Reach::default()));
        let got = decide(&index, &request("b", "read", "docs", 0), e);
        assert_eq!(got, (Decision::Allow, reasons(&["read"]), vec![]));
    }

    #[test]
    fn errors_and_mixed_buckets() {
        let index = PolicyIndex::new(&set(r#"
            @id("p") permit(principal == U::"a", action, resource);
            @id("f") forbid(principal == U::"a", action, resource) when { context.n > 1 };
            @id("bad") permit(principal, action, resource) when { principal.missing };
            @id("bad2") forbid(principal == U::"a", action, resource) when { resource.nope };
        "#));
        let e = &Entities::empty();
        let errors = reasons(&["bad", "bad2"]);
        let got = decide(&index, &request("a", "GET", "x", 0), e);
        assert_eq!(got, (Decision::Allow, reasons(&["p"]), errors.clone()));
        // `p` (by scope) and `f` (evaluated) share a bucket; the forbid wins.
        let got = decide(&index, &request("a", "GET", "x", 5), e);
        assert_eq!(got, (Decision::Deny, reasons(&["f"]), errors));

        // Errors are Cedar's own and render as Cedar's.
        let req = request("a", "GET", "x", 0);
        let whole = Authorizer::new().is_authorized(&req, index.policies(), e);
        let mut cedar: Vec<String> = whole
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        let got = index.is_authorized(&Authorizer::new(), &req, e);
        let mut mine: Vec<String> = got.errors.iter().map(ToString::to_string).collect();
        cedar.sort();
        mine.sort();
        assert_eq!(mine, cedar);
        // And the response converts back to Cedar's type.
        let back = IndexedResponse::from_response(&got.into_response());
        assert_eq!(back, IndexedResponse::from_response(&whole));
    }

    #[test]
    fn the_request_store_decides_in() {
        let index = PolicyIndex::new(&set(
            r#"@id("r") permit(principal, action in Action::"read", resource);"#,
        ));
        let req = request("a", "PUT", "x", 0);
        assert_eq!(decide(&index, &req, &store()).0, Decision::Deny);
        // PUT joins read in the request's store: the index follows.
        let put = Entity::new_no_attrs(uid(r#"Action::"PUT""#), [uid(r#"Action::"read""#)].into());
        let later = store().add_entities([put], None).unwrap();
        assert_eq!(decide(&index, &req, &later).0, Decision::Allow);
        assert_eq!(index.reach(&req, &later).map(|r| r.by_scope), Some(1));
    }

    /// An action under two entries of one `action in` list reaches the policy twice; it
    /// counts once.
    #[test]
    fn lists_reaching_twice_count_once() {
        let index = PolicyIndex::new(&set(r#"
            @id("two") permit(principal, action in [Action::"read", Action::"all"], resource);
            @id("err") forbid(principal, action in [Action::"read", Action::"all"], resource)
                when { resource.missing };
        "#));
        assert_eq!(index.stats().placements, 4);
        let e = &store();
        let got = decide(&index, &request("a", "GET", "x", 0), e);
        assert_eq!(got, (Decision::Allow, reasons(&["two"]), reasons(&["err"])));
        let reach = index.reach(&request("a", "GET", "x", 0), e).unwrap();
        assert_eq!((reach.by_scope, reach.evaluated), (2, 2));
    }

    #[test]
    fn template_links_are_not_indexed() {
        let mut pset = PolicySet::from_str(
            r#"permit(principal == ?principal, action, resource);
               forbid(principal == U::"b", action, resource);"#,
        )
        .unwrap();
        let slots = [(SlotId::principal(), uid(r#"U::"a""#))].into();
        pset.link(PolicyId::new("policy0"), PolicyId::new("l"), slots)
            .unwrap();
        let index = PolicyIndex::new(&pset);
        assert!(index.stats().unindexed);
        let req = request("a", "GET", "x", 0);
        let got = decide(&index, &req, &Entities::empty());
        assert_eq!(got, (Decision::Allow, reasons(&["l"]), vec![]));
        assert_eq!(index.reach(&req, &Entities::empty()), None);
    }

    /// The combination must be Cedar's: a wrong rule (here: any allowing call allows) is
    /// caught by the comparison with the whole set.
    #[test]
    fn a_wrong_combination_is_detected() {
        let index = PolicyIndex::new(&set(r#"
            @id("p") permit(principal == U::"a", action, resource) when { true };
            @id("f") forbid(principal, action, resource) when { true };
        "#));
        let (a, e) = (Authorizer::new(), Entities::empty());
        let req = request("a", "GET", "x", 0);
        let whole = IndexedResponse::from_response(&a.is_authorized(&req, index.policies(), &e));
        let mut wrong = Vec::new();
        let mut right = Combined::default();
        index
            .visit(&req, &e, |bucket| {
                if let Some(s) = &bucket.evaluated {
                    let resp = a.is_authorized(&req, s, &e);
                    if resp.decision() == Decision::Allow {
                        wrong.extend(resp.diagnostics().reason().cloned());
                    }
                    right.add(&resp);
                }
            })
            .unwrap();
        let wrong = IndexedResponse {
            decision: if wrong.is_empty() {
                Decision::Deny
            } else {
                Decision::Allow
            },
            reasons: wrong,
            errors: Vec::new(),
        };
        assert_ne!(wrong, whole);
        assert_eq!(right.finish(), whole);
    }
}
