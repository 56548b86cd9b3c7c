//! Beyond one stream and one table, side by side in one run on throwaway
//! servers:
//!
//! 1. Two streams: `genalytics transfer --stream s0 --stream s1 --parallel 2`
//!    draining N entries (N/2 in each) end to end, against the single-COPY
//!    limit — one connection's binary `COPY FROM STDIN` of the same rows,
//!    pre-rendered, into the same partitioned table — and against two such
//!    COPY connections at once. Also `--parallel 1`, the same work in turn.
//!    Each run's CPU-seconds (genalytics by GNU time, Redis by `INFO cpu`,
//!    PostgreSQL's process tree by `/proc`) per million entries, and what
//!    two cores give a million entries at the 1.2x goal.
//! 2. Prune: 90 days of events (`GENALYTICS_BENCH_DAY_EVENTS` a day, in
//!    daily partitions), the oldest 30 days removed by `genalytics prune`
//!    (dropping partitions) against one `DELETE` of the same rows followed
//!    by the `VACUUM` that makes their space reusable.
//! 3. Migrate: a table as an older genalytics left it, with 10 N events
//!    over 90 days, converted to the partitioned layout by `genalytics
//!    migrate` (one run: the conversion happens once).
//!
//! `cargo bench --bench scaling` (N = 1,000,000, `GENALYTICS_BENCH_EVENTS`;
//! `GENALYTICS_BENCH_ONLY=streams|prune|migrate` runs one part;
//! 50,000 events a day, `GENALYTICS_BENCH_DAY_EVENTS`). Medians of `ROUNDS`
//! alternating rounds.

use std::io::Write;
use std::time::Instant;

use genalytics::throwaway::{Postgres, Redis};

mod common;

const ROUNDS: usize = 3;
const COLUMNS: &str = "stream, stream_id, event_type, generation_id, user_id, timestamp, \
    generation_type, duration_ms, success, error_type, error_message, queue_wait_time_ms, \
    generation_time_ms, model_checkpoint, image_dimensions, batch_size, prompt_tokens, \
    queue_length, attributes";

fn main() -> anyhow::Result<()> {
    let events = common::env_number("GENALYTICS_BENCH_EVENTS", 1_000_000);
    let per_day = common::env_number("GENALYTICS_BENCH_DAY_EVENTS", 50_000);
    let pg = Postgres::start()?;
    let redis = Redis::start()?;
    // GENALYTICS_BENCH_ONLY=streams|prune|migrate runs one part.
    let only = std::env::var("GENALYTICS_BENCH_ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only == part;
    if runs("streams") {
        two_streams(&pg, &redis, events)?;
    }
    if runs("prune") {
        prune(&pg, per_day)?;
    }
    if runs("migrate") {
        convert(&pg, events * 10)?;
    }
    Ok(())
}

fn genalytics(url: &str, redis: &str, args: &[&str]) -> anyhow::Result<f64> {
    common::Genalytics {
        database_url: url,
        redis_url: redis,
        namespace: None,
        time_log: None,
    }
    .time(args)
}

// A benchmark reads best as one script, top to bottom.
#[allow(clippy::too_many_lines)]
fn two_streams(pg: &Postgres, redis: &Redis, events: u64) -> anyhow::Result<()> {
    pg.create_database("streams")?;
    let url = pg.url("streams");
    let run = |args: &[&str]| genalytics(&url, &redis.url(), args);
    run(&["migrate", "-q"])?;
    let keys = [
        "bench:generation_events:stream:0",
        "bench:generation_events:stream:1",
    ];
    for (n, key) in keys.iter().enumerate() {
        let half = (events / 2).to_string();
        let seed = (n + 1).to_string();
        run(&[
            "simulate", "-q", "--hours", "1", "--maxlen", "0", "--stream", key, "--events", &half,
            "--seed", &seed,
        ])?;
    }
    let mut db = pg.admin_of("streams")?;
    let reset = common::reset_transfer;
    let both = [
        "transfer",
        "-q",
        "--stream",
        keys[0],
        "--stream",
        keys[1],
        "--parallel",
    ];
    // Transfers under GNU time, for the CPU their process used.
    let time_log = tempfile::NamedTempFile::new()?;
    let timed = |args: &[&str]| {
        common::Genalytics {
            database_url: &url,
            redis_url: &redis.url(),
            namespace: None,
            time_log: Some(time_log.path()),
        }
        .time(args)
    };
    // Where the CPU of each run went: [genalytics, Redis, PostgreSQL].
    let pg_pid = pg.pid().expect("running");
    let servers_cpu = || -> anyhow::Result<[f64; 2]> {
        Ok([
            common::redis_cpu_seconds(redis)?,
            common::tree_cpu_seconds(pg_pid)?,
        ])
    };
    let mut parallel = Runs::default();
    let mut in_turn = Runs::default();
    let mut one_copy = Runs::default();
    let mut two_copies = Runs::default();
    let mut halves: Vec<Vec<u8>> = Vec::new();
    for round in 0..ROUNDS {
        reset(&mut db)?;
        parallel.measure(&servers_cpu, Some(time_log.path()), || {
            timed(&[&both[..], &["2"]].concat())
        })?;
        let stored: i64 = db
            .query_one("SELECT count(*) FROM generation_events", &[])?
            .get(0);
        anyhow::ensure!(stored as u64 == events, "stored {stored} of {events}");
        if round == 0 {
            for stream in [1, 2] {
                let mut rows = Vec::new();
                std::io::copy(
                    &mut db.copy_out(&format!(
                        "COPY (SELECT {COLUMNS} FROM generation_events WHERE stream = {stream}
                               ORDER BY id) TO STDOUT (FORMAT binary)"
                    ))?,
                    &mut rows,
                )?;
                halves.push(rows);
            }
        }
        reset(&mut db)?;
        in_turn.measure(&servers_cpu, Some(time_log.path()), || {
            timed(&[&both[..], &["1"]].concat())
        })?;

        reset(&mut db)?;
        one_copy.measure(&servers_cpu, None, || {
            let started = Instant::now();
            for rows in &halves {
                common::copy_in(&mut db, COLUMNS, rows)?;
            }
            Ok(started.elapsed().as_secs_f64())
        })?;

        reset(&mut db)?;
        two_copies.measure(&servers_cpu, None, || {
            let started = Instant::now();
            std::thread::scope(|scope| -> anyhow::Result<()> {
                let copies: Vec<_> = halves
                    .iter()
                    .map(|rows| {
                        scope.spawn(move || -> anyhow::Result<()> {
                            common::copy_in(&mut pg.admin_of("streams")?, COLUMNS, rows)
                        })
                    })
                    .collect();
                for copy in copies {
                    copy.join().expect("no panic")?;
                }
                Ok(())
            })?;
            Ok(started.elapsed().as_secs_f64())
        })?;
    }
    let rate = |runs: &Runs| events as f64 / common::median(&runs.seconds);
    let limit = rate(&one_copy);
    println!(
        "two streams of {} entries each, {ROUNDS} rounds, medians",
        events / 2
    );
    let runs = [
        ("transfer --parallel 2 (end to end)", &parallel),
        ("transfer --parallel 1 (end to end)", &in_turn),
        ("one COPY connection (limit)", &one_copy),
        ("two COPY connections at once", &two_copies),
    ];
    for (label, runs) in runs {
        println!(
            "  {label:<36} {:>7.2} s  {:>9.0} events/s  {:>5.2}x the single-COPY limit",
            common::median(&runs.seconds),
            rate(runs),
            rate(runs) / limit
        );
    }
    println!("  (goal: transfer --parallel 2 >= 1.2x the single-COPY limit)");
    let per_million = 1e6 / events as f64;
    println!("CPU-seconds per million entries (medians): genalytics, Redis, PostgreSQL, their sum");
    for (label, runs) in runs {
        let parts: Vec<f64> = (0..3)
            .map(|i| {
                let part: Vec<f64> = runs.cpu.iter().map(|cpu| cpu[i]).collect();
                common::median(&part) * per_million
            })
            .collect();
        println!(
            "  {label:<36} {:>5.2} {:>6.2} {:>7.2} {:>7.2}",
            parts[0],
            parts[1],
            parts[2],
            parts.iter().sum::<f64>()
        );
    }
    // What 1.2x the limit leaves of two cores for a million entries.
    let budget = 2.0 * 1e6 / (1.2 * limit);
    println!("  two cores at 1.2x the limit give {budget:.2} CPU-seconds per million entries");
    std::io::stdout().flush()?;
    Ok(())
}

/// One kind of run, round by round: its seconds, and the CPU-seconds
/// genalytics, Redis and PostgreSQL used in it.
#[derive(Default)]
struct Runs {
    seconds: Vec<f64>,
    cpu: Vec<[f64; 3]>,
}

impl Runs {
    /// Runs `work`, which returns its seconds. `servers` tells the CPU
    /// Redis and PostgreSQL have used so far; `time_log` is GNU time's
    /// report of a genalytics run (none when `work` runs no genalytics).
    fn measure(
        &mut self,
        servers: &dyn Fn() -> anyhow::Result<[f64; 2]>,
        time_log: Option<&std::path::Path>,
        work: impl FnOnce() -> anyhow::Result<f64>,
    ) -> anyhow::Result<()> {
        let before = servers()?;
        let seconds = work()?;
        let after = servers()?;
        let own = time_log.map_or(Ok(0.0), common::cpu_seconds)?;
        self.seconds.push(seconds);
        self.cpu
            .push([own, after[0] - before[0], after[1] - before[1]]);
        Ok(())
    }
}

/// 90 days of `per_day` events in daily partitions, in two databases: one
/// pruned by genalytics, the other by `DELETE` and `VACUUM`.
fn prune(pg: &Postgres, per_day: u64) -> anyhow::Result<()> {
    let mut timings: Vec<(&str, Vec<f64>)> =
        vec![("genalytics prune", vec![]), ("DELETE + VACUUM", vec![])];
    let mut pruned_rows = 0;
    let mut remaining = [0_i64; 2];
    for round in 0..ROUNDS {
        for (database, which) in [
            (format!("prune_a{round}"), 0),
            (format!("prune_b{round}"), 1),
        ] {
            pg.create_database(&database)?;
            let url = pg.url(&database);
            genalytics(&url, "redis://127.0.0.1:1", &["migrate", "-q"])?;
            let mut db = pg.admin_of(&database)?;
            db.batch_execute(&format!(
                "SELECT genalytics_create_event_partition((now() AT TIME ZONE 'UTC')::date - d)
                 FROM generate_series(1, 90) d;
                 INSERT INTO generation_events (event_type, user_id, timestamp, duration_ms, success)
                 SELECT 'completion', md5((n % 5000)::text)::uuid,
                        date_trunc('day', now(), 'UTC') - interval '90 days'
                            + n * (interval '90 days' / {total}),
                        500 + n % 9000, n % 17 <> 0
                 FROM generate_series(0, {total} - 1) n;",
                total = per_day * 90
            ))?;
            // Its own statement: VACUUM cannot run in a multi-statement batch.
            db.batch_execute("VACUUM ANALYZE generation_events")?;
            let cutoff_days = "60d";
            let seconds = if which == 0 {
                genalytics(
                    &url,
                    "redis://127.0.0.1:1",
                    &["prune", "-q", "--older-than", cutoff_days],
                )?
            } else {
                let started = Instant::now();
                pruned_rows = db.execute(
                    "DELETE FROM generation_events
                     WHERE timestamp < date_trunc('hour', now() - interval '60 days')",
                    &[],
                )?;
                db.batch_execute("VACUUM generation_events")?;
                started.elapsed().as_secs_f64()
            };
            timings[which].1.push(seconds);
            // Both ways must have removed the same events.
            let left: i64 = db
                .query_one("SELECT count(*) FROM generation_events", &[])?
                .get(0);
            remaining[which] = left;
            drop(db);
            pg.admin()?
                .batch_execute(&format!("DROP DATABASE {database}"))?;
        }
        anyhow::ensure!(
            remaining[0] == remaining[1],
            "prune left {} events, DELETE left {}",
            remaining[0],
            remaining[1]
        );
    }
    println!(
        "prune: 90 days of {per_day} events a day, the oldest 30 days ({pruned_rows} rows), {ROUNDS} rounds, medians"
    );
    let base = common::median(&timings[1].1);
    for (label, secs) in &timings {
        println!(
            "  {label:<20} {:>8.2} s  ({:.3}x the time of DELETE + VACUUM)",
            common::median(secs),
            common::median(secs) / base
        );
    }
    Ok(())
}

/// The conversion of a populated table to the partitioned layout: how long
/// `genalytics migrate` holds it.
fn convert(pg: &Postgres, events: u64) -> anyhow::Result<()> {
    pg.create_database("convert")?;
    let url = pg.url("convert");
    let mut db = pg.admin_of("convert")?;
    genalytics::testing::apply_through(&mut db, 7)?;
    db.batch_execute(&format!(
        "INSERT INTO generation_events (stream, stream_id, event_type, user_id, timestamp, duration_ms, success)
         SELECT 1, (1700000000000 + n) || '-0', 'completion', md5((n % 5000)::text)::uuid,
                now() - interval '90 days' + n * (interval '90 days' / {events}), 500 + n % 9000, n % 17 <> 0
         FROM generate_series(1, {events}) n"
    ))?;
    db.batch_execute("VACUUM ANALYZE generation_events")?;
    let size: String = db
        .query_one(
            "SELECT pg_size_pretty(pg_total_relation_size('generation_events'))",
            &[],
        )?
        .get(0);
    let seconds = genalytics(&url, "redis://127.0.0.1:1", &["migrate", "-q"])?;
    let kept: i64 = db
        .query_one("SELECT count(*) FROM generation_events", &[])?
        .get(0);
    anyhow::ensure!(kept as u64 == events, "migrate kept {kept} of {events}");
    println!(
        "migrate: a table of {events} events ({size} with its eight indexes) converted in {seconds:.1} s"
    );
    Ok(())
}
