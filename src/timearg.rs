//! Time arguments (`--end`, `--hour`, `--from`, `--to`, `--until`): RFC 3339,
//! naive ISO 8601 meaning UTC, or the short `YYYY-MM-DDTHH`; durations and
//! percentage limits. Pure, so clap can use them as value parsers and
//! report mistakes as usage errors.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

const FORMATS_HINT: &str =
    "expected RFC 3339 (2026-11-27T14:03:07Z), naive UTC (2026-11-27T14:03:07) or 2026-11-27T14";

/// Parses an instant given on the command line: one of the forms above,
/// in the years genalytics stores (so that every window and hour built from
/// it exists).
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    let at = parse_any_instant(text)?;
    crate::event::in_range(at).ok_or_else(|| {
        format!(
            "'{}' is outside the years {}–{}",
            crate::text::escape_controls(text.trim()),
            crate::event::YEARS.start(),
            crate::event::YEARS.end()
        )
    })
}

fn parse_any_instant(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    // A space instead of the `T` is what people paste from psql.
    let iso = text.replacen(' ', "T", 1);
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(&iso, format) {
            return Ok(naive.and_utc());
        }
    }
    if let Some((date, hour)) = iso.split_once('T')
        && hour.len() == 2
        && let (Ok(date), Ok(hour)) = (NaiveDate::parse_from_str(date, "%Y-%m-%d"), hour.parse())
        && let Some(naive) = date.and_hms_opt(hour, 0, 0)
    {
        return Ok(naive.and_utc());
    }
    if let Ok(date) = NaiveDate::parse_from_str(&iso, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc());
    }
    Err(format!(
        "'{}' is not a time: {FORMATS_HINT}",
        crate::text::escape_controls(text)
    ))
}

/// Parses a span as people write it: `90d`, `1h30m`, `1500ms`, `2w`,
/// `1h 30min` (humantime's units, ms to years of 365.25 days), or `0`; at
/// most 100 such years, so that every cutoff and window built from it exists.
pub fn parse_span(text: &str) -> Result<chrono::TimeDelta, String> {
    let text = text.trim();
    let hint = |why: &str| {
        format!(
            "'{}' is not a duration ({why}): expected numbers with units, e.g. 1500ms, 45s, 15m, 1h30m, 90d, 2w",
            crate::text::escape_controls(text)
        )
    };
    if text == "0" {
        return Ok(chrono::TimeDelta::zero());
    }
    let span = humantime::parse_duration(text).map_err(|err| hint(&err.to_string()))?;
    if span > std::time::Duration::from_secs(100 * 31_557_600) {
        return Err(hint("longer than 100 years"));
    }
    chrono::TimeDelta::from_std(span).map_err(|_| hint("out of range"))
}

/// Parses a percentage given as a limit: `5`, `2.5`, `10%`, from 0 to 100.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    match text.trim().trim_end_matches('%').trim().parse::<f64>() {
        Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct),
        _ => Err(format!(
            "{} is not a percentage between 0 and 100",
            crate::text::quoted(text)
        )),
    }
}

/// A span as people write it back: `90d`, `36h`, `15m`, `45s`, `1500ms`
/// (in one unit, the largest that divides it, so `parse_span` reads it back).
pub fn format_span(span: chrono::TimeDelta) -> String {
    let millis = span.num_milliseconds();
    match millis {
        // A unit even for nothing: "0 old" reads as a typo.
        0 => "0s".to_string(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_format_back() {
        for text in ["90d", "36h", "15m", "45s", "1500ms", "0s"] {
            assert_eq!(format_span(parse_span(text).unwrap()), text);
        }
    }

    #[test]
    fn spans() {
        assert_eq!(parse_span("2h"), Ok(chrono::TimeDelta::hours(2)));
        assert_eq!(parse_span("90d"), Ok(chrono::TimeDelta::days(90)));
        assert_eq!(parse_span("15m"), Ok(chrono::TimeDelta::minutes(15)));
        assert_eq!(parse_span("45s"), Ok(chrono::TimeDelta::seconds(45)));
        assert_eq!(parse_span("0"), Ok(chrono::TimeDelta::zero()));
        assert_eq!(
            parse_span("1500ms"),
            Ok(chrono::TimeDelta::milliseconds(1_500))
        );
        assert_eq!(parse_span("1h30m"), Ok(chrono::TimeDelta::minutes(90)));
        assert_eq!(parse_span("1h 30min"), Ok(chrono::TimeDelta::minutes(90)));
        assert_eq!(parse_span("2w"), Ok(chrono::TimeDelta::days(14)));
        assert_eq!(parse_span("1.5h"), Ok(chrono::TimeDelta::minutes(90)));
        assert_eq!(
            parse_span("100y"),
            Ok(chrono::TimeDelta::seconds(3_155_760_000))
        );
        for bad in [
            "",
            "h",
            "2",
            "-2h",
            "1.5.5h",
            "99999999999999d",
            "101y",
            "2h\u{1b}[31m",
        ] {
            assert!(
                parse_span(bad).unwrap_err().contains("not a duration"),
                "{bad}"
            );
        }
    }
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn accepts_every_documented_form() {
        let want = utc(2026, 11, 27, 14, 0, 0);
        for text in [
            "2026-11-27T14",
            "2026-11-27T14:00",
            "2026-11-27T14:00:00",
            "2026-11-27 14:00:00",
            "2026-11-27T14:00:00Z",
            "2026-11-27T16:00:00+02:00",
            "2026-11-27T14:00:00.000000",
        ] {
            assert_eq!(parse_instant(text), Ok(want), "{text}");
        }
        assert_eq!(parse_instant("2026-11-27"), Ok(utc(2026, 11, 27, 0, 0, 0)));
    }

    #[test]
    fn keeps_fractions() {
        let at = parse_instant("2026-11-27T14:03:07.123456").unwrap();
        assert_eq!(at.timestamp_subsec_micros(), 123_456);
    }

    #[test]
    fn rejects_garbage_with_the_accepted_forms() {
        for text in ["garbage", "2026-13-01T00", "2026-11-27T25", "", "14:00"] {
            let err = parse_instant(text).unwrap_err();
            assert!(err.contains("RFC 3339"), "{text}: {err}");
        }
    }
}
