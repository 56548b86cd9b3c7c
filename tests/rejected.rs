//! `genalytics rejected`: dead letters listed, shown as received, replayed
//! exactly once after a fix, purged.

use chrono::{Duration, DurationRound, Utc};
use serde_json::Value;

use crate::harness::events::Written;
use crate::harness::{TestEnv, xadd};

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

/// A migrated environment where PostgreSQL refuses events of the model
/// `banned` — a rule the parser knows nothing of — until the test drops
/// the constraint `no_banned`, as an operator would after a fix.
fn banning_a_model() -> (TestEnv, postgres::Client) {
    let env = migrated();
    let mut db = env.db();
    db.batch_execute(
        "ALTER TABLE generation_events ADD CONSTRAINT no_banned CHECK (model_checkpoint IS DISTINCT FROM 'banned')",
    )
    .unwrap();
    (env, db)
}

fn letters(db: &mut postgres::Client) -> Vec<(String, String)> {
    db.query(
        "SELECT stream_id, reason FROM generation_events_rejected ORDER BY stream_id",
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

fn stored(db: &mut postgres::Client, id: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM generation_events WHERE stream_id = $1",
        &[&id],
    )
    .unwrap()
    .get(0)
}

/// Holds the stream's transfer state row locked — where a replay chunk and
/// a transfer commit both start — until `n` other sessions wait for it, so
/// that what the test starts next really runs at the same time; then lets
/// them go.
fn start_together(env: &TestEnv, n: i64, start: impl FnOnce()) {
    let mut db = env.db();
    let mut gate = db.transaction().unwrap();
    gate.query("SELECT 1 FROM genalytics_transfer_state FOR UPDATE", &[])
        .unwrap();
    start();
    let mut watcher = env.db();
    crate::harness::wait_for("both to wait at the gate", 60, || {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        waiting >= n
    });
    gate.commit().unwrap();
}

fn json(ran: &crate::harness::Ran) -> Value {
    serde_json::from_str(&ran.stdout).unwrap_or_else(|err| panic!("{err}: {}", ran.stdout))
}

#[test]
fn dead_letters_are_listed_shown_replayed_once_and_purged() {
    let (env, mut db) = banning_a_model();
    let key = env.stream_key();
    let mut con = env.redis();
    let hour = (Utc::now() - Duration::hours(3))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let fine = Written::new(hour + Duration::minutes(5), "request");
    let banned = Written {
        model: Some("banned".into()),
        success: Some(true),
        duration_ms: Some(1_234),
        ..Written::new(hour + Duration::minutes(10), "completion")
    };
    let add = |con: &mut redis::Connection, w: &Written| {
        let fields = w.fields();
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        xadd(con, &key, "*", &fields)
    };
    let fine_id = add(&mut con, &fine);
    let banned_id = add(&mut con, &banned);
    // No parser will ever take this one; its value holds a NUL and an ESC.
    let garbage_id: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("what")
        .arg(b"ever\0\x1b[31m".as_slice())
        .query(&mut con)
        .unwrap();
    env.genalytics().args(["transfer", "-q"]).ok();
    assert_eq!(stored(&mut db, &fine_id), 1);
    assert_eq!(letters(&mut db).len(), 2);

    // A letter stored before genalytics kept raw bytes: only its JSON.
    let legacy_at = hour + Duration::minutes(20);
    let legacy_id = format!("{}-0", legacy_at.timestamp_millis());
    db.execute(
        "INSERT INTO generation_events_rejected (stream, stream_id, fields, reason, received_at)
         SELECT stream_ref, $1, $2, 'an older parser refused it', now() - interval '2 days'
         FROM genalytics_transfer_state",
        &[
            &legacy_id,
            &serde_json::json!({
                "event_type": "request",
                "timestamp": legacy_at.format("%Y-%m-%dT%H:%M:%S").to_string(),
                "user_id": "",
            }),
        ],
    )
    .unwrap();

    // list: all, by reason, by time, as CSV.
    let listed = json(
        &env.genalytics()
            .args(["rejected", "list", "--format", "json"])
            .ok(),
    );
    assert_eq!(listed["total"], 3);
    let ids: Vec<&str> = listed["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["stream_id"].as_str().unwrap())
        .collect();
    // Oldest received first: the legacy letter, then the stream's order.
    assert_eq!(
        ids,
        [legacy_id.as_str(), banned_id.as_str(), garbage_id.as_str()]
    );
    let by_reason = json(
        &env.genalytics()
            .args([
                "rejected",
                "list",
                "--format",
                "json",
                "--reason",
                "NO_BANNED",
            ])
            .ok(),
    );
    assert_eq!(by_reason["total"], 1);
    assert_eq!(by_reason["letters"][0]["stream_id"], banned_id.as_str());
    let since = (Utc::now() - Duration::hours(1)).to_rfc3339();
    let recent = json(
        &env.genalytics()
            .args(["rejected", "list", "--format", "json", "--since", &since])
            .ok(),
    );
    assert_eq!(recent["total"], 2);
    let csv = env
        .genalytics()
        .args(["rejected", "list", "--format", "csv", "--limit", "1"])
        .ok();
    let mut lines = csv.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("stream_id,stream,received_at,fields,reason")
    );
    assert!(lines.next().unwrap().starts_with(&legacy_id));
    assert_eq!(lines.next(), None);
    let table = env.genalytics().args(["rejected", "list"]).ok();
    assert!(
        table.stdout.contains("Dead letters: 3 of 3"),
        "{}",
        table.stdout
    );

    // show: the fields as received, escaped, never raw control bytes.
    let shown = env
        .genalytics()
        .args(["rejected", "show", &garbage_id])
        .ok();
    assert!(
        shown.stdout.contains("  what = ever\\0\\x1b[31m"),
        "{}",
        shown.stdout
    );
    assert!(!shown.stdout.contains('\u{1b}'), "{}", shown.stdout);
    let shown = json(
        &env.genalytics()
            .args(["rejected", "show", &banned_id, "--format", "json"])
            .ok(),
    );
    let want: Vec<Value> = banned
        .fields()
        .into_iter()
        .map(|(k, v)| serde_json::json!([k, v]))
        .collect();
    assert_eq!(shown["fields"], Value::Array(want));
    assert_eq!(shown["exact"], true);
    assert!(shown["reason"].as_str().unwrap().contains("no_banned"));
    let ran = env.genalytics().args(["rejected", "show", "1-1"]).code(1);
    assert!(
        ran.stderr.contains("no dead letter has entry ID 1-1"),
        "{}",
        ran.stderr
    );
    env.genalytics().args(["rejected", "show", "nope"]).code(2);
    env.genalytics().args(["rejected", "replay"]).code(2);

    // Replay one letter by ID while the rule still holds: it stays, the
    // event is not stored.
    let ran = json(
        &env.genalytics()
            .args(["rejected", "replay", &banned_id, "--format", "json"])
            .ok(),
    );
    assert_eq!(ran["stored"], 0);
    assert_eq!(ran["still_rejected"], 1);
    assert_eq!(stored(&mut db, &banned_id), 0);

    // The fix; then every letter is tried: two stored, garbage stays.
    db.batch_execute("ALTER TABLE generation_events DROP CONSTRAINT no_banned")
        .unwrap();
    env.genalytics().args(["aggregate", "-q"]).ok();
    let ran = env.genalytics().args(["rejected", "replay", "--all"]).ok();
    assert_eq!(
        ran.stdout.trim(),
        "replayed 3 dead letters: 2 stored, 1 still rejected; 1 hour awaits `genalytics aggregate`",
    );
    assert_eq!(stored(&mut db, &banned_id), 1);
    assert_eq!(stored(&mut db, &legacy_id), 1);
    let left = letters(&mut db);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, garbage_id);
    // The stored event is the entry as the producer wrote it.
    let row = db
        .query_one(
            "SELECT event_type, model_checkpoint, duration_ms, success, timestamp
             FROM generation_events WHERE stream_id = $1",
            &[&banned_id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completion");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("banned"));
    assert_eq!(row.get::<_, Option<i32>>(2), Some(1_234));
    assert_eq!(row.get::<_, Option<bool>>(3), Some(true));
    assert_eq!(row.get::<_, chrono::DateTime<Utc>>(4), banned.at);
    // Their hour was queued; its rollup now counts them.
    env.genalytics().args(["aggregate", "-q"]).ok();
    let (requests, successes): (i32, i32) = db
        .query_one(
            "SELECT total_requests, successful_generations FROM generation_metrics_hourly
             WHERE timestamp = $1",
            &[&hour],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((requests, successes), (2, 1));

    // A second replay changes nothing.
    let again = json(
        &env.genalytics()
            .args(["rejected", "replay", "--all", "--format", "json"])
            .ok(),
    );
    assert_eq!(again["stored"], 0);
    assert_eq!(again["still_rejected"], 1);
    assert_eq!(stored(&mut db, &banned_id), 1);

    // Letters no replay may store stay as they are, and say so: one
    // rebuilt from JSON that lost bytes (U+FFFD), one with no stream
    // recorded; a letter whose JSON is not an object still lists.
    db.execute(
        "INSERT INTO generation_events_rejected (stream, stream_id, fields, reason)
         SELECT stream_ref, '1700000000000-1', $1, 'not valid UTF-8' FROM genalytics_transfer_state",
        &[&serde_json::json!({
            "event_type": "request",
            "timestamp": legacy_at.format("%Y-%m-%dT%H:%M:%S").to_string(),
            "user_id": "",
            "note": "bad \u{FFFD} bytes",
        })],
    )
    .unwrap();
    db.execute(
        "INSERT INTO generation_events_rejected (stream, stream_id, fields, reason)
         VALUES (NULL, '1700000000000-2', '[1, 2, 3]', 'from before streams were recorded')",
        &[],
    )
    .unwrap();
    let listed = json(
        &env.genalytics()
            .args(["rejected", "list", "--format", "json"])
            .ok(),
    );
    assert_eq!(listed["total"], 3);
    let again = json(
        &env.genalytics()
            .args(["rejected", "replay", "--all", "--format", "json"])
            .ok(),
    );
    assert_eq!(again["letters"], 3);
    assert_eq!(again["stored"], 0);
    assert_eq!(again["not_replayable"], 2);
    assert_eq!(stored(&mut db, "1700000000000-1"), 0);
    assert_eq!(letters(&mut db).len(), 3);
    let ran = env
        .genalytics()
        .args(["rejected", "replay", "1234-5"])
        .code(1);
    assert!(
        ran.stderr.contains("no dead letter has entry ID 1234-5"),
        "{}",
        ran.stderr
    );
    db.execute(
        "DELETE FROM generation_events_rejected WHERE stream_id LIKE '1700000000000-%'",
        &[],
    )
    .unwrap();

    // purge: by age, then all.
    let ran = env
        .genalytics()
        .args(["rejected", "purge", "--older-than", "1h"])
        .ok();
    assert!(
        ran.stdout.starts_with("purged 0 dead letters"),
        "{}",
        ran.stdout
    );
    let ran = env
        .genalytics()
        .args(["rejected", "purge", "--older-than", "0"])
        .ok();
    assert!(
        ran.stdout.starts_with("purged 1 dead letter received"),
        "{}",
        ran.stdout
    );
    assert!(letters(&mut db).is_empty());
}

#[test]
fn two_replays_at_once_store_each_letter_once() {
    let (env, mut db) = banning_a_model();
    let key = env.stream_key();
    let mut con = env.redis();
    let now = Utc::now();
    for i in 0..1_200 {
        let w = Written {
            model: Some("banned".into()),
            success: Some(false),
            ..Written::new(now - Duration::seconds(i), "completion")
        };
        let fields = w.fields();
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        xadd(&mut con, &key, "*", &fields);
    }
    env.genalytics().args(["transfer", "-q"]).ok();
    assert_eq!(letters(&mut db).len(), 1_200);
    db.batch_execute("ALTER TABLE generation_events DROP CONSTRAINT no_banned")
        .unwrap();
    let spawn = || {
        env.genalytics()
            .args(["rejected", "replay", "--all", "--format", "json"])
            .command()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children = Vec::new();
    start_together(&env, 2, || children.extend([spawn(), spawn()]));
    let mut stored_by_both = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        stored_by_both += summary["stored"].as_u64().unwrap();
    }
    assert_eq!(stored_by_both, 1_200);
    assert!(letters(&mut db).is_empty());
    let (rows, distinct): (i64, i64) = db
        .query_one(
            "SELECT count(*), count(DISTINCT stream_id) FROM generation_events",
            &[],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((rows, distinct), (1_200, 1_200));
}

#[test]
fn a_replay_beside_a_running_transfer_neither_deadlocks_nor_loses() {
    let env = migrated();
    let mut db = env.db();
    // A first transfer records the stream.
    let key = env.stream_key();
    xadd(&mut env.redis(), &key, "*", &[("event_type", "request")]);
    env.genalytics().args(["transfer", "-q"]).ok();
    // A backlog in the last hour, and as many valid letters for the same
    // hours (an older parser refused them): both commit into the same
    // rollup-queue rows.
    env.genalytics()
        .args([
            "simulate", "-q", "--events", "40000", "--hours", "1", "--maxlen", "0", "--seed", "5",
        ])
        .ok();
    db.execute(
        "INSERT INTO generation_events_rejected (stream, stream_id, fields, reason, raw_fields)
         SELECT t.stream_ref, '1-' || g, '{}', 'an older parser refused it',
                ARRAY[convert_to('event_type', 'UTF8'), convert_to('request', 'UTF8'),
                      convert_to('timestamp', 'UTF8'),
                      convert_to(to_char((now() - (g % 50) * interval '1 minute') AT TIME ZONE 'UTC',
                                         'YYYY-MM-DD\"T\"HH24:MI:SS'), 'UTF8')]
         FROM genalytics_transfer_state t, generate_series(1, 20000) g",
        &[],
    )
    .unwrap();
    let spawn = |args: &[&str]| {
        env.genalytics()
            .args(args.iter().copied())
            .command()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children = Vec::new();
    start_together(&env, 2, || {
        children.push(("transfer", spawn(&["transfer", "--batch-size", "500"])));
        children.push((
            "replay",
            spawn(&["rejected", "replay", "--all", "--format", "json"]),
        ));
    });
    for (what, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (rows, distinct): (i64, i64) = db
        .query_one(
            "SELECT count(*), count(DISTINCT stream_id) FROM generation_events",
            &[],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((rows, distinct), (1 + 40_000 + 20_000, 1 + 40_000 + 20_000));
    assert!(letters(&mut db).is_empty());
}
