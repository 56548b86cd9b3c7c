//! `genalytics aggregate`: every hourly figure against expectations
//! computed here, in plain Rust, from the events the test wrote.

use std::collections::BTreeSet;

use crate::harness::TestEnv;
use crate::harness::events::{Written, percentile, traffic, write};
use chrono::{DateTime, Duration, TimeZone, Utc};

/// An hourly row, or what the test expects it to be.
#[derive(Debug, PartialEq)]
struct Hourly {
    requests: i32,
    successful: i32,
    failed: i32,
    cancelled: i32,
    avg: Option<i32>,
    p50: Option<i32>,
    p95: Option<i32>,
    p99: Option<i32>,
    unique_users: Option<i32>,
    avg_queue: Option<f64>,
    max_queue: Option<i32>,
    images: Option<i64>,
    duration_sum: Option<i64>,
    duration_count: Option<i32>,
    queue_sum: Option<i64>,
    queue_samples: Option<i32>,
}

fn expected(events: &[Written]) -> Hourly {
    let count = |f: &dyn Fn(&Written) -> bool| events.iter().filter(|e| f(e)).count() as i32;
    let mut durations: Vec<i64> = events
        .iter()
        .filter(|e| e.kind == "completion" && e.success == Some(true))
        .filter_map(|e| e.duration_ms)
        .collect();
    durations.sort_unstable();
    let sum: i64 = durations.iter().sum();
    let round = |v: f64| v.round() as i32; // half away from zero
    let users: BTreeSet<&String> = events.iter().filter_map(|e| e.user.as_ref()).collect();
    let queue: Vec<i64> = events.iter().filter_map(|e| e.queue_length).collect();
    Hourly {
        requests: count(&|e| e.kind == "request"),
        successful: count(&|e| e.kind == "completion" && e.success == Some(true)),
        failed: count(&|e| e.kind == "completion" && e.success == Some(false)),
        cancelled: count(&|e| e.kind == "cancellation"),
        avg: (!durations.is_empty()).then(|| round(sum as f64 / durations.len() as f64)),
        p50: percentile(&durations, 0.5).map(round),
        p95: percentile(&durations, 0.95).map(round),
        p99: percentile(&durations, 0.99).map(round),
        unique_users: Some(users.len() as i32),
        avg_queue: (!queue.is_empty())
            .then(|| queue.iter().sum::<i64>() as f64 / queue.len() as f64),
        max_queue: queue.iter().max().map(|&m| m as i32),
        images: Some(
            events
                .iter()
                .filter(|e| e.kind == "completion" && e.success == Some(true))
                .map(|e| e.batch_size.unwrap_or(1))
                .sum(),
        ),
        duration_sum: Some(sum),
        duration_count: Some(durations.len() as i32),
        queue_sum: Some(queue.iter().sum()),
        queue_samples: Some(queue.len() as i32),
    }
}

fn stored(db: &mut postgres::Client, hour: DateTime<Utc>) -> Option<Hourly> {
    db.query_opt(
        "SELECT total_requests, successful_generations, failed_generations, cancelled_generations,
                avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms, unique_users,
                avg_queue_length, max_queue_length, total_images_generated, duration_sum_ms, duration_count,
                queue_length_sum, queue_length_samples
         FROM generation_metrics_hourly WHERE timestamp = $1",
        &[&hour],
    )
    .unwrap()
    .map(|row| Hourly {
        requests: row.get(0),
        successful: row.get(1),
        failed: row.get(2),
        cancelled: row.get(3),
        avg: row.get(4),
        p50: row.get(5),
        p95: row.get(6),
        p99: row.get(7),
        unique_users: row.get(8),
        avg_queue: row.get(9),
        max_queue: row.get(10),
        images: row.get(11),
        duration_sum: row.get(12),
        duration_count: row.get(13),
        queue_sum: row.get(14),
        queue_samples: row.get(15),
    })
}

#[track_caller]
fn assert_hour(db: &mut postgres::Client, hour: DateTime<Utc>, events: &[Written]) {
    let mut got = stored(db, hour).unwrap_or_else(|| panic!("no row for {hour}"));
    let mut want = expected(events);
    // Means of queue samples: equal up to float rounding.
    match (got.avg_queue, want.avg_queue) {
        (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "avg_queue {a} vs {b}"),
        (a, b) => assert_eq!(a, b, "avg_queue"),
    }
    got.avg_queue = None;
    want.avg_queue = None;
    // Percentiles are exact to ±1 ms (float rounding at .5).
    for (got, want, name) in [
        (&mut got.p50, &mut want.p50, "p50"),
        (&mut got.p95, &mut want.p95, "p95"),
        (&mut got.p99, &mut want.p99, "p99"),
    ] {
        match (*got, *want) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= 1, "{name} {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{name}"),
        }
        *got = None;
        *want = None;
    }
    assert_eq!(got, want, "hour {hour}");
}

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

fn hour(d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
}

#[test]
fn an_hours_figures_equal_what_the_events_say() {
    let env = migrated();
    let h = hour(20, 10);
    let events = traffic(h, 1500, 1);
    write(&env, &events);
    env.genalytics().arg("transfer").ok();
    let ran = env
        .genalytics()
        .args(["aggregate", "--hour", "2026-11-20T10"])
        .ok();
    assert!(
        ran.stdout.starts_with("rolled up 1 hour "),
        "{}",
        ran.stdout
    );
    let mut db = env.db();
    assert_hour(&mut db, h, &events);

    // Idempotent: again, one row, same figures.
    env.genalytics()
        .args(["aggregate", "--hour", "2026-11-20T10:41:00Z"])
        .ok();
    assert_hour(&mut db, h, &events);
    let rows: i64 = db
        .query_one("SELECT count(*) FROM generation_metrics_hourly", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);

    // An hour without events gets no row.
    let ran = env
        .genalytics()
        .args(["aggregate", "--hour", "2026-11-20T12", "--format", "json"])
        .ok();
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        (summary["hours"].as_u64(), summary["rolled_up"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(stored(&mut db, hour(20, 12)).is_none());
}

#[test]
fn hour_edges_are_utc_whatever_the_session_time_zone() {
    for zone in ["UTC", "America/Los_Angeles", "Asia/Kolkata"] {
        let env = migrated();
        let mut db = env.db();
        db.batch_execute(&format!(
            "ALTER DATABASE {} SET timezone = '{zone}'",
            env.database
        ))
        .unwrap();
        let edge = |h: u32, m: u32, s: u32, us: u32| {
            Written::new(
                hour(21, h)
                    + Duration::minutes(m.into())
                    + Duration::seconds(s.into())
                    + Duration::microseconds(us.into()),
                "request",
            )
        };
        let events = vec![
            edge(9, 59, 59, 999_999),
            edge(10, 0, 0, 0),
            edge(10, 29, 59, 0),
            edge(10, 30, 0, 0),
            edge(10, 59, 59, 999_999),
            edge(11, 0, 0, 0),
        ];
        write(&env, &events);
        env.genalytics().arg("transfer").ok();
        env.genalytics()
            .args([
                "aggregate",
                "--from",
                "2026-11-21T08",
                "--to",
                "2026-11-21T13",
            ])
            .ok();
        let mut db = env.db();
        let counts: Vec<(DateTime<Utc>, i32)> = db
            .query(
                "SELECT timestamp, total_requests FROM generation_metrics_hourly ORDER BY 1",
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        assert_eq!(
            counts,
            vec![(hour(21, 9), 1), (hour(21, 10), 4), (hour(21, 11), 1)],
            "session zone {zone}"
        );
    }
}

#[test]
fn plain_aggregate_rolls_up_new_and_late_events_and_only_complete_hours() {
    let env = migrated();
    crate::harness::clear_of_hour_turn(90);
    let (h1, h2) = (hour(22, 9), hour(22, 10));
    let first = traffic(h1, 300, 2);
    let second = traffic(h2, 300, 3);
    write(&env, &first);
    write(&env, &second);
    // And one in the current hour, which is not complete yet.
    let now = Utc::now();
    write(&env, &[Written::new(now, "request")]);
    env.genalytics().arg("transfer").ok();
    let ran = env.genalytics().arg("aggregate").ok();
    assert!(
        ran.stdout.starts_with("rolled up 2 hours"),
        "{}",
        ran.stdout
    );
    let mut db = env.db();
    assert_hour(&mut db, h1, &first);
    assert_hour(&mut db, h2, &second);
    let current = now.duration_trunc_hour();
    assert!(
        stored(&mut db, current).is_none(),
        "the hour in progress waits"
    );

    // Nothing new: nothing to do.
    let ran = env.genalytics().arg("aggregate").ok();
    assert!(
        ran.stdout.starts_with("rolled up 0 hours"),
        "{}",
        ran.stdout
    );

    // A late event for 09:59 arrives much later: 09:00 rolls up again.
    let late = Written {
        user: Some("00000000-0000-4000-8000-999999999999".into()),
        duration_ms: Some(123_456),
        success: Some(true),
        batch_size: Some(4),
        queue_length: Some(99),
        ..Written::new(
            h1 + Duration::minutes(59) + Duration::seconds(59),
            "completion",
        )
    };
    write(&env, std::slice::from_ref(&late));
    env.genalytics().arg("transfer").ok();
    let ran = env.genalytics().arg("aggregate").ok();
    assert!(
        ran.stdout.starts_with("rolled up 1 hour "),
        "{}",
        ran.stdout
    );
    let mut with_late = first.clone();
    with_late.push(late);
    assert_hour(&mut db, h1, &with_late);

    let ran = env
        .genalytics()
        .args(["aggregate", "--include-current"])
        .ok();
    assert!(
        ran.stdout.starts_with("rolled up 1 hour "),
        "{}",
        ran.stdout
    );
    assert!(stored(&mut db, current).is_some());
}

trait HourTrunc {
    fn duration_trunc_hour(self) -> Self;
}

impl HourTrunc for DateTime<Utc> {
    fn duration_trunc_hour(self) -> Self {
        chrono::DurationRound::duration_trunc(self, Duration::hours(1)).unwrap()
    }
}

fn all_rows(db: &mut postgres::Client) -> Vec<String> {
    db.query(
        "SELECT (timestamp, total_requests, successful_generations, failed_generations, cancelled_generations,
                 avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms, unique_users,
                 avg_queue_length, max_queue_length, total_images_generated, duration_sum_ms, duration_count,
                 duration_hist_keys, duration_hist_counts, user_ids, queue_length_sum, queue_length_samples)::text
         FROM generation_metrics_hourly ORDER BY timestamp",
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|row| row.get(0))
    .collect()
}

#[test]
fn a_backfill_equals_hour_by_hour_and_concurrent_runs_agree() {
    let env = migrated();
    env.genalytics()
        .args([
            "simulate",
            "--events",
            "20000",
            "--hours",
            "48",
            "--end",
            "2026-11-10T00",
            "--seed",
            "8",
            "--maxlen",
            "0",
            "-q",
        ])
        .ok();
    env.genalytics().args(["transfer", "--keep", "3650d"]).ok();
    let ran = env
        .genalytics()
        .args([
            "aggregate",
            "--from",
            "2026-11-07T12:30",
            "--to",
            "2026-11-10T02",
        ])
        .ok();
    assert!(
        ran.stdout
            .starts_with("rolled up 48 hours (14 without events)"),
        "{}",
        ran.stdout
    );
    let mut db = env.db();
    let backfilled = all_rows(&mut db);
    assert_eq!(backfilled.len(), 48);

    db.batch_execute("TRUNCATE generation_metrics_hourly")
        .unwrap();
    let mut at = hour(8, 0);
    while at < hour(10, 0) {
        env.genalytics()
            .args(["aggregate", "-q", "--hour", &at.to_rfc3339()])
            .ok();
        at += Duration::hours(1);
    }
    assert_eq!(all_rows(&mut db), backfilled);

    // Three at once, over overlapping ranges: same rows, none twice.
    db.batch_execute("TRUNCATE generation_metrics_hourly")
        .unwrap();
    let children: Vec<_> = [
        ("2026-11-08T00", "2026-11-10T00"),
        ("2026-11-08T10", "2026-11-09T20"),
        ("2026-11-07T00", "2026-11-11T00"),
    ]
    .iter()
    .map(|(from, to)| {
        env.genalytics()
            .args(["aggregate", "-q", "--from", from, "--to", to])
            .command()
            .spawn()
            .unwrap()
    })
    .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(all_rows(&mut db), backfilled);
}

#[test]
fn merged_hourly_histograms_give_window_percentiles_within_one_percent() {
    let env = migrated();
    let start = hour(15, 0);
    let mut durations = Vec::new();
    for h in 0..24 {
        let events = traffic(start + Duration::hours(h), 400, 100 + h as u64);
        durations.extend(
            events
                .iter()
                .filter(|e| e.kind == "completion" && e.success == Some(true))
                .filter_map(|e| e.duration_ms),
        );
        write(&env, &events);
    }
    env.genalytics().args(["transfer", "--keep", "3650d"]).ok();
    env.genalytics()
        .args([
            "aggregate",
            "-q",
            "--from",
            "2026-11-15T00",
            "--to",
            "2026-11-16T00",
        ])
        .ok();
    let mut merged = genalytics::testing::Histogram::new();
    let mut db = env.db();
    for row in db
        .query(
            "SELECT duration_hist_keys, duration_hist_counts FROM generation_metrics_hourly",
            &[],
        )
        .unwrap()
    {
        let (keys, counts): (Vec<i32>, Vec<i32>) = (row.get(0), row.get(1));
        merged.merge(&genalytics::testing::Histogram::from_parts(&keys, &counts));
    }
    durations.sort_unstable();
    assert_eq!(merged.count(), durations.len() as u64);
    for q in [0.5, 0.95, 0.99] {
        let exact = percentile(&durations, q).unwrap();
        let estimate = merged.quantile(q).unwrap();
        assert!(
            (estimate - exact).abs() <= exact * 0.01 + 1.0,
            "p{q}: exact {exact}, merged {estimate}"
        );
    }
}

#[test]
fn bad_hours_are_usage_errors() {
    let env = migrated();
    let ran = env
        .genalytics()
        .args(["aggregate", "--hour", "garbage"])
        .code(2);
    assert!(ran.stderr.contains("RFC 3339"), "{}", ran.stderr);
    let ran = env
        .genalytics()
        .args(["aggregate", "--from", "2026-11-02", "--to", "2026-11-01"])
        .code(2);
    assert!(ran.stderr.contains("is not before --to"), "{}", ran.stderr);
    env.genalytics()
        .args(["aggregate", "--from", "2026-11-02"])
        .code(2);
    env.genalytics()
        .args([
            "aggregate",
            "--hour",
            "2026-11-02T10",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-03",
        ])
        .code(2);
}

#[test]
fn postgres_and_rust_put_every_duration_in_the_same_bucket() {
    let env = TestEnv::new();
    let mut db = env.db();
    let durations: Vec<i32> = (0..20_000)
        .chain((20_000..86_400_000).step_by(4_999))
        .collect();
    let sql = format!(
        "SELECT duration_ms, {} FROM unnest($1::int[]) AS t(duration_ms)",
        genalytics::testing::KEY_SQL
    );
    let mut disagreements = Vec::new();
    for row in db.query(&sql, &[&durations]).unwrap() {
        let (duration, key): (i32, i32) = (row.get(0), row.get(1));
        if genalytics::testing::key(i64::from(duration)) != key {
            disagreements.push(duration);
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:?}");
}
