//! The state ladder: the ordered milestone codes a build climbs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A state code (0-100 in steps of 5 on the default ladder).
pub type Code = u32;

/// One rung of the ladder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The state code.
    pub(crate) code: Code,
    /// Its name, e.g. `kickstart initiated`.
    pub(crate) name: String,
}

/// A strictly increasing list of codes with names; the first is the initial
/// state, the last the final one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    steps: Vec<Step>,
}

/// Why a ladder or a code was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LadderError {
    #[error("states must list at least two codes (an initial and a final one)")]
    /// A ladder needs an initial and a final state.
    TooShort,
    #[error("states must be strictly increasing: {after} comes after {before}")]
    /// Codes that do not rise.
    NotIncreasing {
        /// The earlier code.
        before: Code,
        /// The code after it, not greater.
        after: Code,
    },
    #[error("state {code} has an empty name")]
    /// A state without a name.
    EmptyName {
        /// The code without a name.
        code: Code,
    },
}

const DEFAULT: [(Code, &str); 21] = [
    (0, "initial"),
    (5, "kickstart initiated"),
    (10, "green image created"),
    (15, "base configuration"),
    (20, "cloud provider setup"),
    (25, "security baseline"),
    (30, "monitoring setup"),
    (35, "runtime prerequisites"),
    (40, "network configuration"),
    (45, "storage configuration"),
    (50, "user management"),
    (55, "service installation"),
    (60, "application deployment"),
    (65, "config management"),
    (70, "integration testing"),
    (75, "performance optimization"),
    (80, "backup setup"),
    (85, "documentation"),
    (90, "final validation"),
    (95, "image sealing"),
    (100, "complete and delivered"),
];

impl Default for Ladder {
    fn default() -> Self {
        Ladder {
            steps: DEFAULT
                .iter()
                .map(|&(code, name)| Step {
                    code,
                    name: name.to_string(),
                })
                .collect(),
        }
    }
}

impl Ladder {
    /// A ladder from its steps, strictly increasing.
    pub fn new(steps: Vec<Step>) -> Result<Self, LadderError> {
        if steps.len() < 2 {
            return Err(LadderError::TooShort);
        }
        for pair in steps.windows(2) {
            if pair[1].code <= pair[0].code {
                return Err(LadderError::NotIncreasing {
                    before: pair[0].code,
                    after: pair[1].code,
                });
            }
        }
        if let Some(step) = steps.iter().find(|s| s.name.trim().is_empty()) {
            return Err(LadderError::EmptyName { code: step.code });
        }
        Ok(Ladder { steps })
    }

    /// Every step, in order.
    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The first code.
    pub(crate) fn initial(&self) -> Code {
        self.steps[0].code
    }

    /// The last code (delivered).
    pub(crate) fn final_code(&self) -> Code {
        self.steps[self.steps.len() - 1].code
    }

    /// Whether `code` is a state of the ladder.
    pub(crate) fn contains(&self, code: Code) -> bool {
        self.index(code).is_some()
    }

    /// The name of `code`.
    pub(crate) fn name(&self, code: Code) -> Option<&str> {
        self.index(code).map(|i| self.steps[i].name.as_str())
    }

    /// The code after `code`, or `None` at the final code.
    pub(crate) fn next(&self, code: Code) -> Option<Code> {
        let i = self.index(code)?;
        self.steps.get(i + 1).map(|s| s.code)
    }

    /// The position of `code` on the ladder (0 for the initial state).
    pub(crate) fn index(&self, code: Code) -> Option<usize> {
        self.steps.binary_search_by_key(&code, |s| s.code).ok()
    }

    /// `Ok(code)` when the code is on the ladder, else an error naming the ladder.
    pub fn check(&self, code: Code) -> Result<Code, OffLadder> {
        if self.contains(code) {
            Ok(code)
        } else {
            Err(OffLadder {
                code,
                ladder: self.codes(),
            })
        }
    }

    /// The codes as a short list, for messages: `0, 5, 10, ..., 100`.
    pub(crate) fn codes(&self) -> String {
        let codes: Vec<String> = self.steps.iter().map(|s| s.code.to_string()).collect();
        if codes.len() <= 8 {
            codes.join(", ")
        } else {
            let step = self.steps[1].code - self.steps[0].code;
            let regular = self.steps.windows(2).all(|w| w[1].code - w[0].code == step);
            if regular {
                format!(
                    "{}, {}, ..., {} (steps of {step})",
                    codes[0],
                    codes[1],
                    codes[codes.len() - 1]
                )
            } else {
                codes.join(", ")
            }
        }
    }

    /// `30 (monitoring setup)`.
    pub(crate) fn label(&self, code: Code) -> String {
        match self.name(code) {
            Some(name) => format!("{code} ({name})"),
            None => format!("{code} (not on the ladder)"),
        }
    }
}

/// A code that is not on the ladder.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("state {code} is not on the ladder ({ladder})")]
pub struct OffLadder {
    /// The code that is not on the ladder.
    pub(crate) code: Code,
    /// The ladder, in words.
    pub(crate) ladder: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ladder_is_0_to_100_by_5() {
        let l = Ladder::default();
        let codes: Vec<Code> = l.steps().iter().map(|s| s.code).collect();
        assert_eq!(codes, (0..=100).step_by(5).collect::<Vec<_>>());
        assert_eq!(l.initial(), 0);
        assert_eq!(l.final_code(), 100);
        assert_eq!(l.next(95), Some(100));
        assert_eq!(l.next(100), None);
        assert_eq!(l.name(30), Some("monitoring setup"));
        assert_eq!(l.codes(), "0, 5, ..., 100 (steps of 5)");
        assert!(!l.contains(33));
        assert_eq!(
            l.check(33).unwrap_err().to_string(),
            "state 33 is not on the ladder (0, 5, ..., 100 (steps of 5))"
        );
    }

    #[test]
    fn custom_ladders_must_increase_strictly() {
        let step = |code, name: &str| Step {
            code,
            name: name.into(),
        };
        assert_eq!(
            Ladder::new(vec![step(0, "a"), step(0, "b")]),
            Err(LadderError::NotIncreasing {
                before: 0,
                after: 0
            })
        );
        assert_eq!(Ladder::new(vec![step(0, "a")]), Err(LadderError::TooShort));
        assert_eq!(
            Ladder::new(vec![step(0, "a"), step(7, " ")]),
            Err(LadderError::EmptyName { code: 7 })
        );
        let l = Ladder::new(vec![
            step(1, "queued"),
            step(7, "built"),
            step(9, "shipped"),
        ])
        .unwrap();
        assert_eq!((l.initial(), l.final_code(), l.next(1)), (1, 9, Some(7)));
        assert_eq!(l.codes(), "1, 7, 9");
    }
}
