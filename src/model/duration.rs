//! Durations as people write them in sources and on the command line, read
//! and written one way everywhere.

use std::time::Duration;

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
pub fn format(d: Duration) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
