//! `genalytics report …`: every figure against expectations computed here,
//! in plain Rust, from the events the test wrote; JSON shapes, CSV, tables
//! and bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::Stdio;

use chrono::{DateTime, Duration, TimeZone, Timelike, Utc};
use serde_json::Value;

use crate::harness::events::{Written, percentile, traffic, write};
use crate::harness::{Ran, TestEnv};

const UNTIL: &str = "2026-11-20T00:00:00Z";

fn until() -> DateTime<Utc> {
    UNTIL.parse().unwrap()
}

/// Three days of traffic before UNTIL (every seventh hour empty), stored
/// and rolled up; returns everything written.
fn loaded() -> (TestEnv, Vec<Written>) {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    let start = until() - Duration::days(3);
    let mut events = Vec::new();
    for h in 0..72 {
        if h % 7 == 3 {
            continue;
        }
        events.extend(traffic(start + Duration::hours(h), 60, 1000 + h as u64));
    }
    store_and_roll_up(&env, &events, "2026-11-16T00", "2026-11-21T00");
    (env, events)
}

/// Writes the events to the stream, transfers them and rolls up the hours
/// `[from, to)`.
fn store_and_roll_up(env: &TestEnv, events: &[Written], from: &str, to: &str) {
    write(env, events);
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
    env.genalytics()
        .args(["aggregate", "-q", "--from", from, "--to", to])
        .ok();
}

fn in_window(events: &[Written], days: i64) -> Vec<Written> {
    let start = until() - Duration::days(days);
    events
        .iter()
        .filter(|e| e.at >= start && e.at < until())
        .cloned()
        .collect()
}

fn report_json(env: &TestEnv, args: &[&str]) -> Value {
    let ran = env
        .genalytics()
        .arg("report")
        .args(args.iter().copied())
        .args(["--until", UNTIL, "--format", "json"])
        .ok();
    serde_json::from_str(&ran.stdout).unwrap_or_else(|err| panic!("{err}: {}", ran.stdout))
}

fn success_durations(events: &[Written]) -> Vec<i64> {
    let mut durations: Vec<i64> = events
        .iter()
        .filter(|e| e.is_success())
        .filter_map(|e| e.duration_ms)
        .collect();
    durations.sort_unstable();
    durations
}

fn count(events: &[Written], f: impl Fn(&Written) -> bool) -> i64 {
    events.iter().filter(|e| f(e)).count() as i64
}

fn rate(part: i64, whole: i64) -> Value {
    if whole == 0 {
        Value::Null
    } else {
        serde_json::json!(((part as f64 * 100.0 / whole as f64) * 100.0).round() / 100.0)
    }
}

fn mean_ms(values: &[i64]) -> Value {
    if values.is_empty() {
        Value::Null
    } else {
        serde_json::json!((values.iter().sum::<i64>() as f64 / values.len() as f64).round() as i64)
    }
}

/// A histogram percentile: within 1 % (+1 ms) of the exact one.
#[track_caller]
fn assert_close(got: &Value, sorted: &[i64], q: f64, what: &str) {
    match percentile(sorted, q) {
        None => assert!(got.is_null(), "{what}: {got}"),
        Some(exact) => {
            let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
            assert!(
                (got - exact).abs() <= exact * 0.01 + 1.0,
                "{what}: {got} vs exact {exact}"
            );
        }
    }
}

fn users(events: &[Written]) -> i64 {
    events
        .iter()
        .filter_map(|e| e.user.as_ref())
        .collect::<BTreeSet<_>>()
        .len() as i64
}

fn images(events: &[Written]) -> i64 {
    events
        .iter()
        .filter(|e| e.is_success())
        .map(|e| e.batch_size.unwrap_or(1))
        .sum()
}

fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_minute(0)
        .unwrap()
        .with_second(0)
        .unwrap()
        .with_nanosecond(0)
        .unwrap()
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[test]
fn overview_and_trends_equal_what_the_events_say() {
    let (env, events) = loaded();
    let window = in_window(&events, 2);
    let overview = report_json(&env, &["overview", "--days", "2"]);
    let durations = success_durations(&window);
    let (ok, failed) = (
        count(&window, Written::is_success),
        count(&window, Written::is_failure),
    );
    let hours: BTreeSet<DateTime<Utc>> = window.iter().map(|e| hour_of(e.at)).collect();
    assert_eq!(overview["lookback_days"], 2);
    assert_eq!(time(&overview["window_start"]), until() - Duration::days(2));
    assert_eq!(time(&overview["window_end"]), until());
    assert_eq!(
        overview["total_requests"],
        count(&window, |e| e.kind == "request")
    );
    assert_eq!(overview["successful_generations"], ok);
    assert_eq!(overview["failed_generations"], failed);
    assert_eq!(
        overview["cancelled_generations"],
        count(&window, |e| e.kind == "cancellation")
    );
    assert_eq!(overview["success_rate_pct"], rate(ok, ok + failed));
    assert_eq!(overview["avg_duration_ms"], mean_ms(&durations));
    assert_close(&overview["p50_duration_ms"], &durations, 0.5, "p50");
    assert_close(&overview["p95_duration_ms"], &durations, 0.95, "p95");
    assert_close(&overview["p99_duration_ms"], &durations, 0.99, "p99");
    assert_eq!(overview["unique_users"], users(&window));
    assert_eq!(overview["total_images_generated"], images(&window));
    assert_eq!(overview["hours_with_data"], hours.len() as i64);
    assert_eq!(
        time(&overview["latest_data_timestamp"]),
        *hours.last().unwrap()
    );
    // Every hour was rolled up by genalytics: nothing is partial.
    assert_eq!(overview["percentiles_partial"], false);
    assert_eq!(overview["unique_users_lower_bound"], false);
    assert_eq!(overview["legacy_hours"], 0);
    let keys: Vec<&str> = overview
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "lookback_days",
            "window_start",
            "window_end",
            "total_requests",
            "successful_generations",
            "failed_generations",
            "cancelled_generations",
            "success_rate_pct",
            "avg_duration_ms",
            "p50_duration_ms",
            "p95_duration_ms",
            "p99_duration_ms",
            "unique_users",
            "total_images_generated",
            "hours_with_data",
            "latest_data_timestamp",
            "percentiles_partial",
            "unique_users_lower_bound",
            "legacy_hours"
        ]
    );

    // Hourly: one point per hour, empty hours zero-filled, exact percentiles.
    let trends = report_json(&env, &["trends", "--days", "2", "--interval", "hourly"]);
    assert_eq!(trends["interval"], "hourly");
    assert_eq!(trends["lookback_days"], 2);
    let points = trends["data_points"].as_array().unwrap();
    assert_eq!(points.len(), 48);
    for point in points {
        let at = time(&point["timestamp"]);
        let hour: Vec<Written> = window
            .iter()
            .filter(|e| hour_of(e.at) == at)
            .cloned()
            .collect();
        let durations = success_durations(&hour);
        assert_eq!(
            point["total_requests"],
            count(&hour, |e| e.kind == "request"),
            "{at}"
        );
        assert_eq!(
            point["successful_generations"],
            count(&hour, Written::is_success),
            "{at}"
        );
        assert_eq!(
            point["cancelled_generations"],
            count(&hour, |e| e.kind == "cancellation"),
            "{at}"
        );
        assert_eq!(point["avg_duration_ms"], mean_ms(&durations), "{at}");
        // An hour's own percentile is exact (±1 ms of float rounding).
        match percentile(&durations, 0.95) {
            Some(exact) => assert!(
                (point["p95_duration_ms"].as_f64().unwrap() - exact).abs() <= 1.0,
                "{at}"
            ),
            None => assert!(point["p95_duration_ms"].is_null(), "{at}"),
        }
        assert_eq!(point["unique_users"], users(&hour), "{at}");
        assert_eq!(point["total_images_generated"], images(&hour), "{at}");
        let queue: Vec<i64> = hour.iter().filter_map(|e| e.queue_length).collect();
        let mean_queue = (!queue.is_empty()).then(|| {
            ((queue.iter().sum::<i64>() as f64 / queue.len() as f64) * 100.0).round() / 100.0
        });
        assert_eq!(point["avg_queue_length"].as_f64(), mean_queue, "{at}");
        assert_eq!(
            point["max_queue_length"].as_i64(),
            queue.iter().max().copied(),
            "{at}"
        );
    }

    // Daily: one point per UTC day, distinct users per day (not a sum).
    let trends = report_json(&env, &["trends", "--days", "3", "--interval", "daily"]);
    let points = trends["data_points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    for point in points {
        let day = time(&point["timestamp"]);
        let events: Vec<Written> = events
            .iter()
            .filter(|e| e.at >= day && e.at < day + Duration::days(1))
            .cloned()
            .collect();
        let durations = success_durations(&events);
        assert_eq!(
            point["total_requests"],
            count(&events, |e| e.kind == "request"),
            "{day}"
        );
        assert_eq!(point["unique_users"], users(&events), "{day}");
        assert_eq!(point["avg_duration_ms"], mean_ms(&durations), "{day}");
        assert_close(&point["p99_duration_ms"], &durations, 0.99, "daily p99");
    }

    // CSV carries the same numbers under the JSON field names.
    let ran = report(&env, &["trends", "--days", "2", "--format", "csv"]);
    let mut reader = csv::Reader::from_reader(ran.stdout.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let json_points = report_json(&env, &["trends", "--days", "2"])["data_points"].clone();
    let first_keys: Vec<String> = json_points[0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(header, first_keys);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 48);
    for (row, point) in rows.iter().zip(json_points.as_array().unwrap()) {
        for (key, cell) in header.iter().zip(row.iter()) {
            let want = match &point[key] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(cell, want, "{key}");
        }
    }
}

fn report(env: &TestEnv, args: &[&str]) -> Ran {
    env.genalytics()
        .arg("report")
        .args(args.iter().copied())
        .args(["--until", UNTIL])
        .ok()
}

#[test]
fn user_models_failures_and_peak_hours_equal_what_the_events_say() {
    let (env, events) = loaded();

    // The user with the most events, over 30 days (all of them).
    let mut per_user: BTreeMap<&String, usize> = BTreeMap::new();
    for e in &events {
        if let Some(u) = &e.user {
            *per_user.entry(u).or_default() += 1;
        }
    }
    let user = (*per_user.iter().max_by_key(|(_, n)| **n).unwrap().0).clone();
    let mine: Vec<Written> = events
        .iter()
        .filter(|e| e.user.as_ref() == Some(&user))
        .cloned()
        .collect();
    let report = report_json(&env, &["user", &user]);
    let durations = success_durations(&mine);
    let exact = |got: &Value, q| {
        let want = percentile(&durations, q).unwrap();
        assert!(
            (got.as_f64().unwrap() - want).abs() <= 1.0,
            "user p{q}: {got} vs {want}"
        );
    };
    let (ok, failed) = (
        count(&mine, Written::is_success),
        count(&mine, Written::is_failure),
    );
    assert_eq!(report["user_id"], user.as_str());
    assert_eq!(report["lookback_days"], 30);
    assert_eq!(
        report["total_requests"],
        count(&mine, |e| e.kind == "request")
    );
    assert_eq!(report["successful_generations"], ok);
    assert_eq!(report["failed_generations"], failed);
    assert_eq!(report["success_rate_pct"], rate(ok, ok + failed));
    assert_eq!(report["avg_duration_ms"], mean_ms(&durations));
    exact(&report["p50_duration_ms"], 0.5);
    exact(&report["p95_duration_ms"], 0.95);
    assert_eq!(
        time(&report["first_generation_at"]),
        mine.first().unwrap().at
    );
    assert_eq!(time(&report["last_generation_at"]), mine.last().unwrap().at);
    let completions: Vec<&Written> = mine
        .iter()
        .rev()
        .filter(|e| e.kind == "completion")
        .take(20)
        .collect();
    let recent = report["recent_activity"].as_array().unwrap();
    assert_eq!(recent.len(), completions.len());
    for (row, e) in recent.iter().zip(&completions) {
        assert_eq!(time(&row["timestamp"]), e.at);
        assert_eq!(row["success"].as_bool(), e.success);
        assert_eq!(row["duration_ms"].as_i64(), e.duration_ms);
        assert_eq!(row["model_checkpoint"].as_str(), e.model.as_deref());
    }
    let mut breakdown: BTreeMap<Option<String>, i64> = BTreeMap::new();
    for e in mine.iter().filter(|e| e.is_failure()) {
        *breakdown.entry(e.error_type.clone()).or_default() += 1;
    }
    let got: BTreeMap<Option<String>, i64> = report["failure_breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["error_type"].as_str().map(String::from),
                r["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, breakdown);

    // Unknown user: zeros, not an error.
    let nobody = report_json(&env, &["user", "99999999-9999-4999-8999-999999999999"]);
    assert_eq!(nobody["total_requests"], 0);
    assert!(nobody["success_rate_pct"].is_null());
    assert_eq!(nobody["recent_activity"].as_array().unwrap().len(), 0);

    // Models, over the last 2 days: one row per model, none as its own group.
    let window = in_window(&events, 2);
    let models = report_json(&env, &["models", "--days", "2"]);
    let mut by_model: BTreeMap<Option<String>, Vec<Written>> = BTreeMap::new();
    for e in window.iter().filter(|e| e.kind == "completion") {
        by_model.entry(e.model.clone()).or_default().push(e.clone());
    }
    let rows = models["models"].as_array().unwrap();
    assert_eq!(rows.len(), by_model.len());
    for row in rows {
        let model = row["model_checkpoint"].as_str().map(String::from);
        let mine = &by_model[&model];
        let durations = success_durations(mine);
        let (ok, failed) = (
            count(mine, Written::is_success),
            count(mine, Written::is_failure),
        );
        assert_eq!(row["total_generations"], mine.len() as i64, "{model:?}");
        assert_eq!(row["successful_generations"], ok, "{model:?}");
        assert_eq!(row["failed_generations"], failed, "{model:?}");
        assert_eq!(row["success_rate_pct"], rate(ok, ok + failed), "{model:?}");
        assert_eq!(row["avg_duration_ms"], mean_ms(&durations), "{model:?}");
        assert_close(&row["p95_duration_ms"], &durations, 0.95, "model p95");
        assert_eq!(
            time(&row["last_used_at"]),
            mine.last().unwrap().at,
            "{model:?}"
        );
    }
    assert!(
        rows.iter()
            .any(|r| r["model_checkpoint"] == "model, \"quoted\"\nnewline ü"),
        "names come out intact"
    );

    // Failures, over the last 2 days.
    let failures = report_json(&env, &["failures", "--days", "2"]);
    let mut by_type: BTreeMap<Option<String>, Vec<Written>> = BTreeMap::new();
    for e in window.iter().filter(|e| e.is_failure()) {
        by_type
            .entry(e.error_type.clone())
            .or_default()
            .push(e.clone());
    }
    let rows = failures["error_types"].as_array().unwrap();
    assert_eq!(rows.len(), by_type.len());
    for row in rows {
        let error_type = row["error_type"].as_str().map(String::from);
        let mine = &by_type[&error_type];
        let all: Vec<i64> = mine.iter().filter_map(|e| e.duration_ms).collect();
        assert_eq!(row["count"], mine.len() as i64, "{error_type:?}");
        assert_eq!(row["affected_users"], users(mine), "{error_type:?}");
        assert_eq!(row["avg_duration_ms"], mean_ms(&all), "{error_type:?}");
        let messages: BTreeSet<&str> = mine
            .iter()
            .filter_map(|e| e.error_message.as_deref())
            .collect();
        let samples = row["sample_messages"].as_array().unwrap();
        assert_eq!(samples.len(), messages.len().min(3), "{error_type:?}");
        assert!(
            samples
                .iter()
                .all(|m| messages.contains(m.as_str().unwrap())),
            "{error_type:?}"
        );
    }
    let trends = failures["failure_trends"].as_array().unwrap();
    assert_eq!(trends.len(), 2);
    for day in trends {
        let date: chrono::NaiveDate = day["date"].as_str().unwrap().parse().unwrap();
        let events: Vec<&Written> = window
            .iter()
            .filter(|e| e.at.date_naive() == date)
            .collect();
        let completions = events
            .iter()
            .filter(|e| e.is_success() || e.is_failure())
            .count() as i64;
        let failed = events.iter().filter(|e| e.is_failure()).count() as i64;
        assert_eq!(day["total_completions"], completions);
        assert_eq!(day["failures"], failed);
        assert_eq!(day["failure_rate_pct"], rate(failed, completions));
    }

    // Peak hours over 2 days: each hour of day twice, empty hours count.
    for zone in ["UTC", "Asia/Kolkata"] {
        let peak = report_json(&env, &["peak-hours", "--days", "2", "--tz", zone]);
        assert_eq!(peak["tz"], zone);
        let tz: chrono_tz::Tz = zone.parse().unwrap();
        let rows = peak["peak_hours"].as_array().unwrap();
        assert_eq!(rows.len(), 24);
        let mut requests = [0_i64; 24];
        for e in window.iter().filter(|e| e.kind == "request") {
            requests[hour_of(e.at).with_timezone(&tz).hour() as usize] += 1;
        }
        for row in rows {
            let h = row["hour_of_day"].as_u64().unwrap() as usize;
            let want = ((requests[h] as f64 / 2.0) * 100.0).round() / 100.0;
            assert_eq!(row["avg_requests"].as_f64(), Some(want), "{zone} {h}");
        }
        let averages: Vec<f64> = rows
            .iter()
            .map(|r| r["avg_requests"].as_f64().unwrap())
            .collect();
        assert!(averages.windows(2).all(|w| w[0] >= w[1]), "busiest first");
    }
    let grid = report_json(&env, &["peak-hours", "--days", "2", "--by", "weekday"]);
    let rows = grid["peak_hours"].as_array().unwrap();
    assert_eq!(rows.len(), 48);
    assert!(rows.iter().all(|r| r["weekday"].is_string()));
}

#[test]
fn tables_for_people_and_csv_sections() {
    let (env, _) = loaded();
    for args in [
        &["overview"][..],
        &["trends", "--days", "1"],
        &["user", "00000000-0000-4000-8000-000000000003"],
        &["models"],
        &["failures"],
        &["peak-hours"],
    ] {
        let ran = report(&env, args);
        assert!(ran.stdout.lines().count() > 3, "{args:?}:\n{}", ran.stdout);
        assert!(
            ran.stdout.contains("2026-11-20 00:00"),
            "{args:?}: heading names the window"
        );
        assert!(
            !ran.stdout.contains('\u{1b}'),
            "{args:?}: no colour off a terminal"
        );
    }
    let overview = report(&env, &["overview", "--days", "2"]).stdout;
    assert!(
        overview.starts_with("Overview, last 2 days: 2026-11-18 00:00 → 2026-11-20 00:00 UTC\n"),
        "{overview}"
    );
    assert!(overview.contains(" %"), "{overview}");
    assert!(overview.contains(" s"), "{overview}");

    let failures = report(
        &env,
        &["failures", "--format", "csv", "--section", "failure_trends"],
    )
    .stdout;
    assert!(
        failures.starts_with("date,total_completions,failures,failure_rate_pct\n"),
        "{failures}"
    );
    let models = report(&env, &["models", "--format", "csv"]).stdout;
    let mut reader = csv::Reader::from_reader(models.as_bytes());
    let names: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[0].to_string())
        .collect();
    assert!(
        names.contains(&"model, \"quoted\"\nnewline ü".to_string()),
        "{names:?}"
    );
    let ran = env
        .genalytics()
        .args(["report", "failures", "--format", "csv", "--section", "nope"])
        .code(2);
    assert!(
        ran.stderr.contains("error_types, failure_trends"),
        "{}",
        ran.stderr
    );
}

#[test]
fn an_empty_database_gives_zeros_and_bad_input_exits_2() {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    let overview = report_json(&env, &["overview"]);
    assert_eq!(overview["total_requests"], 0);
    assert_eq!(overview["hours_with_data"], 0);
    assert!(overview["avg_duration_ms"].is_null() && overview["latest_data_timestamp"].is_null());
    assert_eq!(
        report_json(&env, &["models"])["models"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        report_json(&env, &["failures"])["failure_trends"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(
        report_json(&env, &["trends"])["data_points"]
            .as_array()
            .unwrap()
            .len(),
        168
    );

    for (args, says) in [
        (&["overview", "--days", "0"][..], "--days"),
        (&["overview", "--days", "-3"], "-3"),
        (&["overview", "--days", "1.5"], "1.5"),
        (&["trends", "--interval", "weekly"], "weekly"),
        (&["user", "not-a-uuid"], "not a UUID"),
        (&["peak-hours", "--tz", "Mars/Olympus"], "IANA"),
        (&["overview", "--until", "soon"], "RFC 3339"),
    ] {
        let ran = env
            .genalytics()
            .arg("report")
            .args(args.iter().copied())
            .code(2);
        assert!(ran.stderr.contains(says), "{args:?}: {}", ran.stderr);
    }
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let (env, _) = loaded();
    for format in ["table", "json", "csv"] {
        let mut child = env
            .genalytics()
            .args([
                "report", "trends", "--days", "60", "--until", UNTIL, "--format", format,
            ])
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0_u8; 64];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        drop(child.stdout.take());
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "{format}: {status}: {stderr}");
        assert!(stderr.is_empty(), "{format}: {stderr}");
    }
}

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

#[test]
fn a_small_models_table_reads_as_expected() {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    let at = |minute: i64| until() - Duration::hours(2) + Duration::minutes(minute);
    let completion = |minute: i64, model: &str, ms: i64, ok: bool| Written {
        model: Some(model.to_string()),
        duration_ms: Some(ms),
        success: Some(ok),
        error_type: (!ok).then(|| "TimeoutError".to_string()),
        ..Written::new(at(minute), "completion")
    };
    write(
        &env,
        &[
            completion(1, "sd_xl_base_1.0", 41_200, true),
            completion(2, "sd_xl_base_1.0", 0, false),
            completion(3, "illustriousXL_v01", 850, true),
        ],
    );
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
    env.genalytics()
        .args(["aggregate", "-q", "--hour", "2026-11-19T22"])
        .ok();
    let table = report(&env, &["models", "--days", "1"]).stdout;
    let want = "\
Models, last 1 day: 2026-11-19 00:00 → 2026-11-20 00:00 UTC
 model               completions   ok   failed   success    avg      p50      p95      last used            
────────────────────────────────────────────────────────────────────────────────────────────────────────────
 sd_xl_base_1.0                2    1        1    50.00 %   41.2 s   41.4 s   41.4 s   2026-11-19 22:02 UTC 
 illustriousXL_v01             1    1        0   100.00 %   850 ms   854 ms   854 ms   2026-11-19 22:03 UTC 
";
    // (p50/p95 come from the 1 %-accurate histogram: 41.4 s for 41.2 s.)
    assert_eq!(table, want);
}

#[test]
fn a_user_above_the_exactness_threshold_gets_histogram_percentiles_and_says_so() {
    let (env, events) = loaded();
    let mut per_user: BTreeMap<&String, usize> = BTreeMap::new();
    for e in &events {
        if let Some(u) = &e.user {
            *per_user.entry(u).or_default() += 1;
        }
    }
    let user = (*per_user.iter().max_by_key(|(_, n)| **n).unwrap().0).clone();
    // A window off the hour: its edges come from raw events, the whole
    // hours between from the per-user rollups; one hour still queued.
    let end = until() - Duration::minutes(30);
    let start = end - Duration::days(2);
    let mine: Vec<Written> = events
        .iter()
        .filter(|e| e.user.as_ref() == Some(&user) && e.at >= start && e.at < end)
        .cloned()
        .collect();
    let mut db = env.db();
    db.execute(
        "INSERT INTO generation_rollup_queue (hour) VALUES ($1)",
        &[&(until() - Duration::hours(20))],
    )
    .unwrap();
    let durations = success_durations(&mine);
    assert!(durations.len() > 10, "the busiest user has durations");
    let run = |exact_max: Option<&str>| -> Value {
        let mut cmd = env
            .genalytics()
            .args(["report", "user", &user, "--days", "2"]);
        cmd = cmd.args(["--until", &end.to_rfc3339(), "--format", "json"]);
        if let Some(n) = exact_max {
            cmd = cmd.env("GENALYTICS_USER_EXACT_MAX", n);
        }
        serde_json::from_str(&cmd.ok().stdout).unwrap()
    };
    let (ok, failed) = (
        count(&mine, Written::is_success),
        count(&mine, Written::is_failure),
    );
    for (exact_max, exact) in [(None, true), (Some("10"), false)] {
        let report = run(exact_max);
        let what = format!("with GENALYTICS_USER_EXACT_MAX={exact_max:?}");
        assert_eq!(
            report["total_requests"],
            count(&mine, |e| e.kind == "request"),
            "{what}"
        );
        assert_eq!(report["successful_generations"], ok, "{what}");
        assert_eq!(report["failed_generations"], failed, "{what}");
        assert_eq!(
            report["cancelled_generations"],
            count(&mine, |e| e.kind == "cancellation"),
            "{what}"
        );
        assert_eq!(report["avg_duration_ms"], mean_ms(&durations), "{what}");
        assert_eq!(
            time(&report["first_generation_at"]),
            mine.first().unwrap().at
        );
        assert_eq!(time(&report["last_generation_at"]), mine.last().unwrap().at);
        assert_eq!(report["percentiles_exact"], exact, "{what}");
        for (field, q) in [("p50_duration_ms", 0.5), ("p95_duration_ms", 0.95)] {
            if exact {
                let want = percentile(&durations, q).unwrap();
                let got = report[field].as_f64().unwrap();
                assert!((got - want).abs() <= 1.0, "{what} {field}: {got} vs {want}");
            } else {
                assert_close(&report[field], &durations, q, field);
            }
        }
        let table = env
            .genalytics()
            .args([
                "report",
                "user",
                &user,
                "--days",
                "2",
                "--until",
                &end.to_rfc3339(),
            ])
            .env("GENALYTICS_USER_EXACT_MAX", exact_max.unwrap_or("100000"))
            .ok();
        assert_eq!(
            table.stdout.contains("merged hourly histograms"),
            !exact,
            "{}",
            table.stdout
        );
    }
    let ran = env
        .genalytics()
        .args(["report", "user", &user])
        .env("GENALYTICS_USER_EXACT_MAX", "many")
        .code(2);
    assert!(
        ran.stderr.contains("GENALYTICS_USER_EXACT_MAX"),
        "{}",
        ran.stderr
    );
}

/// Points of the lines drawn in a chart's SVG: every polyline that is not
/// an axis or a tick (those are black).
fn drawn_points(figure: scraper::ElementRef<'_>) -> usize {
    let polylines = scraper::Selector::parse("polyline").unwrap();
    figure
        .select(&polylines)
        .filter(|line| line.value().attr("stroke") != Some("#000000"))
        .map(|line| {
            line.value()
                .attr("points")
                .unwrap()
                .split_whitespace()
                .count()
        })
        .sum()
}

/// A JSON value and a cell's `data-value` say the same.
#[track_caller]
fn same_value(json: &Value, shown: &str, what: &str) {
    match json {
        Value::Null => assert_eq!(shown, "", "{what}"),
        Value::Number(n) => {
            let shown: f64 = shown.parse().unwrap_or_else(|_| panic!("{what}: {shown}"));
            assert!(
                (n.as_f64().unwrap() - shown).abs() < 1e-9,
                "{what}: {n} vs {shown}"
            );
        }
        Value::Bool(b) => assert_eq!(shown, b.to_string(), "{what}"),
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(at) => assert_eq!(
                chrono::DateTime::parse_from_rfc3339(shown).unwrap(),
                at,
                "{what}"
            ),
            Err(_) => assert_eq!(shown, s, "{what}"),
        },
        Value::Array(items) => {
            let items: Vec<&str> = items.iter().map(|i| i.as_str().unwrap()).collect();
            assert_eq!(shown, items.join("\n"), "{what}");
        }
        Value::Object(_) => panic!("{what}: an object in a cell"),
    }
}

#[test]
fn the_html_report_is_self_contained_and_shows_the_json_reports_figures() {
    let (env, _) = loaded();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.html");
    let common = ["--days", "3", "--until", UNTIL, "--tz", "America/New_York"];
    env.genalytics()
        .args(["report", "html", "--failure-limit", "5", "-o"])
        .arg(&file)
        .args(common)
        .ok();
    let html = std::fs::read_to_string(&file).unwrap();
    let json = |args: &[&str]| -> Value {
        let ran = env
            .genalytics()
            .arg("report")
            .args(args.iter().copied())
            .args(common)
            .args(["--format", "json"])
            .ok();
        serde_json::from_str(&ran.stdout).unwrap()
    };
    let overview = json(&["overview"]);
    let trends = json(&["trends"]);
    let failures = json(&["failures"]);
    let models = json(&["models"]);
    let peak = json(&["peak-hours", "--by", "weekday"]);

    let page = scraper::Html::parse_document(&html);
    assert!(page.errors.is_empty(), "{:?}", page.errors);
    let select = |css: &str| scraper::Selector::parse(css).unwrap();
    // Nothing is fetched: no scripts, no links, no sources, no imports.
    for css in [
        "script", "link", "img", "iframe", "object", "[src]", "[href]",
    ] {
        assert_eq!(page.select(&select(css)).count(), 0, "{css}");
    }
    let style: String = page
        .select(&select("style"))
        .flat_map(|s| s.text())
        .collect();
    assert!(
        !style.contains("@import") && !style.contains("url("),
        "{style}"
    );
    assert!(!html.contains("https://"));
    assert_eq!(
        html.matches("http://").count(),
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "only SVG namespaces mention http"
    );

    // The overview's figures, value for value.
    let summary = select("#section-summary td[data-field]");
    let mut shown = 0;
    for cell in page.select(&summary) {
        let field = cell.value().attr("data-field").unwrap();
        same_value(
            &overview[field],
            cell.value().attr("data-value").unwrap(),
            field,
        );
        shown += 1;
    }
    assert!(shown >= 15, "{shown} figures");
    // Models and error types, row for row.
    for (section, rows) in [
        ("#section-models", &models["models"]),
        ("#section-error_types", &failures["error_types"]),
    ] {
        let rows = rows.as_array().unwrap();
        let table_rows: Vec<_> = page
            .select(&select(&format!("{section} tbody tr")))
            .collect();
        assert_eq!(table_rows.len(), rows.len(), "{section}");
        assert!(!rows.is_empty(), "{section}");
        for (tr, row) in table_rows.iter().zip(rows) {
            for cell in tr.select(&select("td")) {
                let field = cell.value().attr("data-field").unwrap();
                assert!(
                    row.get(field).is_some(),
                    "{field} is not in the JSON report"
                );
                same_value(&row[field], cell.value().attr("data-value").unwrap(), field);
            }
        }
    }

    // One SVG per line chart, with as many points as its series have.
    let figure = |id: &str| {
        page.select(&select(&format!("figure#chart-{id}")))
            .next()
            .unwrap_or_else(|| panic!("no chart {id}"))
    };
    let points = trends["data_points"].as_array().unwrap();
    assert_eq!(points.len(), 72);
    let present = |field: &str| points.iter().filter(|p| !p[field].is_null()).count();
    for id in ["requests", "durations", "failure_rate"] {
        assert_eq!(figure(id).select(&select("svg")).count(), 1, "{id}");
    }
    assert_eq!(drawn_points(figure("requests")), points.len());
    assert!(
        present("p95_duration_ms") < points.len(),
        "gaps in the durations"
    );
    assert_eq!(
        drawn_points(figure("durations")),
        present("p50_duration_ms") + present("p95_duration_ms")
    );
    let days = failures["failure_trends"].as_array().unwrap();
    let rated = days
        .iter()
        .filter(|d| !d["failure_rate_pct"].is_null())
        .count();
    assert_eq!(
        drawn_points(figure("failure_rate")),
        rated + 2,
        "the days and the limit"
    );
    assert!(
        figure("failure_rate")
            .text()
            .any(|t| t.contains("limit 5.0 %"))
    );
    // The heatmap: 7 local weekdays × 24 hours, as the JSON report has them.
    let cells: Vec<f64> = figure("peak_hours")
        .select(&select("td"))
        .map(|td| td.value().attr("data-value").unwrap().parse().unwrap())
        .collect();
    assert_eq!(cells.len(), 7 * 24);
    let weekdays = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let mut want = vec![0.0; 7 * 24];
    for row in peak["peak_hours"].as_array().unwrap() {
        let day = weekdays.iter().position(|d| row["weekday"] == *d).unwrap();
        let hour = row["hour_of_day"].as_u64().unwrap() as usize;
        want[day * 24 + hour] = row["avg_requests"].as_f64().unwrap();
    }
    assert_eq!(cells, want);

    // A model name from the data is text, never markup.
    let mut db = env.db();
    db.execute(
        "UPDATE generation_metrics_hourly_models SET model_checkpoint = '<script>alert(1)</script>'
         WHERE model_checkpoint = (SELECT min(model_checkpoint) FROM generation_metrics_hourly_models)",
        &[],
    )
    .unwrap();
    let ran = env.genalytics().args(["report", "html"]).args(common).ok();
    assert!(!ran.stdout.contains("<script>"), "markup from the data");
    assert!(ran.stdout.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    // Headless Chromium (Debian's chromium, installed by .ci/run) renders
    // the page, and the screenshot is not blank.
    let shot = dir.path().join("shot.png");
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("chromium is installed (.ci/run installs Debian's chromium)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    let pixels = &pixels[..info.buffer_size()];
    let colours: BTreeSet<&[u8]> = pixels.chunks(channels).collect();
    let light = pixels
        .chunks(channels)
        .filter(|p| p.iter().take(3).all(|&c| c > 240))
        .count();
    let total = pixels.len() / channels;
    assert!(colours.len() > 50, "{} colours", colours.len());
    assert!(
        light < total * 97 / 100,
        "{light} of {total} pixels are near white"
    );
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
