//! How `genalytics report …` cuts time: a daily point of a window ending
//! mid-day counts only the hours inside it, local days have 23 or 25 hours
//! at DST changes, and `--compare` reports the previous window exactly as a
//! separate run over it would.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Timelike, Utc};
use serde_json::Value;

use crate::harness::TestEnv;
use crate::harness::events::Written;
use crate::report::{UNTIL, count, loaded, report_json, store_and_roll_up, until};

#[test]
fn daily_trends_count_only_the_hours_inside_a_partial_day() {
    let (env, events) = loaded();
    // A window ending mid-day: the last day holds only the hours before it.
    let trends = env
        .genalytics()
        .args([
            "report",
            "trends",
            "--interval",
            "daily",
            "--days",
            "1",
            "--until",
            "2026-11-19T12:00:00Z",
            "--format",
            "json",
        ])
        .ok();
    let trends: Value = serde_json::from_str(&trends.stdout).unwrap();
    let points = trends["data_points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    let end = Utc.with_ymd_and_hms(2026, 11, 19, 12, 0, 0).unwrap();
    let last_day = Utc.with_ymd_and_hms(2026, 11, 19, 0, 0, 0).unwrap();
    let inside = count(&events, |e| {
        e.kind == "request" && e.at >= last_day && e.at < end
    });
    assert_eq!(points[1]["total_requests"], inside);
}

/// One completion at the start of every UTC hour in `[from, to)`, every
/// third one failed.
fn hourly_completions(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Written> {
    let mut events = Vec::new();
    let mut at = from;
    let mut i = 0;
    while at < to {
        events.push(Written {
            success: Some(i % 3 != 0),
            duration_ms: Some(1_000 + i),
            error_type: (i % 3 == 0).then(|| "Timeout".to_string()),
            ..Written::new(at + Duration::minutes(1), "completion")
        });
        at += Duration::hours(1);
        i += 1;
    }
    events
}

#[test]
fn local_days_have_23_or_25_hours_at_dst_changes() {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    // Around both of New York's changes in 2026: 8 March (23 hours) and
    // 1 November (25 hours).
    let spans = [
        ("2026-03-06T00:00:00Z", "2026-03-10T00:00:00Z"),
        ("2026-10-30T00:00:00Z", "2026-11-03T00:00:00Z"),
    ];
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    for (from, to) in spans {
        let (from, to): (DateTime<Utc>, DateTime<Utc>) =
            (from.parse().unwrap(), to.parse().unwrap());
        let events = hourly_completions(from, to);
        store_and_roll_up(&env, &events, &from.to_rfc3339(), &to.to_rfc3339());
        // Expected: events counted by their local date, here.
        let mut want: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for e in &events {
            let day = want
                .entry(e.at.with_timezone(&tz).date_naive().to_string())
                .or_default();
            day.0 += 1;
            day.1 += i64::from(e.is_failure());
        }
        let common = [
            "--days",
            "4",
            "--until",
            &to.to_rfc3339(),
            "--tz",
            "America/New_York",
        ];
        let ran = env
            .genalytics()
            .args([
                "report",
                "trends",
                "--interval",
                "daily",
                "--format",
                "json",
            ])
            .args(common)
            .ok();
        let trends: Value = serde_json::from_str(&ran.stdout).unwrap();
        let got: BTreeMap<String, i64> = trends["data_points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let at = chrono::DateTime::parse_from_rfc3339(p["timestamp"].as_str().unwrap())
                    .unwrap()
                    .with_timezone(&tz);
                assert_eq!(
                    (at.hour(), at.minute()),
                    (0, 0),
                    "days start at local midnight"
                );
                (
                    at.date_naive().to_string(),
                    p["successful_generations"].as_i64().unwrap()
                        + p["failed_generations"].as_i64().unwrap(),
                )
            })
            .collect();
        let want_counts: BTreeMap<String, i64> =
            want.iter().map(|(d, (n, _))| (d.clone(), *n)).collect();
        assert_eq!(got, want_counts);
        let change = if chrono::Datelike::month(&from) == 3 {
            ("2026-03-08", 23)
        } else {
            ("2026-11-01", 25)
        };
        assert_eq!(got[change.0], change.1, "{got:?}");
        // Failures by local day, the same days.
        let ran = env
            .genalytics()
            .args(["report", "failures", "--format", "json"])
            .args(common)
            .ok();
        let failures: Value = serde_json::from_str(&ran.stdout).unwrap();
        let got: BTreeMap<String, (i64, i64)> = failures["failure_trends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["date"].as_str().unwrap().to_string(),
                    (
                        d["total_completions"].as_i64().unwrap(),
                        d["failures"].as_i64().unwrap(),
                    ),
                )
            })
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn compare_shows_the_previous_window_and_the_change() {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    let end = until();
    // The previous day had 48 completions, the last day 24.
    let mut events = hourly_completions(end - Duration::days(2), end - Duration::days(1));
    events.extend(hourly_completions(
        end - Duration::days(2),
        end - Duration::days(1),
    ));
    events.extend(hourly_completions(end - Duration::days(1), end));
    store_and_roll_up(&env, &events, "2026-11-17T00", "2026-11-20T00");
    let overview = report_json(&env, &["overview", "--days", "1", "--compare"]);
    let completed = |o: &Value| {
        o["successful_generations"].as_i64().unwrap() + o["failed_generations"].as_i64().unwrap()
    };
    let in_span = |from: DateTime<Utc>, to: DateTime<Utc>| {
        events.iter().filter(|e| e.at >= from && e.at < to).count() as i64
    };
    assert_eq!(completed(&overview), in_span(end - Duration::days(1), end));
    let previous = &overview["previous"];
    assert_eq!(
        completed(previous),
        in_span(end - Duration::days(2), end - Duration::days(1))
    );
    assert_eq!(completed(previous), 48);
    assert_eq!(previous["window_end"], overview["window_start"]);
    // The previous window is exactly what a separate run over it reports.
    let before = (end - Duration::days(1)).to_rfc3339();
    let ran = env
        .genalytics()
        .args([
            "report", "overview", "--days", "1", "--format", "json", "--until", &before,
        ])
        .ok();
    let separate: Value = serde_json::from_str(&ran.stdout).unwrap();
    let mut previous = previous.clone();
    let mut separate = separate;
    for o in [&mut previous, &mut separate] {
        o.as_object_mut().unwrap().remove("previous");
    }
    // How fresh the report is, said once, at its top.
    assert_eq!(separate["hours_from_raw_events"], 0);
    separate
        .as_object_mut()
        .unwrap()
        .remove("hours_from_raw_events");
    assert_eq!(previous, separate);
    let table = env
        .genalytics()
        .args([
            "report",
            "overview",
            "--days",
            "1",
            "--compare",
            "--until",
            UNTIL,
        ])
        .ok();
    let failed_line = table
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("failed"))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    // 8 failed now against 16 before: -50 %.
    let want_now = events
        .iter()
        .filter(|e| e.at >= end - Duration::days(1) && e.is_failure())
        .count();
    assert_eq!(want_now, 8);
    assert!(
        failed_line.contains(" 8 ") && failed_line.contains(" 16 "),
        "{failed_line}"
    );
    assert!(
        failed_line.trim_end().ends_with("-50.00 %"),
        "{failed_line}"
    );
}
