//! What the third attack found: each test feeds the worst input or fault
//! it names and checks the pipeline neither stops, loses an entry, nor
//! fools the operator.

use chrono::{Duration, DurationRound, Utc};

use crate::harness::{TestEnv, xadd};

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

#[test]
fn csv_cells_that_a_spreadsheet_would_run_are_defused_unless_raw() {
    let env = migrated();
    let mut con = env.redis();
    let key = env.stream_key();
    let at = (Utc::now() - Duration::hours(2))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let ts = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    let models = ["=HYPERLINK(\"http://evil\",\"x\")", "@cmd", "sdxl-1.0"];
    for model in models {
        xadd(
            &mut con,
            &key,
            "*",
            &[
                ("event_type", "completion"),
                ("timestamp", &ts),
                ("success", "False"),
                ("duration_ms", "10"),
                ("model_checkpoint", model),
                ("error_type", "-oom"),
                ("error_message", "+1 formula"),
            ],
        );
    }
    env.genalytics().arg("transfer").ok();
    env.genalytics().arg("aggregate").ok();
    let csv = |extra: &[&str]| {
        env.genalytics()
            .args(["report", "models", "--days", "1", "--format", "csv"])
            .args(extra.iter().copied())
            .ok()
            .stdout
    };
    let defused = csv(&[]);
    let mut names: Vec<String> = csv::Reader::from_reader(defused.as_bytes())
        .records()
        .map(|r| r.unwrap()[0].to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["'=HYPERLINK(\"http://evil\",\"x\")", "'@cmd", "sdxl-1.0"],
        "{defused}"
    );
    let raw = csv(&["--csv-raw"]);
    assert!(
        raw.contains("\"=HYPERLINK(\"\"http://evil\"\",\"\"x\"\")\""),
        "{raw}"
    );
    // The failures report's samples, and a dead letter's reason.
    let failures = env
        .genalytics()
        .args([
            "report",
            "failures",
            "--days",
            "1",
            "--format",
            "csv",
            "--section",
            "error_types",
        ])
        .ok()
        .stdout;
    assert!(failures.contains("\n'-oom,"), "{failures}");
    // A dead letter from a stream whose key a spreadsheet would run.
    let evil = format!("=1+1 {}", env.namespace);
    xadd(&mut con, &evil, "*", &[("event_type", "bogus")]);
    env.genalytics().args(["transfer", "--stream", &evil]).ok();
    let letters = env
        .genalytics()
        .args(["rejected", "list", "--format", "csv"])
        .ok()
        .stdout;
    let streams: Vec<String> = csv::Reader::from_reader(letters.as_bytes())
        .deserialize::<std::collections::HashMap<String, String>>()
        .map(|row| row.unwrap()["stream"].clone())
        .collect();
    assert_eq!(streams, [format!("'{evil}")], "{letters}");
}

#[test]
fn a_replacement_matching_four_fields_but_not_the_rest_is_not_taken_for_the_stored_stream() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let entry = |seq: u32, model: &str| {
        let user = format!("00000000-0000-0000-0000-{seq:012}");
        let generation = format!("10000000-0000-0000-0000-{seq:012}");
        [
            ("event_type", "completion".to_string()),
            ("generation_id", generation),
            ("user_id", user),
            ("timestamp", "2026-11-27T14:03:07.123456".to_string()),
            ("success", "True".to_string()),
            ("duration_ms", "1200".to_string()),
            ("model_checkpoint", model.to_string()),
        ]
    };
    let write = |con: &mut redis::Connection, model: &str| -> Vec<String> {
        (0..30)
            .map(|seq| {
                let fields = entry(seq, model);
                let fields: Vec<(&str, &str)> =
                    fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
                xadd(con, &key, &format!("5000-{seq}"), &fields)
            })
            .collect()
    };
    write(&mut con, "sdxl-1.0");
    env.genalytics()
        .args(["transfer", "-q", "--keep", "0"])
        .ok();
    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut con).unwrap();
    // Another stream: same IDs, same type, generation, user and time;
    // another model.
    let replacement = write(&mut con, "flux-dev");
    let ran = env.genalytics().args(["transfer", "--keep", "0"]).code(1);
    assert!(ran.stderr.contains("--new-stream"), "{}", ran.stderr);
    assert_eq!(
        crate::harness::stream_ids(&mut con, &key),
        replacement,
        "nothing was trimmed unstored"
    );
    env.genalytics()
        .args(["transfer", "-q", "--new-stream", "--keep", "0"])
        .ok();
    let models: Vec<(String, i64)> = env
        .db()
        .query(
            "SELECT model_checkpoint, count(*) FROM generation_events GROUP BY 1 ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        models,
        [("flux-dev".to_string(), 30), ("sdxl-1.0".to_string(), 30)]
    );
}

#[test]
fn output_files_follow_no_link_another_user_planted_and_keep_their_mode() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: making a link owned by another user needs root");
        return;
    }
    let env = migrated();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "root's secret\n").unwrap();
    std::fs::set_permissions(secret.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = shared.path().join("genalytics.prom");
    symlink(secret.path(), &link).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    std::os::unix::fs::lchown(&link, Some(nobody.uid.as_raw()), None).unwrap();

    let mode_of =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    for args in [
        &["status", "--format", "openmetrics", "-o"][..],
        &["report", "html", "--days", "1", "-o"][..],
    ] {
        let ran = env.genalytics().args(args).arg(&link).code(1);
        assert!(
            ran.stderr.contains("symbolic link owned by another user"),
            "{}",
            ran.stderr
        );
        assert_eq!(ran.stderr.trim_end().lines().count(), 1, "{}", ran.stderr);
        assert_eq!(
            std::fs::read_to_string(secret.path()).unwrap(),
            "root's secret\n"
        );
        assert_eq!(mode_of(secret.path()), 0o600);
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }

    // A directory on the way that another user linked elsewhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let dirlink = shared.path().join("dirlink");
    symlink(elsewhere.path(), &dirlink).unwrap();
    std::os::unix::fs::lchown(&dirlink, Some(nobody.uid.as_raw()), None).unwrap();
    let ran = env
        .genalytics()
        .args(["status", "--format", "openmetrics", "-o"])
        .arg(dirlink.join("genalytics.prom"))
        .code(1);
    assert!(
        ran.stderr
            .contains("dirlink is a symbolic link owned by another user"),
        "{}",
        ran.stderr
    );
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

    // The caller's own link is followed, and the file it names keeps its
    // mode; so does a plain file.
    std::os::unix::fs::lchown(&link, Some(0), None).unwrap();
    env.genalytics()
        .args(["status", "--format", "openmetrics", "-o"])
        .arg(&link)
        .ok();
    assert!(
        std::fs::read_to_string(secret.path())
            .unwrap()
            .contains("genalytics_")
    );
    assert_eq!(mode_of(secret.path()), 0o600);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    let plain = shared.path().join("report.html");
    std::fs::write(&plain, "old").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o640)).unwrap();
    env.genalytics()
        .args(["report", "html", "--days", "1", "-o"])
        .arg(&plain)
        .ok();
    assert_eq!(mode_of(&plain), 0o640);
    let fresh = shared.path().join("new.prom");
    env.genalytics()
        .args(["status", "--format", "openmetrics", "-o"])
        .arg(&fresh)
        .ok();
    assert_eq!(mode_of(&fresh), 0o644);
}

#[test]
fn a_reply_whose_ids_go_backwards_is_refused_and_nothing_of_it_stored() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let now_ms = Utc::now().timestamp_millis();
    let written: Vec<String> = (0..50)
        .map(|n| {
            xadd(
                &mut con,
                &key,
                &format!("{}-0", now_ms + n),
                &[("event_type", "request")],
            )
        })
        .collect();
    let proxy =
        crate::harness::proxy::Proxy::start(&env.redis.url(), crate::harness::proxy::Lie::Reversed);
    let ran = env
        .genalytics()
        .env("REDIS_URL", proxy.url(&env.redis.url()))
        .args(["transfer", "--keep", "100h"])
        .code(1);
    assert!(
        proxy.lies.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the proxy never lied: nothing was tested"
    );
    assert!(ran.stderr.contains("IDs must rise"), "{}", ran.stderr);
    assert!(
        !ran.stderr.contains("connection was lost"),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stderr.trim_end().lines().count(), 1, "{}", ran.stderr);
    // Only what honest replies (the first reads are single entries) gave.
    let mut db = env.db();
    let stored = crate::harness::stored_ids(&mut db);
    assert!(stored.len() < 10, "{} stored", stored.len());
    assert_eq!(stored, written[..stored.len()]);
    // Straight to Redis, everything is stored once.
    env.genalytics().args(["transfer", "-q"]).ok();
    assert_eq!(crate::harness::stored_ids(&mut db), written);
}

#[test]
fn help_names_a_command_and_counts_read_as_english() {
    for (args, usage) in [
        (&["help", "report"][..], "Usage: genalytics report"),
        (
            &["help", "report", "trends"][..],
            "Usage: genalytics report trends",
        ),
        (&["help", "transfer"][..], "Usage: genalytics transfer"),
    ] {
        let ran = crate::harness::Cmd::new().args(args).ok();
        assert!(ran.stdout.contains(usage), "{args:?}: {}", ran.stdout);
    }
    let ran = crate::harness::Cmd::new().args(["help", "no-such"]).code(2);
    assert!(ran.stderr.contains("no-such"), "{}", ran.stderr);

    let env = migrated();
    let mut con = env.redis();
    let hour = (Utc::now() - Duration::hours(3))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let ts = hour.format("%Y-%m-%dT%H:%M:%S").to_string();
    xadd(
        &mut con,
        &env.stream_key(),
        "*",
        &[("event_type", "request"), ("timestamp", &ts)],
    );
    let ran = env.genalytics().arg("transfer").ok();
    assert!(
        ran.stdout
            .starts_with("transferred 1 event and 0 rejected entries from "),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("; 0 entries behind"), "{}", ran.stdout);
    let ran = env.genalytics().arg("aggregate").ok();
    assert!(
        ran.stdout.starts_with("rolled up 1 hour in "),
        "{}",
        ran.stdout
    );
}

#[test]
fn a_key_that_is_not_utf8_is_skipped_with_a_warning_and_the_good_shard_stored() {
    let env = migrated();
    let mut con = env.redis();
    let prefix = format!("{}:shard:", env.namespace);
    let good = format!("{prefix}0");
    let written: Vec<String> = (0..40)
        .map(|_| xadd(&mut con, &good, "*", &[("event_type", "request")]))
        .collect();
    let mut bad = prefix.clone().into_bytes();
    bad.extend_from_slice(b"\xff\xfe\x1b[31m");
    let _: String = redis::cmd("XADD")
        .arg(&bad)
        .arg("*")
        .arg("event_type")
        .arg("request")
        .query(&mut con)
        .unwrap();
    // Keys genalytics cannot record either: a NUL, 3,000 bytes.
    for key in [
        format!("{prefix}nul\0key"),
        format!("{prefix}{}", "k".repeat(3_000)),
    ] {
        xadd(&mut con, &key, "*", &[("event_type", "request")]);
    }
    let pattern = format!("{prefix}*");
    for _ in 0..2 {
        let ran = env
            .genalytics()
            .args(["transfer", "--stream-pattern", &pattern])
            .ok();
        assert!(
            ran.stderr.contains("\\xff\\xfe\\x1b[31m") && ran.stderr.contains("not UTF-8"),
            "{}",
            ran.stderr
        );
        assert!(!ran.stderr.contains('\x1b'), "escaped: {}", ran.stderr);
        assert!(
            ran.stderr.contains("holds a NUL character"),
            "{}",
            ran.stderr
        );
        assert!(
            ran.stderr.contains("longer than 1,000 bytes"),
            "{}",
            ran.stderr
        );
    }
    let mut db = env.db();
    let stored = crate::harness::stored_ids(&mut db);
    let mut want = written.clone();
    want.sort();
    assert_eq!(stored, want);

    // A follower skips it once and picks up a shard that appears later.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut follower = env
        .genalytics()
        .args(["transfer", "--follow", "--stream-pattern", &pattern])
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let later = format!("{prefix}1");
    let more: Vec<String> = (0..10)
        .map(|_| xadd(&mut con, &later, "*", &[("event_type", "cancellation")]))
        .collect();
    crate::harness::wait_for("the later shard to be stored", 40, || {
        crate::harness::stored_ids(&mut db).len() == 50
    });
    assert!(follower.try_wait().unwrap().is_none(), "the follower is up");
    crate::harness::sigterm(&follower);
    assert!(follower.wait().unwrap().success());
    let said = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(said.matches("not UTF-8").count(), 1, "{said}");
    want.extend(more);
    want.sort();
    assert_eq!(crate::harness::stored_ids(&mut db), want);
}

#[test]
fn keys_and_namespaces_are_literal_whatever_characters_they_hold() {
    let env = migrated();
    let mut con = env.redis();
    let ns = format!("{}[1]?*", env.namespace);
    let key = format!("{ns}:generation_events:stream");
    let written: Vec<String> = (0..25)
        .map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")]))
        .collect();
    // A key the brackets would match as a glob: never touched.
    let decoy = format!("{}1x:generation_events:stream", env.namespace);
    xadd(&mut con, &decoy, "*", &[("event_type", "request")]);
    let ran = env.genalytics().args(["transfer", "--redis-ns", &ns]).ok();
    assert!(
        ran.stdout.starts_with("transferred 25 events"),
        "{}",
        ran.stdout
    );
    let status: serde_json::Value = serde_json::from_str(
        &env.genalytics()
            .args(["status", "--format", "json", "--redis-ns", &ns])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(status["stream"], key.as_str());
    assert_eq!(status["events_transferred"], 25, "{status:#}");
    assert_eq!(status["stream_identity"], "same", "{status:#}");
    env.genalytics()
        .args(["check", "--max-lag", "1h", "--stream", &key])
        .ok();
    let mut db = env.db();
    let mut want = written;
    want.sort();
    assert_eq!(crate::harness::stored_ids(&mut db), want);
}

#[test]
fn a_stream_that_does_not_exist_is_loud_in_transfer_status_and_check() {
    let env = migrated();
    let mut con = env.redis();
    xadd(
        &mut con,
        &env.stream_key(),
        "*",
        &[("event_type", "request")],
    );
    let typo = format!("{}x", env.namespace);
    let ran = env
        .genalytics()
        .args(["transfer", "--redis-ns", &typo])
        .ok();
    let key = format!("{typo}:generation_events:stream");
    assert!(
        ran.stderr
            .contains(&format!("the stream {key} does not exist")),
        "{}",
        ran.stderr
    );
    let status = env.genalytics().args(["status", "--redis-ns", &typo]).ok();
    assert!(
        !status.stdout.contains("data is flowing"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("does not exist"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("nothing has been transferred"),
        "{}",
        status.stdout
    );
    let json: serde_json::Value = serde_json::from_str(
        &env.genalytics()
            .args(["status", "--format", "json", "--redis-ns", &typo])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["stream_identity"], "missing", "{json:#}");
    let check = env
        .genalytics()
        .args(["check", "--max-lag", "1h", "--redis-ns", &typo])
        .ok();
    assert!(
        check.stdout.starts_with("WARNING: ") && check.stdout.contains("does not exist"),
        "{}",
        check.stdout
    );

    // The real stream: transferred, and status is content.
    env.genalytics().arg("transfer").ok();
    let status = env.genalytics().arg("status").ok();
    assert!(
        !status.stdout.contains("does not exist"),
        "{}",
        status.stdout
    );
    assert!(
        !status.stdout.contains("nothing has been transferred"),
        "{}",
        status.stdout
    );
}

#[test]
fn hostile_clocks_over_25_years_make_no_more_partitions_than_the_window_has_days() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let now = Utc::now();
    // One entry every six days, back from now: 1,500 entries over 24.6
    // years, and a few years ahead.
    let mut times: Vec<chrono::DateTime<Utc>> =
        (0..1_500).map(|k| now - Duration::days(6 * k)).collect();
    times.extend((1..=5).map(|k| now + Duration::days(365 * k)));
    let mut pipe = redis::pipe();
    for at in &times {
        pipe.cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("event_type")
            .arg("request")
            .arg("timestamp")
            .arg(at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string());
    }
    let _: Vec<String> = pipe.query(&mut con).unwrap();
    let ran = env.genalytics().arg("transfer").ok();
    assert_eq!(
        ran.stderr
            .matches("outside the raw retention window")
            .count(),
        1,
        "{}",
        ran.stderr
    );
    let mut db = env.db();
    let stored: i64 = db
        .query_one("SELECT count(*) FROM generation_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, times.len() as i64, "every entry accounted for");
    let partitions: i64 = db
        .query_one(
            "SELECT count(*) FROM genalytics_event_partitions WHERE NOT is_default",
            &[],
        )
        .unwrap()
        .get(0);
    // Inside the 90-day window: an entry every six days, plus today's and
    // the two days ahead that migrate makes.
    let window_start = (now - Duration::days(90)).date_naive();
    let inside: std::collections::BTreeSet<_> = times
        .iter()
        .map(chrono::DateTime::date_naive)
        .filter(|day| *day >= window_start && *day <= now.date_naive())
        .collect();
    assert!(
        partitions <= inside.len() as i64 + 3,
        "{partitions} partitions for {} days in the window",
        inside.len()
    );
    let outside = times.len()
        - times
            .iter()
            .filter(|at| inside.contains(&at.date_naive()))
            .count();
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["events_outside_partitions"], outside, "{status:#}");
    assert!(
        status["warnings"].to_string().contains("default partition"),
        "{status:#}"
    );
    // Prune deletes the old ones from the default partition, in batches.
    env.genalytics()
        .args(["prune", "--older-than", "90d", "--batch-size", "100"])
        .ok();
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM generation_events WHERE timestamp < now() - interval '91 days'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let ahead: i64 = db
        .query_one(
            "SELECT count(*) FROM generation_events WHERE timestamp > now() + interval '300 days'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ahead, 5, "events ahead are kept");
}

#[test]
fn a_trickle_of_late_events_neither_turns_check_stale_nor_holds_the_raw_horizon_back() {
    use crate::harness::events::{Written, write};
    crate::harness::clear_of_hour_turn(180);
    let env = migrated();
    let hour = |back: i64| {
        (Utc::now() - Duration::hours(back))
            .duration_trunc(Duration::hours(1))
            .unwrap()
    };
    // Five past hours of requests, rolled up as cron would.
    let mut written: Vec<Written> = (2..7)
        .flat_map(|back| {
            (0..4).map(move |n| Written::new(hour(back) + Duration::minutes(n * 7), "request"))
        })
        .collect();
    write(&env, &written);
    env.genalytics().args(["transfer", "-q"]).ok();
    env.genalytics().args(["aggregate", "-q"]).ok();
    let check = |grace: &str| {
        env.genalytics()
            .args(["check", "--max-stale-hours", "0", "--stale-grace", grace])
            .run()
    };
    for round in 0..3 {
        // A late request for an hour two to four hours back.
        let late = Written::new(hour(2 + round) + Duration::minutes(59), "request");
        write(&env, std::slice::from_ref(&late));
        written.push(late);
        env.genalytics().args(["transfer", "-q"]).ok();
        // Queued a moment ago: not stale within the grace; stale without it.
        let fresh = check("10m");
        assert_eq!(fresh.code, Some(0), "round {round}: {}", fresh.stdout);
        assert!(fresh.stdout.starts_with("ok"), "{}", fresh.stdout);
        assert_eq!(
            check("0").code,
            Some(3),
            "round {round}: the hour is queued"
        );
        // Prune rolls up what it needs and cuts where asked, every time.
        let ran = env
            .genalytics()
            .args(["prune", "--older-than", "2h", "--format", "json"])
            .ok();
        let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        assert!(summary["held_by"].is_null(), "round {round}: {summary}");
        let horizon: chrono::DateTime<Utc> = summary["horizon"].as_str().unwrap().parse().unwrap();
        assert_eq!(horizon, hour(2), "round {round}: {summary}");
        assert!(!ran.stderr.contains("aggregate"), "{}", ran.stderr);
    }
    // Every request counted once in the rollups, late ones included (the
    // hour at the cut, not before it, waits for aggregate).
    env.genalytics().args(["aggregate", "-q"]).ok();
    let mut db = env.db();
    let rows: Vec<(chrono::DateTime<Utc>, i32)> = db
        .query(
            "SELECT timestamp, total_requests FROM generation_metrics_hourly ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut want = std::collections::BTreeMap::<chrono::DateTime<Utc>, i32>::new();
    for event in &written {
        *want
            .entry(event.at.duration_trunc(Duration::hours(1)).unwrap())
            .or_default() += 1;
    }
    assert_eq!(rows, want.into_iter().collect::<Vec<_>>());

    // Re-queueing does not restart the wait: an hour queued 20 minutes ago
    // that gets another late event is stale all the same (an hour that
    // ended over an hour ago, whatever the minute now).
    let late = Written::new(hour(2) + Duration::minutes(30), "request");
    write(&env, &[late]);
    env.genalytics().args(["transfer", "-q"]).ok();
    db.execute(
        "UPDATE generation_rollup_queue SET queued_at = now() - interval '20 minutes'",
        &[],
    )
    .unwrap();
    let again = Written::new(hour(2) + Duration::minutes(31), "request");
    write(&env, &[again]);
    env.genalytics().args(["transfer", "-q"]).ok();
    let stale = check("10m");
    assert_eq!(stale.code, Some(3), "{}", stale.stdout);
    assert!(
        stale
            .stdout
            .contains("1 complete hour waited for its rollup longer than 10m"),
        "{}",
        stale.stdout
    );
}

/// `command` under GNU time, which writes its peak RSS (KiB) to `report`.
fn under_time(command: &std::process::Command, report: &std::path::Path) -> std::process::Command {
    let mut timed = std::process::Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(report)
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(std::process::Stdio::null());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(name, value),
            None => timed.env_remove(name),
        };
    }
    timed
}

/// The peak RSS GNU time reported, in KiB.
fn reported_rss(report: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(report).unwrap();
    text.trim()
        .lines()
        .last()
        .and_then(|line| line.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in GNU time's report: {text}"))
}

/// Runs `cmd` under GNU time; returns what it printed and its peak RSS in
/// KiB.
fn peak_rss(cmd: crate::harness::Cmd) -> (crate::harness::Ran, u64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = under_time(&cmd.command(), report.path())
        .output()
        .expect("GNU time is installed (/usr/bin/time)");
    let ran = crate::harness::Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (ran, reported_rss(report.path()))
}

#[test]
fn giant_entries_are_read_without_being_held_and_the_entries_around_them_stored() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    let mut small = Vec::new();
    let add_small = |con: &mut redis::Connection, small: &mut Vec<String>| {
        for _ in 0..20 {
            small.push(xadd(con, &key, "*", &[("event_type", "request")]));
        }
    };
    add_small(&mut con, &mut small);
    let name = vec![b'n'; 30 << 20];
    let value: Vec<u8> = (0..100usize << 20).map(|n| (n % 253) as u8).collect();
    let giant_name: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg(&name[..])
        .arg("v")
        .query(&mut con)
        .unwrap();
    add_small(&mut con, &mut small);
    let giant_value: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("event_type")
        .arg("request")
        .arg("blob")
        .arg(&value[..])
        .query(&mut con)
        .unwrap();
    let value_digest = openssl::sha::sha256(&value)
        .iter()
        .fold(String::new(), |hex, b| hex + &format!("{b:02x}"));
    drop((name, value));

    // The run that reads them, then runs that find the last as their
    // anchor (status, and a transfer with nothing to do).
    for (what, args) in [
        ("transfer", &["transfer", "--keep", "100h"][..]),
        ("status", &["status", "--format", "json"][..]),
        ("transfer again", &["transfer", "--keep", "100h"][..]),
    ] {
        let (ran, kib) = peak_rss(env.genalytics().args(args));
        assert_eq!(ran.code, Some(0), "{what}: {}", ran.stderr);
        eprintln!("{what}: peak RSS {kib} KiB");
        assert!(kib < 100 << 10, "{what}: peak RSS {kib} KiB");
    }
    let mut db = env.db();
    let mut want = small.clone();
    want.sort();
    assert_eq!(crate::harness::stored_ids(&mut db), want);
    let letters: Vec<(String, String, bool, i64)> = db
        .query(
            "SELECT stream_id, reason, cut,
                    (SELECT sum(octet_length(x)) FROM unnest(raw_fields) x)::int8
             FROM generation_events_rejected ORDER BY stream_id",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].0, giant_name);
    assert_eq!(letters[1].0, giant_value);
    for (_, reason, cut, kept) in &letters {
        assert!(*cut, "{reason}");
        assert!(*kept <= 1 << 20, "{kept} bytes kept");
        assert!(reason.contains("cut at 64 KiB"), "{reason}");
    }
    assert!(
        letters[0]
            .1
            .contains("the name of field 1 had 31,457,280 bytes"),
        "{}",
        letters[0].1
    );
    assert!(
        letters[1].1.contains(&format!(
            "the value of field 2 had 104,857,600 bytes, SHA-256 {value_digest}"
        )),
        "{}",
        letters[1].1
    );
    // Never replayed as the event it no longer is.
    let ran = env.genalytics().args(["rejected", "replay", "--all"]).ok();
    assert!(
        ran.stdout
            .starts_with("replayed 2 dead letters: 0 stored, 0 still rejected, 2 left as they are"),
        "{}",
        ran.stdout
    );
    assert_eq!(crate::harness::stored_ids(&mut db).len(), 40);
    let left: i64 = db
        .query_one("SELECT count(*) FROM generation_events_rejected", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 2);

    // A follower woken by a giant entry reads it the same way.
    let (follower, rss) = follow_under_time(&env);
    let more: Vec<u8> = vec![b'z'; 100 << 20];
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("blob")
        .arg(&more[..])
        .query(&mut con)
        .unwrap();
    drop(more);
    let after: Vec<String> = (0..5)
        .map(|_| xadd(&mut con, &key, "*", &[("event_type", "cancellation")]))
        .collect();
    crate::harness::wait_for("the follower to store what follows the giant", 60, || {
        crate::harness::stored_ids(&mut db).len() == 45
    });
    let kib = rss(follower);
    eprintln!("follow: peak RSS {kib} KiB");
    assert!(kib < 100 << 10, "follow: peak RSS {kib} KiB");
    want.extend(after);
    want.sort();
    assert_eq!(crate::harness::stored_ids(&mut db), want);
}

/// A follower under GNU time; the closure stops it as systemd would
/// (SIGTERM to genalytics itself, time's child) and returns its peak RSS
/// in KiB.
fn follow_under_time(
    env: &TestEnv,
) -> (std::process::Child, impl FnOnce(std::process::Child) -> u64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let command = env
        .genalytics()
        .args(["transfer", "--follow", "--keep", "100h", "-q"])
        .command();
    let child = under_time(&command, report.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("GNU time is installed");
    let stop = move |mut child: std::process::Child| {
        let children = format!("/proc/{0}/task/{0}/children", child.id());
        let pid: i32 = std::fs::read_to_string(children)
            .unwrap()
            .split_whitespace()
            .next()
            .expect("genalytics runs under time")
            .parse()
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
        reported_rss(report.path())
    };
    (child, stop)
}

#[test]
fn a_giant_position_is_checked_for_its_trim_without_a_script_copying_it_in_redis() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    for _ in 0..5 {
        xadd(&mut con, &key, "*", &[("event_type", "request")]);
    }
    let giant: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("blob")
        .arg(vec![b'g'; 17 << 20])
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut con)
        .unwrap();
    env.genalytics()
        .args(["transfer", "-q", "--keep", "0"])
        .ok();
    // Trimmed up to the position, the giant dead letter itself kept.
    assert_eq!(crate::harness::stream_ids(&mut con, &key), [giant]);
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    assert!(stats.contains("cmdstat_watch:"), "{stats}");
    assert!(
        !stats.contains("cmdstat_evalsha:") && !stats.contains("cmdstat_eval:"),
        "{stats}"
    );
}
