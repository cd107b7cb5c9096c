//! How the sync stands: when policy-sync last answered, whether a failure episode is under way
//! (logged once when it starts and once when it ends, never per retry), and whether the bundle
//! in force has gone stale.

use std::time::Duration;

use crate::sync::accept::SyncFailure;

/// What a caller should log after recording an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Episode {
    /// Nothing new to say.
    Quiet,
    /// The first failure after a success (or since start).
    Started(SyncFailure),
    /// The first success after failures: how many attempts failed.
    Ended { failures: u64 },
}

/// The sync's health for one followed tenant.
#[derive(Debug, Clone, Default)]
pub struct Health {
    last_success_ms: Option<u64>,
    failures: u64,
}

impl Health {
    /// policy-sync answered (a new version or none newer): staleness starts again.
    pub fn success(&mut self, now_ms: u64) -> Episode {
        self.last_success_ms = Some(now_ms);
        match std::mem::take(&mut self.failures) {
            0 => Episode::Quiet,
            failures => Episode::Ended { failures },
        }
    }

    /// An attempt failed.
    pub fn failure(&mut self, failure: &SyncFailure) -> Episode {
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            Episode::Started(failure.clone())
        } else {
            Episode::Quiet
        }
    }

    /// Milliseconds since policy-sync last answered (`None`: never).
    #[must_use]
    pub fn since_success_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_success_ms.map(|t| now_ms.saturating_sub(t))
    }

    /// Whether the bundle in force is older than `max` (never answered counts from `start_ms`,
    /// when the filter started).
    #[must_use]
    pub fn stale(&self, now_ms: u64, start_ms: u64, max: Duration) -> bool {
        let since = self.last_success_ms.unwrap_or(start_ms);
        u128::from(now_ms.saturating_sub(since)) > max.as_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_log_line_per_episode() {
        let mut h = Health::default();
        assert_eq!(h.success(1_000), Episode::Quiet);
        assert_eq!(
            h.failure(&SyncFailure::Timeout),
            Episode::Started(SyncFailure::Timeout)
        );
        for _ in 0..10 {
            assert_eq!(h.failure(&SyncFailure::Status(503)), Episode::Quiet);
        }
        assert_eq!(h.success(9_000), Episode::Ended { failures: 11 });
        assert_eq!(h.success(10_000), Episode::Quiet);
        assert_eq!(h.since_success_ms(10_500), Some(500));
        let max = Duration::from_secs(60);
        assert!(!h.stale(70_000, 0, max));
        assert!(h.stale(70_001, 0, max));
        assert!(!Health::default().stale(60_000, 0, max));
        assert!(Health::default().stale(60_001, 0, max));
    }
}
