//! Time, one way everywhere: timestamps as stored (RFC 3339 in UTC, to the
//! millisecond), durations as people write them in sources and on the
//! command line (read and written back the same), and the few shapes the
//! outputs show a duration in (`compact`, `ago`, `clock`).

use chrono::{DateTime, Utc};
use std::time::Duration;

/// A timestamp as stored: UTC, millisecond precision.
pub type Timestamp = DateTime<Utc>;

/// RFC 3339 timestamps in UTC with milliseconds (`2026-11-23T12:00:00.000Z`).
pub mod rfc3339 {
    use super::Timestamp;
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// RFC 3339 with milliseconds, `Z`.
    pub(crate) fn format(t: &Timestamp) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Parses RFC 3339.
    pub fn parse(s: &str) -> Result<Timestamp, chrono::ParseError> {
        DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
    }

    /// Serializes a time as RFC 3339 with milliseconds.
    pub(crate) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    /// Deserializes an RFC 3339 time.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// The same for an optional time.
    pub mod option {
        use super::*;

        /// Serializes an optional time.
        pub(crate) fn serialize<S: Serializer>(
            t: &Option<Timestamp>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        /// Deserializes an optional time.
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Timestamp>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => parse(&s).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

/// A duration as people write it (`30s`, `5m`, `1h 30m`, `2d`, `30days`),
/// read the same way everywhere (source fields and CLI flags). `M` is
/// refused: it is months to the parser and minutes to many readers.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let months = t
        .split(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
        .any(|unit| unit == "M");
    if months {
        return Err(format!(
            "{t:?} is ambiguous: write m or min for minutes, months for months"
        ));
    }
    humantime::parse_duration(t).map_err(|e| format!("{t:?} is not a duration ({e})"))
}

/// A duration in the units `parse` reads, compact: `30s`, `5m`,
/// `1h 30m`, `30d`, `1s 500ms` (to the millisecond: what it prints, `parse`
/// reads back as the same duration).
pub(crate) fn format(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}ms", d.as_millis())
        };
    }
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    let millis = d.subsec_millis();
    if millis > 0 {
        parts.push(format!("{millis}ms"));
    }
    parts.join(" ")
}

/// How long ago, to its largest unit: `42s`, `3m`, `2h`, `5d` (tables).
pub(crate) fn ago(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// A span to two units, aligned: `42s`, `3m 05s`, `2h 03m` (the report).
pub(crate) fn span(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// A time since a start, as a clock shows it: `0:05:00`, `26:00:00` (a
/// simulation's timeline).
pub fn clock(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_a_duration_is_shown_in() {
        assert_eq!(
            [ago(-3), ago(42), ago(185), ago(7500), ago(5 * 86400 + 1)],
            ["0s", "42s", "3m", "2h", "5d"]
        );
        assert_eq!(
            [span(42), span(185), span(7380)],
            ["42s", "3m 05s", "2h 03m"]
        );
        assert_eq!([clock(300), clock(93600)], ["0:05:00", "26:00:00"]);
    }

    #[test]
    fn durations_read_and_write_one_way() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("30days"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse("2months").map(|d| d.as_secs() / 86_400), Ok(60));
        for m in ["5M", "1h 5M", "2 M"] {
            assert_eq!(
                parse(m),
                Err(format!(
                    "{:?} is ambiguous: write m or min for minutes, months for months",
                    m.trim()
                ))
            );
        }
        assert!(
            parse("soon")
                .unwrap_err()
                .starts_with("\"soon\" is not a duration (")
        );
        for (d, text) in [
            (0, "0s"),
            (30, "30s"),
            (300, "5m"),
            (5400, "1h 30m"),
            (30 * 86_400, "30d"),
            (90_061, "1d 1h 1m 1s"),
        ] {
            assert_eq!(format(Duration::from_secs(d)), text);
            assert_eq!(parse(text), Ok(Duration::from_secs(d)), "{text} reads back");
        }
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        for (ms, text) in [(1500, "1s 500ms"), (61_001, "1m 1s 1ms")] {
            let d = Duration::from_millis(ms);
            assert_eq!(format(d), text, "the milliseconds are kept");
            assert_eq!(parse(text), Ok(d));
        }
    }
}
