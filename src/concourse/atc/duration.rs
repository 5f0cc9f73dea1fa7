//! Durations as Concourse reads them: Go's `time.ParseDuration`
//! (`check_every`, `atc/config.go` `CheckEvery.UnmarshalJSON`; a step's
//! `timeout`, `atc/exec/timeout_step.go`), so `1d` or `90 s`, which a
//! friendlier parser would take, are refused as `fly set-pipeline` refuses
//! them.

use std::time::Duration;

/// Go's units, longest spelling first where one is a prefix of another.
const UNITS: [(&str, f64); 8] = [
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("μs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
];

/// Parses `text` as Go's `time.ParseDuration` does (`[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`,
/// or `0`); the error says what Go's says. Negative durations are refused
/// here too: nothing in a pipeline means one.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration {text:?}");
    let mut s = text;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        return Err(format!("{text:?}: a negative duration"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !s.is_empty() {
        let digits = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, rest) = s.split_at(digits);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {text:?}"));
        }
        let Some((_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!("time: unknown unit {unit:?} in duration {text:?}"));
        };
        total += value * scale;
        s = after;
    }
    if !total.is_finite() || total > 9.2e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Go's `time.ParseDuration` takes and refuses (its own tests,
    /// `src/time/time_test.go` `parseDurationTests`).
    #[test]
    fn go_durations() {
        for (text, secs) in [
            ("0", 0.0),
            ("5s", 5.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("+2m", 120.0),
            ("100ms", 0.1),
            ("1h0m0s", 3600.0),
            (".5m", 30.0),
            ("3µs", 3e-6),
        ] {
            assert_eq!(parse(text).unwrap().as_secs_f64(), secs, "{text}");
        }
        for (text, says) in [
            ("1d", "unknown unit \"d\""),
            ("90 s", "unknown unit \" s\""),
            ("10", "missing unit"),
            ("", "invalid duration"),
            ("1hour", "unknown unit \"hour\""),
            ("-1m", "negative"),
            ("m", "invalid duration"),
            ("1..5s", "invalid duration"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
