//! PostgreSQL failover: a primary and a hot standby (`pg_basebackup -R`)
//! named together in one URL with `target_session_attrs=read-write`. The
//! primary crashes (immediate shutdown) and the standby is promoted
//! (`pg_ctl promote`); a cron transfer on the next run, and a follower
//! that runs through it all, store every entry exactly once on the new
//! primary — entries whose commit the standby had not replayed are read
//! again from Redis, which the trim kept for them.

use std::process::Stdio;

use chrono::{Duration, Utc};

use crate::harness::events::{Written, traffic, write};
use crate::harness::{TestEnv, migrated, sigterm, wait_for};

/// Both servers, the primary first, writers only on the one that takes
/// writes.
fn both(env: &TestEnv, standby: &genalytics::throwaway::Postgres) -> String {
    format!(
        "{},127.0.0.1:{}/{}?target_session_attrs=read-write",
        env.database_url()
            .rsplit_once('/')
            .map(|(servers, _)| servers.to_string())
            .unwrap(),
        standby.port(),
        env.database
    )
}

/// (entries stored, distinct entries) on the server at `url`.
fn stored(url: &str) -> (i64, i64) {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT stream_id) FROM generation_events",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn entries(n: usize, seed: u64) -> Vec<Written> {
    traffic(
        genalytics::testing::hour_floor(Utc::now()) - Duration::hours(2),
        n,
        seed,
    )
}

#[test]
fn a_cron_transfer_after_a_crash_and_a_promote_stores_every_entry_once() {
    let mut env = migrated();
    let seed = crate::harness::seed();
    let standby = env.pg.standby().unwrap_or_else(|err| panic!("{err:#}"));
    let url = both(&env, &standby);
    let transfer = |env: &TestEnv| {
        env.genalytics()
            .env("DATABASE_URL", &url)
            .args(["transfer", "-q", "--keep", "0s"])
            .ok();
    };
    write(&env, &entries(150, seed));
    transfer(&env);
    assert_eq!(stored(&env.database_url()), (150, 150));
    // The standby replays them (commits lost with the primary are the
    // follower test's case).
    let replica = standby.url(&env.database);
    wait_for("the standby to replay the first run", 60, || {
        stored(&replica) == (150, 150)
    });

    env.pg.crash();
    write(&env, &entries(70, seed + 1));
    standby.promote().unwrap_or_else(|err| panic!("{err:#}"));
    let new_primary = standby.url(&env.database);
    let mut client = postgres::Client::connect(&new_primary, postgres::NoTls).unwrap();
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(!in_recovery, "the standby was promoted");
    // The next run finds the new primary among the two and goes on.
    transfer(&env);
    write(&env, &entries(30, seed + 2));
    transfer(&env);
    assert_eq!(stored(&new_primary), (250, 250));
}

#[test]
fn a_follower_runs_through_a_primary_crash_and_a_promote_storing_every_entry_once() {
    let mut env = migrated();
    let seed = crate::harness::seed();
    let standby = env.pg.standby().unwrap_or_else(|err| panic!("{err:#}"));
    let url = both(&env, &standby);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut follower = env
        .genalytics()
        .env("DATABASE_URL", &url)
        .args(["transfer", "--follow", "--keep", "100h", "-v"])
        .command()
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    // The standby stops receiving WAL (as on a bad network): what the
    // primary commits from now on is lost with it.
    let mut on_standby = standby.admin().unwrap();
    on_standby
        .batch_execute("ALTER SYSTEM SET primary_conninfo = ''")
        .unwrap();
    on_standby.batch_execute("SELECT pg_reload_conf()").unwrap();
    let primary = env.database_url();
    let mut on_primary = env.pg.admin().unwrap();
    wait_for("the standby to stop streaming", 30, || {
        on_primary
            .query_one("SELECT count(*) FROM pg_stat_replication", &[])
            .unwrap()
            .get::<_, i64>(0)
            == 0
    });
    let before = entries(120, seed);
    write(&env, &before);
    wait_for("the entries before the crash on the primary", 30, || {
        stored(&primary).0 == 120
    });

    // The crash, entries while there is no primary, the promote, and
    // entries after it.
    env.pg.crash();
    assert!(
        postgres::Client::connect(&primary, postgres::NoTls).is_err(),
        "the primary is down"
    );
    write(&env, &entries(80, seed + 1));
    standby.promote().unwrap_or_else(|err| panic!("{err:#}"));
    let new_primary = standby.url(&env.database);
    assert_eq!(
        stored(&new_primary),
        (0, 0),
        "the commits were lost with the primary"
    );
    write(&env, &entries(100, seed + 2));
    let log_text = || std::fs::read_to_string(log.path()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while stored(&new_primary).1 != 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every entry on the new primary: {:?}; the follower's log:\n{}",
            stored(&new_primary),
            log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(stored(&new_primary), (300, 300), "each entry once");
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower still runs:\n{}",
        log_text()
    );
    sigterm(&follower);
    assert!(follower.wait().unwrap().success(), "{}", log_text());
}
