//! `genalytics status` and `genalytics check` on crafted pipelines.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::Value;

use crate::harness::events::{Written, percentile, write};
use crate::harness::{TestEnv, xadd};

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

fn status(env: &TestEnv) -> Value {
    let ran = env.genalytics().args(["status", "--format", "json"]).ok();
    serde_json::from_str(&ran.stdout).unwrap()
}

fn warned(status: &Value, text: &str) -> bool {
    status["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains(text))
}

#[test]
fn status_of_an_empty_pipeline() {
    let env = migrated();
    let status = status(&env);
    assert_eq!(status["stream"], env.stream_key());
    assert_eq!(status["stream_length"], 0);
    assert_eq!(status["behind"], 0);
    assert_eq!(status["events_transferred"], 0);
    assert_eq!(status["rejected_entries"], 0);
    assert_eq!(status["hours_awaiting_rollup"], 0);
    assert!(status["newest_event_at"].is_null());
    assert!(warned(&status, "nothing has been transferred"));
    let table = env.genalytics().arg("status").ok();
    assert!(
        table.stdout.contains("generation_events"),
        "{}",
        table.stdout
    );
}

#[test]
fn status_of_a_busy_pipeline() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    xadd(&mut con, &key, "1-0", &[("event_type", "bogus")]);
    let end = (Utc::now() - Duration::hours(2)).to_rfc3339();
    env.genalytics()
        .args([
            "simulate", "-q", "--events", "60000", "--hours", "1", "--maxlen", "0", "--seed", "2",
            "--end", &end,
        ])
        .ok();
    env.genalytics()
        .args([
            "transfer",
            "-q",
            "--max-events",
            "10000",
            "--keep",
            "36500d",
        ])
        .ok();

    // What the test set up, read straight from the stream.
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    assert_eq!(entries.len(), 60_001);
    let stored_hours: BTreeSet<DateTime<Utc>> = entries[1..10_000]
        .iter()
        .map(|(_, fields)| {
            let at = fields.iter().position(|f| f == "timestamp").unwrap() + 1;
            let at = chrono::NaiveDateTime::parse_from_str(&fields[at], "%Y-%m-%dT%H:%M:%S%.f")
                .unwrap()
                .and_utc();
            at.duration_trunc(Duration::hours(1)).unwrap()
        })
        .collect();
    let first_behind_ms: i64 = entries[10_000]
        .0
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let status = status(&env);
    assert_eq!(status["stream_length"], 60_001);
    assert_eq!(status["cap_used_pct"], 60.0);
    assert!(
        warned(&status, "more than half the producer's"),
        "{status:#}"
    );
    // Exact: only 10,000 entries precede the position.
    assert_eq!(status["behind"], 50_001);
    assert_eq!(status["behind_exact"], true);
    assert_eq!(
        status["oldest_untransferred_at"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        DateTime::from_timestamp_millis(first_behind_ms).unwrap()
    );
    assert_eq!(status["position"], entries[9_999].0.as_str());
    assert_eq!(status["events_transferred"], 9_999);
    assert_eq!(status["rejected_entries"], 1);
    assert!(warned(&status, "dead-letter"));
    assert_eq!(status["hours_awaiting_rollup"], stored_hours.len());
    assert_eq!(status["stale_hours"], stored_hours.len());
    assert!(warned(&status, "not yet rolled up"));
    let events = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "generation_events")
        .unwrap()
        .clone();
    assert_eq!(
        (events["rows"].as_i64(), events["rows_exact"].as_bool()),
        (Some(9_999), Some(true))
    );
    assert!(events["bytes"].as_i64().unwrap() > 0);

    // Redis unreachable: still an answer, with a warning.
    let ran = env
        .genalytics()
        .args([
            "status",
            "--format",
            "json",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .ok();
    let status: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(status["stream_length"].is_null());
    assert!(warned(&status, "cannot connect to Redis"));
}

#[test]
fn check_turns_thresholds_into_exit_codes() {
    let env = migrated();
    let now = Utc::now();
    // Ten completions in the last hour, three failed.
    let durations = [1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 70_000];
    let mut events: Vec<Written> = durations
        .iter()
        .enumerate()
        .map(|(i, &ms)| Written {
            success: Some(true),
            duration_ms: Some(ms),
            ..Written::new(now - Duration::minutes(50 - i as i64), "completion")
        })
        .collect();
    for i in 0..3 {
        events.push(Written {
            success: Some(false),
            duration_ms: Some(0),
            ..Written::new(now - Duration::minutes(30 - i), "completion")
        });
    }
    events.sort_by_key(|e| e.at);
    write(&env, &events);
    env.genalytics().args(["transfer", "-q"]).ok();
    let mut sorted: Vec<i64> = durations.to_vec();
    sorted.sort_unstable();
    let p95 = percentile(&sorted, 0.95).unwrap();
    assert!(p95 > 30_000.0 && p95 < 60_000.0, "{p95}");

    let ran = env
        .genalytics()
        .args(["check", "--max-failure-rate", "50", "--max-p95", "60s"])
        .ok();
    assert!(
        ran.stdout
            .starts_with("ok: failure rate 30.00 % (3 of 10 completions)"),
        "{}",
        ran.stdout
    );
    let ran = env
        .genalytics()
        .args(["check", "--max-failure-rate", "10", "--max-p95", "30s"])
        .code(3);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", ran.stdout);
    assert!(
        lines[0].contains("failure rate 30.00 %") && lines[0].contains(": exceeds 10 %"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("p95 duration") && lines[1].contains(": exceeds 30s"),
        "{}",
        lines[1]
    );

    // A window with no completions breaches no rate or duration threshold.
    let empty = migrated();
    let ran = empty
        .genalytics()
        .args(["check", "--max-failure-rate", "1"])
        .ok();
    assert!(ran.stdout.contains("no completions"), "{}", ran.stdout);

    // Lag: in a stream of its own, an entry added ten minutes ago and not
    // transferred.
    let ten_minutes_ago = (Utc::now() - Duration::minutes(10)).timestamp_millis();
    xadd(
        &mut env.redis(),
        "lagging",
        &format!("{ten_minutes_ago}-0"),
        &[("event_type", "request")],
    );
    env.genalytics()
        .args(["check", "--max-lag", "1h", "--stream", "lagging"])
        .ok();
    let ran = env
        .genalytics()
        .args(["check", "--max-lag", "5m", "--stream", "lagging"])
        .code(3);
    assert!(
        ran.stdout.contains("oldest untransferred entry is 10m old"),
        "{}",
        ran.stdout
    );

    // Stale rollups: the completed hours above wait for aggregate.
    let ran = env
        .genalytics()
        .args(["check", "--max-stale-hours", "5"])
        .ok();
    assert!(ran.stdout.starts_with("ok"), "{}", ran.stdout);
    let hour_start = now.duration_trunc(Duration::hours(1)).unwrap();
    let stale_expected = events.iter().filter(|e| e.at < hour_start).count() > 0;
    let ran = env
        .genalytics()
        .args(["check", "--max-stale-hours", "0"])
        .run();
    assert_eq!(
        ran.code,
        Some(if stale_expected { 3 } else { 0 }),
        "{}",
        ran.stdout
    );

    // Nothing to check is a usage error; no database is a failure to check.
    env.genalytics().arg("check").code(2);
    env.genalytics()
        .args(["check", "--max-failure-rate", "5"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
        .code(1);
}
