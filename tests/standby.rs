//! A hot standby (`pg_basebackup -R` of the test's server): every writer
//! refuses it at once with one sentence and exit 1, even with nothing to
//! do — a cron job aimed at the wrong host must not sit idle for ever —
//! while the readers work on it and show what the primary shows.

use chrono::{Duration, Utc};

use crate::harness::events::{traffic, write};
use crate::harness::{migrated, wait_for};

#[test]
fn writers_refuse_a_standby_and_readers_work_on_it() {
    let env = migrated();
    let hour = genalytics::testing::hour_floor(Utc::now()) - Duration::hours(3);
    write(&env, &traffic(hour, 60, crate::harness::seed()));
    env.genalytics()
        .args(["transfer", "-q", "--keep", "100h"])
        .ok();
    env.genalytics().args(["aggregate", "-q"]).ok();
    let stored: i64 = env
        .db()
        .query_one("SELECT count(*) FROM generation_events", &[])
        .unwrap()
        .get(0);

    // A primary alone has no standbys and no lag.
    let alone = env.status_json();
    assert_eq!(alone["standbys"], 0, "{alone}");
    assert!(alone["standby_replay_lag_seconds"].is_null(), "{alone}");

    let standby = env.pg.standby().unwrap_or_else(|err| panic!("{err:#}"));
    let url = standby.url(&env.database);
    let mut replica = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery, "the standby is in recovery");
    wait_for("the standby to hold every stored event", 30, || {
        replica
            .query_one("SELECT count(*) FROM generation_events", &[])
            .unwrap()
            .get::<_, i64>(0)
            == stored
    });

    // Readers: the same report as the primary's, status, dead letters.
    let until = Utc::now().to_rfc3339();
    let report = |database_url: &str| {
        env.genalytics()
            .env("DATABASE_URL", database_url)
            .args(["report", "overview", "--days", "1", "--format", "json"])
            .args(["--until", &until])
            .ok()
            .stdout
    };
    assert_eq!(report(&url), report(&env.database_url()));
    // status names the server it read and what it is.
    let status = |database_url: &str| -> serde_json::Value {
        let ran = env
            .genalytics()
            .env("DATABASE_URL", database_url)
            .args(["status", "--format", "json"])
            .ok();
        serde_json::from_str(&ran.stdout).unwrap()
    };
    let on_standby = status(&url);
    assert_eq!(on_standby["database_role"], "standby");
    assert_eq!(
        on_standby["database"],
        format!("127.0.0.1:{}", standby.port())
    );
    // check names the server it read, and what it is.
    let checked = env
        .genalytics()
        .env("DATABASE_URL", &url)
        .args(["check", "--max-stale-hours", "100"])
        .ok();
    assert!(
        checked
            .stdout
            .contains(&format!("(read on 127.0.0.1:{} (standby))", standby.port())),
        "{}",
        checked.stdout
    );
    let on_primary = status(&env.database_url());
    assert_eq!(on_primary["database_role"], "primary");
    assert_eq!(on_primary["standbys"], 1, "{on_primary}");
    assert!(on_primary["standby_replay_lag_seconds"].as_f64().is_some());
    for args in [
        &["status", "--format", "json"][..],
        &["rejected", "list"],
        &["migrate", "--status"],
    ] {
        env.genalytics()
            .env("DATABASE_URL", &url)
            .args(args.iter().copied())
            .ok();
    }

    // Writers: refused at once, whatever they would have had to do.
    for args in [
        &["transfer"][..],
        &["transfer", "--follow"],
        &["aggregate"],
        &["migrate"],
        &["prune", "--older-than", "90d"],
        &["rejected", "replay", "--all"],
        &["rejected", "purge", "--older-than", "30d"],
    ] {
        let ran = env
            .genalytics()
            .env("DATABASE_URL", &url)
            .args(args.iter().copied())
            .code(1);
        assert!(
            ran.stderr.contains("read-only standby") && ran.stderr.lines().count() == 1,
            "{args:?}: {}",
            ran.stderr
        );
        assert!(
            ran.stderr
                .contains(&format!("127.0.0.1:{}", standby.port())),
            "{args:?} names the host: {}",
            ran.stderr
        );
    }
}

#[test]
fn the_trim_waits_until_every_standby_has_replayed_the_commit() {
    let env = migrated();
    let standby = env.pg.standby().unwrap_or_else(|err| panic!("{err:#}"));
    let mut replica =
        postgres::Client::connect(&standby.url(&env.database), postgres::NoTls).unwrap();
    // The standby holds its replay back: it receives the commits, and does
    // not apply them.
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .unwrap();
    // Paused for real once the standby meets a WAL record to hold back:
    // the primary writes one until it does.
    let mut primary = env.pg.admin().unwrap();
    wait_for("the standby's replay to pause", 30, || {
        primary
            .batch_execute("CREATE TEMP TABLE nudge (); DROP TABLE nudge")
            .unwrap();
        replica
            .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
            .unwrap()
            .get::<_, String>(0)
            == "paused"
    });
    let hour = genalytics::testing::hour_floor(Utc::now()) - Duration::hours(1);
    let mut key_con = env.redis();
    let key = env.stream_key();
    write(&env, &traffic(hour, 20, crate::harness::seed()));
    let ran = env
        .genalytics()
        .args(["transfer", "--keep", "0s", "-v"])
        .ok();
    let stored: i64 = env
        .db()
        .query_one("SELECT count(*) FROM generation_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, 20, "stored on the primary");
    let length: i64 = redis::cmd("XLEN").arg(&key).query(&mut key_con).unwrap();
    assert_eq!(length, 20, "nothing trimmed while the standby lags");
    assert!(
        ran.stderr.contains("not trimming") && ran.stderr.contains("not replayed"),
        "{}",
        ran.stderr
    );
    let replayed: i64 = replica
        .query_one("SELECT count(*) FROM generation_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(replayed, 0, "the standby really held its replay back");

    // Replayed, the next commit trims what is stored.
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .unwrap();
    write(&env, &traffic(hour, 1, crate::harness::seed() + 1));
    env.genalytics()
        .args(["transfer", "-q", "--keep", "0s"])
        .ok();
    let length: i64 = redis::cmd("XLEN").arg(&key).query(&mut key_con).unwrap();
    assert!(length <= 1, "trimmed after the replay: {length} left");
}

#[test]
fn target_session_attrs_chooses_among_the_listed_servers_as_libpq_does() {
    let env = migrated();
    let standby = env.pg.standby().unwrap_or_else(|err| panic!("{err:#}"));
    let primary = format!("127.0.0.1:{}", env.pg.port());
    let replica = format!("127.0.0.1:{}", standby.port());
    // The servers in the order given, with the test database's credentials.
    let url = |hosts: &[&str], attrs: &str| {
        let base = env.database_url();
        let (scheme_and_login, _) = base.split_once('@').unwrap();
        format!(
            "{scheme_and_login}@{}/{}?target_session_attrs={attrs}",
            hosts.join(","),
            env.database
        )
    };
    let read = |database_url: &str| -> (String, String) {
        let ran = env
            .genalytics()
            .env("DATABASE_URL", database_url)
            .args(["status", "--format", "json"])
            .ok();
        let status: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        (
            status["database"].as_str().unwrap().to_string(),
            status["database_role"].as_str().unwrap().to_string(),
        )
    };
    let (p, s) = (primary.as_str(), replica.as_str());
    let both = [[p, s], [s, p]];
    for order in &both {
        for (attrs, want) in [
            ("read-write", p),
            ("primary", p),
            ("read-only", s),
            ("standby", s),
            ("prefer-standby", s),
            ("any", order[0]),
        ] {
            let (server, role) = read(&url(order, attrs));
            assert_eq!(server, want, "{attrs} with {order:?}");
            let role_wanted = if want == p { "primary" } else { "standby" };
            assert_eq!(role, role_wanted, "{attrs} with {order:?}");
        }
    }
    // A server that does not answer is passed over; prefer-standby takes
    // the primary when no standby is listed.
    let dead = format!("127.0.0.1:{}", crate::harness::closed_port());
    assert_eq!(read(&url(&[&dead, p], "prefer-standby")).0, primary);
    assert_eq!(read(&url(&[&dead, s], "any")).0, replica);

    // No listed server will do: one sentence naming each.
    let ran = env
        .genalytics()
        .env("DATABASE_URL", url(&[p], "standby"))
        .args(["status"])
        .run();
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!(
            "will do for target_session_attrs=standby: {primary} is a primary"
        )),
        "{}",
        ran.stderr
    );
    // A writer sent to the standby names it, though it is listed second.
    let ran = env
        .genalytics()
        .env("DATABASE_URL", url(&[p, s], "standby"))
        .args(["aggregate"])
        .code(1);
    assert!(
        ran.stderr
            .contains(&format!("{replica} is a read-only standby")),
        "{}",
        ran.stderr
    );
    let ran = env
        .genalytics()
        .env("DATABASE_URL", url(&[p, s], "primary-ish"))
        .args(["status"])
        .code(2);
    assert!(
        ran.stderr.contains("target_session_attrs other than"),
        "{}",
        ran.stderr
    );
}

/// With `synchronous_commit = off` (the throwaway server's setting, and
/// many operators') a commit returns before its WAL is written; with a
/// slow WAL writer it stays unwritten for seconds, so a standby that has
/// replayed everything written does not have the commit. The trim must
/// wait for the commit itself: every entry gone from the stream right
/// after the run is on the standby.
#[test]
fn the_trim_waits_for_an_asynchronous_commit_not_yet_written() {
    let pg = genalytics::throwaway::Postgres::start_with(&[("wal_writer_delay", "10000")])
        .unwrap_or_else(|err| panic!("{err:#}"));
    let env = crate::harness::TestEnv::with_postgres(pg);
    env.genalytics().args(["migrate", "-q"]).ok();
    let standby = env.pg.standby().unwrap_or_else(|err| panic!("{err:#}"));
    let mut replica =
        postgres::Client::connect(&standby.url(&env.database), postgres::NoTls).unwrap();
    let hour = genalytics::testing::hour_floor(Utc::now()) - Duration::hours(1);
    let key = env.stream_key();
    let mut con = env.redis();
    let mut primary = env.pg.admin_of(&env.database).unwrap();
    let mut held_back = 0;
    for round in 0..6 {
        write(&env, &traffic(hour, 3, crate::harness::seed() + round));
        let written = crate::harness::stream_ids(&mut con, &key);
        // Everything so far written and replayed: the write position is a
        // record's end the standby has reached, and the transfer's small
        // asynchronous commit will sit unwritten behind it.
        primary
            .batch_execute(
                "SET synchronous_commit = on; CREATE TEMP TABLE flush (); DROP TABLE flush;",
            )
            .unwrap();
        wait_replayed(
            &mut primary,
            "the standby to replay what is written",
            "pg_current_wal_lsn()",
        );
        env.genalytics()
            .args(["transfer", "-q", "--keep", "0s"])
            .ok();
        let left: std::collections::BTreeSet<String> = crate::harness::stream_ids(&mut con, &key)
            .into_iter()
            .collect();
        let on_standby: std::collections::BTreeSet<String> =
            crate::harness::stored_ids(&mut replica)
                .into_iter()
                .collect();
        let lost: Vec<&String> = written
            .iter()
            .filter(|id| !left.contains(*id) && !on_standby.contains(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: trimmed before the standby had them: {lost:?}"
        );
        // The fault happened: the run stored entries and left them in the
        // stream (more than the one kept as the trim's anchor), the commit
        // being unwritten for the standby.
        if written.iter().filter(|id| left.contains(*id)).count() > 1 {
            held_back += 1;
        }
    }
    assert!(held_back > 0, "no round had a commit the standby lacked");

    // A run whose commit is written at once (synchronous_commit on for
    // its session) trims what is stored: the wait held the trim back, it
    // did not stop it.
    write(&env, &traffic(hour, 1, crate::harness::seed() + 99));
    env.genalytics()
        .env(
            "DATABASE_URL",
            format!(
                "{}?options=-c%20synchronous_commit%3Don",
                env.database_url()
            ),
        )
        .args(["transfer", "-q", "--keep", "0s"])
        .ok();
    let left = crate::harness::stream_ids(&mut con, &key).len();
    assert!(left <= 1, "trimmed once replayed: {left} left");
}

/// A record that ends exactly on a WAL page boundary leaves the insert
/// position after the next page's header, while a standby that replayed it
/// reports the boundary: it has replayed everything, and the trim must not
/// count it behind.
#[test]
fn a_standby_at_a_page_boundary_is_not_counted_behind() {
    let env = migrated();
    let _standby = env.pg.standby().unwrap_or_else(|err| panic!("{err:#}"));
    let mut primary = env.pg.admin().unwrap();
    let offset = |db: &mut postgres::Client| -> i64 {
        db.query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8", &[])
            .unwrap()
            .get(0)
    };
    let emit = |db: &mut postgres::Client, len: i64| {
        db.execute(
            "SELECT pg_logical_emit_message(false, 'x', repeat('y', $1::int8::int))",
            &[&len],
        )
        .unwrap();
    };
    for _ in 0..100 {
        // A message's record size beyond its text, measured (aligned; a
        // text over 255 bytes has the longer data header).
        let before = offset(&mut primary);
        emit(&mut primary, 400);
        let at = offset(&mut primary);
        let overhead = at - before - 400;
        let left = 8192 - at % 8192;
        if left < overhead + 64 {
            emit(&mut primary, left);
            continue;
        }
        emit(&mut primary, left - overhead);
        let boundary = offset(&mut primary);
        if boundary % 8192 != 24 {
            continue;
        }
        // The standby replays up to the boundary.
        wait_replayed(
            &mut primary,
            "the standby to replay up to the boundary",
            "pg_current_wal_insert_lsn() - 24",
        );
        let (_, behind) = genalytics::testing::standbys_behind(&mut primary, None).unwrap();
        // Nothing else was written meanwhile, or this try proves nothing.
        if offset(&mut primary) != boundary {
            continue;
        }
        assert_eq!(behind, Some(0), "the standby has replayed everything");
        at_segment_start(&mut primary, &offset);
        return;
    }
    panic!("never ended a record on a page boundary in 100 tries");
}

/// The same at a WAL segment's start, whose page header is the longer one:
/// `pg_switch_wal()` ends the segment.
fn at_segment_start(primary: &mut postgres::Client, offset: &dyn Fn(&mut postgres::Client) -> i64) {
    let segment: i64 = primary
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size'",
            &[],
        )
        .unwrap()
        .get(0);
    for _ in 0..20 {
        primary.batch_execute("SELECT pg_switch_wal()").unwrap();
        let start = offset(primary);
        if start % segment != 40 {
            continue;
        }
        wait_replayed(
            primary,
            "the standby to replay the switch",
            "pg_current_wal_insert_lsn() - 40",
        );
        let (_, behind) = genalytics::testing::standbys_behind(primary, None).unwrap();
        if offset(primary) != start {
            continue;
        }
        assert_eq!(behind, Some(0), "replayed up to the segment's start");
        return;
    }
    panic!("never stood at a segment's start in 20 tries");
}

/// Waits until the one standby has replayed up to `lsn` (an SQL
/// expression on the primary).
fn wait_replayed(primary: &mut postgres::Client, what: &str, lsn: &str) {
    let query = format!(
        "SELECT count(*) FROM pg_stat_replication
         WHERE application_name <> 'pg_basebackup' AND replay_lsn >= {lsn}"
    );
    wait_for(what, 30, || {
        primary.query_one(&query, &[]).unwrap().get::<_, i64>(0) == 1
    });
}

#[test]
fn a_server_that_accepts_and_never_answers_is_passed_over_within_connect_timeout() {
    let env = migrated();
    // The kernel completes the handshake for the backlog; nobody answers.
    let (_silent, port) = crate::harness::silent_server();
    let real = format!("127.0.0.1:{}", env.pg.port());
    let base = env.database_url();
    let (login, _) = base.split_once('@').unwrap();
    let url = format!(
        "{login}@127.0.0.1:{port},{real}/{}?connect_timeout=2",
        env.database
    );
    let started = std::time::Instant::now();
    let ran = env
        .genalytics()
        .env("DATABASE_URL", &url)
        .args(["status", "--format", "json"])
        .ok();
    let status: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(status["database"], real.as_str());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    // Alone, it is one sentence naming the limit, not a hang.
    let ran = env
        .genalytics()
        .env(
            "DATABASE_URL",
            format!("{login}@127.0.0.1:{port}/x?connect_timeout=1"),
        )
        .arg("status")
        .code(1);
    assert!(
        ran.stderr.contains("no answer within 1 s"),
        "{}",
        ran.stderr
    );

    // A follower retrying it leaves one attempt behind, not one a retry.
    let mut follower = env
        .genalytics()
        .env(
            "DATABASE_URL",
            format!("{login}@127.0.0.1:{port}/x?connect_timeout=1"),
        )
        .args(["transfer", "--follow"])
        .spawn();
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower stopped"
    );
    crate::harness::sigterm(&follower);
    let out = follower.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no answer within 1 s"), "{stderr}");
    assert!(
        stderr.contains("an earlier attempt is still waiting"),
        "{stderr}"
    );
}

#[test]
fn a_wrong_password_on_every_listed_server_stops_a_follower() {
    let env = migrated();
    let standby = env.pg.standby().unwrap_or_else(|err| panic!("{err:#}"));
    let base = env.database_url();
    let (login, _) = base.split_once('@').unwrap();
    let (user, _) = login.rsplit_once(':').unwrap();
    let url = format!(
        "{user}:wrong-pw@127.0.0.1:{},127.0.0.1:{}/{}",
        env.pg.port(),
        standby.port(),
        env.database
    );
    let mut follower = env
        .genalytics()
        .env("DATABASE_URL", &url)
        .args(["transfer", "--follow"])
        .spawn();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = follower.kill();
            panic!("the follower kept retrying a wrong password");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = follower.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("password"), "{stderr}");
    assert!(!stderr.contains("wrong-pw"), "{stderr}");
}
