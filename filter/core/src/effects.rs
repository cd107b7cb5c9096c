//! What a host does with a decision, the same in every build: the counters it adds to, the
//! log lines it writes, and the edits to the request that goes upstream. The glue crates
//! (Wasm, native) only carry these out with their host's calls.

use std::borrow::Cow;

use crate::decision::{BUNDLE_HEADER, Outcome, Verdict};
use crate::engine::{CacheUse, Decided};
use crate::http::header_map::HeaderMap;
use crate::metrics::Counter;

/// The counters `decided` adds to, with the amount; the per-policy denial counters are the
/// outcome's `policies` when it is [`Verdict::Forbidden`].
pub fn counts(decided: &Decided) -> impl Iterator<Item = (Counter, u64)> + '_ {
    let cache = |used: CacheUse, hit: Counter, miss: Counter| match used {
        CacheUse::Hit => Some((hit, 1)),
        CacheUse::Miss => Some((miss, 1)),
        CacheUse::Unused => None,
    };
    let o = &decided.outcome;
    let verdict = match o.verdict {
        Verdict::Allow => Counter::Allowed,
        Verdict::Forbidden => Counter::Denied,
        Verdict::Unauthenticated(_) => Counter::Unauthenticated,
    };
    let disagrees = o
        .shadow
        .as_ref()
        .is_some_and(|(allow, _)| *allow != (o.verdict == Verdict::Allow));
    [
        cache(
            decided.token_cache,
            Counter::TokenCacheHits,
            Counter::TokenCacheMisses,
        ),
        cache(
            decided.decision_cache,
            Counter::DecisionCacheHits,
            Counter::DecisionCacheMisses,
        ),
        Some((verdict, 1)),
        Some((Counter::Errors, u64::try_from(o.errors.len()).unwrap_or(0))),
        (o.dry_run == Some(false)).then_some((Counter::DryRunWouldDeny, 1)),
        disagrees.then_some((Counter::ShadowDisagreements, 1)),
    ]
    .into_iter()
    .flatten()
    .filter(|(_, n)| *n > 0)
}

/// The policies a denial is counted under (none unless the policies denied).
#[must_use]
pub fn denied_by(outcome: &Outcome) -> &[String] {
    if outcome.verdict == Verdict::Forbidden {
        &outcome.policies
    } else {
        &[]
    }
}

/// One change to the request before it goes upstream (claim values borrowed from the outcome;
/// only the bundle label is made for the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    Remove(&'a str),
    Set(&'a str, Cow<'a, str>),
}

/// The edits an allowed request needs: the client's copies of headers the filter owns removed
/// (only those it sent: each removal is a host call), the claim headers set, and the bundle
/// header set with debug headers on (so the upstream learns which version allowed it) or a
/// client's own copy of it removed.
#[must_use]
pub fn upstream_edits<'a>(
    outcome: &'a Outcome,
    request: &HeaderMap<'_>,
    debug_headers: bool,
) -> Vec<HeaderEdit<'a>> {
    let mut edits: Vec<HeaderEdit<'a>> = outcome
        .remove_headers
        .iter()
        .filter(|name| request.contains(name))
        .map(|name| HeaderEdit::Remove(name))
        .collect();
    edits.extend(
        outcome
            .set_headers
            .iter()
            .map(|(name, value)| HeaderEdit::Set(name, Cow::Borrowed(value.as_str()))),
    );
    if debug_headers {
        edits.push(HeaderEdit::Set(
            BUNDLE_HEADER,
            Cow::Owned(outcome.bundle_label()),
        ));
    } else if request.contains(BUNDLE_HEADER) {
        edits.push(HeaderEdit::Remove(BUNDLE_HEADER));
    }
    edits
}

/// Logs a decision: evaluation errors as warnings, denials (naming the determining
/// policies; clients see them only with debug headers) and dry-run or shadow disagreements at
/// info, allows and unauthenticated requests at debug.
pub fn log(o: &Outcome) {
    for e in &o.errors {
        log::warn!("portcullis: policy evaluation error: {e}");
    }
    let who = o.principal.as_deref().unwrap_or("-");
    let set = &o.policy_set;
    match &o.verdict {
        Verdict::Allow => log::debug!(
            "portcullis: allow {who} by [{}] (set {set}, bundle {})",
            o.policies.join(","),
            o.bundle_version
        ),
        Verdict::Forbidden => log::info!(
            "portcullis: deny {who} by [{}] (set {set}, bundle {})",
            o.policies.join(","),
            o.bundle_version
        ),
        Verdict::Unauthenticated(e) => log::debug!("portcullis: unauthenticated: {e}"),
    }
    if o.dry_run == Some(false) {
        log::info!(
            "portcullis: dry run: would deny {who} (set {set}, bundle {}, policies [{}])",
            o.bundle_version,
            o.policies.join(",")
        );
    }
    if let Some((allow, policies)) = &o.shadow
        && *allow != (o.verdict == Verdict::Allow)
    {
        log::info!(
            "portcullis: shadow bundle would {} {who} (set {set}, policies [{}])",
            if *allow { "allow" } else { "deny" },
            policies.join(",")
        );
    }
}
