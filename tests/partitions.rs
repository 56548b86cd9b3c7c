//! `generation_events` partitioned by day. Existing tables are
//! converted in place, transfer makes the partitions events need, and prune
//! drops whole days without changing a report.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::Value;

use crate::harness::events::{Written, traffic, write};
use crate::harness::{TestEnv, xadd};
use crate::rollups::every_report;

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

fn count(db: &mut postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

fn partition_of_day(db: &mut postgres::Client, day: NaiveDate) -> bool {
    let name = format!("generation_events_p{}", day.format("%Y%m%d"));
    db.query_one(
        "SELECT count(*) = 1 FROM genalytics_event_partitions WHERE name = $1",
        &[&name],
    )
    .unwrap()
    .get(0)
}

fn prune(env: &TestEnv, older_than: &str) -> Value {
    let ran = env
        .genalytics()
        .args(["prune", "--older-than", older_than, "--format", "json"])
        .ok();
    serde_json::from_str(&ran.stdout).unwrap()
}

#[test]
fn prune_drops_whole_days_and_every_report_stays_the_same() {
    crate::harness::clear_of_hour_turn(120);
    let env = migrated();
    let last = genalytics::testing::hour_floor(Utc::now()) - Duration::hours(1);
    // Five days of traffic, every sixth hour, written (and so backfilled)
    // newest first.
    let mut events: Vec<Written> = Vec::new();
    for i in 0..20 {
        events.extend(traffic(last - Duration::hours(6 * i), 30, 900 + i as u64));
    }
    write(&env, &events);
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
    env.genalytics().args(["aggregate", "-q"]).ok();
    let mut db = env.db();
    // Each day got its partition from transfer; nothing strayed.
    let days: BTreeSet<NaiveDate> = events.iter().map(|e| e.at.date_naive()).collect();
    for day in &days {
        assert!(partition_of_day(&mut db, *day), "no partition for {day}");
    }
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events_default"),
        0
    );
    let until = (last + Duration::hours(1)).to_rfc3339();
    let before = every_report(&env, &until, "7");
    assert!(before[0].1["total_requests"].as_i64().unwrap() > 0);

    let pruned = prune(&env, "2d");
    let horizon: DateTime<Utc> = pruned["horizon"].as_str().unwrap().parse().unwrap();
    let whole_days = days
        .iter()
        .filter(|day| {
            day.succ_opt()
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                <= horizon
        })
        .count();
    assert!(whole_days >= 2, "{pruned}");
    assert_eq!(pruned["partitions_dropped"], whole_days, "{pruned}");
    let gone = events.iter().filter(|e| e.at < horizon).count();
    assert_eq!(pruned["events"], gone, "{pruned}");
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events"),
        (events.len() - gone) as i64
    );
    let left_before: i64 = db
        .query_one(
            "SELECT count(*) FROM genalytics_event_partitions WHERE hi <= $1",
            &[&horizon],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        left_before, 0,
        "a partition wholly before the horizon is left"
    );
    assert_eq!(every_report(&env, &until, "7"), before);

    // A late request for a dropped day: its partition comes back; prune
    // merges its hour into the rollup before it drops the day again.
    let first_day = *days.first().unwrap();
    let late_at = first_day.and_hms_opt(12, 34, 56).unwrap().and_utc();
    write(&env, &[Written::new(late_at, "request")]);
    env.genalytics().args(["transfer", "-q"]).ok();
    assert!(partition_of_day(&mut db, first_day));
    let sql = format!(
        "SELECT count(*) FROM generation_events WHERE timestamp = '{}'",
        late_at.to_rfc3339()
    );
    assert_eq!(count(&mut db, &sql), 1);
    let pruned = prune(&env, "2d");
    assert_eq!(pruned["partitions_dropped"], 1, "{pruned}");
    assert_eq!(pruned["events"], 1, "{pruned}");
    assert_eq!(count(&mut db, &sql), 0);
    let after = every_report(&env, &until, "7");
    assert_eq!(
        after[0].1["total_requests"].as_i64().unwrap(),
        before[0].1["total_requests"].as_i64().unwrap() + 1
    );
}

/// Rows as an older genalytics stored them: three days of requests and
/// completions, one dated in 1990 and one in 2300. Their hours are queued,
/// as transfer would have queued them.
const ROWS: &str = "
    INSERT INTO generation_events (event_type, user_id, timestamp, duration_ms, success, model_checkpoint)
    SELECT CASE WHEN n % 3 = 0 THEN 'request' ELSE 'completion' END,
           ('00000000-0000-4000-8000-' || lpad((n % 7)::text, 12, '0'))::uuid,
           date_trunc('hour', now()) - interval '3 days' + n * interval '97 seconds',
           CASE WHEN n % 3 = 0 THEN NULL ELSE 500 + n % 4000 END,
           CASE WHEN n % 3 = 0 THEN NULL ELSE n % 5 <> 0 END,
           CASE WHEN n % 3 = 0 THEN NULL ELSE 'model-' || n % 4 END
    FROM generate_series(0, 2600) n;
    INSERT INTO generation_events (event_type, timestamp) VALUES
        ('request', '1990-06-01T12:00:00Z'), ('request', '2300-01-01T00:00:00Z');
    INSERT INTO generation_rollup_queue (hour)
    SELECT DISTINCT date_trunc('hour', timestamp, 'UTC') FROM generation_events
    WHERE timestamp < now() - interval '1 hour';";

fn fingerprint(db: &mut postgres::Client) -> (i64, String) {
    let row = db
        .query_one(
            "SELECT count(*), md5(string_agg(e::text, '|' ORDER BY id)) FROM generation_events e",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn a_table_of_an_older_genalytics_is_partitioned_in_place() {
    crate::harness::clear_of_hour_turn(120);
    let older = TestEnv::new();
    let mut db = older.db();
    genalytics::testing::apply_through(&mut db, 7).unwrap();
    db.batch_execute(ROWS).unwrap();
    let before = fingerprint(&mut db);
    assert_eq!(before.0, 2603);
    // The adopted table's range ends at the day after its newest event
    // short of the stray one.
    let newest: DateTime<Utc> = db
        .query_one(
            "SELECT max(timestamp) FROM generation_events WHERE timestamp < '2100-01-01'",
            &[],
        )
        .unwrap()
        .get(0);
    let cutover = (newest.date_naive() + Duration::days(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let storage = crate::harness::filenode(&mut db, "generation_events");

    older.genalytics().args(["migrate", "-q"]).ok();
    assert_eq!(fingerprint(&mut db), before, "rows changed");
    let adopted = db
        .query_one(
            "SELECT pg_relation_filenode(partition)::int8::oid, name, hi FROM genalytics_event_partitions
             WHERE lo IS NULL AND NOT is_default",
            &[],
        )
        .unwrap();
    assert_eq!(adopted.get::<_, u32>(0), storage, "the table was rewritten");
    let adopted_name: String = adopted.get(1);
    assert_eq!(adopted.get::<_, DateTime<Utc>>(2), cutover);
    let stray = db
        .query_one(
            "SELECT count(*), min(timestamp) FROM generation_events_default",
            &[],
        )
        .unwrap();
    assert_eq!(stray.get::<_, i64>(0), 1, "only the year-2300 row strays");
    let sql = format!("SELECT count(*) FROM \"{adopted_name}\"");
    assert_eq!(count(&mut db, &sql), 2602, "the 1990 row stays in place");

    // The same rows written into a database partitioned from the start:
    // every report agrees.
    let fresh = migrated();
    let mut fresh_db = fresh.db();
    fresh_db.batch_execute(ROWS).unwrap();
    for env in [&older, &fresh] {
        env.genalytics().args(["aggregate", "-q"]).ok();
    }
    let until = genalytics::testing::hour_floor(Utc::now()).to_rfc3339();
    let reports = every_report(&older, &until, "5");
    assert_eq!(reports, every_report(&fresh, &until, "5"));
    let requests = (0..=2600).filter(|n| n % 3 == 0).count() as i64;
    assert_eq!(reports[0].1["total_requests"], requests);

    // Transfer goes on: an entry for a day inside the adopted table, one
    // for the day after its range (a partition of its own); read again
    // after a position set back by hand, neither is stored twice.
    let key = older.stream_key();
    let mut con = older.redis();
    let inside = cutover - Duration::days(2);
    let after = cutover + Duration::hours(30);
    for at in [inside, after] {
        let at = at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
        xadd(
            &mut con,
            &key,
            "*",
            &[("event_type", "request"), ("timestamp", &at)],
        );
    }
    older
        .genalytics()
        .args(["transfer", "-q", "--keep", "100h"])
        .ok();
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events"),
        2605
    );
    let sql = format!("SELECT count(*) FROM \"{adopted_name}\" WHERE stream_id IS NOT NULL");
    assert_eq!(count(&mut db, &sql), 1, "the entry before {cutover}");
    let own = format!(
        "SELECT count(*) FROM generation_events_p{} WHERE stream_id IS NOT NULL",
        after.format("%Y%m%d")
    );
    assert_eq!(count(&mut db, &own), 1, "the entry after {cutover}");
    db.execute("UPDATE genalytics_transfer_state SET last_id = '0-0'", &[])
        .unwrap();
    let ran = older.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout
            .contains("skipped 2 entries that were already stored"),
        "{}",
        ran.stdout
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events"),
        2605
    );
}

#[test]
fn a_partition_that_cannot_be_made_sends_its_events_to_the_default_one() {
    let env = migrated();
    let mut db = env.db();
    // A table by hand under the name the day's partition would take (a
    // day inside the raw retention window, which gets partitions).
    let day = (chrono::Utc::now() - chrono::Duration::days(10)).date_naive();
    let table = format!("generation_events_p{}", day.format("%Y%m%d"));
    db.batch_execute(&format!("CREATE TABLE {table} (note text)"))
        .unwrap();
    let at = format!("{day}T10:00:00");
    let at = at.as_str();
    let mut con = env.redis();
    xadd(
        &mut con,
        &env.stream_key(),
        "*",
        &[("event_type", "request"), ("timestamp", at)],
    );
    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout
            .starts_with("transferred 1 event and 0 rejected entries"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stderr
            .contains(&format!("cannot create the partition of {day}")),
        "{}",
        ran.stderr
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events_default"),
        1
    );
    // The table by hand is left as it was.
    assert_eq!(count(&mut db, &format!("SELECT count(*) FROM {table}")), 0);
}

#[test]
fn partition_bounds_are_utc_days_whatever_the_sessions_settings() {
    crate::harness::clear_of_hour_turn(120);
    let env = TestEnv::new();
    let mut db = env.db();
    // Settings that print times with a zone abbreviation PostgreSQL reads
    // back as another zone (IST: India here, Israel when parsed).
    db.batch_execute(
        "DO $$ BEGIN
             EXECUTE format('ALTER DATABASE %I SET DateStyle = ''SQL, DMY''', current_database());
             EXECUTE format('ALTER DATABASE %I SET TimeZone = ''Asia/Kolkata''', current_database());
         END $$",
    )
    .unwrap();
    env.genalytics().args(["migrate", "-q"]).ok();
    // A day's event at 23:30 UTC, backfilled: its partition is made by
    // transfer, and holds it.
    let day = (Utc::now() - Duration::days(3)).date_naive();
    let at = day.and_hms_opt(23, 30, 0).unwrap().and_utc();
    let mut con = env.redis();
    let when = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    xadd(
        &mut con,
        &env.stream_key(),
        "*",
        &[("event_type", "request"), ("timestamp", &when)],
    );
    env.genalytics().arg("transfer").ok();
    let mut db = env.db();
    db.batch_execute("SET DateStyle = 'ISO'; SET TimeZone = 'UTC'")
        .unwrap();
    let name = format!("generation_events_p{}", day.format("%Y%m%d"));
    let bound: String = db
        .query_one(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = $1",
            &[&name],
        )
        .unwrap()
        .get(0);
    let next = day + Duration::days(1);
    assert_eq!(
        bound,
        format!("FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')")
    );
    let sql = format!("SELECT count(*) FROM \"{name}\"");
    assert_eq!(count(&mut db, &sql), 1);
}

#[test]
fn a_table_with_views_on_it_is_refused_by_name_and_left_as_it_was() {
    let env = TestEnv::new();
    let mut db = env.db();
    genalytics::testing::apply_through(&mut db, 7).unwrap();
    db.batch_execute(
        "CREATE VIEW recent_requests AS
             SELECT * FROM generation_events WHERE event_type = 'request'",
    )
    .unwrap();
    let ran = env.genalytics().arg("migrate").code(1);
    assert!(
        ran.stderr
            .contains("views depend on generation_events (recent_requests)"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        crate::harness::relkind(&mut db, "generation_events"),
        b'r',
        "still the plain table"
    );
}

#[test]
fn a_partition_whose_lock_is_held_waits_and_its_events_are_stored_meanwhile() {
    let env = migrated();
    let mut db = env.db();
    let day = (Utc::now() - Duration::days(5)).date_naive();
    let at = |minute: u32| {
        day.and_hms_opt(9, minute, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string()
    };
    let mut con = env.redis();
    xadd(
        &mut con,
        &env.stream_key(),
        "*",
        &[("event_type", "request"), ("timestamp", &at(1))],
    );
    // A long reader of the default partition (a pg_dump, say): attaching a
    // partition must wait for it.
    let mut reader = env.db();
    let mut long_query = reader.transaction().unwrap();
    long_query
        .query("SELECT count(*) FROM generation_events_default", &[])
        .unwrap();
    let started = std::time::Instant::now();
    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "transfer waited {:?}",
        started.elapsed()
    );
    assert!(
        ran.stdout
            .starts_with("transferred 1 event and 0 rejected entries"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stderr.contains("waited too long for its lock"),
        "{}",
        ran.stderr
    );
    assert!(!partition_of_day(&mut db, day));
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events_default"),
        1
    );
    // The reader gone, the next run makes the partition and moves the
    // first event into it beside the second.
    long_query.rollback().unwrap();
    xadd(
        &mut con,
        &env.stream_key(),
        "*",
        &[("event_type", "request"), ("timestamp", &at(2))],
    );
    env.genalytics().arg("transfer").ok();
    assert!(partition_of_day(&mut db, day));
    let sql = format!(
        "SELECT count(*) FROM generation_events_p{}",
        day.format("%Y%m%d")
    );
    assert_eq!(count(&mut db, &sql), 2);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM generation_events_default"),
        0
    );
}
