//! The retry policy: how often a stage may fail and how long to wait.

use super::ladder::Code;
use std::collections::BTreeMap;
use std::time::Duration;

/// Retry settings of one stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StageRetry {
    /// Failures after which the stage is blocked for a human.
    pub(crate) max_attempts: u32,
    /// Wait after the first failure.
    pub(crate) backoff: Duration,
    /// Each further failure multiplies the wait by this.
    pub(crate) factor: f64,
    /// The wait never exceeds this.
    pub(crate) max_backoff: Duration,
    /// A start-over stage: when it fails and will be retried, the build goes
    /// back to this earlier state, and the retry re-runs the stages from
    /// there.
    pub(crate) resume_from: Option<Code>,
    /// A stage `in_progress` longer than this is a dead attempt (its worker
    /// vanished and never reports).
    pub(crate) timeout: Option<Duration>,
    /// A human approves the stage before it runs: the build reaches it
    /// `awaiting_approval`, not `pending`.
    pub(crate) approval: bool,
    /// An attempt whose last sign of life (its start, or its newest
    /// heartbeat) is older than this is dead, as after `timeout`.
    pub(crate) heartbeat_timeout: Option<Duration>,
}

impl Default for StageRetry {
    fn default() -> Self {
        StageRetry {
            max_attempts: 3,
            backoff: Duration::from_secs(30),
            factor: 2.0,
            max_backoff: Duration::from_secs(3600),
            resume_from: None,
            timeout: None,
            approval: false,
            heartbeat_timeout: None,
        }
    }
}

impl StageRetry {
    /// The wait after the `attempts`-th failure (1-based):
    /// `backoff * factor^(attempts-1)`, capped at `max_backoff`.
    pub(crate) fn backoff_after(&self, attempts: u32) -> Duration {
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

/// The whole policy: defaults, per-range and per-state overrides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryPolicy {
    /// The policy of every stage without one of its own.
    pub(crate) default: StageRetry,
    /// Stages with their own policy (a code key).
    pub(crate) states: BTreeMap<Code, StageRetry>,
    /// Inclusive ranges of stages sharing a policy (`"10-65"`); they never
    /// overlap.
    pub(crate) ranges: Vec<(Code, Code, StageRetry)>,
}

impl RetryPolicy {
    /// The policy of stage `code`: its own (a code key beats a range), else
    /// its range's, else the default.
    pub(crate) fn for_state(&self, code: Code) -> &StageRetry {
        self.states
            .get(&code)
            .or_else(|| {
                self.ranges
                    .iter()
                    .find(|(lo, hi, _)| (*lo..=*hi).contains(&code))
                    .map(|(_, _, r)| r)
            })
            .unwrap_or(&self.default)
    }

    /// Each policy whose `backoff` is more than its `max_backoff`, in words
    /// with the wait used (the cap, for every failure): a setting that
    /// would otherwise be capped without a word.
    pub(crate) fn capped(&self) -> Vec<String> {
        let fmt = super::time::format;
        std::iter::once(("retry".to_string(), &self.default))
            .chain(
                self.ranges
                    .iter()
                    .map(|(lo, hi, r)| (format!("retry.states.{lo}-{hi}"), r)),
            )
            .chain(
                self.states
                    .iter()
                    .map(|(c, r)| (format!("retry.states.{c}"), r)),
            )
            .filter(|(_, r)| r.backoff > r.max_backoff)
            .map(|(field, r)| {
                format!(
                    "{field}: backoff {} is more than max_backoff {}: every wait is {}",
                    fmt(r.backoff),
                    fmt(r.max_backoff),
                    fmt(r.max_backoff)
                )
            })
            .collect()
    }

    /// The waits before each retry of `code` (after failure 1, 2, ...,
    /// up to the last one that is retried): what `max_attempts`, `backoff`,
    /// `factor` and `max_backoff` make together.
    pub(crate) fn waits(&self, code: Code) -> Vec<Duration> {
        let r = self.for_state(code);
        (1..r.max_attempts).map(|a| r.backoff_after(a)).collect()
    }

    /// Where the policy of `code` comes from, for the states table:
    /// `"35"`, `"10-65"` or `"default"`.
    pub(crate) fn source_of(&self, code: Code) -> String {
        if self.states.contains_key(&code) {
            return code.to_string();
        }
        self.ranges
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&code))
            .map(|(lo, hi, _)| format!("{lo}-{hi}"))
            .unwrap_or_else(|| "default".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backoff above its cap is said, with the wait used; "retry 5
    /// times" is 6 attempts, and factor 2 doubles each wait.
    #[test]
    fn a_capped_backoff_is_said_and_the_waits_are_spelled_out() {
        let mut p = RetryPolicy::default();
        assert!(p.capped().is_empty());
        p.states.insert(
            15,
            StageRetry {
                backoff: Duration::from_secs(7200),
                ..StageRetry::default()
            },
        );
        assert_eq!(
            p.capped(),
            ["retry.states.15: backoff 2h is more than max_backoff 1h: every wait is 1h"]
        );
        p.default.max_attempts = 6;
        p.default.backoff = Duration::from_secs(120);
        let minutes: Vec<u64> = p.waits(5).iter().map(|d| d.as_secs() / 60).collect();
        assert_eq!(minutes, [2, 4, 8, 16, 32]);
    }

    #[test]
    fn backoff_grows_by_factor_and_is_capped() {
        let r = StageRetry {
            max_attempts: 5,
            backoff: Duration::from_secs(30),
            factor: 2.0,
            max_backoff: Duration::from_secs(100),
            ..StageRetry::default()
        };
        assert_eq!(r.backoff_after(1), Duration::from_secs(30));
        assert_eq!(r.backoff_after(2), Duration::from_secs(60));
        assert_eq!(r.backoff_after(3), Duration::from_secs(100));
        assert_eq!(r.backoff_after(1000), Duration::from_secs(100));
    }

    #[test]
    fn a_code_beats_a_range_and_a_range_beats_the_default() {
        let mut p = RetryPolicy::default();
        let quick = StageRetry {
            backoff: Duration::from_secs(5),
            ..StageRetry::default()
        };
        let human = StageRetry {
            max_attempts: 1,
            ..StageRetry::default()
        };
        p.ranges.push((10, 65, quick.clone()));
        p.states.insert(35, human.clone());
        assert_eq!(p.for_state(10), &quick);
        assert_eq!(p.for_state(65), &quick);
        assert_eq!(p.for_state(35), &human);
        assert_eq!(p.for_state(5), &StageRetry::default());
        assert_eq!(p.for_state(70), &StageRetry::default());
        assert_eq!(
            (p.source_of(35), p.source_of(40), p.source_of(70)),
            ("35".into(), "10-65".into(), "default".into())
        );
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
