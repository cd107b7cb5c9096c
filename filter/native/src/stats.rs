//! The stats the native module defines on its configuration (all in `config_new`, the only
//! time Envoy lets a module define them), and the sync's view of them.

use portcullis_core::metrics::{self, Counter, CounterIds};
use portcullis_core::sync::follow::SyncStats;

use crate::host::ConfigHandle;

/// Envoy refused to define a stat (the configuration is then refused).
#[derive(Debug, thiserror::Error)]
#[error("Envoy refused to define stat {0}")]
pub struct StatRefused(pub &'static str);

/// The labelled families of a configuration that follows policy-sync.
#[derive(Debug)]
struct SyncFamilies {
    /// `cause`.
    failures: usize,
    /// `tenant`.
    bundle_version: usize,
    /// `tenant`.
    seconds_since_success: usize,
}

/// Stat ids Envoy gave one configuration. Labelled families carry their label as Envoy's own
/// tag (`policy_id`, `cause`, `tenant`), so they need no `stats_tags` rule.
#[derive(Debug)]
pub struct Stats {
    /// A decision's counters and the signature checks'.
    pub counters: CounterIds<usize>,
    /// The sync's plain counters (only with `sync`), found by name off the decision path.
    sync_counters: Vec<(&'static str, usize)>,
    /// `portcullis.denied_by_policy_total`, labelled `policy_id`.
    pub denied_by_policy: usize,
    pub decision_us: usize,
    sync: Option<SyncFamilies>,
}

impl Stats {
    /// Defines every stat; with `sync`, the sync's too.
    pub fn define(envoy: ConfigHandle, sync: bool) -> Result<Self, StatRefused> {
        let counter = |name: &'static str, labels: &[&str]| {
            envoy.counter(name, labels).ok_or(StatRefused(name))
        };
        let gauge = |name: &'static str| envoy.gauge(name, &["tenant"]).ok_or(StatRefused(name));
        let counters = CounterIds::try_define(|c: Counter| counter(c.name(), &[]))?;
        let sync_counters = metrics::SYNC_COUNTERS
            .iter()
            .filter(|_| sync)
            .map(|&name| counter(name, &[]).map(|id| (name, id)))
            .collect::<Result<_, _>>()?;
        let sync = if sync {
            Some(SyncFamilies {
                failures: counter(metrics::SYNC_FAILURES, &["cause"])?,
                bundle_version: gauge(metrics::SYNC_BUNDLE_VERSION)?,
                seconds_since_success: gauge(metrics::SYNC_SECONDS_SINCE_SUCCESS)?,
            })
        } else {
            None
        };
        Ok(Self {
            counters,
            sync_counters,
            denied_by_policy: counter(metrics::DENIED_BY_POLICY, &["policy_id"])?,
            decision_us: envoy
                .histogram(metrics::DECISION_MICROSECONDS)
                .ok_or(StatRefused(metrics::DECISION_MICROSECONDS))?,
            sync,
        })
    }

    /// The id of the sync's counter `name`, if this configuration defines it.
    pub fn sync_counter(&self, name: &str) -> Option<usize> {
        self.sync_counters
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, id)| *id)
    }
}

/// The sync's stats, set from Envoy's main thread through the configuration.
#[derive(Debug)]
pub struct MainThreadStats<'a> {
    pub envoy: ConfigHandle,
    pub stats: &'a Stats,
}

impl SyncStats for MainThreadStats<'_> {
    fn count(&self, metric: &'static str, label: Option<&str>, n: u64) {
        match (metric, label, &self.stats.sync) {
            (metrics::SYNC_FAILURES, Some(cause), Some(families)) => {
                self.envoy.count(families.failures, &[cause], n);
            }
            _ => {
                if let Some(id) = self.stats.sync_counter(metric) {
                    self.envoy.count(id, &[], n);
                }
            }
        }
    }

    fn gauge(&self, metric: &'static str, tenant: &str, value: u64) {
        let Some(families) = &self.stats.sync else {
            return;
        };
        let id = if metric == metrics::SYNC_BUNDLE_VERSION {
            families.bundle_version
        } else {
            families.seconds_since_success
        };
        self.envoy.set_gauge(id, &[tenant], value);
    }
}
