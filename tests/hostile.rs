//! Nothing in the data stops the pipeline. Hostile entries mixed
//! with valid ones, rows PostgreSQL refuses for reasons the parser does not
//! know, random bytes, absurd numbers, an hour whose rollup PostgreSQL
//! refuses. Where a case says by hand whether its entry is stored or
//! dead-lettered, the test checks every entry landed exactly once, in the
//! right place, byte for byte; random entries land once, one way or the
//! other; a failing hour holds up no other hour.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rand::{RngExt, SeedableRng};

use crate::harness::{TestEnv, migrated, seed, stored_ids, xadd};
use crate::hostile_streams::position;

/// Appends an entry whose names and values are any bytes; returns its ID.
#[track_caller]
fn xadd_raw(
    con: &mut redis::Connection,
    key: &str,
    id: &str,
    fields: &[(Vec<u8>, Vec<u8>)],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg(id);
    for (name, value) in fields {
        cmd.arg(name.as_slice()).arg(value.as_slice());
    }
    cmd.query(con)
        .unwrap_or_else(|err| panic!("XADD failed: {err}"))
}

fn b(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// How the test expects an entry to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Stored,
    /// Dead-lettered, with this in its reason.
    Rejected(&'static str),
    /// Too large to store: dead-lettered with each name and value cut at
    /// 64 KiB.
    Cut,
}

/// What the dead letter of an entry too large to store keeps: the first
/// 1,000 fields and 1 MiB, each name and value at most 64 KiB.
fn cut(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut kept = 0;
    let mut take = |s: &[u8]| {
        let room = (64 << 10).min((1 << 20) - kept);
        let part = s[..s.len().min(room)].to_vec();
        kept += part.len();
        part
    };
    fields
        .iter()
        .take(1_000)
        .map(|(n, v)| (take(n), take(v)))
        .collect()
}

/// The dead letters: stream ID → (raw fields as stored, reason).
pub(crate) fn dead_letters(db: &mut postgres::Client) -> BTreeMap<String, (Vec<Vec<u8>>, String)> {
    db.query(
        "SELECT stream_id, raw_fields, reason FROM generation_events_rejected",
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|row| (row.get(0), (row.get(1), row.get(2))))
    .collect()
}

/// The entry's fields flattened as the dead letter keeps them.
fn flat(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    fields
        .iter()
        .flat_map(|(name, value)| [name.clone(), value.clone()])
        .collect()
}

#[track_caller]
fn assert_landed_once(env: &TestEnv, entries: &[(String, Vec<(Vec<u8>, Vec<u8>)>, Fate)]) {
    let mut db = env.db();
    let stored = stored_ids(&mut db);
    let letters = dead_letters(&mut db);
    let mut want_stored: Vec<String> = entries
        .iter()
        .filter(|(_, _, fate)| *fate == Fate::Stored)
        .map(|(id, _, _)| id.clone())
        .collect();
    want_stored.sort();
    assert_eq!(stored, want_stored, "stored rows");
    let rejected: Vec<&(String, Vec<(Vec<u8>, Vec<u8>)>, Fate)> = entries
        .iter()
        .filter(|(_, _, fate)| *fate != Fate::Stored)
        .collect();
    assert_eq!(
        letters.len(),
        rejected.len(),
        "dead letters: {:?}",
        letters.keys()
    );
    for (id, fields, fate) in rejected {
        let (raw, reason) = letters
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not a dead letter"));
        let kept: Vec<(Vec<u8>, Vec<u8>)> = match fate {
            Fate::Cut => cut(fields),
            _ => fields.clone(),
        };
        assert_eq!(
            raw,
            &flat(&kept),
            "{id}: the dead letter keeps the entry exactly (cut when too large)"
        );
        match fate {
            Fate::Rejected(why) => assert!(reason.contains(why), "{id}: {reason}"),
            Fate::Cut => assert!(reason.contains("cut at 64 KiB"), "{id}: {reason}"),
            Fate::Stored => {}
        }
        assert!(!reason.chars().any(char::is_control), "{id}: {reason:?}");
    }
}

#[test]
fn hostile_entries_become_dead_letters_and_never_stop_the_pipeline() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let req = || vec![(b("event_type"), b("request"))];
    let with = |extra: &[(&[u8], &[u8])]| {
        let mut fields = req();
        fields.extend(extra.iter().map(|(n, v)| (n.to_vec(), v.to_vec())));
        fields
    };
    let completion = |extra: &[(&[u8], &[u8])]| {
        let mut fields = vec![
            (b("event_type"), b("completion")),
            (b("success"), b("True")),
        ];
        fields.extend(extra.iter().map(|(n, v)| (n.to_vec(), v.to_vec())));
        fields
    };
    let megabytes = vec![b'x'; 2 << 20];
    let many: Vec<(Vec<u8>, Vec<u8>)> = req()
        .into_iter()
        .chain((0..100_000).map(|i| (format!("f{i}").into_bytes(), i.to_string().into_bytes())))
        .collect();
    let cases: Vec<(Vec<(Vec<u8>, Vec<u8>)>, Fate)> = vec![
        // The cases.
        (
            vec![
                (b("event_type"), b("request")),
                (b("event_type"), b"completion\0x".to_vec()),
            ],
            Fate::Rejected("NUL"),
        ),
        (
            vec![
                (b("event_type"), b("completion")),
                (b("success"), b("False")),
                (b("error_type"), vec![b'E'; 9_000]),
            ],
            Fate::Rejected("error_type"),
        ),
        (
            completion(&[(b"model_checkpoint", &[b'M'; 4_000])]),
            Fate::Rejected("model_checkpoint"),
        ),
        // Repeats: identical is one field, different is a dead letter
        // keeping every value.
        (with(&[(b"event_type", b"request")]), Fate::Stored),
        (
            with(&[(b"gpu", b"a"), (b"gpu", b"b"), (b"gpu", b"c")]),
            Fate::Rejected("appears twice"),
        ),
        // Bytes PostgreSQL text cannot hold, in names and values.
        (
            with(&[(b"error_message", b"nul\0inside")]),
            Fate::Rejected("NUL"),
        ),
        (with(&[(b"nul\0name", b"x")]), Fate::Rejected("NUL")),
        (
            with(&[(b"error_message", b"\xff\xfe not utf-8")]),
            Fate::Rejected("UTF-8"),
        ),
        (with(&[(b"bad\xc3name", b"x")]), Fate::Rejected("UTF-8")),
        (
            vec![(b("event_type"), b"req\xffuest".to_vec())],
            Fate::Rejected("UTF-8"),
        ),
        // Control characters are text: stored, and escaped when shown.
        (
            completion(&[
                (b"model_checkpoint", b"evil\x1b]0;pwned\x07\rmodel"),
                (b"duration_ms", b"1000"),
            ]),
            Fate::Stored,
        ),
        // Sizes: megabytes of value, a hundred thousand fields.
        (
            with(&[(b"error_message", megabytes.as_slice())]),
            Fate::Stored,
        ),
        (many, Fate::Cut),
        (with(&[(b"blob", &vec![b'y'; 17 << 20])]), Fate::Cut),
        // Numbers beyond every column.
        (completion(&[(b"batch_size", b"2147483647")]), Fate::Stored),
        (
            completion(&[(b"batch_size", b"2147483648")]),
            Fate::Rejected("too large"),
        ),
        (
            completion(&[(b"duration_ms", b"99999999999999999999999999")]),
            Fate::Rejected("too large"),
        ),
        (
            completion(&[(b"duration_ms", b"-1")]),
            Fate::Rejected("negative"),
        ),
        (
            completion(&[(b"duration_ms", b"1e3")]),
            Fate::Rejected("not an integer"),
        ),
        (
            completion(&[(b"image_dimensions", b"[1e131073]")]),
            Fate::Rejected("numeric"),
        ),
        (
            completion(&[(
                b"image_dimensions",
                b"[1e400, 123456789012345678901234567890]",
            )]),
            Fate::Stored,
        ),
        (
            completion(&[(b"image_dimensions", "[".repeat(200).as_bytes())]),
            Fate::Rejected("JSON"),
        ),
        // Times: far past and future, offsets without a colon.
        (
            with(&[(b"timestamp", b"0001-01-01T00:00:00")]),
            Fate::Rejected("outside"),
        ),
        (
            with(&[(b"timestamp", b"+275760-09-13T00:00:00Z")]),
            Fate::Rejected("timestamp"),
        ),
        (
            with(&[(b"timestamp", b"2300-01-01T00:45:00")]),
            Fate::Stored,
        ),
        (
            with(&[(b"timestamp", b"2026-11-27T19:33:07+0530")]),
            Fate::Stored,
        ),
        // Not an entry at all.
        (
            vec![(b("user_id"), b("nobody"))],
            Fate::Rejected("event_type is missing"),
        ),
        (
            vec![(b("event_type"), b("\u{1b}[2Jretry"))],
            Fate::Rejected("event_type"),
        ),
    ];
    // Every hostile entry between two valid ones.
    let mut entries = Vec::new();
    for (fields, fate) in cases {
        let id = xadd_raw(&mut con, &key, "*", &req());
        entries.push((id, req(), Fate::Stored));
        let id = xadd_raw(&mut con, &key, "*", &fields);
        entries.push((id, fields, fate));
    }
    let id = xadd_raw(&mut con, &key, "*", &req());
    entries.push((id, req(), Fate::Stored));

    let ran = env
        .genalytics()
        .args(["transfer", "--batch-size", "7"])
        .ok();
    let stored = entries.iter().filter(|e| e.2 == Fate::Stored).count();
    assert!(
        ran.stdout.starts_with(&format!(
            "transferred {stored} events and {} rejected entries",
            entries.len() - stored
        )),
        "{}",
        ran.stdout
    );
    assert_landed_once(&env, &entries);
    let mut db = env.db();
    assert_eq!(position(&mut db, &key), entries.last().unwrap().0);

    // A second run changes nothing.
    let again = env.genalytics().arg("transfer").ok();
    assert!(
        again
            .stdout
            .starts_with("transferred 0 events and 0 rejected"),
        "{}",
        again.stdout
    );
    assert_landed_once(&env, &entries);

    // JSON numbers are kept exactly (as numeric, no float round trip).
    let exact: bool = db
        .query_one(
            "SELECT image_dimensions = '[1e400, 123456789012345678901234567890]'::jsonb
             FROM generation_events WHERE image_dimensions IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(exact);
    // The far-future event is counted once, in a whole hour.
    env.genalytics()
        .args(["aggregate", "-q", "--include-current"])
        .ok();
    let far: Vec<(DateTime<Utc>, i32)> = db
        .query(
            "SELECT timestamp, total_requests FROM generation_metrics_hourly WHERE timestamp > '2100-01-01'",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(far, [("2300-01-01T00:00:00Z".parse().unwrap(), 1)]);
    let off_the_hour: i64 = db
        .query_one(
            "SELECT count(*) FROM generation_metrics_hourly WHERE timestamp <> date_trunc('hour', timestamp, 'UTC')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(off_the_hour, 0);

    // Shown to a person, the model's control characters are escaped; JSON
    // escapes them by itself.
    let table = env
        .genalytics()
        .args(["report", "models", "--until", "2100-01-01"])
        .args(["--days", "36500"])
        .ok();
    assert!(
        table.stdout.contains("evil\\x1b]0;pwned\\x07\\rmodel"),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains('\u{1b}') && !table.stdout.contains('\u{7}'));
    let json = env
        .genalytics()
        .args([
            "report",
            "models",
            "--until",
            "2100-01-01",
            "--days",
            "36500",
            "--format",
            "json",
        ])
        .ok();
    assert!(
        json.stdout.contains("evil\\u001b]0;pwned\\u0007\\rmodel"),
        "{}",
        json.stdout
    );
}

#[test]
fn rows_postgresql_refuses_are_isolated_and_dead_lettered_with_its_words() {
    let env = migrated();
    let mut db = env.db();
    // A rule the parser knows nothing of.
    db.batch_execute(
        "ALTER TABLE generation_events ADD CONSTRAINT no_thirteen CHECK (prompt_tokens IS DISTINCT FROM 13)",
    )
    .unwrap();
    let key = env.stream_key();
    let mut con = env.redis();
    let mut entries = Vec::new();
    let seed = seed();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for i in 0..2_000 {
        let tokens: u32 = if rng.random_bool(0.004) || i == 1_999 {
            13
        } else {
            rng.random_range(14..90)
        };
        let mut fields = vec![
            (b("event_type"), b("request")),
            (b("prompt_tokens"), tokens.to_string().into_bytes()),
        ];
        if i % 500 == 499 {
            // Large enough that the batch lets its raw fields go: a refused
            // one is read again from Redis for its dead letter.
            fields.push((b("note"), vec![b'n'; 100_000]));
        }
        let id = xadd_raw(&mut con, &key, "*", &fields);
        let fate = if tokens == 13 {
            Fate::Rejected("no_thirteen")
        } else {
            Fate::Stored
        };
        entries.push((id, fields, fate));
    }
    let ran = env
        .genalytics()
        .args(["transfer", "--batch-size", "700", "--format", "json"])
        .ok();
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let refused = entries.iter().filter(|e| e.2 != Fate::Stored).count();
    assert!(refused >= 1);
    assert_eq!(summary["events"], entries.len() - refused, "{summary}");
    assert_eq!(summary["rejected"], refused, "{summary}");
    assert_landed_once(&env, &entries);
    let reason: String = db
        .query_one("SELECT reason FROM generation_events_rejected LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert!(
        reason.starts_with("PostgreSQL refused the row: new row for relation"),
        "{reason}"
    );
    assert!(reason.contains("23514"), "{reason}");
    assert_eq!(position(&mut db, &key), entries.last().unwrap().0);
}

/// Random bytes that lean towards what breaks things.
fn nasty_bytes(rng: &mut impl RngExt, max: usize) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1 => rng.random_range(1_000..max.max(1_001)),
        _ => rng.random_range(0..24),
    };
    (0..len)
        .map(|_| match rng.random_range(0..6) {
            0 => 0,
            1 => rng.random_range(0x80..=0xff),
            2 => rng.random_range(0..0x20),
            _ => rng.random_range(b'0'..=b'z'),
        })
        .collect()
}

/// Field names and values the random entries are mostly made of.
const NAMES: &[&str] = &[
    "event_type",
    "timestamp",
    "success",
    "duration_ms",
    "user_id",
    "generation_id",
    "image_dimensions",
    "batch_size",
    "queue_length",
    "error_type",
    "model_checkpoint",
    "generation_type",
    "extra",
];
const VALUES: &[&str] = &[
    "request",
    "completion",
    "cancellation",
    "True",
    "false",
    "0",
    "-1",
    "2147483647",
    "2147483648",
    "2026-11-27T14:03:07",
    "2026-11-27T14:03:07+0530",
    "9999-12-31T23:59:59",
    "{\"w\": 1e999999}",
    "{\"w\": [1, 2]}",
    "6f1c2a9e-3b7d-4e1a-9c55-0d2b8f4a7e11",
    "",
    "standard",
    "a-long-generation",
    "priority",
];

#[test]
fn random_entries_through_a_real_transfer_land_exactly_once() {
    let env = migrated();
    let mut db = env.db();
    db.batch_execute(
        "ALTER TABLE generation_events ADD CONSTRAINT short_types CHECK (length(coalesce(generation_type, '')) < 12)",
    )
    .unwrap();
    let key = env.stream_key();
    let mut con = env.redis();
    let seed = seed();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);

    let mut written = Vec::new();
    for _ in 0..400 {
        let count = rng.random_range(0..12);
        let mut fields = Vec::new();
        if rng.random_bool(0.8) {
            fields.push((b("event_type"), b(VALUES[rng.random_range(0..3)])));
        }
        for _ in 0..count {
            let name = if rng.random_bool(0.7) {
                b(NAMES[rng.random_range(0..NAMES.len())])
            } else {
                nasty_bytes(&mut rng, 3_000)
            };
            let value = if rng.random_bool(0.6) {
                b(VALUES[rng.random_range(0..VALUES.len())])
            } else {
                nasty_bytes(&mut rng, 5_000)
            };
            fields.push((name, value));
        }
        if fields.is_empty() {
            fields.push((b("empty"), Vec::new()));
        }
        let id = xadd_raw(&mut con, &key, "*", &fields);
        written.push((id, fields));
    }
    let batch = rng.random_range(1..200).to_string();
    let ran = env
        .genalytics()
        .args(["transfer", "--batch-size", &batch])
        .ok();
    assert!(ran.stdout.starts_with("transferred"), "{}", ran.stdout);
    // The fate of each is whatever the pipeline decided, but it is one of
    // the two, once, and a dead letter keeps the bytes.
    let stored = stored_ids(&mut db);
    let letters = dead_letters(&mut db);
    assert_eq!(stored.len() + letters.len(), written.len(), "seed {seed}");
    for (id, fields) in &written {
        let in_rows = stored.binary_search(id).is_ok();
        match letters.get(id) {
            Some((raw, _)) => {
                assert!(
                    !in_rows,
                    "{id} is both stored and a dead letter (seed {seed})"
                );
                assert_eq!(raw, &flat(fields), "{id} (seed {seed})");
            }
            None => assert!(
                in_rows,
                "{id} is neither stored nor a dead letter (seed {seed})"
            ),
        }
    }
    assert_eq!(position(&mut db, &key), written.last().unwrap().0);
    env.genalytics().arg("transfer").ok();
    assert_eq!(stored_ids(&mut db), stored, "seed {seed}");
    assert_eq!(dead_letters(&mut db).len(), letters.len(), "seed {seed}");
}

#[test]
fn absurd_numbers_and_a_failing_hour_hold_up_no_other_hour() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let base = genalytics::testing::hour_floor(Utc::now() - Duration::hours(5));
    let at = |h: i64, m: i64| {
        (base + Duration::hours(h) + Duration::minutes(m))
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string()
    };
    for m in [10, 20] {
        xadd(
            &mut con,
            &key,
            "*",
            &[
                ("event_type", "completion"),
                ("success", "True"),
                ("batch_size", "2147483647"),
                ("duration_ms", "2147483647"),
                ("queue_length", "2147483647"),
                ("timestamp", &at(0, m)),
            ],
        );
    }
    for h in 1..4 {
        xadd(
            &mut con,
            &key,
            "*",
            &[("event_type", "request"), ("timestamp", &at(h, 5))],
        );
    }
    env.genalytics().args(["transfer", "-q"]).ok();
    // PostgreSQL refuses the rollup of one hour, for a reason of its own.
    let mut db = env.db();
    let bad_hour = base + Duration::hours(2);
    db.batch_execute(&format!(
        "ALTER TABLE generation_metrics_hourly ADD CONSTRAINT not_this_hour CHECK (timestamp <> '{}')",
        bad_hour.to_rfc3339()
    ))
    .unwrap();
    let ran = env.genalytics().arg("aggregate").code(1);
    assert!(ran.stderr.contains("not_this_hour"), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains(&bad_hour.format("%Y-%m-%d %H:00 UTC").to_string()),
        "{}",
        ran.stderr
    );
    let rows: BTreeMap<DateTime<Utc>, (i64, i32)> = db
        .query(
            "SELECT timestamp, total_images_generated, total_requests FROM generation_metrics_hourly",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    let want: BTreeMap<DateTime<Utc>, (i64, i32)> = [
        (base, (2 * i64::from(i32::MAX), 0)),
        (base + Duration::hours(1), (0, 1)),
        (base + Duration::hours(3), (0, 1)),
    ]
    .into_iter()
    .collect();
    assert_eq!(rows, want, "every other hour is rolled up");
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["failing_hours"], 1, "{status:#}");
    assert!(
        status["last_rollup_error"]
            .as_str()
            .unwrap()
            .contains("not_this_hour")
    );
    let check = env
        .genalytics()
        .args(["check", "--max-stale-hours", "0", "--stale-grace", "0"])
        .code(3);
    assert!(
        check
            .stdout
            .contains("1 complete hour waited for its rollup"),
        "{}",
        check.stdout
    );
    // The cause handled, the hour rolls up and the alarm clears.
    db.batch_execute("ALTER TABLE generation_metrics_hourly DROP CONSTRAINT not_this_hour")
        .unwrap();
    env.genalytics().arg("aggregate").ok();
    env.genalytics()
        .args(["check", "--max-stale-hours", "0", "--stale-grace", "0"])
        .ok();
    let requests: i32 = db
        .query_one(
            "SELECT total_requests FROM generation_metrics_hourly WHERE timestamp = $1",
            &[&bad_hour],
        )
        .unwrap()
        .get(0);
    assert_eq!(requests, 1);
    // And prune is not held up by it any more.
    env.genalytics().args(["prune", "--older-than", "1h"]).ok();
    let _ = key;
}
