//! `genalytics prune`: removes exactly the old raw events and dead
//! letters, keeps rollups, and never takes raw data of an hour waiting for
//! its rollup.

use chrono::{Duration, Utc};

use crate::harness::TestEnv;
use crate::harness::events::{Written, write};

fn count(db: &mut postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn prune_removes_exactly_the_old_raw_events_and_keeps_rollups() {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    let now = Utc::now();
    // Events 100, 50 and 10 days old, and a dead letter.
    let ages = [100, 100, 50, 10, 10, 10];
    let events: Vec<Written> = ages
        .iter()
        .map(|days| Written::new(now - Duration::days(*days), "request"))
        .collect();
    write(&env, &events);
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
    let mut db = env.db();
    // Hours still waiting for their rollup: a dry run counts none of their
    // events and says a prune rolls them up first.
    let ran = env
        .genalytics()
        .args([
            "prune",
            "--older-than",
            "30d",
            "--format",
            "json",
            "--dry-run",
        ])
        .ok();
    assert!(
        ran.stderr
            .contains("waits for its rollup, which prune does first"),
        "{}",
        ran.stderr
    );
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["events"], 0);
    assert_eq!(count(&mut db, "SELECT count(*) FROM generation_events"), 6);
    let held: chrono::DateTime<Utc> = summary["held_by"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        held,
        genalytics::testing::hour_floor(now - Duration::days(100))
    );

    db.execute(
        "INSERT INTO generation_events_rejected (stream_id, fields, reason, received_at)
         VALUES ('1-1', '{}', 'test', now() - interval '120 days'), ('1-2', '{}', 'test', now())",
        &[],
    )
    .unwrap();
    env.genalytics()
        .args(["aggregate", "-q", "--include-current"])
        .ok();
    let rollups = count(&mut db, "SELECT count(*) FROM generation_metrics_hourly");
    assert_eq!(rollups, 3);

    let ran = env
        .genalytics()
        .args([
            "prune",
            "--older-than",
            "30d",
            "--dry-run",
            "--format",
            "json",
        ])
        .ok();
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        (summary["events"].as_i64(), summary["rejected"].as_i64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events"),
        6,
        "--dry-run deletes nothing"
    );

    let ran = env
        .genalytics()
        .args(["prune", "--older-than", "30d", "--batch-size", "2"])
        .ok();
    assert!(
        ran.stdout.starts_with("pruned 3 events older than"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains(" and 1 rejected entries"),
        "{}",
        ran.stdout
    );
    let left: Vec<i64> = db
        .query("SELECT (extract(epoch FROM now() - timestamp) / 86400)::int8 FROM generation_events ORDER BY 1", &[])
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, vec![10, 10, 10]);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events_rejected"),
        1
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_metrics_hourly"),
        rollups,
        "rollups are kept"
    );
    env.genalytics()
        .args(["prune", "--older-than", "soon"])
        .code(2);
}
