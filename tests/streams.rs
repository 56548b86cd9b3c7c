//! Several streams — `--stream` more than once or a pattern, each
//! with its own position, transferred side by side, exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;

use rand::SeedableRng;
use serde_json::Value;

use crate::harness::{TestEnv, gate, stream_ids, wait_for, xadd};

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

fn shard(env: &TestEnv, n: usize) -> String {
    format!("{}:generation_events:stream:{n}", env.namespace)
}

fn pattern(env: &TestEnv) -> String {
    format!("{}:generation_events:stream:*", env.namespace)
}

/// `events` simulated entries in a shard over the last `hours`; the IDs
/// written, sorted.
fn simulate_over(env: &TestEnv, key: &str, events: usize, seed: usize, hours: u32) -> Vec<String> {
    env.genalytics()
        .args(["simulate", "-q", "--maxlen", "0", "--stream", key])
        .args(["--hours", &hours.to_string()])
        .args(["--events", &events.to_string(), "--seed", &seed.to_string()])
        .ok();
    let mut ids = stream_ids(&mut env.redis(), key);
    ids.sort();
    ids
}

fn simulate(env: &TestEnv, key: &str, events: usize, seed: usize) -> Vec<String> {
    simulate_over(env, key, events, seed, 1)
}

/// Stream key → the entry IDs stored from it, sorted, duplicates kept.
fn stored_by_stream(db: &mut postgres::Client) -> BTreeMap<String, Vec<String>> {
    let mut stored: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in db
        .query(
            "SELECT s.stream_key, e.stream_id FROM generation_events e
             JOIN genalytics_streams s ON s.id = e.stream ORDER BY 1, 2",
            &[],
        )
        .unwrap()
    {
        stored.entry(row.get(0)).or_default().push(row.get(1));
    }
    stored
}

#[test]
fn a_pattern_transfers_every_matching_stream_in_parallel_once() {
    let env = migrated();
    let mut written: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, events) in [(0, 500), (1, 1200), (2, 30), (3, 700)] {
        let key = shard(&env, n);
        written.insert(key.clone(), simulate(&env, &key, events, 40 + n));
    }
    // Matching the pattern but not a stream, and a stream the pattern
    // does not match: both left alone.
    let mut con = env.redis();
    let _: () = redis::cmd("SET")
        .arg(format!("{}:generation_events:stream:notes", env.namespace))
        .arg("not a stream")
        .query(&mut con)
        .unwrap();
    xadd(
        &mut con,
        &env.stream_key(),
        "*",
        &[("event_type", "request")],
    );

    let ran = env
        .genalytics()
        .args([
            "transfer",
            "--keep",
            "0",
            "--parallel",
            "2",
            "--format",
            "json",
        ])
        .args(["--stream-pattern", &pattern(&env)])
        .ok();
    let summaries: BTreeMap<String, Value> = ran
        .stdout
        .lines()
        .map(|line| {
            let summary: Value = serde_json::from_str(line).unwrap();
            (summary["stream"].as_str().unwrap().to_string(), summary)
        })
        .collect();
    assert_eq!(
        summaries.keys().collect::<Vec<_>>(),
        written.keys().collect::<Vec<_>>(),
        "{}",
        ran.stdout
    );
    for (key, ids) in &written {
        assert_eq!(summaries[key]["events"], ids.len(), "{key}");
        assert_eq!(summaries[key]["behind"], 0, "{key}");
    }
    let mut db = env.db();
    assert_eq!(stored_by_stream(&mut db), written);

    // Nothing new: every stream a no-op, by key as well as by pattern.
    let keys: Vec<String> = written.keys().cloned().collect();
    let ran = env
        .genalytics()
        .args(["transfer", "--stream", &keys[0], "--stream", &keys[3]])
        .ok();
    assert_eq!(ran.stdout.lines().count(), 2, "{}", ran.stdout);
    assert!(
        ran.stdout
            .lines()
            .all(|line| line.starts_with("transferred 0 events")),
        "{}",
        ran.stdout
    );
    assert_eq!(stored_by_stream(&mut db), written);

    // Only transfer takes several streams.
    let ran = env
        .genalytics()
        .args(["status", "--stream", &keys[0], "--stream", &keys[1]])
        .code(2);
    assert!(ran.stderr.contains("for transfer"), "{}", ran.stderr);
    env.genalytics()
        .args(["status", "--stream-pattern", &pattern(&env)])
        .code(2);
    // A pattern that matches nothing is nothing to do.
    env.genalytics()
        .args(["transfer", "--stream-pattern", "no-such-prefix:*"])
        .ok();
}

fn spawn(env: &TestEnv, args: &[&str]) -> Child {
    env.genalytics().args(args.iter().copied()).spawn()
}

#[test]
fn sigkill_during_two_parallel_streams_loses_and_duplicates_nothing() {
    let env = migrated();
    let keys = [shard(&env, 0), shard(&env, 1)];
    let written: BTreeMap<String, Vec<String>> = keys
        .iter()
        .enumerate()
        // Four days of events: the killed runs also make day partitions.
        .map(|(n, key)| (key.clone(), simulate_over(&env, key, 40_000, 70 + n, 96)))
        .collect();
    let seed = crate::harness::seed();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut db = env.db();
    let args = [
        "transfer",
        "--parallel",
        "2",
        "--batch-size",
        "1000",
        "--stream",
        &keys[0],
        "--stream",
        &keys[1],
    ];
    // 80 batches of 1,000 in two streams; eight kills take at most three each.
    for round in 0..8 {
        let (stage, batch) = gate::draw(&mut rng);
        eprintln!("kill {round}: at {stage:?} of batch {batch}");
        gate::kill_at(&env.database_url(), stage, batch, || spawn(&env, &args));
        for (key, stored) in stored_by_stream(&mut db) {
            let unique: BTreeSet<&String> = stored.iter().collect();
            assert_eq!(
                unique.len(),
                stored.len(),
                "duplicates in {key} (seed {seed}, kill {round})"
            );
        }
    }
    env.genalytics().args(args).ok();
    assert_eq!(stored_by_stream(&mut db), written, "seed {seed}");
    let days: i64 = db
        .query_one(
            "SELECT count(DISTINCT tableoid) FROM generation_events",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(days >= 4, "the events lie in {days} partitions");
}

#[test]
fn following_a_pattern_picks_up_a_new_stream_and_stops_on_sigterm() {
    let env = migrated();
    let first = shard(&env, 0);
    let mut written = vec![(first.clone(), simulate(&env, &first, 50, 1))];
    let mut child = spawn(
        &env,
        &[
            "transfer",
            "--follow",
            "--keep",
            "0",
            "--stream-pattern",
            &pattern(&env),
        ],
    );
    let mut db = env.db();
    let stored = |db: &mut postgres::Client| stored_by_stream(db);
    wait_for("the first shard to be stored", 30, || {
        stored(&mut db).get(&first).map(Vec::len) == Some(50)
    });
    // A shard that appears while the run follows.
    let second = shard(&env, 1);
    written.push((second.clone(), simulate(&env, &second, 80, 2)));
    wait_for("the new shard to be stored", 40, || {
        stored(&mut db).get(&second).map(Vec::len) == Some(80)
    });
    assert!(child.try_wait().unwrap().is_none(), "the follower ended");
    crate::harness::sigterm(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stored(&mut db),
        written.into_iter().collect::<BTreeMap<_, _>>()
    );
}
