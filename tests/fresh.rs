//! Reports fresh to the second: an hour not rolled up yet (the current
//! hour, an hour late events came to) is counted from its raw events, the
//! figures equal an independent count of what the test wrote, and rolling
//! the hour up later changes none of them. A follower's events reach a
//! report within seconds, `--watch` redraws in place until Ctrl-C, and
//! `transfer --follow --aggregate` rolls an hour up once it has ended.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration as StdDuration, Instant};

use chrono::{Duration, Utc};
use serde_json::Value;

use genalytics::testing::hour_floor;

use crate::harness::events::{Written, count, percentile, success_durations, traffic, write};
use crate::harness::reports::{every_report, every_report_counted, late_list, point, report_at};
use crate::harness::{TestEnv, clear_of_hour_turn, migrated, sigterm, transfer, wait_for, xadd};

/// A report as JSON over the window ending now.
fn report(env: &TestEnv, args: &[&str]) -> Value {
    report_at(env, Utc::now(), args)
}

#[test]
fn the_current_hour_is_counted_before_its_rollup_and_the_rollup_changes_nothing() {
    clear_of_hour_turn(180);
    let env = migrated();
    let seed = crate::harness::seed();
    let now = Utc::now();
    let current = hour_floor(now);
    let previous = current - Duration::hours(1);
    // The hour before: stored and rolled up. The current hour: stored only,
    // every event before now (a report's window ends now).
    let old = traffic(previous, 300, seed);
    let fresh: Vec<Written> = traffic(current, 400, seed + 1)
        .into_iter()
        .filter(|e| e.at < now - Duration::seconds(5))
        .collect();
    write(&env, &old);
    transfer(&env);
    env.genalytics().args(["aggregate", "-q"]).ok();
    write(&env, &fresh);
    transfer(&env);
    let all: Vec<Written> = old.iter().chain(&fresh).cloned().collect();
    let report = |args: &[&str]| report_at(&env, now, args);

    let overview = report(&["overview", "--days", "1"]);
    assert_eq!(overview["hours_from_raw_events"], 1, "{overview}");
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
    // Rollups alone still show only the hour before.
    let materialized = report(&["overview", "--days", "1", "--materialized-only"]);
    assert_eq!(materialized["hours_from_raw_events"], 0);
    assert_eq!(
        materialized["total_requests"],
        count(&old, |e| e.kind == "request")
    );

    let trends = report(&["trends", "--days", "1"]);
    assert_eq!(
        point(&trends, current)["total_requests"],
        count(&fresh, |e| e.kind == "request")
    );
    assert_eq!(
        point(&trends, current)["successful_generations"],
        count(&fresh, Written::is_success)
    );

    let models = report(&["models", "--days", "1"]);
    for row in models["models"].as_array().unwrap() {
        let name = row["model_checkpoint"].as_str().map(str::to_string);
        let completions = count(&all, |e| e.kind == "completion" && e.model == name);
        assert_eq!(row["total_generations"], completions, "{row}");
    }

    // Rolled up, the same figures.
    let before = every_report(&env, now);
    env.genalytics()
        .args(["aggregate", "-q", "--include-current"])
        .ok();
    let after = every_report_counted(&env, now, 1);
    assert!(after.iter().all(|(_, counted)| *counted == 0), "{after:?}");
    let after: Vec<Value> = after.into_iter().map(|(report, _)| report).collect();
    assert_eq!(after, before, "a report changed when rolled up");
}

#[test]
fn late_events_count_before_their_hour_is_rolled_up_again() {
    clear_of_hour_turn(120);
    let env = migrated();
    let mut db = env.db();
    let seed = crate::harness::seed();
    let now = Utc::now();
    let hour = hour_floor(now) - Duration::hours(3);
    let report = |args: &[&str]| report_at(&env, now, args);
    let first = traffic(hour, 200, seed);
    write(&env, &first);
    transfer(&env);
    env.genalytics().args(["aggregate", "-q"]).ok();
    let rolled = report(&["overview", "--days", "1"]);
    assert_eq!(rolled["hours_from_raw_events"], 0);
    assert_eq!(
        rolled["failed_generations"],
        count(&first, Written::is_failure)
    );

    // Late for that hour: seventeen failures of a new error type by new
    // users, and more of the usual traffic.
    let mut late: Vec<Written> = (0..17)
        .map(|i| Written {
            duration_ms: Some(100 + i),
            success: Some(false),
            error_type: Some("LateError".into()),
            error_message: Some(format!("late {i:02}")),
            user: Some(format!("00000000-0000-4000-9000-{i:012}")),
            ..Written::new(hour + Duration::minutes(i + 1), "completion")
        })
        .collect();
    late.extend(traffic(hour, 80, seed + 1));
    write(&env, &late);
    transfer(&env);
    // The hour is read as its rollup and the late events listed for it,
    // exactly those.
    assert_eq!(late_list(&mut db, hour), (Some(true), late.len() as i64));
    // Proof that the report does not read the hour's other events: a
    // request turned into a cancellation behind the rollup's back leaves
    // it unchanged (until the hour is rolled up again).
    let flip = "UPDATE generation_events SET event_type = $2
         WHERE id = (SELECT min(e.id) FROM generation_events e
                     WHERE e.timestamp >= $1 AND e.timestamp < $1 + interval '1 hour'
                       AND e.event_type = $3
                       AND NOT EXISTS (SELECT 1 FROM generation_rollup_late l WHERE l.event_id = e.id))";
    assert_eq!(
        db.execute(flip, &[&hour, &"cancellation", &"request"])
            .unwrap(),
        1
    );
    let all: Vec<Written> = first.iter().chain(&late).cloned().collect();
    let fresh = report(&["overview", "--days", "1"]);
    assert_eq!(fresh["hours_from_raw_events"], 1);
    assert_eq!(
        fresh["total_requests"],
        count(&all, |e| e.kind == "request")
    );
    assert_eq!(
        fresh["cancelled_generations"],
        count(&all, |e| e.kind == "cancellation")
    );
    // Put back as it was for the rollup to come.
    assert_eq!(
        db.execute(flip, &[&hour, &"request", &"cancellation"])
            .unwrap(),
        1
    );

    assert_eq!(
        fresh["failed_generations"],
        count(&all, Written::is_failure)
    );
    assert_eq!(
        fresh["successful_generations"],
        count(&all, Written::is_success)
    );
    let users: std::collections::BTreeSet<&String> =
        all.iter().filter_map(|e| e.user.as_ref()).collect();
    assert_eq!(fresh["unique_users"], users.len() as i64, "{fresh}");
    // The hour's own percentiles are exact, as its rollup will have them.
    let durations = success_durations(&all);
    let trends = report(&["trends", "--days", "1"]);
    for (field, q) in [("p50_duration_ms", 0.5), ("p95_duration_ms", 0.95)] {
        let want = percentile(&durations, q).unwrap();
        assert_eq!(
            point(&trends, hour)[field],
            want.round() as i64,
            "{field}: {trends}"
        );
    }
    let failures = report(&["failures", "--days", "1"]);
    let late_error = failures["error_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["error_type"] == "LateError")
        .unwrap_or_else(|| panic!("the late error type is listed: {failures}"))
        .clone();
    assert_eq!(late_error["count"], 17, "{late_error}");
    assert_eq!(late_error["affected_users"], 17, "{late_error}");
    let models = report(&["models", "--days", "1"]);
    let rows = models["models"].as_array().unwrap();
    assert!(!rows.is_empty(), "{models}");
    for row in rows {
        let name = row["model_checkpoint"].as_str().map(str::to_string);
        let completions = count(&all, |e| e.kind == "completion" && e.model == name);
        assert_eq!(row["total_generations"], completions, "{row}");
    }

    // Rolled up again from all its raw events: every report the same, and
    // the list is gone with the queue row.
    let before = every_report(&env, now);
    env.genalytics().args(["aggregate", "-q"]).ok();
    assert_eq!(late_list(&mut db, hour), (None, 0));
    let after = report(&["overview", "--days", "1"]);
    assert_eq!(after["hours_from_raw_events"], 0);
    assert_eq!(every_report(&env, now), before);
}

#[test]
fn an_hour_whose_rollup_was_changed_by_hand_is_read_from_its_raw_events() {
    clear_of_hour_turn(120);
    let env = migrated();
    let mut db = env.db();
    let now = Utc::now();
    let hour = hour_floor(now) - Duration::hours(3);
    let first = traffic(hour, 60, crate::harness::seed());
    write(&env, &first);
    transfer(&env);
    env.genalytics().args(["aggregate", "-q"]).ok();
    // Someone adds 1,000 requests to the hour's row; then a late request.
    db.execute(
        "UPDATE generation_metrics_hourly SET total_requests = total_requests + 1000
         WHERE timestamp = $1",
        &[&hour],
    )
    .unwrap();
    let late = [Written::new(hour + Duration::minutes(30), "request")];
    write(&env, &late);
    transfer(&env);
    // The row is not genalytics' own: the hour is read from its raw events,
    // as its rollup will count them.
    assert_eq!(late_list(&mut db, hour), (Some(false), 0));
    let all: Vec<Written> = first.iter().chain(&late).cloned().collect();
    let fresh = report_at(&env, now, &["overview", "--days", "1"]);
    assert_eq!(
        fresh["total_requests"],
        count(&all, |e| e.kind == "request")
    );
    let before = every_report(&env, now);
    env.genalytics().args(["aggregate", "-q"]).ok();
    assert_eq!(every_report(&env, now), before);
}

#[test]
fn a_followers_events_are_in_a_report_within_seconds() {
    clear_of_hour_turn(60);
    let env = migrated();
    let mut follower = env
        .genalytics()
        .args(["transfer", "--follow", "-q"])
        .command()
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut con = env.redis();
    let key = env.stream_key();
    let written = Instant::now();
    for i in 0..50 {
        let at = Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
        let generation = format!("00000000-0000-4000-9000-{i:012}");
        xadd(
            &mut con,
            &key,
            "*",
            &[
                ("event_type", "request"),
                ("timestamp", &at),
                ("generation_id", &generation),
            ],
        );
    }
    wait_for("50 requests in report overview", 20, || {
        report(&env, &["overview", "--days", "1"])["total_requests"] == 50
    });
    let seen = written.elapsed();
    sigterm(&follower);
    assert!(follower.wait().unwrap().success());
    eprintln!("counted by report overview {seen:?} after the XADDs began");
    assert!(
        seen < StdDuration::from_secs(10),
        "reports lag the follower by {seen:?}"
    );
}

#[test]
fn follow_with_aggregate_rolls_an_hour_up_once_it_has_ended() {
    clear_of_hour_turn(120);
    let env = migrated();
    let previous = hour_floor(Utc::now()) - Duration::hours(1);
    let events = traffic(previous, 80, crate::harness::seed());
    write(&env, &events);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut follower = env
        .genalytics()
        .args([
            "transfer",
            "--follow",
            "--aggregate",
            "-v",
            "--keep",
            "100h",
        ])
        .command()
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut db = env.db();
    let requests = count(&events, |e| e.kind == "request");
    // The follower waits 30 s after an hour ends before it rolls it up.
    wait_for("the ended hour rolled up by the follower", 90, || {
        db.query_opt(
            "SELECT total_requests FROM generation_metrics_hourly WHERE timestamp = $1",
            &[&previous],
        )
        .unwrap()
        .is_some_and(|row| i64::from(row.get::<_, i32>(0)) == requests)
    });
    let queued: i64 = db
        .query_one(
            "SELECT count(*) FROM generation_rollup_queue WHERE hour = $1",
            &[&previous],
        )
        .unwrap()
        .get(0);
    assert_eq!(queued, 0, "the hour left the queue");
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower still runs:\n{}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    sigterm(&follower);
    assert!(follower.wait().unwrap().success());
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(log.contains("rolled up 1 hour"), "{log}");
}

#[test]
fn watch_redraws_in_place_on_a_terminal_and_ctrl_c_ends_it_cleanly() {
    let env = migrated();
    write(
        &env,
        &traffic(hour_floor(Utc::now()) - Duration::hours(2), 30, 7),
    );
    transfer(&env);
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = || Stdio::from(pty.slave.try_clone().unwrap());
    let mut child = env
        .genalytics()
        .args(["report", "overview", "--days", "1", "--watch=300ms"])
        .command()
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();
    drop(pty.slave);
    let (sender, received) = std::sync::mpsc::channel();
    let mut master = std::fs::File::from(pty.master);
    std::thread::spawn(move || {
        let mut buffer = [0_u8; 4096];
        // EIO once the child has closed the terminal.
        while let Ok(n @ 1..) = master.read(&mut buffer) {
            if sender.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let redraws = |screen: &[u8]| screen.windows(3).filter(|w| w == b"\x1b[H").count();
    let deadline = Instant::now() + StdDuration::from_secs(20);
    while redraws(&screen) < 3 && Instant::now() < deadline {
        if let Ok(bytes) = received.recv_timeout(StdDuration::from_millis(200)) {
            screen.extend(bytes);
        }
    }
    let text = String::from_utf8_lossy(&screen).into_owned();
    assert!(redraws(&screen) >= 3, "fewer than three draws: {text}");
    assert!(
        text.contains("\x1b[2J"),
        "the screen is cleared once: {text}"
    );
    assert_eq!(
        text.matches("\x1b[2J").count(),
        1,
        "later draws go over the last, not after a blank screen"
    );
    assert!(text.contains("Overview"), "{text}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let ended = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            ended.elapsed() < StdDuration::from_secs(5),
            "--watch did not stop on Ctrl-C"
        );
        std::thread::sleep(StdDuration::from_millis(50));
    };
    assert!(status.success(), "Ctrl-C exits 0: {status:?}");
    while let Ok(bytes) = received.recv_timeout(StdDuration::from_millis(200)) {
        screen.extend(bytes);
    }
    let text = String::from_utf8_lossy(&screen);
    assert!(!text.contains("panicked"), "{text}");
}

/// What `report overview --watch=200ms` prints into a pipe in 1.5 s, in
/// `format`; it ends cleanly on SIGTERM.
fn watched_in_a_pipe(env: &TestEnv, format: &str) -> String {
    let mut child = env
        .genalytics()
        .args([
            "report",
            "overview",
            "--days",
            "1",
            "--watch=200ms",
            "--format",
            format,
        ])
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(StdDuration::from_millis(1_500));
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[test]
fn watch_in_a_pipe_prints_one_report_per_interval() {
    let env = migrated();
    let out = watched_in_a_pipe(&env, "csv");
    let headers = out
        .lines()
        .filter(|line| line.starts_with("lookback_days") || line.contains("total_requests"))
        .count();
    assert!(headers >= 3, "one report per interval: {out}");
    assert!(!out.contains('\x1b'), "no escape codes in a pipe: {out:?}");

    // JSON: one report per line, each a whole object.
    let out = watched_in_a_pipe(&env, "json");
    let reports: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    assert!(reports.len() >= 3, "{out}");
    assert!(
        reports.iter().all(|r| r["total_requests"].is_number()),
        "{out}"
    );
}

#[test]
fn a_watch_interval_that_is_not_one_is_a_usage_error() {
    let env = migrated();
    for bad in [
        "--watch=1ms",
        "--watch=0",
        "--watch=soon",
        "--watch=\u{1b}[2J",
    ] {
        let ran = env.genalytics().args(["report", "overview", bad]).code(2);
        assert!(!ran.stderr.contains('\u{1b}'), "{bad}: {:?}", ran.stderr);
        assert!(ran.stderr.contains("--watch"), "{bad}: {}", ran.stderr);
    }
    // The interval takes '=': a user's UUID after --watch stays the user.
    let ran = env
        .genalytics()
        .args([
            "report",
            "user",
            "--watch",
            "6f1c2a9e-3b7d-4e1a-9c55-0d2b8f4a7e11",
            "--format",
            "csv",
        ])
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(StdDuration::from_millis(1_500));
    sigterm(&ran);
    let out = ran.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_hour_whose_rollup_failed_is_left_to_its_rollup_not_read_raw() {
    let env = migrated();
    let now = Utc::now();
    let hour = hour_floor(now) - Duration::hours(2);
    write(&env, &traffic(hour, 30, crate::harness::seed()));
    transfer(&env);
    assert_eq!(
        report_at(&env, now, &["overview", "--days", "1"])["hours_from_raw_events"],
        1
    );
    // As aggregate records a refused rollup: the hour stays queued.
    env.db()
        .execute(
            "UPDATE generation_rollup_queue SET failures = 1, last_error = 'refused' WHERE hour = $1",
            &[&hour],
        )
        .unwrap();
    let report = report_at(&env, now, &["overview", "--days", "1"]);
    assert_eq!(report["hours_from_raw_events"], 0, "{report}");
    assert_eq!(report["total_requests"], 0, "{report}");
}
