//! Reports as the fresh-report tests read them: JSON over a window, and
//! the figures that rolling hours up must not change.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::TestEnv;

/// Every report a window's hours feed, as arguments.
pub const REPORTS: [&[&str]; 6] = [
    &["overview"],
    &["trends"],
    &["trends", "--interval", "daily"],
    &["models"],
    &["failures"],
    &["peak-hours"],
];

/// A report as JSON over the window ending `until`.
pub fn report_at(env: &TestEnv, until: DateTime<Utc>, args: &[&str]) -> Value {
    let ran = env
        .genalytics()
        .arg("report")
        .args(args.iter().copied())
        .args(["--format", "json", "--until", &until.to_rfc3339()])
        .ok();
    serde_json::from_str(&ran.stdout).unwrap_or_else(|err| panic!("{err}: {}", ran.stdout))
}

/// The report without its count of hours read beside their rollups: what
/// must not change when those hours are rolled up.
pub fn figures(mut report: Value) -> Value {
    report
        .as_object_mut()
        .unwrap()
        .remove("hours_from_raw_events");
    report
}

/// Every report of [`REPORTS`] over the `days` ending `until`, and how
/// many hours each read beside their rollups.
pub fn every_report_counted(env: &TestEnv, until: DateTime<Utc>, days: u32) -> Vec<(Value, i64)> {
    let days = days.to_string();
    REPORTS
        .iter()
        .map(|args| {
            let mut args = args.to_vec();
            args.extend(["--days", &days]);
            let report = report_at(env, until, &args);
            let counted = report["hours_from_raw_events"].as_i64().unwrap();
            (figures(report), counted)
        })
        .collect()
}

/// Every report of [`REPORTS`] over the day ending `until`, as
/// [`figures`].
pub fn every_report(env: &TestEnv, until: DateTime<Utc>) -> Vec<Value> {
    every_report_counted(env, until, 1)
        .into_iter()
        .map(|(report, _)| report)
        .collect()
}

/// The trend point of `hour`.
pub fn point(trends: &Value, hour: DateTime<Utc>) -> Value {
    trends["data_points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["timestamp"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap()
                == hour
        })
        .unwrap_or_else(|| panic!("no point at {hour}: {trends}"))
        .clone()
}

/// The late-listed flag of `hour`'s queue row (none off the queue) and
/// how many late events are listed for it.
pub fn late_list(db: &mut postgres::Client, hour: DateTime<Utc>) -> (Option<bool>, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT late_listed FROM generation_rollup_queue WHERE hour = $1),
                    (SELECT count(*) FROM generation_rollup_late WHERE hour = $1)",
            &[&hour],
        )
        .unwrap();
    (row.get(0), row.get(1))
}
