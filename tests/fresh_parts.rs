//! A busy hour rolled up so far (its "part"): reports read the part and
//! the hour's events since, with the same figures as from all the hour's
//! events and as its rollup later; a transfer storing an event from before
//! the part's end deletes the part, and a refresh that raced such a
//! transfer keeps none. A transfer that waited for the rollup of its hour
//! lists its events as late ones. The races are built, not hoped for: the
//! other side is held open in a transaction of the test's own while the
//! test sees the genalytics side wait for it.

use chrono::{DateTime, Duration, Utc};
use postgres::Client;

use genalytics::testing::hour_floor;

use crate::harness::events::{Written, count, percentile, success_durations, traffic, write};
use crate::harness::gate::{Gate, Stage};
use crate::harness::reports::{REPORTS, every_report, late_list, point};
use crate::harness::{TestEnv, migrated, transfer, wait_for};

/// The part of `hour`: its end and how many events it holds.
fn part(db: &mut Client, hour: DateTime<Utc>) -> Option<(DateTime<Utc>, i64)> {
    db.query_opt(
        "SELECT through, events FROM generation_rollup_partial WHERE hour = $1",
        &[&hour],
    )
    .unwrap()
    .map(|row| (row.get(0), row.get(1)))
}

/// How a transfer's statement that queues hours starts.
const TRANSFER_QUEUES: &str = "INSERT INTO generation_rollup_queue AS q (hour, late_listed)";
/// How a rollup's statement that holds its hours' queue rows starts.
const ROLLUP_HOLDS: &str = "INSERT INTO generation_rollup_queue AS q (hour) SELECT";

/// Holds the session until `what` shows up waiting for a lock in PostgreSQL.
fn wait_for_lock_wait(db: &mut Client, what: &str) {
    wait_for(&format!("{what} waiting for a lock"), 30, || {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE $1",
            &[&format!("%{what}%")],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 1
    });
}

/// Waits (30 s at most) for `child` to end, and asserts it ended well.
fn ends_well(child: &mut std::process::Child, what: &str) {
    let mut status = None;
    wait_for(&format!("the {what} to end"), 30, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{what} failed");
}

/// An hour two hours back with 150 events of traffic, stored and rolled
/// up: the hour and its events.
fn rolled_up_hour(env: &TestEnv, seed: u64) -> (DateTime<Utc>, Vec<Written>) {
    let hour = hour_floor(Utc::now()) - Duration::hours(2);
    let first = traffic(hour, 150, seed);
    write(env, &first);
    transfer(env);
    env.genalytics().args(["aggregate", "-q"]).ok();
    (hour, first)
}

#[test]
fn reports_read_a_busy_hour_from_its_part_and_its_newest_events_with_the_same_figures() {
    let env = migrated();
    let seed = crate::harness::seed();
    let mut db = env.db();
    // The hour before the current one, not rolled up: a part through 40
    // minutes into it, as a follower would have left it.
    let hour = hour_floor(Utc::now()) - Duration::hours(1);
    let through = hour + Duration::minutes(40);
    let (early, newest): (Vec<Written>, Vec<Written>) = traffic(hour, 700, seed)
        .into_iter()
        .partition(|e| e.at < through);
    assert!(!early.is_empty() && !newest.is_empty());
    write(&env, &early);
    transfer(&env);
    assert!(genalytics::testing::refresh_partial(&mut db, hour, through).unwrap());
    assert_eq!(part(&mut db, hour), Some((through, early.len() as i64)));

    // Events after the part's end leave it standing; reports count them.
    write(&env, &newest);
    transfer(&env);
    assert_eq!(part(&mut db, hour), Some((through, early.len() as i64)));
    let all: Vec<Written> = early.iter().chain(&newest).cloned().collect();
    let until = Utc::now();
    let with_part = every_report(&env, until);
    let overview = &with_part[0];
    assert_eq!(
        overview["total_requests"],
        count(&all, |e| e.kind == "request")
    );
    assert_eq!(
        overview["successful_generations"],
        count(&all, Written::is_success)
    );
    assert_eq!(
        overview["failed_generations"],
        count(&all, Written::is_failure)
    );
    assert_eq!(
        overview["cancelled_generations"],
        count(&all, |e| e.kind == "cancellation")
    );
    // The hour's own percentiles are exact: percentile_cont over every
    // successful duration, computed here.
    let durations = success_durations(&all);
    let at = point(&with_part[1], hour);
    for (field, q) in [("p50_duration_ms", 0.5), ("p95_duration_ms", 0.95)] {
        let want = percentile(&durations, q).unwrap().round() as i64;
        assert_eq!(at[field], want, "{field}: {at}");
    }
    let users: std::collections::BTreeSet<&String> =
        all.iter().filter_map(|e| e.user.as_ref()).collect();
    assert_eq!(at["unique_users"], users.len() as i64, "{at}");

    // The same reports from all the hour's events, the part set aside.
    db.execute("DELETE FROM generation_rollup_partial", &[])
        .unwrap();
    for (which, (raw, part)) in REPORTS
        .iter()
        .zip(every_report(&env, until).iter().zip(&with_part))
    {
        assert_eq!(raw, part, "{which:?}: the part changed a figure");
    }

    // An event from before the part's end deletes the part in the commit
    // that stores it; reports count it all the same.
    assert!(genalytics::testing::refresh_partial(&mut db, hour, through).unwrap());
    let late = Written::new(hour + Duration::minutes(5), "request");
    write(&env, std::slice::from_ref(&late));
    transfer(&env);
    assert_eq!(part(&mut db, hour), None, "the transfer deleted the part");
    let with_late = every_report(&env, until);
    assert_eq!(
        with_late[0]["total_requests"],
        count(&all, |e| e.kind == "request") + 1
    );

    // A part again, then the hour's rollup: it deletes the part and
    // changes no figure.
    assert!(genalytics::testing::refresh_partial(&mut db, hour, through).unwrap());
    env.genalytics()
        .args(["aggregate", "-q", "--hour", &hour.to_rfc3339()])
        .ok();
    assert_eq!(part(&mut db, hour), None, "the rollup deleted the part");
    for (which, (rolled, fresh)) in REPORTS
        .iter()
        .zip(every_report(&env, until).iter().zip(&with_late))
    {
        assert_eq!(rolled, fresh, "{which:?}: the rollup changed a figure");
    }
}

#[test]
fn a_refresh_that_raced_a_commit_of_earlier_events_keeps_no_part() {
    let env = migrated();
    let mut db = env.db();
    let hour = hour_floor(Utc::now()) - Duration::hours(1);
    let through = hour + Duration::minutes(40);
    let events: Vec<Written> = traffic(hour, 200, crate::harness::seed())
        .into_iter()
        .filter(|e| e.at < through)
        .collect();
    write(&env, &events);
    transfer(&env);

    // A writer, as transfer commits: an event of the hour from before the
    // part's end, then the hour's queue row held; not committed yet.
    let mut writer = env.db();
    let mut tx = writer.transaction().unwrap();
    tx.execute(
        "INSERT INTO generation_events (event_type, timestamp, stream_id) VALUES ('request', $1, 'test-1')",
        &[&(hour + Duration::minutes(1))],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO generation_rollup_queue AS q (hour) VALUES ($1)
         ON CONFLICT (hour) DO UPDATE SET queued_at = q.queued_at",
        &[&hour],
    )
    .unwrap();
    // The refresh counts the hour without that event, then waits for the
    // queue row; the writer commits while it waits.
    let url = env.database_url();
    let refresh = std::thread::spawn(move || {
        let url = genalytics::testing::DatabaseUrl::parse(&url).unwrap();
        let mut client = genalytics::testing::connect(&url).unwrap();
        genalytics::testing::refresh_partial(&mut client, hour, through).unwrap()
    });
    wait_for_lock_wait(
        &mut db,
        "FROM generation_rollup_queue WHERE hour = $1 FOR UPDATE",
    );
    tx.commit().unwrap();
    assert!(
        !refresh.join().unwrap(),
        "a part missing the event was kept"
    );
    assert_eq!(part(&mut db, hour), None);

    // The next refresh holds every event.
    assert!(genalytics::testing::refresh_partial(&mut db, hour, through).unwrap());
    assert_eq!(
        part(&mut db, hour),
        Some((through, events.len() as i64 + 1))
    );
}

#[test]
fn a_transfer_waiting_for_a_refresh_deletes_the_part_it_made() {
    let env = migrated();
    let mut db = env.db();
    let hour = hour_floor(Utc::now()) - Duration::hours(1);
    let through = hour + Duration::minutes(40);
    let events = traffic(hour, 100, crate::harness::seed());
    write(&env, &events);
    transfer(&env);
    assert!(genalytics::testing::refresh_partial(&mut db, hour, through).unwrap());

    // A refresh in progress, as the test's own transaction: it holds the
    // hour's queue row and writes the part, not committed yet.
    db.batch_execute(
        "CREATE TABLE saved_part AS SELECT * FROM generation_rollup_partial;
         DELETE FROM generation_rollup_partial",
    )
    .unwrap();
    let mut refresher = env.db();
    let mut tx = refresher.transaction().unwrap();
    tx.execute(
        "SELECT 1 FROM generation_rollup_queue WHERE hour = $1 FOR UPDATE",
        &[&hour],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO generation_rollup_partial SELECT * FROM saved_part",
        &[],
    )
    .unwrap();
    // A transfer of an event from before the part's end waits for the
    // queue row; it must see the part once the refresh commits.
    write(
        &env,
        &[Written::new(hour + Duration::minutes(2), "request")],
    );
    let mut transfer = env
        .genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .command()
        .spawn()
        .unwrap();
    wait_for_lock_wait(&mut db, TRANSFER_QUEUES);
    tx.commit().unwrap();
    ends_well(&mut transfer, "transfer");
    assert_eq!(
        part(&mut db, hour),
        None,
        "the part outlived an earlier event"
    );
}

#[test]
fn a_follower_with_aggregate_keeps_the_current_hours_part() {
    use chrono::Timelike;
    crate::harness::clear_of_hour_turn(150);
    // The part ends 30 s ago: the test's events, 40 s old, must be of
    // the hour it ends in.
    let into_hour = Utc::now().minute() * 60 + Utc::now().second();
    if into_hour < 60 {
        std::thread::sleep(std::time::Duration::from_secs(u64::from(61 - into_hour)));
    }
    let env = migrated();
    let at = Utc::now() - Duration::seconds(40);
    let hour = hour_floor(at);
    let events: Vec<Written> = (0..20)
        .map(|i| Written::new(at + Duration::milliseconds(i), "request"))
        .collect();
    write(&env, &events);
    let mut follower = env
        .genalytics()
        .args([
            "transfer",
            "--follow",
            "--aggregate",
            "-q",
            "--keep",
            "100h",
        ])
        .command()
        .spawn()
        .unwrap();
    let mut db = env.db();
    // The follower brings the part up to date once a minute, the first
    // time as it starts (maybe before it stored these).
    wait_for("the current hour's part", 90, || {
        part(&mut db, hour).is_some_and(|(_, stored)| stored == 20)
    });
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower still runs"
    );
    crate::harness::sigterm(&follower);
    assert!(follower.wait().unwrap().success());
}

#[test]
fn a_transfer_that_waited_for_the_rollup_of_its_hour_lists_its_events() {
    let env = migrated();
    let seed = crate::harness::seed();
    let mut db = env.db();
    let (hour, first) = rolled_up_hour(&env, seed);
    let late = traffic(hour, 20, seed + 1);
    write(&env, &late);
    transfer(&env);
    assert_eq!(late_list(&mut db, hour), (Some(true), 20));

    // The test holds the hour's queue row. An aggregate waits for it
    // first, then a transfer of more late events.
    let mut holder = env.db();
    let mut tx = holder.transaction().unwrap();
    tx.execute(
        "SELECT 1 FROM generation_rollup_queue WHERE hour = $1 FOR UPDATE",
        &[&hour],
    )
    .unwrap();
    let mut aggregate = env
        .genalytics()
        .args(["aggregate", "-q"])
        .command()
        .spawn()
        .unwrap();
    wait_for_lock_wait(&mut db, ROLLUP_HOLDS);
    let later = traffic(hour, 30, seed + 2);
    write(&env, &later);
    let mut transfer = env
        .genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .command()
        .spawn()
        .unwrap();
    wait_for_lock_wait(&mut db, TRANSFER_QUEUES);
    tx.commit().unwrap();
    for (what, child) in [("aggregate", &mut aggregate), ("transfer", &mut transfer)] {
        ends_well(child, what);
    }

    // The aggregate rolled the hour up without the transfer's events
    // (they were not committed); the transfer then queued the hour again
    // and listed exactly them.
    assert_eq!(late_list(&mut db, hour), (Some(true), 30));
    let all: Vec<Written> = first.iter().chain(&late).chain(&later).cloned().collect();
    let until = Utc::now();
    let fresh = every_report(&env, until);
    assert_eq!(
        fresh[0]["total_requests"],
        count(&all, |e| e.kind == "request")
    );
    assert_eq!(
        fresh[0]["failed_generations"],
        count(&all, Written::is_failure)
    );
    assert_eq!(
        point(&fresh[1], hour)["successful_generations"],
        count(&all, Written::is_success)
    );
    env.genalytics().args(["aggregate", "-q"]).ok();
    assert_eq!(late_list(&mut db, hour), (None, 0));
    assert_eq!(every_report(&env, until), fresh);
}

#[test]
fn a_rollup_of_an_hour_waits_for_a_transfer_storing_events_for_it() {
    let env = migrated();
    let seed = crate::harness::seed();
    let mut db = env.db();
    let (hour, first) = rolled_up_hour(&env, seed);
    assert_eq!(late_list(&mut db, hour), (None, 0));

    // A transfer of late events for the hour, held after storing them:
    // it holds the hour's new queue row, not committed, so the hour is
    // not queued as far as anyone else can see.
    let late = traffic(hour, 25, seed + 1);
    write(&env, &late);
    let mut gate = Gate::close(&env.database_url(), Stage::Rows, 1);
    let mut transfer = env
        .genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .command()
        .spawn()
        .unwrap();
    gate.wait_held(&mut transfer, 30);
    // A rollup of that hour waits for it all the same.
    let mut aggregate = env
        .genalytics()
        .args(["aggregate", "-q", "--hour", &hour.to_rfc3339()])
        .command()
        .spawn()
        .unwrap();
    wait_for_lock_wait(&mut db, ROLLUP_HOLDS);
    assert!(aggregate.try_wait().unwrap().is_none());
    gate.open();
    for (what, child) in [("transfer", &mut transfer), ("aggregate", &mut aggregate)] {
        ends_well(child, what);
    }

    // The rollup counted the late events once, and took them off the list.
    assert_eq!(late_list(&mut db, hour), (None, 0));
    let all: Vec<Written> = first.iter().chain(&late).cloned().collect();
    let until = Utc::now();
    let rolled = every_report(&env, until);
    assert_eq!(
        rolled[0]["total_requests"],
        count(&all, |e| e.kind == "request")
    );
    let models = rolled[3]["models"].as_array().unwrap();
    assert!(!models.is_empty());
    for row in models {
        let name = row["model_checkpoint"].as_str().map(str::to_string);
        let completions = count(&all, |e| e.kind == "completion" && e.model == name);
        assert_eq!(row["total_generations"], completions, "{row}");
    }
    let failures: i64 = rolled[4]["error_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["count"].as_i64().unwrap())
        .sum();
    assert_eq!(failures, count(&all, Written::is_failure));
}
