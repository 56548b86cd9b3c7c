//! `genalytics simulate` writes what the service's producer writes.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDateTime, Utc};

use crate::harness::TestEnv;

const PRODUCER_ENTRIES: &str = include_str!("fixtures/producer_entries.json");

type Fields = BTreeMap<String, String>;

fn read_stream(con: &mut redis::Connection, key: &str) -> Vec<(String, Fields)> {
    let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    raw.into_iter()
        .map(|(id, flat)| {
            let fields = flat
                .chunks(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            (id, fields)
        })
        .collect()
}

/// Field names per event type, as the real producer's entries show them,
/// plus the optional `queue_length` sample the producer may add to any event.
fn producer_field_names() -> BTreeMap<String, BTreeSet<String>> {
    let fixture: serde_json::Value = serde_json::from_str(PRODUCER_ENTRIES).unwrap();
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in fixture["entries"].as_array().unwrap() {
        let fields = entry["fields"].as_object().unwrap();
        let kind = fields["event_type"].as_str().unwrap().to_string();
        let set = names.entry(kind).or_default();
        set.extend(fields.keys().cloned());
        set.insert("queue_length".into());
    }
    names
}

/// Python's naive `isoformat()`: seconds, or six fraction digits, no zone.
fn parse_python_timestamp(text: &str) -> DateTime<Utc> {
    assert!(text.len() == 19 || text.len() == 26, "{text}");
    assert!(!text.ends_with('Z') && !text.contains('+'), "{text}");
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .unwrap_or_else(|err| panic!("{text}: {err}"))
        .and_utc()
}

fn simulate(env: &TestEnv, namespace: &str, seed: &str) {
    env.genalytics()
        .args([
            "simulate", "--events", "6000", "--hours", "12", "--users", "40",
        ])
        .args([
            "--seed",
            seed,
            "--end",
            "2026-11-27T12:00:00",
            "--maxlen",
            "0",
        ])
        .args(["--redis-ns", namespace])
        .ok();
}

#[test]
fn simulate_writes_the_producers_wire_format() {
    let env = TestEnv::new();
    let ran = env
        .genalytics()
        .args([
            "simulate", "--events", "6000", "--hours", "12", "--users", "40",
        ])
        .args([
            "--seed",
            "11",
            "--end",
            "2026-11-27T12:00:00",
            "--maxlen",
            "0",
        ])
        .ok();
    assert!(
        ran.stdout.contains("simulated 6,000 entries"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("seed 11"), "{}", ran.stdout);

    let entries = read_stream(&mut env.redis(), &env.stream_key());
    assert_eq!(entries.len(), 6000);

    let allowed = producer_field_names();
    let end = "2026-11-27T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let start = end - Duration::hours(12);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let (mut failed, mut succeeded, mut failed_with_zero) = (0u32, 0u32, 0u32);
    let (mut empty_ids, mut models) = (0, BTreeSet::new());
    let (mut earliest, mut latest) = (end, start);
    for (id, fields) in &entries {
        let kind = &fields["event_type"];
        *kinds.entry(kind.clone()).or_default() += 1;
        let names: BTreeSet<String> = fields.keys().cloned().collect();
        let allowed = &allowed[kind];
        assert!(names.is_subset(allowed), "{kind} entry has {names:?}");
        for required in ["event_type", "generation_id", "user_id", "timestamp"] {
            assert!(names.contains(required), "{kind} entry lacks {required}");
        }
        uuid::Uuid::parse_str(&fields["user_id"]).unwrap();
        match fields["generation_id"].as_str() {
            "" => empty_ids += 1,
            other => drop(uuid::Uuid::parse_str(other).unwrap()),
        }
        let at = parse_python_timestamp(&fields["timestamp"]);
        assert!(at >= start && at < end, "{at}");
        earliest = earliest.min(at);
        latest = latest.max(at);
        // The XADD happens when the event does.
        let id_ms: i64 = id.split('-').next().unwrap().parse().unwrap();
        assert!(
            (id_ms - at.timestamp_millis()).abs() < 1_000,
            "{id} vs {at}"
        );

        if kind == "completion" {
            let duration: i64 = fields["duration_ms"].parse().unwrap();
            assert!(duration >= 0);
            match fields["success"].as_str() {
                "True" => succeeded += 1,
                "False" => {
                    failed += 1;
                    assert_ne!(fields["error_type"], "");
                    if duration == 0 {
                        failed_with_zero += 1;
                    }
                }
                other => panic!("success spelled {other:?}"),
            }
            if let Some(model) = fields.get("model_checkpoint") {
                models.insert(model.clone());
            }
            for number in [
                "queue_wait_time_ms",
                "generation_time_ms",
                "batch_size",
                "prompt_tokens",
            ] {
                if let Some(value) = fields.get(number).filter(|v| !v.is_empty()) {
                    assert!(value.parse::<u32>().is_ok(), "{number}={value}");
                }
            }
            if let Some(dims) = fields.get("image_dimensions").filter(|v| !v.is_empty()) {
                let json: serde_json::Value = serde_json::from_str(dims).unwrap();
                assert!(json["width"].is_u64() && json["height"].is_u64(), "{dims}");
            }
        }
        if let Some(queue) = fields.get("queue_length") {
            assert!(queue.parse::<u32>().is_ok(), "queue_length={queue}");
        }
    }
    let requests = kinds["request"];
    let finished = kinds["completion"] + kinds["cancellation"];
    assert!((2950..=3050).contains(&requests), "{kinds:?}");
    assert!(
        finished <= requests && finished >= requests - 50,
        "{kinds:?}"
    );
    let failure_rate = f64::from(failed) / f64::from(failed + succeeded);
    assert!((0.02..0.12).contains(&failure_rate), "{failure_rate}");
    assert!(failed_with_zero > 0, "some failures come with duration 0");
    assert!(kinds["cancellation"] > 50, "{kinds:?}");
    assert!(empty_ids > 1000 && empty_ids < 5000, "{empty_ids}");
    assert!(models.len() >= 4, "{models:?}");
    assert!(earliest < start + Duration::minutes(30), "{earliest}");
    assert!(latest > end - Duration::minutes(30), "{latest}");
}

#[test]
fn simulate_is_deterministic_for_a_seed() {
    let env = TestEnv::new();
    simulate(&env, "first", "5");
    simulate(&env, "second", "5");
    simulate(&env, "third", "6");
    let mut con = env.redis();
    let first = read_stream(&mut con, "first:generation_events:stream");
    let second = read_stream(&mut con, "second:generation_events:stream");
    let third = read_stream(&mut con, "third:generation_events:stream");
    assert_eq!(first.len(), 6000);
    assert_eq!(first, second);
    assert_ne!(first, third);
}

#[test]
fn simulate_appends_after_existing_entries_and_honours_the_producers_cap() {
    let env = TestEnv::new();
    let key = env.stream_key();
    let mut con = env.redis();
    // The stream already holds an entry from "the future".
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("4102444800000-0")
        .arg("event_type")
        .arg("request")
        .query(&mut con)
        .unwrap();
    env.genalytics()
        .args([
            "simulate", "--events", "500", "--hours", "1", "--seed", "1", "--maxlen", "0",
        ])
        .ok();
    let len: u64 = redis::cmd("XLEN").arg(&key).query(&mut con).unwrap();
    assert_eq!(len, 501);

    // Like the producer's XADD MAXLEN ~ cap: the stream stays near the cap.
    let capped = env
        .genalytics()
        .args([
            "simulate", "--events", "3000", "--hours", "1", "--seed", "2", "--maxlen", "1000",
        ])
        .args(["--stream", "capped"])
        .ok();
    assert!(capped.stdout.contains("--maxlen 0"), "{}", capped.stdout);
    let len: u64 = redis::cmd("XLEN").arg("capped").query(&mut con).unwrap();
    assert!((1000..1200).contains(&len), "{len}");
}

#[test]
fn simulate_refuses_a_key_that_is_not_a_stream() {
    let env = TestEnv::new();
    let mut con = env.redis();
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("x")
        .query(&mut con)
        .unwrap();
    let ran = env
        .genalytics()
        .args(["simulate", "--events", "10", "--stream", "plain"])
        .code(1);
    assert!(ran.stderr.contains("not a stream"), "{}", ran.stderr);
}
