//! `genalytics report …` in JSON (and its CSV twin): every figure of the
//! overview, trends, user, models, failures and peak-hours reports against
//! expectations computed here, in plain Rust, from the events the test
//! wrote; a busy user's percentiles exact or from histograms, and said so.
//! The fixtures the other `report_*` files share live here.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Timelike, Utc};
use serde_json::Value;

use crate::harness::events::{Written, percentile, success_durations, traffic, write};
use crate::harness::{Ran, TestEnv};

pub(crate) const UNTIL: &str = "2026-11-20T00:00:00Z";

pub(crate) fn until() -> DateTime<Utc> {
    UNTIL.parse().unwrap()
}

/// Three days of traffic before UNTIL (every seventh hour empty), stored
/// and rolled up; returns everything written.
pub(crate) fn loaded() -> (TestEnv, Vec<Written>) {
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
pub(crate) fn store_and_roll_up(env: &TestEnv, events: &[Written], from: &str, to: &str) {
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

pub(crate) fn report_json(env: &TestEnv, args: &[&str]) -> Value {
    let ran = env
        .genalytics()
        .arg("report")
        .args(args.iter().copied())
        .args(["--until", UNTIL, "--format", "json"])
        .ok();
    serde_json::from_str(&ran.stdout).unwrap_or_else(|err| panic!("{err}: {}", ran.stdout))
}

pub(crate) fn count(events: &[Written], f: impl Fn(&Written) -> bool) -> i64 {
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
            "legacy_hours",
            "hours_from_raw_events"
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

pub(crate) fn report(env: &TestEnv, args: &[&str]) -> Ran {
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
