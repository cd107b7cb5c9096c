//! `PolicyIndex` against Cedar: random bundles (policies + entity stores) and random requests,
//! each answered by the index and by `Authorizer::is_authorized` on the whole set; decision,
//! reasons and errors must be identical. The seed is fixed (`PORTCULLIS_INDEX_SEED` overrides
//! it); a failure prints the bundle and the request.

use std::error::Error;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression,
};
use portcullis_core::authz::index::{self, IndexedResponse, PolicyIndex};
use portcullis_core::bundle::policies::{CompiledPolicy, Policies};
use portcullis_core::bundle::{Bundle, BundleWire};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn Error>>;

/// What the filter reports of a response: the decision, the reasons, and each error by its
/// policy id and message. (An error also carries its source location, which the filter does not
/// report: a bundle keeps one copy of identical conditions, so an error in one carries the
/// location of its first occurrence in the text.)
fn observed(r: &IndexedResponse) -> (Decision, Vec<PolicyId>, Vec<(PolicyId, String)>, bool) {
    let mut errors: Vec<(PolicyId, String)> = r
        .errors
        .iter()
        .map(|e| (index::error_id(e).clone(), e.to_string()))
        .collect();
    errors.sort();
    (r.decision, r.reasons.clone(), errors, r.undecided)
}

const SETS: usize = 400;
const REQUESTS_PER_SET: usize = 40;

const USERS: usize = 6; // u0..u5; u0..u3 in the store
const STORED_USERS: usize = 4;
pub(crate) const GROUPS: usize = 4;
const DOCS: usize = 5; // d0..d4; d0..d3 in the store
const STORED_DOCS: usize = 4;
const FOLDERS: usize = 3;
const ACTIONS: [&str; 4] = ["GET", "HEAD", "PUT", "DELETE"];
const ACTION_GROUPS: [&str; 3] = ["read", "write", "all"];

fn user(i: usize) -> String {
    format!(r#"User::"u{i}""#)
}
pub(crate) fn group(i: usize) -> String {
    format!(r#"Group::"g{i}""#)
}
fn doc(i: usize) -> String {
    format!(r#"Doc::"d{i}""#)
}
fn folder(i: usize) -> String {
    format!(r#"Folder::"f{i}""#)
}
fn action(a: &str) -> String {
    format!(r#"Action::"{a}""#)
}
fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Result<&'a T, Box<dyn Error>> {
    Ok(items.choose(rng).ok_or("empty choice")?)
}
fn ref_json(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

/// Every action uid a policy or a request may name: actions, groups, and one never stored.
fn any_action(rng: &mut StdRng) -> Result<String, Box<dyn Error>> {
    let all: Vec<&str> = ACTIONS
        .iter()
        .chain(&ACTION_GROUPS)
        .chain(&["PATCH"])
        .copied()
        .collect();
    Ok(action(pick(rng, &all)?))
}

fn principal_scope(rng: &mut StdRng) -> Result<String, Box<dyn Error>> {
    Ok(match rng.gen_range(0..7) {
        0 | 1 => "principal".to_owned(),
        2 => format!("principal == {}", user(rng.gen_range(0..USERS))),
        3 if rng.gen_bool(0.5) => format!("principal == {}", group(rng.gen_range(0..GROUPS))),
        3 => r#"principal == Svc::"s0""#.to_owned(),
        4 => format!("principal in {}", group(rng.gen_range(0..GROUPS))),
        5 => "principal is User".to_owned(),
        _ => format!("principal is User in {}", group(rng.gen_range(0..GROUPS))),
    })
}

fn action_scope(rng: &mut StdRng) -> Result<String, Box<dyn Error>> {
    Ok(match rng.gen_range(0..6) {
        0 => "action".to_owned(),
        1 | 2 => format!("action == {}", any_action(rng)?),
        3 => format!("action in {}", any_action(rng)?),
        4 if rng.gen_bool(0.05) => "action in []".to_owned(),
        _ => {
            let n = rng.gen_range(1..=3);
            let items: Result<Vec<String>, _> = (0..n).map(|_| any_action(rng)).collect();
            format!("action in [{}]", items?.join(", "))
        }
    })
}

fn resource_scope(rng: &mut StdRng) -> Result<String, Box<dyn Error>> {
    Ok(match rng.gen_range(0..7) {
        0 | 1 => "resource".to_owned(),
        2 | 3 => format!("resource == {}", doc(rng.gen_range(0..DOCS))),
        4 => format!("resource == {}", folder(rng.gen_range(0..FOLDERS))),
        5 => format!("resource in {}", folder(rng.gen_range(0..FOLDERS))),
        _ if rng.gen_bool(0.5) => "resource is Doc".to_owned(),
        _ => format!("resource is Doc in {}", folder(rng.gen_range(0..FOLDERS))),
    })
}

/// Conditions; several fail at run time (missing attribute or entity, missing context field,
/// overflow).
const CONDITIONS: [&str; 10] = [
    "when { context.n > 3 }",
    "unless { context.n < 2 }",
    r#"when { principal in Group::"g1" }"#,
    "when { resource.owner == principal }",
    "when { resource has owner && resource.owner == principal }",
    "when { principal.missing == 1 }",
    "when { context.flag }",
    "when { resource.level >= context.n }",
    "when { context.n * 4611686018427387904 > 0 }",
    "unless { context has flag && context.flag }",
];

pub(crate) fn policies(rng: &mut StdRng) -> Result<String, Box<dyn Error>> {
    let n = rng.gen_range(1..=60);
    let mut src = String::new();
    for i in 0..n {
        let effect = if rng.gen_bool(0.35) {
            "forbid"
        } else {
            "permit"
        };
        let mut p = format!(
            "@id(\"p{i}\") {effect}({}, {}, {})",
            principal_scope(rng)?,
            action_scope(rng)?,
            resource_scope(rng)?
        );
        for _ in 0..rng.gen_range(0..=2) {
            p.push(' ');
            p.push_str(pick(rng, &CONDITIONS)?);
        }
        p.push_str(";\n");
        src.push_str(&p);
    }
    Ok(src)
}

/// A random store: users in groups, groups in later groups, docs in folders, folders in later
/// folders, actions in action groups, `read`/`write` in `all`.
pub(crate) fn entities(rng: &mut StdRng) -> Value {
    let mut out = Vec::new();
    for i in 0..STORED_USERS {
        let parents: Vec<Value> = (0..GROUPS)
            .filter(|_| rng.gen_bool(0.3))
            .map(|g| ref_json("Group", &format!("g{g}")))
            .collect();
        let mut attrs = json!({});
        if rng.gen_bool(0.3) {
            attrs = json!({"missing": rng.gen_range(0..2)});
        }
        out.push(
            json!({"uid": ref_json("User", &format!("u{i}")), "attrs": attrs, "parents": parents}),
        );
    }
    for i in 0..GROUPS {
        let parents: Vec<Value> = (i + 1..GROUPS)
            .filter(|_| rng.gen_bool(0.4))
            .map(|g| ref_json("Group", &format!("g{g}")))
            .collect();
        out.push(
            json!({"uid": ref_json("Group", &format!("g{i}")), "attrs": {}, "parents": parents}),
        );
    }
    for i in 0..FOLDERS {
        let parents: Vec<Value> = (i + 1..FOLDERS)
            .filter(|_| rng.gen_bool(0.5))
            .map(|f| ref_json("Folder", &format!("f{f}")))
            .collect();
        out.push(
            json!({"uid": ref_json("Folder", &format!("f{i}")), "attrs": {}, "parents": parents}),
        );
    }
    for i in 0..STORED_DOCS {
        let parents: Vec<Value> = (0..FOLDERS)
            .filter(|_| rng.gen_bool(0.4))
            .map(|f| ref_json("Folder", &format!("f{f}")))
            .collect();
        let mut attrs = serde_json::Map::new();
        if rng.gen_bool(0.7) {
            let owner = rng.gen_range(0..USERS);
            attrs.insert(
                "owner".into(),
                json!({"__entity": ref_json("User", &format!("u{owner}"))}),
            );
        }
        if rng.gen_bool(0.8) {
            attrs.insert("level".into(), json!(rng.gen_range(0..6)));
        }
        out.push(
            json!({"uid": ref_json("Doc", &format!("d{i}")), "attrs": attrs, "parents": parents}),
        );
    }
    for a in ACTIONS {
        let parents: Vec<Value> = ACTION_GROUPS
            .iter()
            .filter(|_| rng.gen_bool(0.4))
            .map(|g| ref_json("Action", g))
            .collect();
        out.push(json!({"uid": ref_json("Action", a), "attrs": {}, "parents": parents}));
    }
    for g in ACTION_GROUPS {
        let parents: Vec<Value> = if g != "all" && rng.gen_bool(0.6) {
            vec![ref_json("Action", "all")]
        } else {
            Vec::new()
        };
        out.push(json!({"uid": ref_json("Action", g), "attrs": {}, "parents": parents}));
    }
    Value::Array(out)
}

pub(crate) fn uid(s: &str) -> Result<EntityUid, Box<dyn Error>> {
    Ok(s.parse()?)
}

pub(crate) fn request(rng: &mut StdRng) -> Result<Request, Box<dyn Error>> {
    let principal = match rng.gen_range(0..10) {
        0 => r#"Svc::"s0""#.to_owned(),
        1 => group(rng.gen_range(0..GROUPS)),
        _ => user(rng.gen_range(0..USERS)),
    };
    let resource = match rng.gen_range(0..10) {
        0 => folder(rng.gen_range(0..FOLDERS)),
        1 => r#"Doc::"zz""#.to_owned(),
        _ => doc(rng.gen_range(0..DOCS)),
    };
    let mut ctx = vec![(
        "n".to_owned(),
        RestrictedExpression::new_long(rng.gen_range(0..7)),
    )];
    if rng.gen_bool(0.5) {
        ctx.push((
            "flag".to_owned(),
            RestrictedExpression::new_bool(rng.gen_bool(0.5)),
        ));
    }
    Ok(Request::new(
        uid(&principal)?,
        uid(&any_action(rng)?)?,
        uid(&resource)?,
        Context::from_pairs(ctx)?,
        None,
    )?)
}

/// The store a request is evaluated with: mostly the bundle's; sometimes with the principal
/// added from "claims" (as `HttpAuthorizer::decide` does); sometimes with an action the bundle
/// did not know placed in an action group.
fn request_entities(
    rng: &mut StdRng,
    bundle: &Entities,
    req: &Request,
) -> Result<Entities, Box<dyn Error>> {
    let principal = req.principal().ok_or("unknown principal")?;
    match rng.gen_range(0..10) {
        0..=5 => Ok(bundle.clone()),
        6..=8 if bundle.get(principal).is_none() => {
            let parents = (0..GROUPS)
                .filter(|_| rng.gen_bool(0.4))
                .map(|g| uid(&group(g)))
                .collect::<Result<_, _>>()?;
            Ok(bundle
                .clone()
                .add_entities([Entity::new_no_attrs(principal.clone(), parents)], None)?)
        }
        _ => {
            let g = pick(rng, &ACTION_GROUPS)?;
            let patch = Entity::new_no_attrs(uid(&action("PATCH"))?, [uid(&action(g))?].into());
            Ok(bundle.clone().add_entities([patch], None)?)
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    sets: usize,
    policies: usize,
    requests: usize,
    allow: usize,
    deny_forbid: usize,
    deny_default: usize,
    with_errors: usize,
    /// Requests answered by evaluating the whole set (none expected: no unknowns, no links).
    whole_set: usize,
    /// Policies decided by their scope, policies given to Cedar's evaluator, and buckets that
    /// held such policies, summed.
    by_scope: usize,
    evaluated: usize,
    evaluated_buckets: usize,
    /// Policies summed over requests (what evaluating whole sets costs).
    whole_policies: usize,
    /// Requests on which an index missing one policy disagreed with Cedar.
    mutant_caught: usize,
}

/// The bundle's policies as one Cedar set, named by their `@id`s (as the bundle names them),
/// for Cedar's authorizer to answer on the whole set.
fn cedar_set(text: &str) -> Result<PolicySet, Box<dyn Error>> {
    let parsed: PolicySet = text.parse()?;
    let mut out = PolicySet::new();
    for p in parsed.policies() {
        let id = p
            .annotations()
            .find(|(k, _)| *k == "id")
            .map(|(_, v)| v)
            .ok_or("a policy without an @id")?;
        out.add(p.new_id(PolicyId::new(id)))?;
    }
    Ok(out)
}

fn check_set(rng: &mut StdRng, authorizer: &Authorizer, tally: &mut Tally) -> TestResult {
    let wire = BundleWire {
        policies: policies(rng)?,
        entities: entities(rng),
        ..BundleWire::default()
    };
    // The filter's path: the bundle keeps its policies compiled, and no Cedar set.
    let bundle = Bundle::try_from(&wire)?;
    let index = PolicyIndex::of(&bundle.policies);
    let whole = cedar_set(&wire.policies)?;
    let n = bundle.policies.len();
    assert_eq!(whole.policies().count(), n);
    assert_eq!(index.stats().policies, n);
    assert!(!index.stats().unindexed);

    // The same index with one policy left out: the comparison must catch it somewhere.
    let victim = rng.gen_range(0..n);
    let lossy: Vec<CompiledPolicy> = (bundle.policies.iter().enumerate())
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| p.clone())
        .collect();
    let mutant = PolicyIndex::of(&Policies::new(vec![lossy.into()]));

    tally.sets += 1;
    tally.policies += n;
    for _ in 0..REQUESTS_PER_SET {
        let req = request(rng)?;
        let ents = request_entities(rng, &bundle.entities, &req)?;
        let cedar = authorizer.is_authorized(&req, &whole, &ents);
        let expected = IndexedResponse::from_response(&cedar);
        let got = index.is_authorized(authorizer, &req, &ents);
        if observed(&got) != observed(&expected) {
            return Err(format!(
                "index disagrees with Cedar\nrequest: {req}\nexpected: {expected:?}\ngot: {got:?}\n\
                 policies:\n{}\nentities: {}\nrequest entities: {}",
                wire.policies,
                wire.entities,
                ents.to_json_value()?,
            )
            .into());
        }
        // Same rendering as Cedar's errors (what `PolicyDecision::errors` shows).
        let mut cedar_errors: Vec<String> = cedar
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        let mut got_errors: Vec<String> = got.errors.iter().map(ToString::to_string).collect();
        cedar_errors.sort();
        got_errors.sort();
        assert_eq!(got_errors, cedar_errors);

        tally.requests += 1;
        tally.whole_policies += n;
        match (got.decision, got.reasons.is_empty()) {
            (Decision::Allow, _) => tally.allow += 1,
            (Decision::Deny, false) => tally.deny_forbid += 1,
            (Decision::Deny, true) => tally.deny_default += 1,
        }
        tally.with_errors += usize::from(!got.errors.is_empty());
        match index.reach(&req, &ents) {
            Some(reach) => {
                tally.by_scope += reach.by_scope;
                tally.evaluated += reach.evaluated;
                tally.evaluated_buckets += reach.evaluated_buckets;
            }
            None => tally.whole_set += 1,
        }
        if observed(&mutant.is_authorized(authorizer, &req, &ents)) != observed(&expected) {
            tally.mutant_caught += 1;
        }
    }
    Ok(())
}

#[test]
fn index_agrees_with_cedar_on_random_bundles() -> TestResult {
    let seed: u64 = match std::env::var("PORTCULLIS_INDEX_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => 0x5eed_1dec,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let authorizer = Authorizer::new();
    let mut tally = Tally::default();
    for _ in 0..SETS {
        check_set(&mut rng, &authorizer, &mut tally)?;
    }
    eprintln!("seed {seed}: {tally:?}");
    assert_eq!(tally.requests, SETS * REQUESTS_PER_SET);
    // The generator must exercise every outcome, errors, the fallback, and real pruning.
    let r = tally.requests;
    assert!(tally.allow > r / 20, "{tally:?}");
    assert!(tally.deny_forbid > r / 20, "{tally:?}");
    assert!(tally.deny_default > r / 20, "{tally:?}");
    assert!(tally.with_errors > r / 20, "{tally:?}");
    assert_eq!(tally.whole_set, 0, "{tally:?}");
    assert!(tally.by_scope > r / 2, "{tally:?}");
    assert!(
        (tally.by_scope + tally.evaluated) * 2 < tally.whole_policies,
        "{tally:?}"
    );
    // Dropping one policy must be visible often: the comparison has teeth.
    assert!(tally.mutant_caught > r / 50, "{tally:?}");
    Ok(())
}

/// The index depends on no entity store: one index answers like Cedar with stores it never
/// saw (other hierarchies, other attributes).
#[test]
fn one_index_many_stores() -> TestResult {
    let mut rng = StdRng::seed_from_u64(7);
    let authorizer = Authorizer::new();
    for _ in 0..50 {
        let wire = BundleWire {
            policies: policies(&mut rng)?,
            ..BundleWire::default()
        };
        let bundle = Bundle::try_from(&wire)?;
        let index = PolicyIndex::of(&bundle.policies);
        let whole = cedar_set(&wire.policies)?;
        for _ in 0..20 {
            let store = Entities::from_json_value(entities(&mut rng), None)?;
            let req = request(&mut rng)?;
            let expected =
                IndexedResponse::from_response(&authorizer.is_authorized(&req, &whole, &store));
            assert_eq!(
                observed(&index.is_authorized(&authorizer, &req, &store)),
                observed(&expected)
            );
        }
    }
    Ok(())
}

/// The empty set, through the bundle path.
#[test]
fn empty_bundle_denies() -> TestResult {
    let bundle = Bundle::try_from(&BundleWire::default())?;
    let index = PolicyIndex::of(&bundle.policies);
    let mut rng = StdRng::seed_from_u64(1);
    let req = request(&mut rng)?;
    let got = index.is_authorized(&Authorizer::new(), &req, &bundle.entities);
    assert_eq!(got.decision, Decision::Deny);
    assert!(got.reasons.is_empty() && got.errors.is_empty());
    assert_eq!(index.stats().buckets, 0);
    assert_eq!(index.stats().policies, 0);
    Ok(())
}
