//! What each index on `generation_events` costs a COPY, side by side in one
//! run on a throwaway PostgreSQL: the same rows (one day of simulated
//! traffic, in time order as transfer writes them) copied into the
//! partitioned table with no index, then with each index alone, then with
//! the set genalytics keeps and the set the original service had. Each
//! figure is the median of `ROUNDS`; an index's cost is its median minus
//! the median without indexes, as a share of the latter. A second part
//! times the queries that need the time index, with a btree and with BRIN.
//!
//! `cargo bench --bench indexes` (N = 1,000,000; `GENALYTICS_BENCH_EVENTS`
//! changes it).

use std::fmt::Write as _;
use std::time::Instant;

use genalytics::throwaway::Postgres;

mod common;

const ROUNDS: usize = 5;

/// (label, the indexes, as `CREATE INDEX` bodies after `ON generation_events`).
const SETS: &[(&str, &[&str])] = &[
    ("no index", &[]),
    (
        "entry key (stream, stream_id, timestamp), unique",
        &["UNIQUE INDEX bench_key ON generation_events (stream, stream_id, \"timestamp\")"],
    ),
    (
        "(user_id, timestamp DESC)",
        &["INDEX bench_user ON generation_events (user_id, \"timestamp\" DESC)"],
    ),
    (
        "btree (timestamp DESC)",
        &["INDEX bench_time ON generation_events (\"timestamp\" DESC)"],
    ),
    (
        "brin (timestamp)",
        &["INDEX bench_brin ON generation_events USING brin (\"timestamp\")"],
    ),
    (
        "generation_id",
        &["INDEX bench_gen ON generation_events (generation_id)"],
    ),
    (
        "event_type",
        &["INDEX bench_type ON generation_events (event_type)"],
    ),
    (
        "success WHERE completion",
        &["INDEX bench_success ON generation_events (success) WHERE event_type = 'completion'"],
    ),
    (
        "error_type WHERE NOT NULL",
        &["INDEX bench_error ON generation_events (error_type) WHERE error_type IS NOT NULL"],
    ),
    (
        "(model_checkpoint, timestamp DESC)",
        &["INDEX bench_model ON generation_events (model_checkpoint, \"timestamp\" DESC)"],
    ),
    ("kept by genalytics (key, user, time)", KEPT),
    ("the original service's eight", ORIGINAL),
];

const KEPT: &[&str] = &[
    "UNIQUE INDEX bench_key ON generation_events (stream, stream_id, \"timestamp\")",
    "INDEX bench_user ON generation_events (user_id, \"timestamp\" DESC)",
    "INDEX bench_time ON generation_events (\"timestamp\" DESC)",
];

const ORIGINAL: &[&str] = &[
    "UNIQUE INDEX bench_key ON generation_events (stream, stream_id, \"timestamp\")",
    "INDEX bench_user ON generation_events (user_id, \"timestamp\" DESC)",
    "INDEX bench_time ON generation_events (\"timestamp\" DESC)",
    "INDEX bench_gen ON generation_events (generation_id)",
    "INDEX bench_type ON generation_events (event_type)",
    "INDEX bench_success ON generation_events (success) WHERE event_type = 'completion'",
    "INDEX bench_error ON generation_events (error_type) WHERE error_type IS NOT NULL",
    "INDEX bench_model ON generation_events (model_checkpoint, \"timestamp\" DESC)",
];

fn main() -> anyhow::Result<()> {
    let events = common::env_number("GENALYTICS_BENCH_EVENTS", 1_000_000);
    let pg = Postgres::start()?;
    pg.create_database("bench")?;
    let url = pg.url("bench");
    common::Genalytics {
        database_url: &url,
        redis_url: "redis://127.0.0.1:1",
        namespace: None,
        time_log: None,
    }
    .run(&["migrate", "-q"])?;
    let mut db = pg.admin_of("bench")?;
    // One day of traffic in yesterday's partition, shaped like simulate's:
    // time order, 1,000 users, a model per completion, some failures.
    db.batch_execute(&format!(
        "SELECT genalytics_create_event_partition((now() AT TIME ZONE 'UTC')::date - 1);
         CREATE TABLE bench_rows AS
         SELECT 1 AS stream, (1700000000000 + n) || '-0' AS stream_id,
                (ARRAY['request', 'completion', 'cancellation'])[1 + (n % 7 > 2)::int + (n % 29 = 0)::int]
                    AS event_type,
                md5(n::text)::uuid AS generation_id,
                ('00000000-0000-4000-8000-' || lpad((hashint4(n) & 1023)::text, 12, '0'))::uuid AS user_id,
                date_trunc('day', now() - interval '1 day', 'UTC') + n * (interval '86399 seconds' / {events})
                    AS timestamp,
                CASE WHEN n % 7 > 2 THEN 200 + (hashint4(n) & 8191) END AS duration_ms,
                CASE WHEN n % 7 > 2 THEN n % 23 <> 0 END AS success,
                CASE WHEN n % 7 > 2 AND n % 23 = 0 THEN 'timeout' END AS error_type,
                CASE WHEN n % 7 > 2 THEN 'sdxl-' || n % 5 END AS model_checkpoint
         FROM generate_series(1, {events}) n;"
    ))?;
    let columns = "stream, stream_id, event_type, generation_id, user_id, timestamp, duration_ms, \
                   success, error_type, model_checkpoint";
    let mut rows: Vec<u8> = Vec::new();
    std::io::copy(
        &mut db.copy_out(&format!(
            "COPY (SELECT {columns} FROM bench_rows) TO STDOUT (FORMAT binary)"
        ))?,
        &mut rows,
    )?;
    // Start from a table without the migration's indexes.
    db.batch_execute(
        "DROP INDEX generation_events_stream_entry_time_key, generation_events_user_time_idx,
                    generation_events_time_idx",
    )?;

    let mut copy = |set: &[&str]| -> anyhow::Result<f64> {
        db.batch_execute("TRUNCATE generation_events")?;
        for index in set {
            db.batch_execute(&format!("CREATE {index}"))?;
        }
        db.batch_execute("CHECKPOINT")?;
        let started = Instant::now();
        common::copy_in(&mut db, columns, &rows)?;
        let seconds = started.elapsed().as_secs_f64();
        for index in set {
            let name = index.split_whitespace().find(|w| w.starts_with("bench_"));
            db.batch_execute(&format!("DROP INDEX {}", name.expect("named")))?;
        }
        Ok(seconds)
    };
    // Rounds alternate between the sets, so drift hits every set alike.
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); SETS.len()];
    for _ in 0..ROUNDS {
        for (i, (_, set)) in SETS.iter().enumerate() {
            seconds[i].push(copy(set)?);
        }
    }
    println!("COPY of {events} events into one daily partition (median of {ROUNDS}):");
    let base = common::median(&seconds[0]);
    for ((label, _), secs) in SETS.iter().zip(&seconds) {
        let median = common::median(secs);
        println!(
            "  {label:<40} {median:>7.2} s  {:>8.0} events/s  {:>+6.0} %",
            events as f64 / median,
            (median / base - 1.0) * 100.0
        );
    }

    time_index_queries(&mut db)
}

/// What the time index is for: the newest event (status, check) and an
/// hour's events (aggregate), with a btree and with BRIN.
fn time_index_queries(db: &mut postgres::Client) -> anyhow::Result<()> {
    println!("queries that need a time index (median of {ROUNDS}, ms):");
    for (label, index) in [
        ("btree", KEPT[2]),
        (
            "brin",
            "INDEX bench_brin ON generation_events USING brin (\"timestamp\")",
        ),
    ] {
        db.batch_execute(&format!("CREATE {index}; ANALYZE generation_events"))?;
        let mut line = format!("  {label:<6}");
        for (what, sql) in [
            ("newest event", "SELECT max(timestamp) FROM generation_events"),
            (
                "one hour's count",
                "SELECT count(*) FROM generation_events
                 WHERE timestamp >= date_trunc('day', now() - interval '1 day', 'UTC') + interval '12 hours'
                   AND timestamp < date_trunc('day', now() - interval '1 day', 'UTC') + interval '13 hours'",
            ),
        ] {
            let mut ms = Vec::new();
            for _ in 0..ROUNDS {
                let started = Instant::now();
                db.query_one(sql, &[])?;
                ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
            write!(line, "  {what}: {:>8.2}", common::median(&ms))?;
        }
        println!("{line}");
        let name = index.split_whitespace().find(|w| w.starts_with("bench_"));
        db.batch_execute(&format!("DROP INDEX {}", name.expect("named")))?;
    }
    Ok(())
}
