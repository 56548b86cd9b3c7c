//! Every report at 10,000,000 events over 90 days, each against the
//! equivalent naive query over raw events, on throwaway servers.
//!
//! Loads the events the honest way — `simulate` in ten chunks of nine days
//! and `transfer` after each (so Redis holds one chunk at a time) — then
//! `aggregate`, then times each report (whole process, median of 5 warm
//! runs) and its naive query (median of 5). `cargo bench --bench report`;
//! `GENALYTICS_BENCH_EVENTS` scales it.

use std::process::Command;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use genalytics::throwaway::{Postgres, Redis};

mod common;

const RUNS: usize = 5;
const END: &str = "2026-11-01T00:00:00Z";
const CHUNKS: i64 = 10;

// The naive equivalents: the same figures straight from raw events.
const NAIVE_OVERVIEW: &str = "SELECT count(*) FILTER (WHERE event_type = 'request'),
        count(*) FILTER (WHERE event_type = 'completion' AND success),
        count(*) FILTER (WHERE event_type = 'completion' AND NOT success),
        count(*) FILTER (WHERE event_type = 'cancellation'),
        avg(duration_ms) FILTER (WHERE event_type = 'completion' AND success),
        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
            FILTER (WHERE event_type = 'completion' AND success),
        count(DISTINCT user_id), sum(coalesce(batch_size, 1)) FILTER (WHERE event_type = 'completion' AND success)
    FROM generation_events WHERE timestamp >= $1 AND timestamp < $2";

const NAIVE_TRENDS: &str =
    "SELECT date_trunc('hour', timestamp, 'UTC'), count(*) FILTER (WHERE event_type = 'request'),
        count(*) FILTER (WHERE event_type = 'completion' AND success),
        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
            FILTER (WHERE event_type = 'completion' AND success),
        count(DISTINCT user_id), avg(queue_length), max(queue_length)
    FROM generation_events WHERE timestamp >= $1 AND timestamp < $2 GROUP BY 1";

const NAIVE_USER: &str = "SELECT count(*) FILTER (WHERE event_type = 'request'),
        percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY duration_ms)
            FILTER (WHERE event_type = 'completion' AND success), min(timestamp), max(timestamp)
    FROM generation_events WHERE timestamp >= $1 AND timestamp < $2 AND user_id = $3::text::uuid";

const NAIVE_MODELS: &str = "SELECT model_checkpoint, count(*), count(*) FILTER (WHERE success),
        avg(duration_ms) FILTER (WHERE success),
        percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE success),
        max(timestamp)
    FROM generation_events WHERE event_type = 'completion' AND timestamp >= $1 AND timestamp < $2 GROUP BY 1";

const NAIVE_FAILURES: &str =
    "SELECT error_type, count(*), count(DISTINCT user_id), avg(duration_ms),
        (array_agg(DISTINCT error_message))[1:3]
    FROM generation_events WHERE event_type = 'completion' AND NOT success
        AND timestamp >= $1 AND timestamp < $2 GROUP BY 1";

const NAIVE_PEAK: &str = "SELECT extract(hour FROM timestamp AT TIME ZONE 'UTC'), count(*) FILTER (WHERE event_type = 'request'),
        percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE event_type = 'completion' AND success)
    FROM generation_events WHERE timestamp >= $1 AND timestamp < $2 GROUP BY 1";

// A benchmark reads best as one script, top to bottom.
#[allow(clippy::too_many_lines)]
fn main() -> anyhow::Result<()> {
    let events: u64 = std::env::var("GENALYTICS_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000);
    let pg = Postgres::start()?;
    let redis = Redis::start()?;
    pg.create_database("bench")?;
    let url = pg.url("bench");
    let run = |args: &[&str]| -> anyhow::Result<(f64, String)> {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_genalytics"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("REDIS_URL", redis.url())
            .env("GENALYTICS_REDIS_NS", "bench")
            .output()?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            out.status.success(),
            "genalytics {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((seconds, String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    let end: DateTime<Utc> = END.parse()?;
    let loading = Instant::now();
    run(&["migrate", "-q"])?;
    let per_chunk = (events / CHUNKS as u64).to_string();
    for chunk in 0..CHUNKS {
        let chunk_end = end - TimeDelta::days(9 * (CHUNKS - 1 - chunk));
        run(&[
            "simulate",
            "-q",
            "--events",
            &per_chunk,
            "--hours",
            "216",
            "--users",
            "2000",
            "--seed",
            &chunk.to_string(),
            "--maxlen",
            "0",
            "--end",
            &chunk_end.to_rfc3339(),
        ])?;
        run(&["transfer", "-q", "--keep", "0"])?;
    }
    let start = end - TimeDelta::days(90);
    run(&[
        "aggregate",
        "-q",
        "--from",
        &start.to_rfc3339(),
        "--to",
        END,
    ])?;
    let mut db = pg.admin_of("bench")?;
    db.batch_execute("VACUUM ANALYZE")?;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM generation_events", &[])?
        .get(0);
    println!(
        "report benchmark: {stored} events over 90 days (loaded and rolled up in {:.0} s), medians of {RUNS} warm runs",
        loading.elapsed().as_secs_f64()
    );
    let user: uuid::Uuid = db
        .query_one(
            "SELECT user_id FROM generation_events WHERE user_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
            &[],
        )?
        .get(0);
    let user = user.to_string();

    let since = |days: i64| end - TimeDelta::days(days);

    let cases: [(&str, Vec<&str>, &str, i64); 6] = [
        (
            "overview (7 days)",
            vec!["report", "overview"],
            NAIVE_OVERVIEW,
            7,
        ),
        (
            "trends hourly (7 days)",
            vec!["report", "trends"],
            NAIVE_TRENDS,
            7,
        ),
        (
            "user (30 days)",
            vec!["report", "user", &user],
            NAIVE_USER,
            30,
        ),
        (
            "models (30 days)",
            vec!["report", "models"],
            NAIVE_MODELS,
            30,
        ),
        (
            "failures (7 days)",
            vec!["report", "failures"],
            NAIVE_FAILURES,
            7,
        ),
        (
            "peak-hours (30 days)",
            vec!["report", "peak-hours"],
            NAIVE_PEAK,
            30,
        ),
    ];
    let mut worst: f64 = 0.0;
    for (name, mut args, naive, days) in cases {
        args.extend(["--until", END, "--format", "json"]);
        run(&args)?; // warm-up
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..RUNS {
            ours.push(run(&args)?.0);
            let started = Instant::now();
            if naive.contains("$3") {
                db.query(naive, &[&since(days), &end, &user])?;
            } else {
                db.query(naive, &[&since(days), &end])?;
            }
            theirs.push(started.elapsed().as_secs_f64());
        }
        let (ours, theirs) = (common::median(&ours), common::median(&theirs));
        worst = worst.max(ours);
        println!(
            "  {name:<24} genalytics {:>7.0} ms (whole process)   naive query over raw events {:>8.0} ms   {:>6.1}x",
            ours * 1000.0,
            theirs * 1000.0,
            theirs / ours
        );
    }
    println!(
        "  slowest report {:.0} ms (target < 300 ms)",
        worst * 1000.0
    );
    Ok(())
}
