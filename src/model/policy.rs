//! The retry policy: how often a stage may fail and how long to wait.

use super::ladder::Code;
use std::collections::BTreeMap;
use std::time::Duration;

/// Retry settings of one stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StageRetry {
    /// Failures after which the stage is blocked for a human.
    pub max_attempts: u32,
    /// Wait after the first failure.
    pub backoff: Duration,
    /// Each further failure multiplies the wait by this.
    pub factor: f64,
    /// The wait never exceeds this.
    pub max_backoff: Duration,
}

impl Default for StageRetry {
    fn default() -> Self {
        StageRetry {
            max_attempts: 3,
            backoff: Duration::from_secs(30),
            factor: 2.0,
            max_backoff: Duration::from_secs(3600),
        }
    }
}

impl StageRetry {
    /// The wait after the `attempts`-th failure (1-based):
    /// `backoff * factor^(attempts-1)`, capped at `max_backoff`.
    pub fn backoff_after(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(64) as i32;
        let secs = self.backoff.as_secs_f64() * self.factor.powi(exp);
        let cap = self.max_backoff.as_secs_f64();
        if !secs.is_finite() || secs >= cap {
            self.max_backoff
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }
}

/// The whole policy: defaults plus per-state overrides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryPolicy {
    /// The policy of every stage without one of its own.
    pub default: StageRetry,
    /// Stages with their own policy.
    pub states: BTreeMap<Code, StageRetry>,
}

impl RetryPolicy {
    /// The policy of stage `code`.
    pub fn for_state(&self, code: Code) -> &StageRetry {
        self.states.get(&code).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_factor_and_is_capped() {
        let r = StageRetry {
            max_attempts: 5,
            backoff: Duration::from_secs(30),
            factor: 2.0,
            max_backoff: Duration::from_secs(100),
        };
        assert_eq!(r.backoff_after(1), Duration::from_secs(30));
        assert_eq!(r.backoff_after(2), Duration::from_secs(60));
        assert_eq!(r.backoff_after(3), Duration::from_secs(100));
        assert_eq!(r.backoff_after(1000), Duration::from_secs(100));
    }

    #[test]
    fn per_state_overrides_win() {
        let mut p = RetryPolicy::default();
        p.states.insert(
            5,
            StageRetry {
                max_attempts: 3,
                backoff: Duration::from_secs(300),
                ..StageRetry::default()
            },
        );
        assert_eq!(p.for_state(5).backoff, Duration::from_secs(300));
        assert_eq!(p.for_state(10).backoff, Duration::from_secs(30));
    }
}
