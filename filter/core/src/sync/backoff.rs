//! Retry delays after a failed poll: exponential from `initial` to `max`, with jitter so that
//! many Envoys that lost policy-sync at the same moment do not all come back at once.

use std::time::Duration;

/// The delay before the next attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// After a failure: the delay before retrying, between half and all of
    /// `min(max, initial × 2^failures)` ("equal jitter": never a hot loop, never in step).
    /// `random` is any 64-bit random value.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        let jitter = if span == 0 { 0 } else { random % (span + 1) };
        half + Duration::from_micros(jitter)
    }

    /// After a success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(200), ms(3000));
        let mut lows = Vec::new();
        let mut highs = Vec::new();
        for _ in 0..8 {
            let mut low = b.clone();
            lows.push(low.next_delay(0));
            highs.push(b.next_delay(u64::MAX));
        }
        assert_eq!(
            lows,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1500),
                ms(1500),
                ms(1500),
                ms(1500)
            ]
        );
        for (l, h) in lows.iter().zip(&highs) {
            assert!(h >= l && *h <= *l * 2, "{l:?} {h:?}");
        }
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_delay(7) <= ms(200));
    }
}
