//! `EntitySlicer` against the whole store: random bundles (the index test's generator, plus
//! conditions that dereference entity literals and entities reached through attributes) and
//! random requests whose principal the store does not define. Decision, reasons and errors
//! must equal Cedar's on the whole store with the principal added.

use std::collections::HashSet;
use std::error::Error;

use cedar_policy::{Authorizer, Entities, Entity, EntityUid, PolicySet};
use portcullis_core::authz::entity_slice::EntitySlicer;
use portcullis_core::authz::policy_reads::PolicyReads;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::index::{GROUPS, entities, group, policies, request, uid};

type TestResult = Result<(), Box<dyn Error>>;

/// Conditions that read entities other than the request's: literals, attribute chains, `in`
/// on an entity reached through an attribute.
const DEREFERENCING: [&str; 12] = [
    r#"when { resource in Folder::"f1" }"#,
    r#"when { (if context.n > 2 then Doc::"d1" else Doc::"d2").owner == principal }"#,
    r#"when { {d: Doc::"d3"}.d has level && {d: Doc::"d3"}.d.level > context.n }"#,
    r#"when { (if context has flag then User::"u2" else User::"u3") in Group::"g1" }"#,
    r#"when { User::"u1".missing == 1 }"#,
    r#"when { User::"u1" in Group::"g2" }"#,
    "when { resource.owner.missing == 1 }",
    r#"when { resource has owner && resource.owner in Group::"g1" }"#,
    r#"when { Doc::"d1".owner == principal }"#,
    r#"when { Doc::"d2" has owner && Doc::"d2".owner.missing == 0 }"#,
    r#"unless { [Doc::"d0", Doc::"d3"].contains(resource) }"#,
    r#"when { principal in Doc::"d1".owner }"#,
];

fn outcome(r: &cedar_policy::Response) -> (bool, Vec<String>, Vec<String>) {
    let mut reasons: Vec<String> = r.diagnostics().reason().map(ToString::to_string).collect();
    reasons.sort();
    let mut errors: Vec<String> = r.diagnostics().errors().map(ToString::to_string).collect();
    errors.sort();
    (
        r.decision() == cedar_policy::Decision::Allow,
        reasons,
        errors,
    )
}

#[test]
fn slices_decide_as_the_whole_store() -> TestResult {
    let mut rng = StdRng::seed_from_u64(0x511CE);
    let authorizer = Authorizer::new();
    let (mut compared, mut sliced_smaller, mut with_errors) = (0, 0, 0);
    for _ in 0..300 {
        let mut src = policies(&mut rng)?;
        for i in 0..rng.gen_range(1..=6) {
            let c = DEREFERENCING[rng.gen_range(0..DEREFERENCING.len())];
            let effect = if rng.gen_bool(0.3) {
                "forbid"
            } else {
                "permit"
            };
            src.push_str(&format!(
                "@id(\"x{i}\") {effect}(principal, action, resource) {c};\n"
            ));
        }
        let set: PolicySet = src.parse()?;
        let store = Entities::from_json_value(entities(&mut rng), None)?;
        let slicer = EntitySlicer::new(store.as_ref(), &PolicyReads::of(&set).literals);
        for _ in 0..40 {
            let req = request(&mut rng)?;
            let principal = req.principal().ok_or("no principal")?;
            if store.get(principal).is_some() {
                continue;
            }
            let parents: HashSet<EntityUid> = (0..GROUPS)
                .filter(|_| rng.gen_bool(0.4))
                .map(|g| uid(&group(g)))
                .collect::<Result<_, _>>()?;
            // As `HttpAuthorizer` does: the parents' ancestors from the (closed) store.
            let mut closure = parents.clone();
            for p in &parents {
                if let Some(ancestors) = store.ancestors(p) {
                    closure.extend(ancestors.cloned());
                }
            }
            let entity = Entity::new_no_attrs(principal.clone(), closure);
            let whole = store.clone().add_entities([entity.clone()], None)?;
            let roots = [req.action(), req.resource()]
                .into_iter()
                .flatten()
                .map(AsRef::as_ref);
            let slice = Entities::from(slicer.slice(
                entity.as_ref().clone(),
                roots,
                req.context().map(AsRef::as_ref),
            )?);
            let expected = outcome(&authorizer.is_authorized(&req, &set, &whole));
            let got = outcome(&authorizer.is_authorized(&req, &set, &slice));
            assert_eq!(
                got,
                expected,
                "policies:\n{src}\nrequest: {req}\nslice: {:?}",
                slice
                    .iter()
                    .map(|e| e.uid().to_string())
                    .collect::<Vec<_>>()
            );
            compared += 1;
            if slice.iter().count() < whole.iter().count() {
                sliced_smaller += 1;
            }
            if !expected.2.is_empty() {
                with_errors += 1;
            }
        }
    }
    println!(
        "entity slices: {compared} requests compared, {sliced_smaller} on a smaller store, {with_errors} with evaluation errors"
    );
    assert!(compared > 3000 && sliced_smaller > compared / 2 && with_errors > 100);
    Ok(())
}
