//! Rollups are permanent. No prune, backfill or late event
//! changes a stored figure except by adding events that really happened,
//! and the original service's hours count in every report.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::Value;

use crate::harness::events::{Written, traffic, write};
use crate::harness::reports::{every_report_counted, figures, report_at};
use crate::harness::{TestEnv, json};

const LEGACY_SCHEMA: &str = include_str!("fixtures/legacy_schema.sql");

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

/// Every report over a window, as JSON.
pub(crate) fn every_report(env: &TestEnv, until: &str, days: &str) -> Vec<(String, Value)> {
    let common = ["--until", until, "--days", days];
    [
        &["report", "overview"][..],
        &["report", "trends"],
        &["report", "trends", "--interval", "daily"],
        &["report", "models"],
        &["report", "failures"],
        &["report", "peak-hours"],
        &["report", "peak-hours", "--by", "weekday"],
    ]
    .iter()
    .map(|args| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(common);
        (args.join(" "), json(env, &all))
    })
    .collect()
}

fn count(db: &mut postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

/// Thirty hours of traffic up to the last complete hour, stored and rolled
/// up; returns the environment, the first hour and the events.
fn thirty_hours() -> (TestEnv, DateTime<Utc>, Vec<Written>) {
    let env = migrated();
    let first = genalytics::testing::hour_floor(Utc::now()) - Duration::hours(30);
    let mut events = Vec::new();
    for h in 0..30 {
        events.extend(traffic(first + Duration::hours(h), 40, 300 + h as u64));
    }
    write(&env, &events);
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
    env.genalytics().args(["aggregate", "-q"]).ok();
    (env, first, events)
}

#[test]
fn reports_are_the_same_after_prune_and_a_backfill_across_the_horizon() {
    let (env, first, events) = thirty_hours();
    let until = (first + Duration::hours(30)).to_rfc3339();
    let before = every_report(&env, &until, "2");
    assert!(before[0].1["total_requests"].as_i64().unwrap() > 0);
    let mut per_user: BTreeMap<&String, usize> = BTreeMap::new();
    for user in events.iter().filter_map(|e| e.user.as_ref()) {
        *per_user.entry(user).or_default() += 1;
    }
    let busiest = (*per_user.iter().max_by_key(|(_, n)| **n).unwrap().0).clone();
    let user_before = json(
        &env,
        &["report", "user", &busiest, "--until", &until, "--days", "2"],
    );
    assert!(user_before["total_requests"].as_i64().unwrap() > 0);

    let ran = env
        .genalytics()
        .args(["prune", "--older-than", "12h", "--format", "json"])
        .ok();
    let pruned: Value = serde_json::from_str(&ran.stdout).unwrap();
    let horizon: DateTime<Utc> = pruned["horizon"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        horizon,
        genalytics::testing::hour_floor(Utc::now() - Duration::hours(12))
    );
    let gone = events.iter().filter(|e| e.at < horizon).count() as i64;
    assert!(gone > 0);
    assert_eq!(pruned["events"], gone);
    let mut db = env.db();
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events"),
        events.len() as i64 - gone
    );

    // Backfill the whole span: hours before the horizon are kept, not
    // rebuilt from nothing.
    let ran = env
        .genalytics()
        .args(["aggregate", "--format", "json", "--from"])
        .arg(first.to_rfc3339())
        .args(["--to", &until])
        .ok();
    let summary: Value = serde_json::from_str(&ran.stdout).unwrap();
    let kept = (horizon - first).num_hours();
    assert_eq!(
        summary["kept"].as_i64().unwrap() + summary["merged"].as_i64().unwrap(),
        kept
    );
    assert_eq!(summary["rolled_up"], 30 - kept);
    let ran = env
        .genalytics()
        .args(["aggregate", "--from"])
        .arg(first.to_rfc3339())
        .args(["--to", &until])
        .ok();
    assert!(
        ran.stdout.contains("before the raw horizon"),
        "{}",
        ran.stdout
    );

    let after = every_report(&env, &until, "2");
    for ((name, want), (_, got)) in before.iter().zip(&after) {
        assert_eq!(got, want, "{name} changed");
    }
    // The busiest user's report keeps every count; its percentiles, exact
    // from raw events before, now come from histograms and say so.
    let user_after = json(
        &env,
        &["report", "user", &busiest, "--until", &until, "--days", "2"],
    );
    for field in [
        "total_requests",
        "successful_generations",
        "failed_generations",
        "cancelled_generations",
        "success_rate_pct",
        "avg_duration_ms",
        "first_generation_at",
        "last_generation_at",
        "failure_breakdown",
    ] {
        assert_eq!(
            user_after[field], user_before[field],
            "user {field} changed"
        );
    }
    assert_eq!(user_before["percentiles_exact"], true);
    assert_eq!(user_after["percentiles_exact"], false);
    for field in ["p50_duration_ms", "p95_duration_ms"] {
        let (exact, now) = (
            user_before[field].as_f64().unwrap(),
            user_after[field].as_f64().unwrap(),
        );
        assert!(
            (now - exact).abs() <= exact * 0.01 + 1.0,
            "user {field}: {now} vs {exact}"
        );
    }
    let status = json(&env, &["status"]);
    assert_eq!(
        status["raw_horizon"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        horizon
    );
}

#[test]
fn a_late_event_for_a_pruned_hour_adds_exactly_one_to_the_right_figures() {
    let (env, first, _) = thirty_hours();
    env.genalytics()
        .args(["prune", "-q", "--older-than", "12h"])
        .ok();
    let mut db = env.db();
    let hour = first + Duration::hours(3);
    let snapshot = |db: &mut postgres::Client| -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        let hour_text = "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')";
        for (table, key) in [
            ("generation_metrics_hourly", hour_text.to_string()),
            (
                "generation_metrics_hourly_models",
                format!("{hour_text}, model_checkpoint"),
            ),
            (
                "generation_metrics_hourly_failures",
                format!("{hour_text}, error_type"),
            ),
            (
                "generation_metrics_hourly_users",
                format!("{hour_text}, user_id"),
            ),
        ] {
            for row in db
                .query(
                    &format!(
                        "SELECT concat_ws('/', {key}), (t.*)::text FROM {table} t
                         ORDER BY {key}"
                    ),
                    &[],
                )
                .unwrap()
            {
                all.insert(format!("{table}:{}", row.get::<_, String>(0)), row.get(1));
            }
        }
        all
    };
    let hour_figures = |db: &mut postgres::Client| -> (i32, i32, i32, i64, i32, i64, i32) {
        let row = db
            .query_one(
                "SELECT total_requests, successful_generations, failed_generations,
                        duration_count::int8, unique_users, total_images_generated,
                        (SELECT failures FROM generation_metrics_hourly_failures
                         WHERE timestamp = $1 AND error_type = 'LateError')
                 FROM generation_metrics_hourly WHERE timestamp = $1",
                &[&hour],
            )
            .unwrap();
        (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
            row.get::<_, Option<i32>>(6).unwrap_or(0),
        )
    };
    let before = hour_figures(&mut db);
    let untouched = snapshot(&mut db);

    // One request by a new user, one success of 4 images, one failure of
    // a new error type on a new model: all late, for a pruned hour.
    let user = "99999999-0000-4000-8000-000000000001".to_string();
    let at = hour + Duration::minutes(17);
    write(
        &env,
        &[
            Written {
                user: Some(user.clone()),
                ..Written::new(at, "request")
            },
            Written {
                duration_ms: Some(12_345),
                success: Some(true),
                batch_size: Some(4),
                model: Some("late_model".into()),
                user: Some(user.clone()),
                ..Written::new(at, "completion")
            },
            Written {
                duration_ms: Some(0),
                success: Some(false),
                error_type: Some("LateError".into()),
                error_message: Some("arrived late".into()),
                model: Some("late_model".into()),
                ..Written::new(at, "completion")
            },
        ],
    );
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_rollup_late"),
        3
    );
    // Reports count the late events before they are merged, as the merge
    // will: the same figures before and after.
    let until = first + Duration::hours(30);
    let reports = || every_report_counted(&env, until, 3);
    let user_report = || figures(report_at(&env, until, &["user", &user, "--days", "3"]));
    let user_unmerged = user_report();
    let unmerged = reports();
    assert!(
        unmerged.iter().all(|(_, counted)| *counted == 1),
        "the hour is read beside its rollup"
    );
    assert_eq!(
        unmerged[0].0["total_requests"].as_i64().unwrap()
            - json(
                &env,
                &[
                    "report",
                    "overview",
                    "--days",
                    "3",
                    "--until",
                    &until.to_rfc3339(),
                    "--materialized-only"
                ]
            )["total_requests"]
                .as_i64()
                .unwrap(),
        1,
        "the late request is counted"
    );
    let ran = env
        .genalytics()
        .args(["aggregate", "--format", "json"])
        .ok();
    let summary: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["merged"], 1, "{summary}");
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_rollup_late"),
        0
    );

    let after = hour_figures(&mut db);
    assert_eq!(
        after,
        (
            before.0 + 1,
            before.1 + 1,
            before.2 + 1,
            before.3 + 1,
            before.4 + 1,
            before.5 + 4,
            before.6 + 1
        )
    );
    let model: (i32, i32, i32) = {
        let row = db
            .query_one(
                "SELECT total_generations, successful_generations, failed_generations
                 FROM generation_metrics_hourly_models WHERE timestamp = $1 AND model_checkpoint = 'late_model'",
                &[&hour],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(model, (2, 1, 1));
    let exact: Option<bool> = db
        .query_one(
            "SELECT percentiles_exact FROM generation_metrics_hourly WHERE timestamp = $1",
            &[&hour],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        exact,
        Some(false),
        "merged percentiles say they come from the histogram"
    );
    // Every other row is as it was.
    let now = snapshot(&mut db);
    let changed: Vec<&String> = now
        .iter()
        .filter(|(key, value)| untouched.get(*key) != Some(value))
        .map(|(key, _)| key)
        .collect();
    let hour_key = |table: &str| format!("{table}:{}", hour.format("%Y-%m-%d %H"));
    for key in &changed {
        assert!(
            key.starts_with(&hour_key("generation_metrics_hourly"))
                || key.starts_with(&hour_key("generation_metrics_hourly_models"))
                || key.starts_with(&hour_key("generation_metrics_hourly_failures"))
                || key.starts_with(&hour_key("generation_metrics_hourly_users")),
            "{key} changed"
        );
    }
    // The late user's report: their two events, from the merged rollup,
    // as it counted them before the merge.
    let report = json(
        &env,
        &[
            "report",
            "user",
            &user,
            "--days",
            "3",
            "--until",
            &until.to_rfc3339(),
        ],
    );
    assert_eq!(figures(report.clone()), user_unmerged);
    assert_eq!(report["total_requests"], 1, "{report:#}");
    assert_eq!(report["successful_generations"], 1);
    assert_eq!(report["failed_generations"], 0);
    assert_eq!(report["avg_duration_ms"], 12_345);
    let p50 = report["p50_duration_ms"].as_f64().unwrap();
    assert!((p50 - 12_345.0).abs() <= 124.0, "{p50}");
    assert_eq!(report["percentiles_exact"], false, "raw events were pruned");
    let merged = reports();
    assert!(merged.iter().all(|(_, counted)| *counted == 0));
    let reports_only = |reports: Vec<(Value, i64)>| -> Vec<Value> {
        reports.into_iter().map(|(report, _)| report).collect()
    };
    assert_eq!(reports_only(merged), reports_only(unmerged));
    // Merged once: another aggregate changes nothing.
    env.genalytics().arg("aggregate").ok();
    assert_eq!(hour_figures(&mut db), after);
}

#[test]
fn a_cutoff_inside_an_hour_keeps_that_hour_whole() {
    let env = migrated();
    let now = Utc::now();
    let cutoff_hour = genalytics::testing::hour_floor(now - Duration::minutes(150));
    let events: Vec<Written> = [cutoff_hour - Duration::hours(1), cutoff_hour]
        .iter()
        .flat_map(|&hour| {
            (0..12).map(move |i| Written::new(hour + Duration::minutes(i * 5), "request"))
        })
        .collect();
    write(&env, &events);
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
    env.genalytics().args(["aggregate", "-q"]).ok();
    env.genalytics()
        .args(["prune", "-q", "--older-than", "150m"])
        .ok();
    let mut db = env.db();
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM generation_events WHERE timestamp >= $1 AND timestamp < $2",
            &[&cutoff_hour, &(cutoff_hour + Duration::hours(1))],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        left, 12,
        "the hour the cutoff falls in keeps all its raw events"
    );
    assert_eq!(count(&mut db, "SELECT count(*) FROM generation_events"), 12);
    // Rolled up again from its raw events, it is what it was.
    env.genalytics()
        .args(["aggregate", "-q", "--hour"])
        .arg(cutoff_hour.to_rfc3339())
        .ok();
    let requests: Vec<i32> = db
        .query(
            "SELECT total_requests FROM generation_metrics_hourly ORDER BY timestamp",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(requests, [12, 12]);
}

#[test]
fn the_original_services_hours_count_and_its_raw_events_are_rolled_up() {
    let env = TestEnv::new();
    let mut db = env.db();
    db.batch_execute(LEGACY_SCHEMA).unwrap();
    let day = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 10, 3, h, m, 0).unwrap();
    // 05:00 exists only as the original service's row: 11 requests, 8
    // successes averaging 4000 ms, 1 failure, 3 users.
    db.execute(
        "INSERT INTO generation_metrics_hourly
             (timestamp, total_requests, successful_generations, failed_generations, cancelled_generations,
              avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms, unique_users,
              total_images_generated)
         VALUES ($1, 11, 8, 1, 0, 4000, 3900, 7000, 7500, 3, 8)",
        &[&day(5, 0)],
    )
    .unwrap();
    // 06:00 has raw events the original service never rolled up; 07:00 a
    // row it wrote before half of its events arrived.
    let raw: Vec<(DateTime<Utc>, &str, Option<i32>, Option<bool>, &str)> = vec![
        (
            day(6, 1),
            "request",
            None,
            None,
            "00000000-0000-4000-8000-000000000001",
        ),
        (
            day(6, 2),
            "completion",
            Some(1_000),
            Some(true),
            "00000000-0000-4000-8000-000000000001",
        ),
        (
            day(6, 3),
            "completion",
            Some(3_000),
            Some(true),
            "00000000-0000-4000-8000-000000000002",
        ),
        (
            day(7, 1),
            "request",
            None,
            None,
            "00000000-0000-4000-8000-000000000004",
        ),
        (
            day(7, 2),
            "completion",
            Some(2_000),
            Some(true),
            "00000000-0000-4000-8000-000000000004",
        ),
        (
            day(7, 3),
            "request",
            None,
            None,
            "00000000-0000-4000-8000-000000000005",
        ),
        (
            day(7, 4),
            "completion",
            Some(6_000),
            Some(true),
            "00000000-0000-4000-8000-000000000005",
        ),
    ];
    for (at, kind, duration, success, user) in &raw {
        db.execute(
            "INSERT INTO generation_events (event_type, timestamp, duration_ms, success, user_id)
             VALUES ($1, $2, $3, $4, $5::text::uuid)",
            &[kind, at, duration, success, user],
        )
        .unwrap();
    }
    db.execute(
        "INSERT INTO generation_metrics_hourly (timestamp, total_requests, successful_generations,
             failed_generations, cancelled_generations, avg_duration_ms, unique_users)
         VALUES ($1, 1, 1, 0, 0, 2000, 1)",
        &[&day(7, 0)],
    )
    .unwrap();

    env.genalytics().args(["migrate", "-q"]).ok();
    env.genalytics().args(["aggregate", "-q"]).ok();

    // 06:00 and 07:00 now hold exactly what their raw events say.
    let hourly = |db: &mut postgres::Client,
                  at: DateTime<Utc>|
     -> (i32, i32, Option<i32>, Option<i32>, bool) {
        let row = db
            .query_one(
                "SELECT total_requests, successful_generations, avg_duration_ms, unique_users, legacy
                 FROM generation_metrics_hourly WHERE timestamp = $1",
                &[&at],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
    };
    assert_eq!(
        hourly(&mut db, day(6, 0)),
        (1, 2, Some(2_000), Some(2), false)
    );
    assert_eq!(
        hourly(&mut db, day(7, 0)),
        (2, 2, Some(4_000), Some(2), false)
    );
    assert_eq!(
        hourly(&mut db, day(5, 0)),
        (11, 8, Some(4_000), Some(3), true)
    );

    // All three in the overview: counts add, the average is weighted by
    // successes, users are at least the legacy hour's three.
    let overview = json(
        &env,
        &[
            "report",
            "overview",
            "--until",
            "2026-10-03T08",
            "--days",
            "1",
        ],
    );
    assert_eq!(overview["total_requests"], 11 + 1 + 2);
    assert_eq!(overview["successful_generations"], 8 + 2 + 2);
    // (32,000 + 4,000 + 8,000) ms over 12 successes, rounded.
    assert_eq!(overview["avg_duration_ms"], 3_667);
    assert_eq!(
        overview["unique_users"], 4,
        "4 known users, at least the legacy hour's 3"
    );
    assert_eq!(overview["unique_users_lower_bound"], true);
    assert_eq!(overview["percentiles_partial"], true);
    assert_eq!(overview["legacy_hours"], 1);
    let table = env
        .genalytics()
        .args([
            "report",
            "overview",
            "--until",
            "2026-10-03T08",
            "--days",
            "1",
        ])
        .ok();
    assert!(
        table.stdout.contains("* percentiles leave out 1 hour"),
        "{}",
        table.stdout
    );
    // The legacy hour alone: its own users.
    let alone = json(
        &env,
        &[
            "report",
            "overview",
            "--until",
            "2026-10-03T06",
            "--days",
            "1",
        ],
    );
    assert_eq!(alone["unique_users"], 3);

    let status = json(&env, &["status"]);
    assert!(status["legacy_hours"].as_i64().unwrap() >= 1, "{status:#}");
    assert_eq!(
        status["raw_horizon"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        day(6, 0),
        "raw events are complete from the hour after the legacy-only one"
    );
}

#[test]
fn status_names_rollup_rows_changed_without_genalytics() {
    let (env, first, _) = thirty_hours();
    let status = json(&env, &["status"]);
    assert_eq!(status["foreign_rollup_rows"], 0, "{status:#}");
    let mut db = env.db();
    // As the original service's aggregator would, still running.
    db.execute(
        "UPDATE generation_metrics_hourly SET avg_duration_ms = avg_duration_ms + 1 WHERE timestamp = $1",
        &[&(first + Duration::hours(2))],
    )
    .unwrap();
    let status = json(&env, &["status"]);
    assert_eq!(status["foreign_rollup_rows"], 1);
    assert!(
        status["warnings"].to_string().contains("original service"),
        "{status:#}"
    );
    // genalytics rolling the hour up again signs it anew.
    env.genalytics()
        .args(["aggregate", "-q", "--hour"])
        .arg((first + Duration::hours(2)).to_rfc3339())
        .ok();
    assert_eq!(json(&env, &["status"])["foreign_rollup_rows"], 0);
}
