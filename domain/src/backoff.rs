//! How long to wait before trying again: one rule for every retry loop (the stream reader,
//! the bus's deliveries, the EventBridge publisher).

use std::time::Duration;

/// Exponential backoff: `first` after the first failure, doubling with each further one, never
/// more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait before try `attempts + 1`, after `attempts` failures.
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1));
        self.first.saturating_mul(factor).min(self.max)
    }

    /// [`Backoff::delay`] with full jitter: a uniformly random share of it, so that retries
    /// of many callers after one outage spread out instead of arriving together. `share` is
    /// the random draw, in `[0, 1)`.
    pub fn jittered(&self, attempts: u32, share: f64) -> Duration {
        self.delay(attempts).mul_f64(share.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_first_up_to_max() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let waits: Vec<_> = (1..=6).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(0), Duration::from_millis(100));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
        assert_eq!(backoff.jittered(3, 0.5), Duration::from_millis(200));
        assert_eq!(backoff.jittered(3, 7.0), Duration::from_millis(400));
    }
}
