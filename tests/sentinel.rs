//! Redis Sentinel. The harness starts a master, a replica and a sentinel;
//! genalytics finds the master through the sentinel, before and after
//! `SENTINEL FAILOVER` promotes the replica, and a follower runs through the
//! failover: every entry the new master holds is stored exactly once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use genalytics::throwaway::RedisSentinel;

use crate::harness::events::{Written, traffic};
use crate::harness::{Cmd, TestEnv, migrated, stored_ids, wait_for, xadd};

/// genalytics asking `group`'s sentinel for the master.
fn through(env: &TestEnv, group: &RedisSentinel) -> Cmd {
    env.genalytics()
        .env("REDIS_URL", group.url())
        .env("GENALYTICS_REDIS_SENTINEL", RedisSentinel::NAME)
}

fn events(n: usize, seed: u64) -> Vec<Written> {
    let hour = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap() - TimeDelta::hours(2);
    traffic(hour, n, seed)
}

/// Writes `events` to the group's master now; their IDs, once the replica
/// holds them too (`WAIT`).
fn write_to_master(group: &RedisSentinel, key: &str, events: &[Written]) -> Vec<String> {
    let mut con = group.master().unwrap().connection().unwrap();
    let ids = events
        .iter()
        .map(|event| {
            let fields = event.fields();
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            xadd(&mut con, key, "*", &pairs)
        })
        .collect();
    let replicas: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query(&mut con)
        .unwrap();
    assert_eq!(replicas, 1, "the replica did not acknowledge the entries");
    ids
}

fn stream_len(node: &genalytics::throwaway::Redis, key: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut node.connection().unwrap())
        .unwrap()
}

#[test]
fn transfer_status_and_simulate_find_the_master_before_and_after_a_failover() {
    let env = migrated();
    let group = RedisSentinel::start(false).unwrap();
    let key = env.stream_key();

    let mut written = write_to_master(&group, &key, &events(120, 1));
    let ran = through(&env, &group)
        .args(["transfer", "--keep", "0s"])
        .ok();
    assert!(
        ran.stdout.starts_with("transferred 120 events"),
        "{}",
        ran.stdout
    );
    let old = group.master().unwrap().port();
    // Trimmed up to the last entry stored, which stays as the anchor.
    assert_eq!(stream_len(group.master().unwrap(), &key), 1, "trimmed");

    let new = group.fail_over().unwrap();
    assert_ne!(new.port(), old, "the replica was promoted");
    // The old master is the new one's replica now, and refuses writes.
    let old_node = group.nodes().iter().find(|n| n.port() == old).unwrap();
    let refused = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("a")
        .arg("b")
        .query::<String>(&mut old_node.connection().unwrap())
        .unwrap_err();
    assert_eq!(refused.code(), Some("READONLY"), "{refused}");

    written.extend(write_to_master(&group, &key, &events(80, 2)));
    let ran = through(&env, &group)
        .args(["transfer", "--keep", "0s"])
        .ok();
    assert!(
        ran.stdout.starts_with("transferred 80 events"),
        "{}",
        ran.stdout
    );
    written.sort();
    assert_eq!(stored_ids(&mut env.db()), written, "each entry once");
    assert_eq!(stream_len(new, &key), 1, "trimmed on the new master");

    // simulate writes to the new master; status reads it.
    through(&env, &group)
        .args([
            "simulate", "-q", "--events", "300", "--hours", "1", "--maxlen", "0",
        ])
        .ok();
    assert_eq!(stream_len(new, &key), 301);
    let ran = through(&env, &group)
        .args(["status", "--format", "json"])
        .ok();
    let status: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(status["behind"], 300, "{status:#}");
    through(&env, &group)
        .args(["check", "--max-lag", "1h"])
        .ok();
}

#[test]
fn a_follower_runs_through_a_sentinel_failover_storing_every_entry_once() {
    let env = migrated();
    // A sentinel without a password of its own: the URL's is the master's.
    let group = Arc::new(RedisSentinel::start(true).unwrap());
    let key = env.stream_key();
    let mut follower = through(&env, &group)
        .args(["transfer", "--follow", "--keep", "0s"])
        .spawn();

    // The producer writes with IDs it chooses, so an entry whose reply was
    // lost in the failover is still known; an entry counts as confirmed
    // when the replica acknowledged it.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (group, key, stop) = (Arc::clone(&group), key.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let base = Utc::now().timestamp_millis() - 60_000;
            let events = events(4000, 3);
            let (mut attempted, mut confirmed) = (Vec::new(), Vec::new());
            let mut con: Option<redis::Connection> = None;
            for (i, event) in events.iter().enumerate() {
                if stop.load(Ordering::Relaxed) && i >= 300 {
                    break;
                }
                let id = format!("{}-0", base + i as i64);
                attempted.push(id.clone());
                for _ in 0..200 {
                    let Some(c) = con.as_mut() else {
                        con = group.master().ok().and_then(|m| m.connection().ok());
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(&key).arg(&id);
                    for (name, value) in event.fields() {
                        cmd.arg(name).arg(value);
                    }
                    match cmd.query::<String>(c) {
                        Ok(_) => {}
                        // Written before the reply was lost.
                        Err(err) if format!("{err}").contains("equal or smaller") => {}
                        Err(_) => {
                            con = None;
                            continue;
                        }
                    }
                    let acked: i64 = redis::cmd("WAIT").arg(1).arg(1000).query(c).unwrap_or(0);
                    if acked >= 1 {
                        confirmed.push(id.clone());
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (attempted, confirmed)
        })
    };

    let mut db = env.db();
    let started = std::time::Instant::now();
    while stored_ids(&mut db).len() < 100 {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = follower.kill();
            let out = follower.wait_with_output().unwrap();
            panic!(
                "the follower stored nothing before the failover: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let old = group.master().unwrap().port();
    let new = group.fail_over().unwrap().port();
    assert_ne!(new, old, "the replica was promoted");
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower stopped during the failover"
    );
    let at_failover = stored_ids(&mut db).len();
    wait_for(
        "the follower to store entries after the failover",
        60,
        || stored_ids(&mut db).len() >= at_failover + 100,
    );
    stop.store(true, Ordering::Relaxed);
    let (attempted, confirmed) = producer.join().unwrap();
    assert!(attempted.len() >= 300, "{}", attempted.len());

    // Everything the new master holds is stored: the stream drains.
    let new_node = group.nodes().iter().find(|n| n.port() == new).unwrap();
    wait_for("the follower to store all the new master holds", 60, || {
        let stored: BTreeSet<String> = stored_ids(&mut db).into_iter().collect();
        let mut con = new_node.connection().unwrap();
        crate::harness::stream_ids(&mut con, &key)
            .iter()
            .all(|id| stored.contains(id))
    });
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower stopped"
    );
    crate::harness::sigterm(&follower);
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // The failover reached the follower: its connection was cut (the
    // sentinel kills the clients of both nodes it reconfigures).
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("recovered after an outage"), "{log}");

    let stored = stored_ids(&mut db);
    let unique: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no entry stored twice");
    let attempted: BTreeSet<&String> = attempted.iter().collect();
    assert!(
        unique.is_subset(&attempted),
        "nothing stored that was not written"
    );
    let missing: Vec<&String> = confirmed.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "confirmed entries not stored: {missing:?}"
    );
    assert!(
        confirmed.len() >= 300,
        "most entries reached the replica: {}",
        confirmed.len()
    );
}

#[test]
fn sentinel_mistakes_get_one_sentence() {
    let env = migrated();
    // A plain Redis is no sentinel.
    let ran = env
        .genalytics()
        .env("GENALYTICS_REDIS_SENTINEL", "mymaster")
        .arg("transfer")
        .code(1);
    assert!(ran.stderr.contains("is not a sentinel"), "{}", ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);

    let group = RedisSentinel::start(false).unwrap();
    let ran = through(&env, &group)
        .env("GENALYTICS_REDIS_SENTINEL", "other\x1b[2J")
        .arg("transfer")
        .code(1);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("no sentinel in REDIS_URL / --redis-url monitors a master named other"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains('\x1b'), "{:?}", ran.stderr);
    // The URL's password is never shown.
    let password = group.url();
    let password = password.split(['@', ':']).nth(2).unwrap();
    assert!(!ran.stderr.contains(password), "{}", ran.stderr);

    let ran = through(&env, &group)
        .args(["--redis-cluster", "status"])
        .run();
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("exclude each other"), "{}", ran.stderr);
    let ran = through(&env, &group)
        .env("GENALYTICS_REDIS_SENTINEL", " ")
        .arg("status")
        .run();
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("needs the name"), "{}", ran.stderr);
}

#[test]
fn the_demo_runs_behind_a_sentinel_and_leaves_nothing_behind() {
    let tmp = crate::demo::demo_tmpdir();
    let ran = Cmd::new()
        .args(["demo", "--events", "3000"])
        .env("GENALYTICS_REDIS_SENTINEL", "mymaster")
        .env("TMPDIR", tmp.path())
        .ok();
    assert!(
        ran.stdout.contains("a Redis master on 127.0.0.1:"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("and a sentinel on"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("transferred 3,000 events"),
        "{}",
        ran.stdout
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_cron_transfer_started_while_the_master_is_down_waits_for_the_sentinels_failover() {
    let env = migrated();
    let mut group = RedisSentinel::start(false).unwrap();
    let key = env.stream_key();
    let mut written = write_to_master(&group, &key, &events(150, 4));
    let old = group.stop_master().unwrap();

    // The sentinel still names the stopped master: the run is refused,
    // asks again, and finds the replica it promotes a second or two later.
    // Sentinel set in the config file, as an operator would.
    let dir = tempfile::tempdir().unwrap();
    let file = crate::config_file::file(
        dir.path(),
        "genalytics.toml",
        &format!(
            "redis_url = \"{}\"\nredis_sentinel = \"{}\"\n",
            group.url(),
            RedisSentinel::NAME
        ),
        0o600,
    );
    let ran = env
        .genalytics()
        .env_remove("REDIS_URL")
        .env("GENALYTICS_CONFIG", &file)
        .args(["transfer", "--keep", "0s"])
        .ok();
    assert!(
        ran.stdout.starts_with("transferred 150 events"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stderr
            .contains("asking the sentinels for the master again"),
        "{}",
        ran.stderr
    );
    let now = group.master().unwrap().port();
    assert_ne!(now, old, "the sentinel failed over");
    written.sort();
    assert_eq!(stored_ids(&mut env.db()), written, "each entry once");
}

#[test]
fn sentinels_and_their_master_over_tls_are_verified_as_one_node_is() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::tls::certificate(dir.path());
    let (cert, key) = (
        std::path::PathBuf::from(cert),
        std::path::PathBuf::from(key),
    );
    let env = migrated();
    let group = RedisSentinel::start_tls(&cert, &key).unwrap();
    assert!(group.url().starts_with("rediss://"), "{}", group.url());

    // The sentinel's certificate and the master's, the latter at the
    // address the sentinel gives (127.0.0.1), verified with the root.
    through(&env, &group)
        .env("SSL_CERT_FILE", &cert)
        .args([
            "simulate", "-q", "--events", "200", "--hours", "1", "--maxlen", "0",
        ])
        .ok();
    let ran = through(&env, &group)
        .env("SSL_CERT_FILE", &cert)
        .args(["transfer", "--keep", "0s"])
        .ok();
    assert!(
        ran.stdout.starts_with("transferred 200 events"),
        "{}",
        ran.stdout
    );
    // Not trusted: one sentence about the certificate.
    let ran = through(&env, &group).arg("transfer").code(1);
    assert!(
        ran.stderr.contains("not signed by a trusted authority"),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
}

#[test]
fn a_sentinel_that_never_answers_delays_the_next_by_seconds_at_most() {
    let env = migrated();
    let group = RedisSentinel::start(false).unwrap();
    let key = env.stream_key();
    let written = write_to_master(&group, &key, &events(20, 5));
    let (_silent, port) = crate::harness::silent_server();
    let url = group.url();
    let (login, _) = url.rsplit_once('@').unwrap();
    let urls = format!("{login}@127.0.0.1:{port},{url}");
    let started = std::time::Instant::now();
    let ran = env
        .genalytics()
        .env("REDIS_URL", urls)
        .env("GENALYTICS_REDIS_SENTINEL", RedisSentinel::NAME)
        .args(["transfer", "--keep", "0s", "-vv"])
        .ok();
    assert!(
        ran.stdout.starts_with("transferred 20 events"),
        "{}",
        ran.stdout
    );
    // The silent one costs its 2 s once: the answering one is asked first
    // after that.
    assert_eq!(
        ran.stderr.matches("did not answer").count(),
        1,
        "{}",
        ran.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(stored_ids(&mut env.db()).len(), written.len());
}

#[test]
fn a_cron_transfer_held_mid_run_through_a_failover_asks_again_and_stores_each_once() {
    use crate::harness::gate::{Gate, Stage};
    let env = migrated();
    let group = RedisSentinel::start(false).unwrap();
    let key = env.stream_key();
    let mut written = write_to_master(&group, &key, &events(3000, 6));
    // The run is held at its first batch's rows, by construction in the
    // middle of its work, while the sentinel fails the master over (and
    // cuts the run's connections to it).
    let mut gate = Gate::close(&env.database_url(), Stage::Rows, 1);
    let mut run = through(&env, &group)
        .args(["transfer", "--keep", "0s", "--batch-size", "500"])
        .spawn();
    gate.wait_held(&mut run, 60);
    group.fail_over().unwrap();
    gate.open();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("asking the sentinels for the master again"),
        "{stderr}"
    );
    written.sort();
    assert_eq!(stored_ids(&mut env.db()), written, "each entry once");
}
