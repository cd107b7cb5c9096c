//! A scope index over a bundle's policies, so that a request evaluates only the policies whose
//! scope can match it.
//!
//! Cedar's [`Authorizer`] evaluates every policy of the set it is given. A policy's condition is
//! `principal-scope && action-scope && resource-scope && when && !unless`, evaluated left to
//! right with short-circuiting, and the scope tests never fail (`==`, `in` and `is` on entity
//! uids). A policy whose scope does not match the request is therefore neither satisfied nor in
//! error, and leaving it out changes nothing in the response. [`PolicyIndex`] uses this:
//!
//! * each policy gets one key per scope dimension: `principal == U` and `resource == R` give
//!   `U` and `R`; every other principal and resource constraint (`in`, `is`, `is .. in`, none)
//!   is a wildcard, since it depends on the entity store;
//! * `action == A` gives `A`; `action in [A, B]` gives `A`, `B` and every entity of the store
//!   that has `A` or `B` among its ancestors (at most [`MAX_ACTION_KEYS`] of them, else a
//!   wildcard); `action` alone is a wildcard;
//! * the policy is placed in the bucket of each (action, principal, resource) key it has (one,
//!   except for `action in` lists); every bucket is a prebuilt [`PolicySet`], ids unchanged.
//!
//! A request looks up at most eight buckets (its own uid or the wildcard, per dimension); no
//! policy is in two of them. Each present bucket is evaluated by the same [`Authorizer`] and the
//! responses are combined as Cedar combines policies: satisfied forbids deny (their ids are the
//! reasons), else satisfied permits allow, else deny with no reasons; errors are the union.
//!
//! Two cases go to the whole set instead, so the response is always Cedar's own:
//! a request with an unknown principal, action or resource (partial evaluation), and a request
//! whose entity store gives its action an ancestor named in an `action in` list that the store
//! the index was built with did not (the `in` expansion would no longer be complete).

use std::cmp::Ordering;
use std::collections::HashSet as StdHashSet;

use cedar_policy::{
    ActionConstraint, AuthorizationError, Authorizer, Decision, Entities, EntityUid, Policy,
    PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint, Response,
};
use hashbrown::{HashMap, HashSet};

/// The Cedar API this module speaks, for crates that use the index without depending on
/// `cedar-policy` themselves (the benchmarks).
pub use cedar_policy as cedar;

/// The most action uids an `action in [...]` constraint is expanded to; beyond that the policy
/// is treated as applying to every action.
pub const MAX_ACTION_KEYS: usize = 256;

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
        errors.sort_by(cmp_errors);
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

fn cmp_errors(a: &AuthorizationError, b: &AuthorizationError) -> Ordering {
    error_id(a).cmp(error_id(b))
}

/// Figures about an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    /// Policies in the indexed set.
    pub policies: usize,
    /// Non-empty buckets.
    pub buckets: usize,
    /// Policies in the largest bucket.
    pub largest_bucket: usize,
    /// Policies in the all-wildcard bucket (evaluated for every request).
    pub everywhere: usize,
    /// Policies summed over buckets (more than `policies` when `action in` lists are expanded).
    pub placements: usize,
    /// True when the set could not be indexed (it holds template-linked policies) and every
    /// request evaluates the whole set.
    pub unindexed: bool,
}

/// A key level: an exact uid or the wildcard.
#[derive(Debug, Clone)]
struct Level<T> {
    by_uid: HashMap<EntityUid, T>,
    any: Option<T>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self {
            by_uid: HashMap::new(),
            any: None,
        }
    }
}

impl<T: Default> Level<T> {
    fn slot(&mut self, key: Option<&EntityUid>) -> &mut T {
        match key {
            Some(uid) => self.by_uid.entry(uid.clone()).or_default(),
            None => self.any.get_or_insert_with(T::default),
        }
    }
}

impl<T> Level<T> {
    /// The entries for `uid` and for the wildcard, those present.
    fn matching<'a>(&'a self, uid: &EntityUid) -> impl Iterator<Item = &'a T> + 'a {
        self.by_uid.get(uid).into_iter().chain(self.any.as_ref())
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.by_uid.values().chain(self.any.as_ref())
    }
}

/// action → principal → resource → policies.
type Buckets = Level<Level<Level<PolicySet>>>;

/// The policies of a set, bucketed by scope. See the module documentation.
#[derive(Debug, Clone)]
pub struct PolicyIndex {
    buckets: Buckets,
    /// The whole set, for the requests the buckets cannot answer.
    full: PolicySet,
    /// Every uid named in an `action in [...]` list.
    action_groups: HashSet<EntityUid>,
    /// For each entity of the build-time store: its ancestors that are in `action_groups`.
    group_ancestors: HashMap<EntityUid, HashSet<EntityUid>>,
    stats: IndexStats,
}

impl PolicyIndex {
    /// Indexes `policies` (static policies; a set with template-linked policies is kept whole)
    /// against the action hierarchy of `entities`.
    #[must_use]
    pub fn new(policies: &PolicySet, entities: &Entities) -> Self {
        let action_groups: HashSet<EntityUid> = policies
            .policies()
            .filter_map(|p| match p.action_constraint() {
                ActionConstraint::In(uids) => Some(uids),
                ActionConstraint::Any | ActionConstraint::Eq(_) => None,
            })
            .flatten()
            .collect();
        // Members of each group, and the groups of each member, per the build-time store.
        let mut members: HashMap<EntityUid, Vec<EntityUid>> = HashMap::new();
        let mut group_ancestors: HashMap<EntityUid, HashSet<EntityUid>> = HashMap::new();
        if !action_groups.is_empty() {
            for entity in entities.iter() {
                let uid = entity.uid();
                let Some(ancestors) = entities.ancestors(&uid) else {
                    continue;
                };
                let groups: HashSet<EntityUid> = ancestors
                    .filter(|a| action_groups.contains(*a))
                    .cloned()
                    .collect();
                for g in &groups {
                    members.entry(g.clone()).or_default().push(uid.clone());
                }
                if !groups.is_empty() {
                    group_ancestors.insert(uid, groups);
                }
            }
        }

        let mut index = Self {
            buckets: Buckets::default(),
            full: policies.clone(),
            action_groups,
            group_ancestors,
            stats: IndexStats {
                policies: policies.policies().count(),
                ..IndexStats::default()
            },
        };
        for policy in policies.policies() {
            if !index.place(policy, &members) {
                index.buckets = Buckets::default();
                index.stats.unindexed = true;
                break;
            }
        }
        index.stats = index.compute_stats();
        index
    }

    fn place(&mut self, policy: &Policy, members: &HashMap<EntityUid, Vec<EntityUid>>) -> bool {
        let principal = match policy.principal_constraint() {
            PrincipalConstraint::Eq(uid) => Some(uid),
            PrincipalConstraint::Any
            | PrincipalConstraint::In(_)
            | PrincipalConstraint::Is(_)
            | PrincipalConstraint::IsIn(_, _) => None,
        };
        let resource = match policy.resource_constraint() {
            ResourceConstraint::Eq(uid) => Some(uid),
            ResourceConstraint::Any
            | ResourceConstraint::In(_)
            | ResourceConstraint::Is(_)
            | ResourceConstraint::IsIn(_, _) => None,
        };
        let actions: Vec<Option<EntityUid>> = match policy.action_constraint() {
            ActionConstraint::Any => vec![None],
            ActionConstraint::Eq(uid) => vec![Some(uid)],
            ActionConstraint::In(groups) => {
                let mut keys: StdHashSet<&EntityUid> = groups.iter().collect();
                for g in &groups {
                    keys.extend(members.get(g).into_iter().flatten());
                }
                if keys.len() > MAX_ACTION_KEYS {
                    vec![None]
                } else {
                    keys.into_iter().cloned().map(Some).collect()
                }
            }
        };
        for action in &actions {
            if self
                .buckets
                .slot(action.as_ref())
                .slot(principal.as_ref())
                .slot(resource.as_ref())
                .add(policy.clone())
                .is_err()
            {
                return false;
            }
        }
        true
    }

    fn compute_stats(&self) -> IndexStats {
        let mut stats = IndexStats {
            policies: self.stats.policies,
            unindexed: self.stats.unindexed,
            ..IndexStats::default()
        };
        for set in self
            .buckets
            .values()
            .flat_map(Level::values)
            .flat_map(Level::values)
        {
            let n = set.policies().count();
            stats.buckets += 1;
            stats.placements += n;
            stats.largest_bucket = stats.largest_bucket.max(n);
        }
        stats.everywhere = self
            .buckets
            .any
            .as_ref()
            .and_then(|p| p.any.as_ref())
            .and_then(|r| r.any.as_ref())
            .map_or(0, |s| s.policies().count());
        if stats.unindexed {
            stats.buckets = 1;
            stats.placements = stats.policies;
            stats.largest_bucket = stats.policies;
            stats.everywhere = stats.policies;
        }
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
        let Some(buckets) = self.buckets_for(request, entities) else {
            return IndexedResponse::from_response(
                &authorizer.is_authorized(request, &self.full, entities),
            );
        };
        let mut combined = Combined::default();
        for set in buckets {
            combined.add(&authorizer.is_authorized(request, set, entities));
        }
        combined.finish()
    }

    /// How many policies [`Self::is_authorized`] evaluates for this request: `None` when it
    /// evaluates the whole set (see the module documentation).
    #[must_use]
    pub fn evaluated_policies(&self, request: &Request, entities: &Entities) -> Option<usize> {
        self.buckets_for(request, entities)
            .map(|buckets| buckets.map(|s| s.policies().count()).sum())
    }

    /// The buckets that apply to the request, or `None` when the whole set must be evaluated.
    fn buckets_for<'a>(
        &'a self,
        request: &'a Request,
        entities: &Entities,
    ) -> Option<impl Iterator<Item = &'a PolicySet> + 'a> {
        let (Some(principal), Some(action), Some(resource)) =
            (request.principal(), request.action(), request.resource())
        else {
            return None;
        };
        if self.stats.unindexed || !self.same_action_groups(action, entities) {
            return None;
        }
        Some(
            self.buckets
                .matching(action)
                .flat_map(move |by_principal| by_principal.matching(principal))
                .flat_map(move |by_resource| by_resource.matching(resource)),
        )
    }

    /// Whether every ancestor of `action` in `entities` that an `action in` list names was
    /// already its ancestor when the index was built (so the expansion of the lists holds).
    fn same_action_groups(&self, action: &EntityUid, entities: &Entities) -> bool {
        if self.action_groups.is_empty() {
            return true;
        }
        let Some(ancestors) = entities.ancestors(action) else {
            // Not in the store: `action in G` holds only for `action == G`, always a key.
            return true;
        };
        let known = self.group_ancestors.get(action);
        ancestors
            .filter(|a| self.action_groups.contains(*a))
            .all(|a| known.is_some_and(|k| k.contains(a)))
    }
}

/// Bucket responses combined as Cedar combines policies.
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
            // A bucket denies with reasons only when some forbid in it is satisfied, and then
            // its reasons are exactly its satisfied forbids.
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
        let mut errors = self.errors;
        errors.sort_by(cmp_errors);
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

    /// `GET` and `HEAD` in `read`, `read` and `DELETE` in `all`.
    fn actions() -> Entities {
        let e = |id: &str, parents: &[&str]| {
            let parents = parents
                .iter()
                .map(|p| uid(&format!(r#"Action::"{p}""#)))
                .collect();
            Entity::new_no_attrs(uid(&format!(r#"Action::"{id}""#)), parents)
        };
        let entities = [
            e("all", &[]),
            e("read", &["all"]),
            e("GET", &["read"]),
            e("HEAD", &["read"]),
            e("DELETE", &["all"]),
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
        let strings = |ids: Vec<PolicyId>| ids.iter().map(ToString::to_string).collect();
        (
            got.decision,
            strings(got.reasons.clone()),
            strings(got.error_ids()),
        )
    }

    #[test]
    fn empty_set_denies() {
        let index = PolicyIndex::new(&PolicySet::new(), &Entities::empty());
        assert_eq!(index.stats(), IndexStats::default());
        let req = request("a", "GET", "x", 0);
        let none: Vec<String> = Vec::new();
        let got = decide(&index, &req, &Entities::empty());
        assert_eq!(got, (Decision::Deny, none.clone(), none));
        assert_eq!(index.evaluated_policies(&req, &Entities::empty()), Some(0));
    }

    #[test]
    fn buckets_by_scope() {
        let index = PolicyIndex::new(
            &set(r#"
                @id("eq") permit(principal == U::"a", action == Action::"GET", resource == R::"x");
                @id("role") permit(principal in G::"admins", action, resource);
                @id("read") permit(principal, action in [Action::"read"], resource == R::"x");
                @id("all") forbid(principal == U::"b", action in Action::"all", resource);
            "#),
            &actions(),
        );
        let s = index.stats();
        // eq: 1, role: 1, read: read|GET|HEAD, all: all|read|GET|HEAD|DELETE.
        let expected = IndexStats {
            policies: 4,
            buckets: 10,
            largest_bucket: 1,
            everywhere: 1,
            placements: 10,
            unindexed: false,
        };
        assert_eq!(s, expected);

        let e = &actions();
        let (d, reasons, _) = decide(&index, &request("a", "GET", "x", 0), e);
        assert_eq!(
            (d, reasons),
            (Decision::Allow, vec!["eq".into(), "read".into()])
        );
        let (d, reasons, _) = decide(&index, &request("b", "HEAD", "x", 0), e);
        assert_eq!((d, reasons), (Decision::Deny, vec!["all".into()]));
        let (d, reasons, _) = decide(&index, &request("c", "PUT", "x", 0), e);
        assert_eq!((d, reasons), (Decision::Deny, vec![]));
        // An action group as the request's action matches itself.
        let (d, reasons, _) = decide(&index, &request("c", "read", "x", 0), e);
        assert_eq!((d, reasons), (Decision::Allow, vec!["read".into()]));
        // Only what can apply is evaluated: eq, role, read.
        let req = request("a", "GET", "x", 0);
        assert_eq!(index.evaluated_policies(&req, e), Some(3));
        assert_eq!(
            index.evaluated_policies(&request("c", "PUT", "y", 0), e),
            Some(1)
        );
    }

    #[test]
    fn errors_and_mixed_buckets() {
        let index = PolicyIndex::new(
            &set(r#"
                @id("p") permit(principal == U::"a", action, resource);
                @id("f") forbid(principal == U::"a", action, resource) when { context.n > 1 };
                @id("bad") permit(principal, action, resource) when { principal.missing };
                @id("bad2") forbid(principal == U::"a", action, resource) when { resource.nope };
            "#),
            &Entities::empty(),
        );
        let e = &Entities::empty();
        let errors: Vec<String> = vec!["bad".into(), "bad2".into()];
        let got = decide(&index, &request("a", "GET", "x", 0), e);
        assert_eq!(got, (Decision::Allow, vec!["p".into()], errors.clone()));
        // `p` and `f` share a bucket, which denies; so does the whole.
        let got = decide(&index, &request("a", "GET", "x", 5), e);
        assert_eq!(got, (Decision::Deny, vec!["f".into()], errors));

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
        let back = got.into_response();
        assert_eq!(
            IndexedResponse::from_response(&back),
            IndexedResponse::from_response(&whole)
        );
    }

    #[test]
    fn changed_action_hierarchy_uses_the_whole_set() {
        let index = PolicyIndex::new(
            &set(r#"@id("r") permit(principal, action in Action::"read", resource);"#),
            &actions(),
        );
        // At request time PUT is in read: the index was not built with that.
        let put = Entity::new_no_attrs(uid(r#"Action::"PUT""#), [uid(r#"Action::"read""#)].into());
        let later = actions().add_entities([put], None).unwrap();
        let req = request("a", "PUT", "x", 0);
        assert_eq!(decide(&index, &req, &later).0, Decision::Allow);
        assert_eq!(index.evaluated_policies(&req, &later), None);
        // Unchanged actions stay indexed.
        let req = request("a", "GET", "x", 0);
        assert_eq!(decide(&index, &req, &later).0, Decision::Allow);
        assert_eq!(index.evaluated_policies(&req, &later), Some(1));
        assert_eq!(
            index.evaluated_policies(&request("a", "DELETE", "x", 0), &later),
            Some(0)
        );
    }

    #[test]
    fn large_action_lists_become_wildcards() {
        let group = uid(r#"Action::"g""#);
        let many = (0..=MAX_ACTION_KEYS).map(|i| {
            Entity::new_no_attrs(uid(&format!(r#"Action::"a{i}""#)), [group.clone()].into())
        });
        let e = Entities::from_entities(many, None).unwrap();
        let pset = set(r#"@id("g") permit(principal, action in Action::"g", resource);"#);
        let index = PolicyIndex::new(&pset, &e);
        assert_eq!(index.stats().everywhere, 1);
        assert_eq!(
            decide(&index, &request("a", "a7", "x", 0), &e).0,
            Decision::Allow
        );
        assert_eq!(
            decide(&index, &request("a", "zz", "x", 0), &e).0,
            Decision::Deny
        );
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
        let index = PolicyIndex::new(&pset, &Entities::empty());
        assert!(index.stats().unindexed);
        let req = request("a", "GET", "x", 0);
        let got = decide(&index, &req, &Entities::empty());
        assert_eq!((got.0, got.1), (Decision::Allow, vec!["l".into()]));
        assert_eq!(index.evaluated_policies(&req, &Entities::empty()), None);
    }

    /// The combination must be Cedar's: a wrong rule (here: any allowing bucket allows) is
    /// caught by the comparison with the whole set.
    #[test]
    fn a_wrong_combination_is_detected() {
        let index = PolicyIndex::new(
            &set(r#"
                @id("p") permit(principal == U::"a", action, resource);
                @id("f") forbid(principal, action, resource);
            "#),
            &Entities::empty(),
        );
        let (a, e) = (Authorizer::new(), Entities::empty());
        let req = request("a", "GET", "x", 0);
        let whole = IndexedResponse::from_response(&a.is_authorized(&req, index.policies(), &e));
        let mut wrong = Vec::new();
        let mut right = Combined::default();
        for s in index.buckets_for(&req, &e).unwrap() {
            let resp = a.is_authorized(&req, s, &e);
            if resp.decision() == Decision::Allow {
                wrong.extend(resp.diagnostics().reason().cloned());
            }
            right.add(&resp);
        }
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
