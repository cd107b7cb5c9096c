//! What a bundle's policies can read, taken from their syntax trees.
//!
//! The filter computes some request inputs only when a policy can read them (the client address
//! costs a host call; the time and selected headers make a decision harder to reuse). Which
//! context attributes a policy reads is a property of its parsed conditions, never of its text:
//! Cedar unescapes string literals, so `context["\u{73}ource"]` reads `source` without the word
//! appearing anywhere. A use of `context` that is not the operand of an attribute access or a
//! `has` test (compared whole, put in a record or a set, returned by `if`, tested with `is`)
//! can reach every attribute, and so does any expression form the walk cannot bound: such a
//! policy reads everything.
//!
//! The same walk collects the entity literals a condition can dereference, which the entity
//! slicer (`entity_slice`) must keep in a request's slice.

use std::collections::{BTreeSet, HashSet};

use cedar_policy::PolicySet;

use crate::bundle::policies::{CompiledPolicy, Policies};
use cedar_policy_core::ast::{BinaryOp, EntityUID, Expr, ExprKind, Literal, Var};

/// The context attributes a set of policies can read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextReads {
    /// Some policy uses `context` in a way that can reach any attribute.
    whole: bool,
    /// Attributes read by name (`context.a`, `context["a"]`, `context has a`).
    attrs: BTreeSet<String>,
}

impl ContextReads {
    /// Reads of every attribute: what a policy whose use cannot be bounded gets.
    #[must_use]
    pub fn everything() -> Self {
        Self {
            whole: true,
            attrs: BTreeSet::new(),
        }
    }

    /// Whether some policy can read `context.<attr>` (or test for it with `has`).
    #[must_use]
    pub fn reads(&self, attr: &str) -> bool {
        self.whole || self.attrs.contains(attr)
    }

    /// Whether some policy can read the context as a whole.
    #[must_use]
    pub fn reads_whole(&self) -> bool {
        self.whole
    }

    /// What either of two sets of policies can read.
    #[must_use]
    pub fn union(&self, other: &Self) -> Self {
        Self {
            whole: self.whole || other.whole,
            attrs: self.attrs.union(&other.attrs).cloned().collect(),
        }
    }
}

/// The context attributes the filter computes only when a policy can read them; the others
/// (`claims`, `method`, `path`, `host`) are always there. An input left out is absent
/// (`source`) or empty (`headers`, `query`), and stays out of the decision cache's key, as
/// does the time: a decision that cannot depend on it is reused in later seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextInputs {
    /// `context.source`: the client address, asked of the host.
    pub source: bool,
    /// `context.time`: with it, a decision holds for its second only.
    pub time: bool,
    /// `context.headers`: the configured `contextHeaders` that are present.
    pub headers: bool,
    /// `context.query`: the configured `contextQuery` parameters that are present.
    pub query: bool,
}

impl ContextInputs {
    /// Every input: what an engine that always builds the whole context computes.
    pub const ALL: Self = Self {
        source: true,
        time: true,
        headers: true,
        query: true,
    };
}

impl From<&ContextReads> for ContextInputs {
    fn from(reads: &ContextReads) -> Self {
        Self {
            source: reads.reads("source"),
            time: reads.reads("time"),
            headers: reads.reads("headers"),
            query: reads.reads("query"),
        }
    }
}

/// What a set of policies can read: context attributes and dereferenced entity literals.
#[derive(Debug, Clone, Default)]
pub struct PolicyReads {
    pub context: ContextReads,
    /// Entity literals whose attributes, tags or ancestors a condition can read.
    pub literals: Vec<EntityUID>,
}

impl PolicyReads {
    /// Walks every policy's conditions (scope constraints cannot read the context, and only
    /// compare entity uids).
    #[must_use]
    pub fn of(policies: &PolicySet) -> Self {
        Self::of_conditions(policies.policies().map(AsRef::as_ref))
    }

    /// What a bundle's policies read: only those not decided by their scope have conditions.
    #[must_use]
    pub fn of_bundle(policies: &Policies) -> Self {
        Self::of_conditions(policies.iter().filter_map(CompiledPolicy::evaluated))
    }

    fn of_conditions<'p>(
        policies: impl Iterator<Item = &'p cedar_policy_core::ast::Policy>,
    ) -> Self {
        let mut context = ContextReads::default();
        let mut literals: HashSet<EntityUID> = HashSet::new();
        for p in policies {
            if let Some(conditions) = p.non_scope_constraints() {
                context_reads(conditions, &mut context);
                dereferenced_literals(conditions, &mut |u| {
                    literals.insert(u.clone());
                });
            }
        }
        Self {
            context,
            literals: literals.into_iter().collect(),
        }
    }
}

/// Adds what `expr` reads of the context to `reads`. Every occurrence of the variable is
/// counted, and so is every occurrence that is the direct operand of an attribute access or a
/// `has`; if some occurrence is not, its value can escape into an expression that reads any
/// attribute, and the whole context is read.
fn context_reads(expr: &Expr, reads: &mut ContextReads) {
    let is_context = |e: &Expr| matches!(e.expr_kind(), ExprKind::Var(Var::Context));
    let (mut uses, mut bounded) = (0_usize, 0_usize);
    for e in expr.subexpressions() {
        match e.expr_kind() {
            ExprKind::Var(Var::Context) => uses += 1,
            ExprKind::GetAttr { expr, attr } | ExprKind::HasAttr { expr, attr }
                if is_context(expr) =>
            {
                bounded += 1;
                reads.attrs.insert(attr.to_string());
            }
            // `context has a.b.c` tests `a`, then reads it.
            ExprKind::ExtHasAttr { expr, attrs } if is_context(expr) => {
                bounded += 1;
                reads.attrs.insert(attrs.first().to_string());
            }
            // Not in a bundle's policies (no partial evaluation, no templates); nothing is
            // assumed about them.
            ExprKind::Unknown(_) | ExprKind::Slot(_) => {
                reads.whole = true;
            }
            _ => {}
        }
    }
    if uses != bounded {
        reads.whole = true;
    }
}

/// The entity literals that can reach a position where evaluation reads the entity: the
/// operand of `.attr`, `has`, `getTag`/`hasTag`, or the left side of `in`. Cedar has no
/// variables, so a literal's value only flows up its own expression tree: one outside those
/// operands is only ever compared, never read (`resource in Folder::"f"`, `principal ==
/// User::"u"`, `[Doc::"a"].contains(resource)`), and need not be in the slice.
fn dereferenced_literals(expr: &Expr, f: &mut impl FnMut(&EntityUID)) {
    for e in expr.subexpressions() {
        match e.expr_kind() {
            ExprKind::GetAttr { expr, .. }
            | ExprKind::HasAttr { expr, .. }
            | ExprKind::ExtHasAttr { expr, .. } => entity_literals(expr, f),
            ExprKind::BinaryApp {
                op: BinaryOp::In | BinaryOp::GetTag | BinaryOp::HasTag,
                arg1,
                ..
            } => entity_literals(arg1, f),
            _ => {}
        }
    }
}

/// Every entity literal in `expr`.
pub(crate) fn entity_literals(expr: &Expr, f: &mut impl FnMut(&EntityUID)) {
    for e in expr.subexpressions() {
        if let ExprKind::Lit(Literal::EntityUID(u)) = e.expr_kind() {
            f(u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(src: &str) -> ContextReads {
        match src.parse::<PolicySet>() {
            Ok(set) => PolicyReads::of(&set).context,
            Err(e) => unreachable!("test policy does not parse: {e}"),
        }
    }

    fn named(attrs: &[&str]) -> ContextReads {
        ContextReads {
            whole: false,
            attrs: attrs.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn attributes_come_from_the_tree_not_the_text() {
        let cases: [(&str, ContextReads); 14] = [
            ("permit (principal, action, resource);", named(&[])),
            (
                "permit (principal, action, resource) when { context.sourceIp == 1 };",
                named(&["sourceIp"]),
            ),
            (
                "permit (principal, action, resource) when { context.source.isLoopback() };",
                named(&["source"]),
            ),
            (
                r#"forbid (principal, action, resource) when { context["\u{73}ource"].isLoopback() };"#,
                named(&["source"]),
            ),
            (
                r#"permit (principal, action, resource) when { context has "\u{73}ource" };"#,
                named(&["source"]),
            ),
            (
                r#"permit (principal, action, resource) when { context["ti\u{6d}e"] < 1 };"#,
                named(&["time"]),
            ),
            (
                "permit (principal, action, resource) when { context has headers.x && context.query.q == \"1\" };",
                named(&["headers", "query"]),
            ),
            // The words appear, but only in strings: nothing is read.
            (
                r#"permit (principal, action, resource) when { "source time" like "*" };"#,
                named(&[]),
            ),
            (
                "permit (principal, action, resource) when { context == {} };",
                ContextReads::everything(),
            ),
            (
                "permit (principal, action, resource) when { {c: context}.c.time > 1 };",
                ContextReads::everything(),
            ),
            (
                "permit (principal, action, resource) when { (if true then context else {}).time > 1 };",
                ContextReads::everything(),
            ),
            (
                "permit (principal, action, resource) when { [context].contains({}) };",
                ContextReads::everything(),
            ),
            (
                "permit (principal, action, resource) when { context.time > 1 && context is Foo };",
                ContextReads::everything(),
            ),
            (
                "permit (principal, action, resource) unless { context.a.b == context[\"c\"] };",
                named(&["a", "c"]),
            ),
        ];
        for (policy, expected) in cases {
            let got = reads(policy);
            if expected.reads_whole() {
                assert!(got.reads_whole(), "{policy}: {got:?}");
            } else {
                assert_eq!(got, expected, "{policy}");
            }
        }
    }

    #[test]
    fn reads_of_several_policies_add_up() {
        let a = reads(
            "permit (principal, action, resource) when { context.time > 1 };\n\
             forbid (principal, action, resource) when { context has source };",
        );
        assert_eq!(a, named(&["source", "time"]));
        assert!(a.reads("time") && a.reads("source") && !a.reads("headers"));
        let inputs = ContextInputs::from(&a);
        assert_eq!(
            inputs,
            ContextInputs {
                source: true,
                time: true,
                headers: false,
                query: false
            }
        );
        let whole = a.union(&ContextReads::everything());
        assert!(whole.reads("headers") && whole.reads_whole());
        assert_eq!(ContextInputs::from(&whole), ContextInputs::ALL);
    }
}
