use std::str::FromStr;

use cedar_policy::{Context, Entity, EntityUid, Request, RestrictedExpression, SlotId};

use super::*;

fn uid(s: &str) -> EntityUid {
    EntityUid::from_str(s).unwrap()
}

/// A set whose policies are named by their `@id` annotations, as bundles name them.
impl PolicyIndex {
    /// The whole set the index was built from.
    fn whole(&self) -> &PolicySet {
        self.full.as_deref().unwrap()
    }
}

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

/// What the filter reports of a response: each error by its policy id and message (its
/// source location may be another policy's, where conditions are the same).
fn observed(r: &IndexedResponse) -> (Decision, Vec<PolicyId>, Vec<(PolicyId, String)>, bool) {
    let mut errors: Vec<(PolicyId, String)> = r
        .errors
        .iter()
        .map(|e| (error_id(e).clone(), e.to_string()))
        .collect();
    errors.sort();
    (r.decision, r.reasons.clone(), errors, r.undecided)
}

/// Answers with the index, checks that Cedar on the whole set answers the same, returns
/// the decision, the reasons and the policies in error.
fn decide(
    index: &PolicyIndex,
    req: &Request,
    entities: &Entities,
) -> (Decision, Vec<String>, Vec<String>) {
    let a = Authorizer::new();
    let whole = a.is_authorized(req, index.whole(), entities);
    let got = index.is_authorized(&a, req, entities);
    assert_eq!(
        observed(&got),
        observed(&IndexedResponse::from_response(&whole)),
        "{req}"
    );
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
        evaluated_buckets: 2,
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
    let whole = Authorizer::new().is_authorized(&req, index.whole(), e);
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
    assert_eq!(
        observed(&back),
        observed(&IndexedResponse::from_response(&whole))
    );
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
    let whole = IndexedResponse::from_response(&a.is_authorized(&req, index.whole(), &e));
    let mut wrong = Vec::new();
    let mut right = Combined::default();
    let eval = Evaluator::new(
        req.as_ref().clone(),
        e.as_ref(),
        Extensions::all_available(),
    );
    index
        .visit(&req, &e, |bucket| {
            for (id, policy) in &bucket.evaluated {
                let mut alone = Combined::default();
                assert!(alone.evaluate(&eval, id, policy));
                if policy.effect() == ast::Effect::Permit && !alone.permits.is_empty() {
                    wrong.push(id.clone());
                }
                assert!(right.evaluate(&eval, id, policy));
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
        undecided: false,
    };
    assert_ne!(wrong, whole);
    assert_eq!(right.finish(), whole);
}
