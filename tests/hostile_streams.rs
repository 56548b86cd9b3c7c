//! The stream changed under its key. Deleted and recreated (with
//! IDs below the position, or the very same ones), flushed, restored from
//! an older snapshot, trimmed past the position by the producer's cap, an
//! entry at the highest ID, a position set back or written by hand: each is
//! read on without losing an entry or storing one twice, or refused with
//! the cause named (a replaced stream until `--new-stream` says so).

use crate::harness::{TestEnv, migrated, stored_ids, stream_ids, xadd};
use crate::hostile::dead_letters;

pub(crate) fn position(db: &mut postgres::Client, key: &str) -> String {
    db.query_one(
        "SELECT last_id FROM genalytics_transfer_state WHERE stream_key = $1",
        &[&key],
    )
    .unwrap()
    .get(0)
}

/// Ten requests `5000-0` … `5000-9`, stored with `--keep 0`: the position
/// is `5000-9`.
fn ten_requests_stored() -> (TestEnv, String, redis::Connection) {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    for seq in 0..10 {
        xadd(
            &mut con,
            &key,
            &format!("5000-{seq}"),
            &[("event_type", "request")],
        );
    }
    env.genalytics()
        .args(["transfer", "-q", "--keep", "0"])
        .ok();
    (env, key, con)
}

#[test]
fn a_stream_recreated_below_the_position_is_stored_only_when_told() {
    let (env, key, mut con) = ten_requests_stored();
    // Deleted and recreated, with IDs below the position.
    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut con).unwrap();
    let recreated: Vec<String> = (0..5)
        .map(|seq| {
            xadd(
                &mut con,
                &key,
                &format!("3000-{seq}"),
                &[("event_type", "cancellation")],
            )
        })
        .collect();

    let ran = env.genalytics().args(["transfer", "--keep", "0"]).code(1);
    assert_eq!(ran.stderr.trim_end().lines().count(), 1, "{}", ran.stderr);
    assert!(ran.stderr.contains("--new-stream"), "{}", ran.stderr);
    assert!(ran.stderr.contains("5000-9"), "{}", ran.stderr);
    assert_eq!(stream_ids(&mut con, &key), recreated, "nothing was trimmed");
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["stream_identity"], "replaced_below_position");
    assert_eq!(status["behind"], 5);
    assert!(
        status["warnings"].to_string().contains("--new-stream"),
        "{status:#}"
    );
    let check = env.genalytics().args(["check", "--max-lag", "1h"]).code(3);
    assert!(check.stdout.contains("replaced below"), "{}", check.stdout);

    let ran = env
        .genalytics()
        .args(["transfer", "--new-stream", "--keep", "0"])
        .ok();
    assert!(
        ran.stdout.starts_with("transferred 5 events"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("replaced"), "{}", ran.stdout);
    env.genalytics().arg("transfer").ok();
    env.genalytics().args(["check", "--max-lag", "1h"]).ok();
    let mut db = env.db();
    let per_stream: Vec<(i32, String, i64)> = crate::harness::events_per_incarnation(&mut db);
    assert_eq!(
        per_stream,
        [
            (1, "request".to_string(), 10),
            (2, "cancellation".to_string(), 5)
        ]
    );
    // The flag is for a replaced stream only.
    let ran = env.genalytics().args(["transfer", "--new-stream"]).code(2);
    assert!(ran.stderr.contains("still the one"), "{}", ran.stderr);
}

#[test]
fn a_stream_that_came_back_empty_is_read_on_and_the_reset_named() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    for _ in 0..10 {
        xadd(&mut con, &key, "*", &[("event_type", "request")]);
    }
    env.genalytics().args(["transfer", "-q"]).ok();
    // Three more, of which a transfer stores one and sees Redis report
    // all; then Redis loses everything.
    for _ in 0..3 {
        xadd(&mut con, &key, "*", &[("event_type", "request")]);
    }
    env.genalytics()
        .args(["transfer", "-q", "--max-events", "1"])
        .ok();
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["behind"], 2);
    let _: String = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(xadd(&mut con, &key, "*", &[("event_type", "cancellation")]));
    }
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["stream_identity"], "replaced", "{status:#}");
    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout.starts_with("transferred 4 events"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("the old one had received at least 2 entries that were never stored"),
        "{}",
        ran.stdout
    );
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["stream_identity"], "same");
    assert_eq!(status["stream_resets"], 1);
    assert_eq!(status["last_reset_lost_entries"], 2);
    assert!(
        status["warnings"]
            .to_string()
            .contains("at least 2 entries"),
        "{status:#}"
    );
    let mut db = env.db();
    assert_eq!(stored_ids(&mut db).len(), 15);
}

#[test]
fn a_stream_restored_from_an_older_snapshot_is_read_on_without_loss() {
    let mut env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let mut written: Vec<String> = (0..20)
        .map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")]))
        .collect();
    let _: String = redis::cmd("SAVE").query(&mut con).unwrap();
    written.extend((0..10).map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")])));
    env.genalytics()
        .args(["transfer", "-q", "--keep", "100h"])
        .ok();
    // Redis comes back from the snapshot: the last ten are gone from it,
    // though stored, and its IDs go back below the position.
    env.redis.restart_from_last_save().unwrap();
    let mut con = env.redis();
    assert_eq!(stream_ids(&mut con, &key), written[..20]);
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["stream_identity"], "rewound", "{status:#}");
    written.extend((0..5).map(|_| xadd(&mut con, &key, "*", &[("event_type", "cancellation")])));
    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout.starts_with("transferred 5 events"),
        "{}",
        ran.stdout
    );
    assert!(ran.stderr.contains("older state"), "{}", ran.stderr);
    let mut db = env.db();
    written.sort();
    assert_eq!(stored_ids(&mut db), written);
    env.genalytics().args(["check", "--max-lag", "1h"]).ok();
}

#[test]
fn a_new_stream_reusing_a_stored_entry_id_is_not_taken_for_an_older_state() {
    let (env, key, mut con) = ten_requests_stored();
    // Another stream, whose newest entry below the position has the ID of
    // one stored — but other content.
    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut con).unwrap();
    let recreated = [
        xadd(&mut con, &key, "3000-0", &[("event_type", "cancellation")]),
        xadd(&mut con, &key, "5000-4", &[("event_type", "cancellation")]),
    ];
    let status: serde_json::Value = env.status_json();
    assert_eq!(
        status["stream_identity"], "replaced_below_position",
        "{status:#}"
    );
    let ran = env.genalytics().args(["transfer", "--keep", "0"]).code(1);
    assert!(ran.stderr.contains("--new-stream"), "{}", ran.stderr);
    assert_eq!(stream_ids(&mut con, &key), recreated, "nothing was trimmed");
    env.genalytics()
        .args(["transfer", "-q", "--new-stream"])
        .ok();
    let mut db = env.db();
    let cancellations: i64 = db
        .query_one(
            "SELECT count(*) FROM generation_events e JOIN genalytics_streams s ON s.id = e.stream
             WHERE e.event_type = 'cancellation' AND s.incarnation = 2",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cancellations, 2);

    // The same shape with the very entry stored: an older state of the
    // stream, read on.
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let kept = xadd(&mut con, &key, "3000-0", &[("event_type", "request")]);
    xadd(&mut con, &key, "4000-0", &[("event_type", "completion")]);
    env.genalytics()
        .args(["transfer", "-q", "--keep", "0"])
        .ok();
    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut con).unwrap();
    xadd(&mut con, &key, "3000-0", &[("event_type", "request")]);
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["stream_identity"], "rewound", "{status:#} ({kept})");
}

#[test]
fn the_producers_cap_trimming_the_position_is_read_on_not_called_a_new_stream() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    for _ in 0..10 {
        xadd(&mut con, &key, "*", &[("event_type", "request")]);
    }
    env.genalytics()
        .args(["transfer", "-q", "--keep", "100h"])
        .ok();
    // The producer's MAXLEN cap takes the position's entry and more; Redis
    // 7.0 records no deletion for it.
    let mut added = Vec::new();
    for _ in 0..50 {
        let id: String = redis::cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg(20)
            .arg("*")
            .arg("event_type")
            .arg("completion")
            .query(&mut con)
            .unwrap();
        added.push(id);
    }
    let survivors = stream_ids(&mut con, &key);
    assert_eq!(survivors, added[30..], "the cap trimmed past the position");
    let status: serde_json::Value = env.status_json();
    assert!(
        ["gap", "same"].contains(&status["stream_identity"].as_str().unwrap()),
        "{status:#}"
    );
    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout.starts_with("transferred 20 events"),
        "{}",
        ran.stdout
    );
    assert!(!ran.stdout.contains("replaced"), "{}", ran.stdout);
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["stream_resets"], 0, "{status:#}");
    let mut db = env.db();
    assert_eq!(stored_ids(&mut db).len(), 30);
}

#[test]
fn an_entry_at_the_highest_id_is_stored_and_later_runs_still_work() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    xadd(&mut con, &key, "1000-0", &[("event_type", "request")]);
    let last = "18446744073709551615-18446744073709551615";
    xadd(
        &mut con,
        &key,
        last,
        &[
            ("event_type", "request"),
            ("timestamp", "2026-11-27T14:00:00"),
        ],
    );
    for _ in 0..2 {
        let ran = env.genalytics().args(["transfer", "--keep", "0"]).ok();
        assert!(ran.stdout.contains("0 entries behind"), "{}", ran.stdout);
    }
    let mut db = env.db();
    assert_eq!(position(&mut db, &key), last);
    assert_eq!(stored_ids(&mut db).len(), 2);
    env.genalytics().args(["status"]).ok();
    env.genalytics().args(["check", "--max-lag", "1h"]).ok();
}

#[test]
fn a_position_set_back_by_hand_reads_again_and_stores_nothing_twice() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let written: Vec<String> = (0..20)
        .map(|i| {
            let kind = if i % 4 == 3 { "nonsense" } else { "request" };
            xadd(&mut con, &key, "*", &[("event_type", kind)])
        })
        .collect();
    env.genalytics()
        .args(["transfer", "-q", "--keep", "100h"])
        .ok();
    let mut db = env.db();
    db.execute(
        "UPDATE genalytics_transfer_state SET last_id = $1",
        &[&written[4]],
    )
    .unwrap();
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["behind"], 15, "{status:#}");
    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout
            .starts_with("transferred 0 events and 0 rejected entries"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("skipped 15 entries that were already stored"),
        "{}",
        ran.stdout
    );
    assert_eq!(stored_ids(&mut db).len(), 15);
    assert_eq!(dead_letters(&mut db).len(), 5);
    assert_eq!(position(&mut db, &key), written[19]);
}

#[test]
fn a_stream_recreated_with_the_same_ids_is_not_taken_for_the_old_one_nor_trimmed() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let ids: Vec<String> = (0..20).map(|i| format!("{}-0", 5_000 + i)).collect();
    for id in &ids {
        xadd(&mut con, &key, id, &[("event_type", "request")]);
    }
    env.genalytics()
        .args(["transfer", "-q", "--keep", "100h"])
        .ok();
    // Deleted and recreated in one step: the same IDs, other entries, and
    // some above the position.
    let mut recreate = redis::pipe();
    recreate.atomic().cmd("DEL").arg(&key).ignore();
    for id in ids
        .iter()
        .cloned()
        .chain((0..5).map(|i| format!("{}-0", 6_000 + i)))
    {
        recreate
            .cmd("XADD")
            .arg(&key)
            .arg(id)
            .arg("event_type")
            .arg("cancellation")
            .ignore();
    }
    recreate.exec(&mut con).unwrap();
    let before = stream_ids(&mut con, &key);
    assert_eq!(before.len(), 25);
    let status: serde_json::Value = env.status_json();
    assert_eq!(
        status["stream_identity"], "replaced_below_position",
        "{status:#}"
    );
    let ran = env.genalytics().args(["transfer", "--keep", "0"]).code(1);
    assert!(ran.stderr.contains("--new-stream"), "{}", ran.stderr);
    assert_eq!(stream_ids(&mut con, &key), before, "nothing was trimmed");
    env.genalytics()
        .args(["transfer", "-q", "--new-stream", "--keep", "0"])
        .ok();
    let mut db = env.db();
    let per_stream: Vec<(i32, String, i64)> = crate::harness::events_per_incarnation(&mut db);
    assert_eq!(
        per_stream,
        [
            (1, "request".to_string(), 20),
            (2, "cancellation".to_string(), 25)
        ]
    );
}

#[test]
fn a_position_written_by_hand_is_read_as_an_entry_id_or_named_as_the_cause() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let written: Vec<String> = (0..10)
        .map(|i| {
            xadd(
                &mut con,
                &key,
                &format!("{}-0", 7_000 + i),
                &[("event_type", "request")],
            )
        })
        .collect();
    env.genalytics()
        .args(["transfer", "-q", "--keep", "100h"])
        .ok();
    let mut db = env.db();
    // `0` and a bare millisecond time are entry IDs as Redis reads them.
    for hand in ["0", "7004"] {
        db.execute(
            "UPDATE genalytics_transfer_state SET last_id = $1",
            &[&hand],
        )
        .unwrap();
        let ran = env.genalytics().arg("transfer").ok();
        assert!(ran.stdout.contains("skipped"), "{hand}: {}", ran.stdout);
        assert_eq!(position(&mut db, &key), written[9], "{hand}");
    }
    // Past the stream's end: not taken for Redis having lost entries.
    db.execute(
        "UPDATE genalytics_transfer_state SET last_id = '9999999999999-0'",
        &[],
    )
    .unwrap();
    xadd(&mut con, &key, "8000-0", &[("event_type", "request")]);
    let ran = env.genalytics().arg("transfer").code(1);
    assert!(ran.stderr.contains("set by hand"), "{}", ran.stderr);
    assert_eq!(stored_ids(&mut db).len(), 10);
}
