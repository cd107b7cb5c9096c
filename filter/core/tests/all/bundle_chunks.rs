//! Differential test of compiling a bundle from the version before (`Bundle::compile`, which
//! parses only changed chunks of the text) against parsing the whole text with Cedar and
//! naming the policies by their `@id`s (written here, apart from the filter): over random
//! sequences of versions, with policies that have and lack
//! `@id`s, strings that hold newlines and `@id(`, comments, duplicate ids and broken policies,
//! both give the same policies under the same ids, or both refuse the bundle.

use std::error::Error;

use cedar_policy::{Effect, PolicySet};
use cedar_policy_core::ast;
use portcullis_core::bundle::{Bundle, BundleWire};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One random policy (its text ends with a newline); with `trouble`, one in six is of that
/// kind: 0 without an `@id`, 1 a duplicate id, 2 a string holding an `@id(` line, 3 broken.
fn policy(rng: &mut StdRng, n: usize, trouble: Option<u8>) -> String {
    let odd = trouble.filter(|_| rng.gen_range(0..6) == 0);
    let id = match odd {
        Some(0) => String::new(),
        Some(1) => "@id(\"dup\")\n".to_owned(),
        _ => format!("@id(\"p{n}\")\n"),
    };
    let body = match (odd, rng.gen_range(0..5)) {
        (Some(2), _) => "permit (principal, action, resource) when { context.path == \"a\n@id(\\\"z\\\") permit\" };".to_owned(),
        (Some(3), _) => "permit (principal, action,".to_owned(),
        (_, 0) => format!("permit (principal == User::\"u{n}\", action, resource);"),
        (_, 1) => format!(
            "forbid (principal, action == Action::\"GET\", resource) when {{ context.path == \"/x{n}\" }};"
        ),
        (_, 2) => format!(
            "// a comment\npermit (principal, action, resource) unless {{ context.path == \"/y{n}\" }};"
        ),
        (_, 3) => format!(
            "permit (principal, action, resource);\n@id(\"q{n}\") forbid (principal, action, resource);"
        ),
        _ => format!("permit (principal in Group::\"g{n}\", action, resource);"),
    };
    format!("{id}{body}\n")
}

/// A policy's effect and scope, written out.
fn scope(
    effect: Effect,
    principal: &ast::PrincipalOrResourceConstraint,
    action: &ast::ActionConstraint,
    resource: &ast::PrincipalOrResourceConstraint,
) -> String {
    use ast::PrincipalOrResourceConstraint as C;
    let entity = |c: &C| {
        let uid = |r: &ast::EntityReference| match r {
            ast::EntityReference::EUID(u) => u.to_string(),
            ast::EntityReference::Slot(_) => "?slot".to_owned(),
        };
        match c {
            C::Any => "any".to_owned(),
            C::Eq(r) => format!("== {}", uid(r)),
            C::In(r) => format!("in {}", uid(r)),
            C::Is(t) => format!("is {t}"),
            C::IsIn(t, r) => format!("is {t} in {}", uid(r)),
        }
    };
    let a = match action {
        ast::ActionConstraint::Any => "any".to_owned(),
        ast::ActionConstraint::Eq(u) => format!("== {u}"),
        ast::ActionConstraint::In(us) => {
            format!(
                "in {}",
                us.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
    };
    format!(
        "{effect:?}({}; {a}; {})",
        entity(principal),
        entity(resource)
    )
}

/// What a bundle holds of a policy: (id, scope, text where its scope does not decide it).
type Kept = (String, String, Option<String>);

/// The policies as sorted [`Kept`], or `None` when the bundle is refused.
fn outcome(b: &Result<Bundle, portcullis_core::bundle::BundleError>) -> Option<Vec<Kept>> {
    let b = b.as_ref().ok()?;
    let mut out: Vec<Kept> = b
        .policies
        .iter()
        .map(|p| {
            (
                p.id().to_string(),
                scope(p.effect(), p.principal(), p.action(), p.resource()),
                p.evaluated().map(|c| c.condition().to_string()),
            )
        })
        .collect();
    out.sort();
    Some(out)
}

/// The oracle: the whole text parsed by Cedar, each policy named by its `@id` annotation (else
/// Cedar's positional id); `None` when it does not parse, holds a template or repeats an id.
fn whole(text: &str) -> Option<Vec<Kept>> {
    let parsed: PolicySet = text.parse().ok()?;
    if parsed.templates().next().is_some() {
        return None;
    }
    let mut out: Vec<Kept> = parsed
        .policies()
        .map(|p| {
            let id = p
                .annotations()
                .find(|(k, _)| *k == "id")
                .map_or_else(|| p.id().to_string(), |(_, v)| v.to_owned());
            let cedar: &ast::Policy = p.as_ref();
            let principal = cedar.template().principal_constraint().as_inner();
            let resource = cedar.template().resource_constraint().as_inner();
            // Cedar's policy is kept where a condition or an `is T in E` scope remains.
            let evaluated = p.has_non_scope_constraint()
                || matches!(principal, ast::PrincipalOrResourceConstraint::IsIn(..))
                || matches!(resource, ast::PrincipalOrResourceConstraint::IsIn(..));
            let s = scope(p.effect(), principal, cedar.action_constraint(), resource);
            (id, s, evaluated.then(|| cedar.condition().to_string()))
        })
        .collect();
    out.sort();
    let unique = out
        .windows(2)
        .all(|w| w.first().map(|a| &a.0) != w.get(1).map(|b| &b.0));
    unique.then_some(out)
}

#[test]
fn compiling_from_the_version_before_equals_parsing_the_whole_text() -> Result<(), Box<dyn Error>> {
    let seed: u64 = match std::env::var("PORTCULLIS_CHUNKS_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => rand::random(),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut reused, mut compiled) = (0, 0);
    for _ in 0..40 {
        let trouble = rng.gen_bool(0.5).then(|| rng.gen_range(0..4u8));
        let mut policies: Vec<String> = (0..rng.gen_range(0..30))
            .map(|n| policy(&mut rng, n, trouble))
            .collect();
        let mut previous: Option<Bundle> = None;
        for version in 1..=15u64 {
            // Change, add or remove a few policies.
            for _ in 0..rng.gen_range(0..3) {
                let n = rng.gen_range(0..40);
                match rng.gen_range(0..3) {
                    0 if !policies.is_empty() => {
                        let i = rng.gen_range(0..policies.len());
                        policies.remove(i);
                    }
                    1 if !policies.is_empty() => {
                        let i = rng.gen_range(0..policies.len());
                        if let Some(p) = policies.get_mut(i) {
                            *p = policy(&mut rng, n, trouble);
                        }
                    }
                    _ => policies.push(policy(&mut rng, n, trouble)),
                }
            }
            let wire = BundleWire {
                version,
                policies: policies.concat(),
                ..BundleWire::default()
            };
            let chunks = previous
                .as_ref()
                .map(|b| b.chunks().clone())
                .unwrap_or_default();
            let incremental = Bundle::compile(&wire, &chunks);
            assert_eq!(
                outcome(&incremental),
                whole(&wire.policies),
                "seed {seed}, version {version}:\n{}",
                wire.policies
            );
            compiled += 1;
            if let Ok(b) = incremental {
                if !b.chunks().is_empty() && !chunks.is_empty() {
                    reused += 1;
                }
                previous = Some(b);
            }
        }
    }
    eprintln!("seed {seed}: {compiled} versions compiled, {reused} from the version before");
    assert!(
        reused > 50,
        "seed {seed}: too few versions reused chunks ({reused})"
    );
    Ok(())
}
