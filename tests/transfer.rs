//! `genalytics transfer`: every column stored right, every parsing rule,
//! dead letters, idempotency, trimming, locking, output.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{TestEnv, stored_ids, stream_ids, wait_for, xadd};

const PRODUCER_ENTRIES: &str = include_str!("fixtures/producer_entries.json");

/// A stored row, as the test reads it back.
#[derive(Debug, Default, PartialEq)]
struct Stored {
    event_type: String,
    generation_id: Option<Uuid>,
    user_id: Option<Uuid>,
    timestamp: Option<DateTime<Utc>>,
    generation_type: Option<String>,
    duration_ms: Option<i32>,
    success: Option<bool>,
    error_type: Option<String>,
    error_message: Option<String>,
    queue_wait_time_ms: Option<i32>,
    generation_time_ms: Option<i32>,
    model_checkpoint: Option<String>,
    image_dimensions: Option<Value>,
    batch_size: Option<i32>,
    prompt_tokens: Option<i32>,
    queue_length: Option<i32>,
    attributes: Option<Value>,
}

fn stored(db: &mut postgres::Client, stream_id: &str) -> Stored {
    let row = db
        .query_one(
            "SELECT event_type, generation_id, user_id, timestamp, generation_type, duration_ms, success,
                    error_type, error_message, queue_wait_time_ms, generation_time_ms, model_checkpoint,
                    image_dimensions, batch_size, prompt_tokens, queue_length, attributes
             FROM generation_events WHERE stream_id = $1",
            &[&stream_id],
        )
        .unwrap_or_else(|err| panic!("{stream_id}: {err}"));
    Stored {
        event_type: row.get(0),
        generation_id: row.get(1),
        user_id: row.get(2),
        timestamp: Some(row.get(3)),
        generation_type: row.get(4),
        duration_ms: row.get(5),
        success: row.get(6),
        error_type: row.get(7),
        error_message: row.get(8),
        queue_wait_time_ms: row.get(9),
        generation_time_ms: row.get(10),
        model_checkpoint: row.get(11),
        image_dimensions: row.get(12),
        batch_size: row.get(13),
        prompt_tokens: row.get(14),
        queue_length: row.get(15),
        attributes: row.get(16),
    }
}

fn utc(h: u32, m: u32, s: u32, micros: u32) -> Option<DateTime<Utc>> {
    Some(
        NaiveDate::from_ymd_opt(2026, 11, 27)
            .unwrap()
            .and_hms_micro_opt(h, m, s, micros)
            .unwrap()
            .and_utc(),
    )
}

fn uuid(text: &str) -> Option<Uuid> {
    Some(Uuid::parse_str(text).unwrap())
}

fn some(text: &str) -> Option<String> {
    Some(text.to_string())
}

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

/// Writes the producer's own entries under their own IDs.
fn write_fixture(env: &TestEnv) -> Vec<String> {
    let fixture: Value = serde_json::from_str(PRODUCER_ENTRIES).unwrap();
    let mut con = env.redis();
    let mut ids = Vec::new();
    for entry in fixture["entries"].as_array().unwrap() {
        let fields: Vec<(&str, &str)> = entry["fields"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        ids.push(xadd(
            &mut con,
            &env.stream_key(),
            entry["id"].as_str().unwrap(),
            &fields,
        ));
    }
    ids
}

#[test]
fn every_column_of_every_event_type_is_stored_as_the_producer_wrote_it() {
    let env = migrated();
    write_fixture(&env);
    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout
            .starts_with("transferred 7 events and 0 rejected entries"),
        "{}",
        ran.stdout
    );
    let mut db = env.db();
    let user_a = uuid("6f1c2a9e-3b7d-4e1a-9c55-0d2b8f4a7e11");
    let user_b = uuid("b0e4d3c2-8a61-4f0e-a3d9-5c7e1f2a9b04");
    let generation = uuid("3d9e7b1a-52c4-4f8e-8d20-7a6b5c4e3f21");
    let expected = [
        (
            "1795821600000-0",
            Stored {
                event_type: "request".into(),
                user_id: user_a,
                timestamp: utc(14, 0, 0, 0),
                generation_type: some("comfyui"),
                ..Stored::default()
            },
        ),
        (
            "1795821600123-0",
            Stored {
                event_type: "request".into(),
                generation_id: generation,
                user_id: user_b,
                timestamp: utc(14, 0, 0, 123_456),
                generation_type: some("standard"),
                ..Stored::default()
            },
        ),
        (
            "1795821645000-0",
            Stored {
                event_type: "completion".into(),
                generation_id: generation,
                user_id: user_b,
                timestamp: utc(14, 0, 45, 7),
                duration_ms: Some(44_880),
                success: Some(true),
                ..Stored::default()
            },
        ),
        (
            "1795821650000-0",
            Stored {
                event_type: "completion".into(),
                user_id: user_a,
                timestamp: utc(14, 0, 50, 500_000),
                duration_ms: Some(0),
                success: Some(false),
                error_type: some("ComfyUIConnectionError"),
                ..Stored::default()
            },
        ),
        (
            "1795821700000-0",
            Stored {
                event_type: "cancellation".into(),
                generation_id: generation,
                user_id: user_b,
                timestamp: utc(14, 1, 40, 250_000),
                ..Stored::default()
            },
        ),
        (
            "1795821760000-0",
            Stored {
                event_type: "completion".into(),
                generation_id: uuid("00000000-0000-0000-0000-00000000002a"),
                user_id: user_a,
                timestamp: utc(14, 2, 40, 1),
                duration_ms: Some(51_230),
                success: Some(true),
                queue_wait_time_ms: Some(1_200),
                generation_time_ms: Some(50_030),
                model_checkpoint: some("illustriousXL_v01"),
                image_dimensions: Some(json!({"width": 832, "height": 1216})),
                batch_size: Some(2),
                prompt_tokens: Some(45),
                ..Stored::default()
            },
        ),
        (
            "1795821790000-0",
            Stored {
                event_type: "completion".into(),
                user_id: user_b,
                timestamp: utc(14, 3, 10, 999_999),
                duration_ms: Some(30_012),
                success: Some(false),
                error_type: some("TimeoutError"),
                error_message: some("ComfyUI did not answer within 30 s, job 1234"),
                model_checkpoint: some("sd_xl_base_1.0"),
                ..Stored::default()
            },
        ),
    ];
    for (id, want) in expected {
        assert_eq!(stored(&mut db, id), want, "{id}");
    }
    let created_recently: bool = db
        .query_one(
            "SELECT bool_and(created_at > now() - interval '5 minutes') FROM generation_events",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(created_recently);
    // The hour they fall in is queued for rollup.
    let queued: Vec<DateTime<Utc>> = db
        .query("SELECT hour FROM generation_rollup_queue", &[])
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(queued, vec![utc(14, 0, 0, 0).unwrap()]);
}

#[test]
fn every_parsing_rule() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let completion = [
        ("event_type", "completion"),
        ("user_id", "6f1c2a9e-3b7d-4e1a-9c55-0d2b8f4a7e11"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        completion.iter().chain(extra).copied().collect()
    };
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("1000-1", with(&[("timestamp", "2026-11-27T14:03:07")])),
        (
            "1000-2",
            with(&[("timestamp", "2026-11-27T14:03:07.123456")]),
        ),
        ("1000-3", with(&[("timestamp", "2026-11-27T14:03:07Z")])),
        (
            "1000-4",
            with(&[("timestamp", "2026-11-27T16:03:07+02:00")]),
        ),
        (
            "1000-7",
            with(&[("timestamp", "2026-11-27T14:03:07"), ("success", "True")]),
        ),
        (
            "1000-8",
            with(&[("timestamp", "2026-11-27T14:03:07"), ("success", "false")]),
        ),
        (
            "1000-9",
            with(&[("timestamp", "2026-11-27T14:03:07"), ("success", "1")]),
        ),
        (
            "1000-10",
            with(&[("timestamp", "2026-11-27T14:03:07"), ("success", "0")]),
        ),
        (
            "1000-11",
            with(&[
                ("timestamp", "2026-11-27T14:03:07"),
                ("queue_length", "17"),
                ("duration_ms", ""),
                ("generation_id", ""),
                ("gpu", "A100"),
                ("region", "eu-west"),
            ]),
        ),
        (
            "1000-12",
            with(&[
                ("timestamp", "2026-11-27T14:03:07"),
                ("image_dimensions", "{\"width\": 512, \"height\": 768}"),
            ]),
        ),
        ("1795821600123-5", with(&[("timestamp", "")])),
        ("1795821600456-0", with(&[])),
    ];
    for (id, fields) in &cases {
        xadd(&mut con, &key, id, fields);
    }
    env.genalytics().arg("transfer").ok();
    let mut db = env.db();
    let base = utc(14, 3, 7, 0);
    let at = |id: &str, db: &mut postgres::Client| stored(db, id).timestamp;
    assert_eq!(at("1000-1", &mut db), base);
    assert_eq!(at("1000-2", &mut db), utc(14, 3, 7, 123_456));
    assert_eq!(at("1000-3", &mut db), base);
    assert_eq!(at("1000-4", &mut db), base);
    // Empty or missing: the entry ID's millisecond time, never "now".
    let from_id = |ms: i64| DateTime::from_timestamp_millis(ms);
    assert_eq!(at("1795821600123-5", &mut db), from_id(1_795_821_600_123));
    assert_eq!(at("1795821600456-0", &mut db), from_id(1_795_821_600_456));
    for (id, want) in [
        ("1000-7", true),
        ("1000-8", false),
        ("1000-9", true),
        ("1000-10", false),
    ] {
        assert_eq!(stored(&mut db, id).success, Some(want), "{id}");
    }
    let row = stored(&mut db, "1000-11");
    assert_eq!(row.queue_length, Some(17));
    assert_eq!(row.duration_ms, None);
    assert_eq!(row.generation_id, None);
    assert_eq!(
        row.attributes,
        Some(json!({"gpu": "A100", "region": "eu-west"}))
    );
    assert_eq!(
        stored(&mut db, "1000-12").image_dimensions,
        Some(json!({"width": 512, "height": 768}))
    );
    assert_eq!(stored_ids(&mut db).len(), cases.len());
}

#[test]
fn malformed_entries_become_dead_letters_and_their_neighbours_are_stored() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let good = [
        ("event_type", "request"),
        ("timestamp", "2026-11-27T14:00:00"),
    ];
    let bad: &[(&str, &[(&str, &str)], &str)] = &[
        ("2001-1", &[("event_type", "retry")], "event_type 'retry'"),
        (
            "2002-1",
            &[("event_type", "request"), ("user_id", "bob")],
            "user_id 'bob' is not a UUID",
        ),
        (
            "2003-1",
            &[("event_type", "request"), ("timestamp", "last tuesday")],
            "timestamp 'last tuesday'",
        ),
        (
            "2004-1",
            &[("event_type", "completion"), ("duration_ms", "12ms")],
            "duration_ms '12ms' is not an integer",
        ),
        (
            "2005-1",
            &[("event_type", "completion"), ("duration_ms", "-40")],
            "duration_ms '-40' is negative",
        ),
        (
            "2006-1",
            &[
                ("event_type", "completion"),
                ("image_dimensions", "{\"width\": 5"),
            ],
            "image_dimensions",
        ),
        (
            "2007-1",
            &[("event_type", "completion"), ("success", "maybe")],
            "success 'maybe'",
        ),
        (
            "2008-1",
            &[("event_type", "request"), ("error_message", "nul\0inside")],
            "NUL",
        ),
    ];
    let mut good_ids = Vec::new();
    for (index, (id, fields, _)) in bad.iter().enumerate() {
        good_ids.push(xadd(&mut con, &key, &format!("{}-0", 2001 + index), &good));
        xadd(&mut con, &key, id, fields);
    }
    // A value that is not UTF-8.
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("2009-0")
        .arg("event_type")
        .arg("request")
        .arg("user_id")
        .arg(&[0xff_u8, 0xfe, 0x41][..])
        .query(&mut con)
        .unwrap();
    good_ids.push(xadd(&mut con, &key, "3000-0", &good));

    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout
            .contains("transferred 9 events and 9 rejected entries"),
        "{}",
        ran.stdout
    );
    let mut db = env.db();
    assert_eq!(stored_ids(&mut db), {
        let mut ids = good_ids.clone();
        ids.sort();
        ids
    });
    for (id, fields, reason) in bad {
        let row = db
            .query_one(
                "SELECT fields, reason FROM generation_events_rejected WHERE stream_id = $1",
                &[id],
            )
            .unwrap_or_else(|err| panic!("{id} not rejected: {err}"));
        let (stored_fields, stored_reason): (Value, String) = (row.get(0), row.get(1));
        assert!(stored_reason.contains(reason), "{id}: {stored_reason}");
        for (name, value) in *fields {
            let kept = stored_fields[*name].as_str().unwrap();
            assert_eq!(kept, value.replace('\0', "\\0"), "{id}.{name}");
        }
    }
    let reason: String = db
        .query_one(
            "SELECT reason FROM generation_events_rejected WHERE stream_id = '2009-0'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(reason.contains("UTF-8"), "{reason}");
}

#[test]
fn a_second_run_stores_nothing_new_and_an_empty_or_missing_stream_is_a_no_op() {
    let env = migrated();
    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout.starts_with("transferred 0 events"),
        "{}",
        ran.stdout
    );

    env.genalytics()
        .args([
            "simulate", "--events", "3000", "--hours", "1", "--seed", "3", "-q",
        ])
        .ok();
    let written = stream_ids(&mut env.redis(), &env.stream_key());
    env.genalytics()
        .args(["transfer", "--batch-size", "700"])
        .ok();
    let again = env.genalytics().args(["transfer", "--format", "json"]).ok();
    let summary: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(summary["events"], 0);
    assert_eq!(summary["rejected"], 0);
    assert_eq!(summary["behind"], 0);
    assert_eq!(summary["last_id"], written.last().unwrap().as_str());
    let mut db = env.db();
    assert_eq!(stored_ids(&mut db), {
        let mut ids = written;
        ids.sort();
        ids
    });
}

#[test]
fn max_events_caps_a_run_and_the_summary_counts_what_is_left() {
    let env = migrated();
    env.genalytics()
        .args([
            "simulate", "--events", "1000", "--hours", "1", "--seed", "4", "-q",
        ])
        .ok();
    let ran = env
        .genalytics()
        .args([
            "transfer",
            "--max-events",
            "300",
            "--batch-size",
            "128",
            "--format",
            "json",
        ])
        .ok();
    let summary: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["events"], 300);
    assert_eq!(summary["behind"], 700);
    assert_eq!(summary["behind_exact"], true);
    assert_eq!(stored_ids(&mut env.db()).len(), 300);
}

#[test]
fn trimming_keeps_recent_entries_and_never_an_unstored_one() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    // Entries added over the last five hours, one every minute.
    let now_ms = Utc::now().timestamp_millis();
    let ids: Vec<String> = (0..300)
        .map(|minute| {
            let ms = now_ms - (300 - minute) * 60_000;
            xadd(
                &mut con,
                &key,
                &format!("{ms}-0"),
                &[("event_type", "request")],
            )
        })
        .collect();

    // Store only the first 100: nothing after them may go, whatever --keep says.
    env.genalytics()
        .args(["transfer", "--max-events", "100", "--keep", "0"])
        .ok();
    let left = stream_ids(&mut con, &key);
    assert_eq!(left, ids[99..].to_vec(), "only stored entries were trimmed");

    // Store the rest with the default --keep 2h: the last two hours stay.
    env.genalytics().arg("transfer").ok();
    let horizon = now_ms - Duration::hours(2).num_milliseconds();
    let left = stream_ids(&mut con, &key);
    let expected: Vec<String> = ids
        .iter()
        .filter(|id| id.split('-').next().unwrap().parse::<i64>().unwrap() >= horizon - 5_000)
        .cloned()
        .collect();
    // The horizon moved by the few seconds the run took: allow one minute.
    assert!(
        left.len() == expected.len() || left.len() + 1 == expected.len(),
        "{} left, {} expected",
        left.len(),
        expected.len()
    );
    assert_eq!(left.last(), ids.last());
    assert_eq!(stored_ids(&mut env.db()).len(), 300);
}

#[test]
fn a_running_transfer_makes_the_next_exit_0_or_wait() {
    let env = migrated();
    env.genalytics()
        .args([
            "simulate", "--events", "500", "--hours", "1", "--seed", "5", "-q",
        ])
        .ok();
    // Hold the transfer lock as a running transfer would.
    let mut holder = env.db();
    holder
        .execute(
            "SELECT pg_advisory_lock(x'67656e61'::int, hashtext($1))",
            &[&env.stream_key()],
        )
        .unwrap();
    let ran = env.genalytics().arg("transfer").ok();
    assert!(ran.stdout.contains("another transfer"), "{}", ran.stdout);
    assert!(stored_ids(&mut env.db()).is_empty());

    let waiting = env
        .genalytics()
        .args(["transfer", "--wait"])
        .command()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(stored_ids(&mut env.db()).is_empty(), "--wait must wait");
    drop(holder);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("transferred 500 events"));
}

#[test]
fn streams_with_the_same_entry_ids_are_kept_apart() {
    let env = migrated();
    let mut con = env.redis();
    let other = format!("{}_other:generation_events:stream", env.namespace);
    // The same entry IDs in two streams are different events.
    for (key, kind) in [
        (env.stream_key(), "request"),
        (other.clone(), "cancellation"),
    ] {
        for id in ["1795821600000-0", "1795821600000-1"] {
            xadd(&mut con, &key, id, &[("event_type", kind)]);
        }
    }
    env.genalytics().args(["transfer", "--keep", "0"]).ok();
    let ran = env
        .genalytics()
        .args(["transfer", "--keep", "0", "--stream", &other])
        .ok();
    assert!(
        ran.stdout.starts_with("transferred 2 events"),
        "{}",
        ran.stdout
    );
    let mut db = env.db();
    let rows: Vec<(String, String, String)> = db
        .query(
            "SELECT s.stream_key, e.stream_id, e.event_type FROM generation_events e
             JOIN genalytics_streams s ON s.id = e.stream ORDER BY 1, 2",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let mut want: Vec<(String, String, String)> =
        [(other, "cancellation"), (env.stream_key(), "request")]
            .into_iter()
            .flat_map(|(key, kind)| {
                ["1795821600000-0", "1795821600000-1"]
                    .map(|id| (key.clone(), id.to_string(), kind.to_string()))
            })
            .collect();
    want.sort();
    assert_eq!(rows, want);
}

#[test]
fn libpq_parameters_reach_postgresql_as_written() {
    let env = TestEnv::new();
    let mut db = env.db();
    db.batch_execute("CREATE SCHEMA elsewhere").unwrap();
    let url = format!(
        "{}?options=-c%20search_path%3Delsewhere&application_name=nightly+etl",
        env.database_url()
    );
    env.genalytics()
        .args(["migrate", "-q", "--database-url", &url])
        .ok();
    let schemas: Vec<String> = db
        .query(
            "SELECT DISTINCT table_schema::text FROM information_schema.tables
             WHERE table_name = 'generation_events'",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(schemas, ["elsewhere"]);
    // The application name, as libpq decodes it (a plus is a plus).
    let follow = env
        .genalytics()
        .args(["transfer", "--follow", "--database-url", &url])
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the follower's connection", 30, || {
        !db.query(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'nightly+etl'",
            &[],
        )
        .unwrap()
        .is_empty()
    });
    crate::harness::sigterm(&follow);
    let out = follow.wait_with_output().unwrap();
    assert!(out.status.success());
}

#[test]
fn transfer_needs_a_migrated_database() {
    let env = TestEnv::new();
    let ran = env.genalytics().arg("transfer").code(1);
    assert!(
        ran.stderr.contains("run `genalytics migrate`"),
        "{}",
        ran.stderr
    );
}

#[test]
fn follow_picks_up_new_entries_and_commits_everything_on_sigterm() {
    let env = migrated();
    let mut follower = env
        .genalytics()
        .args(["transfer", "--follow"])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let key = env.stream_key();
    let mut con = env.redis();
    let mut written = Vec::new();
    for round in 0..5 {
        for n in 0..40 {
            written.push(xadd(
                &mut con,
                &key,
                "*",
                &[
                    ("event_type", "request"),
                    ("prompt_tokens", &format!("{}", round * 40 + n)),
                ],
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let mut db = env.db();
    wait_for("the follower to store what was written", 30, || {
        stored_ids(&mut db).len() == written.len()
    });
    // Entries written just before the stop are committed too.
    for _ in 0..25 {
        written.push(xadd(&mut con, &key, "*", &[("event_type", "request")]));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    crate::harness::sigterm(&follower);
    let status = follower.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(follower.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(stdout.starts_with("transferred"), "{stdout}");
    written.sort();
    let stored = stored_ids(&mut db);
    // Everything read before the signal is committed; anything after it
    // is left for the next run, never lost.
    env.genalytics().arg("transfer").ok();
    let after_next_run = stored_ids(&mut db);
    assert!(stored.len() >= 200);
    assert_eq!(after_next_run, written);
}

#[test]
fn without_scripting_in_redis_transfer_reads_and_trims_all_the_same() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    // A managed Redis that forbids scripts: a user without them.
    let _: String = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("noscripts")
        .arg("on")
        .arg(">noscripts")
        .arg("~*")
        .arg("+@all")
        .arg("-@scripting")
        .query(&mut con)
        .unwrap();
    let url = format!("redis://noscripts:noscripts@127.0.0.1:{}", env.redis.port());
    let mut written: Vec<String> = (0..300)
        .map(|i| {
            let kind = if i % 3 == 0 { "request" } else { "completion" };
            xadd(&mut con, &key, "*", &[("event_type", kind)])
        })
        .collect();
    let ran = env
        .genalytics()
        .env("REDIS_URL", &url)
        .args(["transfer", "--batch-size", "40", "--keep", "0"])
        .ok();
    assert!(
        ran.stdout.starts_with("transferred 300 events"),
        "{}",
        ran.stdout
    );
    // Trimmed up to the position, which stays.
    assert_eq!(stream_ids(&mut con, &key), written[299..]);

    let follower = env
        .genalytics()
        .env("REDIS_URL", &url)
        .args(["transfer", "--follow", "--keep", "0", "-v"])
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    written.extend((0..25).map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")])));
    let mut db = env.db();
    wait_for("the follower to store them", 30, || {
        stored_ids(&mut db).len() == 325
    });
    crate::harness::sigterm(&follower);
    let out = follower.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(stream_ids(&mut con, &key), written[324..], "{log}");
    written.sort();
    assert_eq!(stored_ids(&mut db), written);
}

#[test]
fn redis_forgetting_its_scripts_mid_run_costs_nothing() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let mut pipe = redis::pipe();
    for i in 0..20_000 {
        pipe.cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("event_type")
            .arg(if i % 2 == 0 {
                "request"
            } else {
                "cancellation"
            })
            .ignore();
    }
    pipe.exec(&mut con).unwrap();
    // SCRIPT FLUSH over and over while the backlog is read, reads sent
    // ahead among them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flushes = {
        let stop = std::sync::Arc::clone(&stop);
        let mut con = env.redis();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _: String = redis::cmd("SCRIPT").arg("FLUSH").query(&mut con).unwrap();
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            n
        })
    };
    let ran = env
        .genalytics()
        .args(["transfer", "--batch-size", "300", "--keep", "100h"])
        .ok();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        flushes.join().unwrap() > 10,
        "the scripts were flushed during the run"
    );
    assert!(
        ran.stdout.starts_with("transferred 20,000 events"),
        "{}",
        ran.stdout
    );
    assert_eq!(stored_ids(&mut env.db()).len(), 20_000);
}
