//! Redis Cluster. The harness starts a local cluster of three
//! masters; transfer, status, simulate and demo work on it, and a key whose
//! slot moves mid-run is transferred exactly once.

use std::collections::BTreeSet;

use genalytics::throwaway::RedisCluster;

use crate::harness::{Cmd, TestEnv, stored_ids, wait_for};

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

/// genalytics against the cluster, the seeds in this order.
fn on_cluster(env: &TestEnv, seeds: &str) -> Cmd {
    env.genalytics()
        .env("REDIS_URL", seeds)
        .env("GENALYTICS_REDIS_CLUSTER", "1")
}

/// The seed list with the node that owns `key` last: reaching the key
/// takes asking the cluster.
fn seeds_owner_last(cluster: &RedisCluster, key: &str) -> String {
    let owner = cluster.owner_of(key).unwrap();
    let mut nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != owner)
        .map(|(_, node)| node.url())
        .collect();
    nodes.push(cluster.nodes()[owner].url());
    nodes.join(",")
}

/// The entry IDs of `key`, read from the node that holds it.
fn ids_on_cluster(cluster: &RedisCluster, key: &str) -> Vec<String> {
    let owner = cluster.owner_of(key).unwrap();
    let mut con = cluster.nodes()[owner].connection().unwrap();
    let mut ids = crate::harness::stream_ids(&mut con, key);
    ids.sort();
    ids
}

#[test]
fn simulate_transfer_status_and_patterns_work_on_a_cluster() {
    let env = migrated();
    let cluster = RedisCluster::start(3).unwrap();
    let key = env.stream_key();
    let seeds = seeds_owner_last(&cluster, &key);
    on_cluster(&env, &seeds)
        .args([
            "simulate", "-q", "--events", "3000", "--hours", "1", "--maxlen", "0",
        ])
        .ok();
    let written = ids_on_cluster(&cluster, &key);
    assert_eq!(written.len(), 3000);
    let ran = on_cluster(&env, &seeds).arg("transfer").ok();
    assert!(
        ran.stdout.starts_with("transferred 3,000 events"),
        "{}",
        ran.stdout
    );
    let mut db = env.db();
    assert_eq!(stored_ids(&mut db), written);
    let ran = on_cluster(&env, &seeds)
        .args(["status", "--format", "json"])
        .ok();
    let status: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(status["behind"], 0, "{status:#}");
    assert_eq!(status["stream_length"], 3000, "{status:#}");

    // Shards on every node, found by a pattern across the masters.
    let mut shards: Vec<String> = Vec::new();
    let mut owners = BTreeSet::new();
    for n in 0..100 {
        let shard = format!("{}:generation_events:stream:{n}", env.namespace);
        if owners.insert(cluster.owner_of(&shard).unwrap()) {
            shards.push(shard);
        }
    }
    assert_eq!(shards.len(), 3, "shards on every node");
    for shard in &shards {
        on_cluster(&env, &seeds)
            .args(["simulate", "-q", "--events", "200", "--hours", "1"])
            .args(["--maxlen", "0", "--stream", shard])
            .ok();
    }
    let pattern = format!("{}:generation_events:stream:*", env.namespace);
    let ran = on_cluster(&env, &seeds)
        .args(["transfer", "--parallel", "2", "--stream-pattern", &pattern])
        .ok();
    assert_eq!(ran.stdout.lines().count(), 3, "{}", ran.stdout);
    let stored: i64 = db
        .query_one("SELECT count(*) FROM generation_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, 3000 + 3 * 200);

    // A cluster node without --redis-cluster, and --redis-cluster on a
    // server that is no cluster: one clear sentence each.
    let elsewhere = (cluster.owner_of(&key).unwrap() + 1) % 3;
    let ran = env
        .genalytics()
        .env("REDIS_URL", cluster.nodes()[elsewhere].url())
        .arg("transfer")
        .code(1);
    assert!(ran.stderr.contains("--redis-cluster"), "{}", ran.stderr);
    let ran = env
        .genalytics()
        .env("GENALYTICS_REDIS_CLUSTER", "1")
        .arg("transfer")
        .code(1);
    assert!(ran.stderr.contains("not a cluster node"), "{}", ran.stderr);
    // Several URLs without cluster mode is a usage error.
    let ran = env
        .genalytics()
        .env("REDIS_URL", &seeds)
        .arg("status")
        .code(2);
    assert!(ran.stderr.contains("--redis-cluster"), "{}", ran.stderr);
}

#[test]
fn a_backlog_whose_slot_moves_mid_transfer_lands_exactly_once() {
    let env = migrated();
    let cluster = RedisCluster::start(3).unwrap();
    let key = env.stream_key();
    let seeds = cluster.urls();
    on_cluster(&env, &seeds)
        .args([
            "simulate", "-q", "--events", "30000", "--hours", "1", "--maxlen", "0",
        ])
        .ok();
    let written = ids_on_cluster(&cluster, &key);
    assert_eq!(written.len(), 30_000);
    let before = cluster.owner_of(&key).unwrap();
    // Small batches: a run of many commits, surely still going when the
    // slot moves.
    let child = on_cluster(&env, &seeds)
        .args(["transfer", "--batch-size", "100"])
        .spawn();
    let mut db = env.db();
    wait_for("the first batches", 30, || !stored_ids(&mut db).is_empty());
    let after = cluster.move_slot_of(&key).unwrap();
    assert_ne!(before, after);
    let stored_when_moved = stored_ids(&mut db).len();
    assert!(
        stored_when_moved < written.len(),
        "the transfer finished before the slot moved: nothing would be tested"
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the transfer said: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // It met the move, and found the key on its new node.
    assert!(
        stderr.contains("MOVED") || stderr.contains("ASK"),
        "{stderr}"
    );
    assert!(stderr.contains("asking the cluster"), "{stderr}");
    assert_eq!(stored_ids(&mut db), written);
}

#[test]
fn the_demo_runs_on_a_cluster() {
    let ran = Cmd::new()
        .args(["demo", "--events", "3000"])
        .env("GENALYTICS_REDIS_CLUSTER", "1")
        .ok();
    assert!(
        ran.stdout.contains("a Redis cluster of 3 masters"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("transferred 3,000 events"),
        "{}",
        ran.stdout
    );
}
