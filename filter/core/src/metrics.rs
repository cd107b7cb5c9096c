//! Names of the filter's stats, for the host glue, the tests, the dashboard and the alert rules.
//!
//! Envoy files a proxy-wasm metric `portcullis.x` as `wasmcustom.portcullis.x` and exports it to
//! Prometheus as `portcullis_x`, so the names follow Prometheus' conventions: counters end in
//! `_total`, histograms and gauges name their unit. A metric per policy, failure cause or tenant
//! carries that value as its last dot-separated part, after the conventional name; the tag rules
//! in [`TAGS`] (Envoy's `stats_config.stats_tags`) turn it into a label, so that Prometheus sees
//! `portcullis_denied_by_policy_total{policy_id="..."}`.

/// Requests allowed (by a policy, a public route or dry run).
pub const ALLOWED: &str = "portcullis.allowed_total";
/// Requests denied by the policies (403).
pub const DENIED: &str = "portcullis.denied_total";
/// Requests without a valid token where one is required (401).
pub const UNAUTHENTICATED: &str = "portcullis.unauthenticated_total";
/// Requests the filter could not decide and so denied (no policies yet, evaluation errors).
pub const ERRORS: &str = "portcullis.errors_total";
pub const TOKEN_CACHE_HITS: &str = "portcullis.token_cache.hits_total";
pub const TOKEN_CACHE_MISSES: &str = "portcullis.token_cache.misses_total";
pub const DECISION_CACHE_HITS: &str = "portcullis.decision_cache.hits_total";
pub const DECISION_CACHE_MISSES: &str = "portcullis.decision_cache.misses_total";
/// Signatures Envoy's `verify_signature` confirmed.
pub const HOST_VERIFY_CONFIRMED: &str = "portcullis.host_verify.confirmed_total";
/// Signatures the host declined, checked by the filter's own code.
pub const HOST_VERIFY_DECLINED: &str = "portcullis.host_verify.declined_total";
/// Denies a tenant in dry run would have made.
pub const DRY_RUN_WOULD_DENY: &str = "portcullis.dry_run.would_deny_total";
/// Requests the shadow bundle decided otherwise.
pub const SHADOW_DISAGREEMENTS: &str = "portcullis.shadow.disagreements_total";
/// Histogram: the time a decision took, in microseconds.
pub const DECISION_MICROSECONDS: &str = "portcullis.decision_microseconds";
/// Histogram: the time Envoy's `verify_signature` took, in nanoseconds.
pub const HOST_VERIFY_NANOSECONDS: &str = "portcullis.host_verify_nanoseconds";
/// Documents from policy-sync verified and put in force.
pub const SYNC_SUCCESSES: &str = "portcullis.sync.successes_total";
pub const SYNC_LEASE_TAKEOVERS: &str = "portcullis.sync.lease_takeovers_total";
/// Requests refused (503) while a followed tenant had no policies or was too stale.
pub const SYNC_REFUSED_REQUESTS: &str = "portcullis.sync.refused_requests_total";
pub const SYNC_DOCUMENTS_APPLIED: &str = "portcullis.sync.documents_applied_total";
pub const DECISION_LOG_SHIPPED: &str = "portcullis.decision_log.shipped_total";
pub const DECISION_LOG_DROPPED: &str = "portcullis.decision_log.dropped_total";

/// The plain counters a request can add to: a decision's ([`crate::effects::counts`]) and the
/// signature checks'. Hosts keep their ids in a [`CounterIds`], so that no request looks a
/// counter up by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    Denied,
    Unauthenticated,
    Errors,
    TokenCacheHits,
    TokenCacheMisses,
    DecisionCacheHits,
    DecisionCacheMisses,
    HostVerifyConfirmed,
    HostVerifyDeclined,
    DryRunWouldDeny,
    ShadowDisagreements,
}

impl Counter {
    /// Every counter, in discriminant order.
    pub const ALL: [Self; 12] = [
        Self::Allowed,
        Self::Denied,
        Self::Unauthenticated,
        Self::Errors,
        Self::TokenCacheHits,
        Self::TokenCacheMisses,
        Self::DecisionCacheHits,
        Self::DecisionCacheMisses,
        Self::HostVerifyConfirmed,
        Self::HostVerifyDeclined,
        Self::DryRunWouldDeny,
        Self::ShadowDisagreements,
    ];

    /// The stat's name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allowed => ALLOWED,
            Self::Denied => DENIED,
            Self::Unauthenticated => UNAUTHENTICATED,
            Self::Errors => ERRORS,
            Self::TokenCacheHits => TOKEN_CACHE_HITS,
            Self::TokenCacheMisses => TOKEN_CACHE_MISSES,
            Self::DecisionCacheHits => DECISION_CACHE_HITS,
            Self::DecisionCacheMisses => DECISION_CACHE_MISSES,
            Self::HostVerifyConfirmed => HOST_VERIFY_CONFIRMED,
            Self::HostVerifyDeclined => HOST_VERIFY_DECLINED,
            Self::DryRunWouldDeny => DRY_RUN_WOULD_DENY,
            Self::ShadowDisagreements => SHADOW_DISAGREEMENTS,
        }
    }
}

/// The id a host gave each [`Counter`] when it defined them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterIds<T>([T; Counter::ALL.len()]);

impl<T: Copy + Default> CounterIds<T> {
    /// Defines every counter with `define`, in [`Counter::ALL`]'s order.
    pub fn define(mut define: impl FnMut(Counter) -> T) -> Self {
        match Self::try_define(|c| Ok::<_, std::convert::Infallible>(define(c))) {
            Ok(ids) => ids,
            Err(never) => match never {},
        }
    }

    /// Defines every counter with `define`, in [`Counter::ALL`]'s order; the first error stops.
    ///
    /// # Errors
    /// The first error `define` returns.
    pub fn try_define<E>(mut define: impl FnMut(Counter) -> Result<T, E>) -> Result<Self, E> {
        let mut ids = [T::default(); Counter::ALL.len()];
        for (id, counter) in ids.iter_mut().zip(Counter::ALL) {
            *id = define(counter)?;
        }
        Ok(Self(ids))
    }

    /// The id of `counter`: `None` only for a variant left out of [`Counter::ALL`] (a unit
    /// test checks that none is).
    #[must_use]
    pub fn get(&self, counter: Counter) -> Option<T> {
        self.0.get(counter as usize).copied()
    }
}

/// Denies per determining policy: the family [`denied_by_policy`] names (label `policy_id`).
pub const DENIED_BY_POLICY: &str = "portcullis.denied_by_policy_total";
/// Failed syncs: the family [`sync_failures`] names (label `cause`).
pub const SYNC_FAILURES: &str = "portcullis.sync.failures_total";
/// Gauge family: the bundle version in force per tenant ([`sync_bundle_version`]).
pub const SYNC_BUNDLE_VERSION: &str = "portcullis.sync.bundle_version";
/// Gauge family: seconds since policy-sync last answered per tenant
/// ([`sync_seconds_since_success`]).
pub const SYNC_SECONDS_SINCE_SUCCESS: &str = "portcullis.sync.seconds_since_success";

/// The sync's plain counters (beside its labelled families), defined by a filter that follows
/// policy-sync.
pub const SYNC_COUNTERS: [&str; 6] = [
    SYNC_SUCCESSES,
    SYNC_LEASE_TAKEOVERS,
    SYNC_REFUSED_REQUESTS,
    SYNC_DOCUMENTS_APPLIED,
    DECISION_LOG_SHIPPED,
    DECISION_LOG_DROPPED,
];

/// Every stat the filter defines, as (name, label): a plain stat's name, or a labelled family's
/// name before the part [`TAGS`] makes its label. The metrics table in docs/deployment.md lists
/// exactly these (a test compares them).
pub const ALL: [(&str, Option<&str>); 24] = [
    (ALLOWED, None),
    (DENIED, None),
    (UNAUTHENTICATED, None),
    (ERRORS, None),
    (TOKEN_CACHE_HITS, None),
    (TOKEN_CACHE_MISSES, None),
    (DECISION_CACHE_HITS, None),
    (DECISION_CACHE_MISSES, None),
    (HOST_VERIFY_CONFIRMED, None),
    (HOST_VERIFY_DECLINED, None),
    (DRY_RUN_WOULD_DENY, None),
    (SHADOW_DISAGREEMENTS, None),
    (DECISION_MICROSECONDS, None),
    (HOST_VERIFY_NANOSECONDS, None),
    (SYNC_SUCCESSES, None),
    (SYNC_LEASE_TAKEOVERS, None),
    (SYNC_REFUSED_REQUESTS, None),
    (SYNC_DOCUMENTS_APPLIED, None),
    (DECISION_LOG_SHIPPED, None),
    (DECISION_LOG_DROPPED, None),
    (DENIED_BY_POLICY, Some("policy_id")),
    (SYNC_FAILURES, Some("cause")),
    (SYNC_BUNDLE_VERSION, Some("tenant")),
    (SYNC_SECONDS_SINCE_SUCCESS, Some("tenant")),
];

/// Denies per determining policy (label `policy_id`).
pub fn denied_by_policy(policy_id: &str) -> String {
    format!("{DENIED_BY_POLICY}.{}", stat_safe(policy_id))
}

/// Failed syncs per cause (label `cause`).
pub fn sync_failures(cause: &str) -> String {
    format!("{SYNC_FAILURES}.{}", stat_safe(cause))
}

/// Gauge: the bundle version in force for a followed tenant (label `tenant`).
pub fn sync_bundle_version(tenant: &str) -> String {
    format!("{SYNC_BUNDLE_VERSION}.{}", stat_safe(tenant))
}

/// Gauge: seconds since policy-sync last answered for a followed tenant (label `tenant`).
pub fn sync_seconds_since_success(tenant: &str) -> String {
    format!("{SYNC_SECONDS_SINCE_SUCCESS}.{}", stat_safe(tenant))
}

/// `text` as one part of a stat name: letters, digits, `-` and `_` kept, anything else `_`
/// (a `.` would split the name, and Prometheus labels hold the part as it is here).
pub fn stat_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One of Envoy's `stats_config.stats_tags` rules: the first group of `regex` is cut from the
/// stat's name and the second becomes the value of label `tag_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagRule {
    pub tag_name: &'static str,
    pub regex: &'static str,
}

/// The tag rules the Envoy configurations in `envoy/` and Istio's bootstrap patch carry.
pub const TAGS: [TagRule; 3] = [
    TagRule {
        tag_name: "policy_id",
        regex: r"^wasmcustom\.portcullis\.denied_by_policy_total(\.([^.]+))$",
    },
    TagRule {
        tag_name: "cause",
        regex: r"^wasmcustom\.portcullis\.sync\.failures_total(\.([^.]+))$",
    },
    TagRule {
        tag_name: "tenant",
        regex: r"^wasmcustom\.portcullis\.sync\.(?:bundle_version|seconds_since_success)(\.([^.]+))$",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_names_keep_one_part_per_value() {
        assert_eq!(
            denied_by_policy("a.b c"),
            "portcullis.denied_by_policy_total.a_b_c"
        );
        assert_eq!(
            sync_failures("timeout"),
            "portcullis.sync.failures_total.timeout"
        );
        assert_eq!(
            sync_bundle_version("t-1"),
            "portcullis.sync.bundle_version.t-1"
        );
    }

    #[test]
    fn each_counter_has_its_own_id_and_a_listed_name() -> Result<(), String> {
        let names: Vec<&str> = ALL.iter().map(|(name, _)| *name).collect();
        for (place, counter) in Counter::ALL.iter().enumerate() {
            // ALL's order is the discriminants', which CounterIds indexes by.
            assert_eq!(*counter as usize, place);
            assert!(names.contains(&counter.name()), "{counter:?} is not listed");
        }
        let ids = CounterIds::try_define(|c| Ok::<_, String>(c as u32 + 7))?;
        for counter in Counter::ALL {
            assert_eq!(ids.get(counter), Some(counter as u32 + 7));
        }
        let refused = CounterIds::<u32>::try_define(|c| match c {
            Counter::Errors => Err(c.name().to_owned()),
            _ => Ok(1),
        });
        assert_eq!(refused, Err(ERRORS.to_owned()));
        Ok(())
    }
}
