//! Exactly once, whatever happens: SIGKILL at random moments, Redis and
//! PostgreSQL restarting mid-run, several transfers at once.

use std::process::Child;

use rand::SeedableRng;

use crate::harness::{TestEnv, gate, stored_ids, stream_ids};

const BACKLOG: u64 = 100_000;

/// A migrated environment with a backlog of `events` entries; returns the
/// IDs written, sorted.
fn backlog(events: u64) -> (TestEnv, Vec<String>) {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env.genalytics()
        .args([
            "simulate", "--hours", "1", "--seed", "9", "--maxlen", "0", "-q", "--events",
        ])
        .arg(events.to_string())
        .ok();
    let mut written = stream_ids(&mut env.redis(), &env.stream_key());
    assert_eq!(written.len() as u64, events);
    written.sort();
    (env, written)
}

fn spawn_transfer(env: &TestEnv, extra: &[&str]) -> Child {
    env.genalytics()
        .arg("transfer")
        .args(extra.iter().copied())
        .spawn()
}

#[track_caller]
fn assert_exactly_once(env: &TestEnv, written: &[String]) {
    let mut db = env.db();
    let stored = stored_ids(&mut db);
    let rejected: i64 = db
        .query_one("SELECT count(*) FROM generation_events_rejected", &[])
        .unwrap()
        .get(0);
    assert_eq!(rejected, 0);
    assert_eq!(
        stored.len(),
        written.len(),
        "rows stored vs entries written"
    );
    assert!(
        stored == written,
        "the stored stream IDs differ from the ones written"
    );
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let (env, written) = backlog(BACKLOG);
    let seed = crate::harness::seed();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut db = env.db();
    // 40 batches of 2,500; twelve kills take at most three each.
    for round in 0..12 {
        let (stage, batch) = gate::draw(&mut rng);
        eprintln!("kill {round}: at {stage:?} of batch {batch}");
        let before = stored_ids(&mut db).len();
        gate::kill_at(&env.database_url(), stage, batch, || {
            spawn_transfer(&env, &["--batch-size", "2500"])
        });
        let stored = stored_ids(&mut db);
        // Where the kill struck decides what stayed: the batches before the
        // held one, and the held one itself when it was inside COMMIT.
        let landed = if stage == gate::Stage::Commit {
            batch
        } else {
            batch - 1
        };
        assert_eq!(
            stored.len() - before,
            landed as usize * 2500,
            "kill {round} at {stage:?} of batch {batch} (seed {seed})"
        );
        let mut unique = stored.clone();
        unique.dedup();
        assert_eq!(
            unique.len(),
            stored.len(),
            "a killed run left duplicates (seed {seed}, kill {round})"
        );
        assert!(
            stored.len() < written.len(),
            "every entry was stored before kill {round} (seed {seed})"
        );
    }
    let ran = env.genalytics().arg("transfer").ok();
    assert!(ran.stdout.contains("0 entries behind"), "{}", ran.stdout);
    assert_exactly_once(&env, &written);
}

/// Restarts a server while a transfer is held at its second batch's rows —
/// so the server goes in the middle of the run by construction — and the
/// run ends with one clear line naming that server; the next run
/// completes exactly once.
fn restart_mid_run(server: &str, restart: impl FnOnce(&mut TestEnv)) {
    let (mut env, written) = backlog(BACKLOG);
    let mut gate = gate::Gate::close(&env.database_url(), gate::Stage::Rows, 2);
    let mut child = spawn_transfer(&env, &["--batch-size", "2500"]);
    gate.wait_held(&mut child, 60);
    restart(&mut env);
    drop(gate.release());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the interrupted run said: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(server), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    env.genalytics().arg("transfer").ok();
    assert_exactly_once(&env, &written);
}

#[test]
fn a_redis_restart_mid_run_ends_cleanly_and_the_next_run_completes() {
    restart_mid_run("Redis", |env| env.redis.restart().unwrap());
}

#[test]
fn a_postgres_restart_mid_run_ends_cleanly_and_the_next_run_completes() {
    restart_mid_run("PostgreSQL", |env| env.pg.restart().unwrap());
}

#[test]
fn three_transfers_at_once_store_each_entry_once() {
    let (env, written) = backlog(BACKLOG / 4);
    // Without --wait: one works, the others step aside.
    let children: Vec<Child> = (0..3)
        .map(|_| spawn_transfer(&env, &["--batch-size", "1000"]))
        .collect();
    let mut stepped_aside = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if String::from_utf8_lossy(&out.stdout).contains("another transfer") {
            stepped_aside += 1;
        }
    }
    assert!(stepped_aside >= 1, "at most one transfer works at a time");
    env.genalytics().arg("transfer").ok();
    assert_exactly_once(&env, &written);

    // With --wait: they take turns, and still nothing twice.
    env.genalytics()
        .args([
            "simulate", "--hours", "1", "--seed", "10", "--events", "20000", "--maxlen", "0", "-q",
        ])
        .ok();
    let mut all = stream_ids(&mut env.redis(), &env.stream_key());
    all.sort();
    let children: Vec<Child> = (0..3)
        .map(|_| spawn_transfer(&env, &["--wait", "--batch-size", "1000", "--keep", "100h"]))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The stream still holds the first backlog too (kept), so compare all.
    assert_exactly_once(&env, &all);
}
