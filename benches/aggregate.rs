//! Aggregate against a plain-SQL reference, side by side in one run on
//! throwaway servers. Two data sets of 1,000,000 events each (simulated and
//! transferred): one spread over 240 hours, one over 10 hours (100k events
//! an hour). For each: one hour's rollup and the backfill of every hour,
//! by `genalytics aggregate` (whole process) and by the reference — plain
//! SQL computing the same per-hour figures, per hour and model, and per
//! hour and error type, with `percentile_cont`, over the same table.
//! Medians of several alternating runs.
//!
//! `cargo bench --bench aggregate` (`GENALYTICS_BENCH_EVENTS` scales it).

use std::time::Instant;

use genalytics::throwaway::{Postgres, Redis};

mod common;

const RUNS: usize = 5;
const END: &str = "2026-11-01T00:00:00Z";

/// The reference: every per-hour figure genalytics rolls up, in one statement, and
/// what the model and failure reports need per hour in two more (exact
/// percentiles where genalytics keeps histograms).
const REFERENCE: &str = "
    SELECT date_trunc('hour', timestamp, 'UTC') AS hour,
        count(*) FILTER (WHERE event_type = 'request'),
        count(*) FILTER (WHERE event_type = 'completion' AND success),
        count(*) FILTER (WHERE event_type = 'completion' AND NOT success),
        count(*) FILTER (WHERE event_type = 'cancellation'),
        round(avg(duration_ms) FILTER (WHERE event_type = 'completion' AND success)),
        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
            FILTER (WHERE event_type = 'completion' AND success AND duration_ms IS NOT NULL),
        count(DISTINCT user_id),
        sum(coalesce(batch_size, 1)) FILTER (WHERE event_type = 'completion' AND success),
        avg(queue_length), max(queue_length)
    FROM generation_events
    WHERE timestamp >= $1 AND timestamp < $2
    GROUP BY 1";
const REFERENCE_MODELS: &str = "
    SELECT date_trunc('hour', timestamp, 'UTC') AS hour, model_checkpoint,
        count(*), count(*) FILTER (WHERE success), count(*) FILTER (WHERE NOT success),
        sum(duration_ms) FILTER (WHERE success), count(duration_ms) FILTER (WHERE success),
        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
            FILTER (WHERE success AND duration_ms IS NOT NULL),
        max(timestamp)
    FROM generation_events
    WHERE event_type = 'completion' AND timestamp >= $1 AND timestamp < $2
    GROUP BY 1, 2";
const REFERENCE_FAILURES: &str = "
    SELECT date_trunc('hour', timestamp, 'UTC') AS hour, error_type,
        count(*), sum(coalesce(duration_ms, 0)), count(*),
        array_agg(DISTINCT user_id), (array_agg(DISTINCT error_message))[1:3]
    FROM generation_events
    WHERE event_type = 'completion' AND NOT success AND timestamp >= $1 AND timestamp < $2
    GROUP BY 1, 2";

/// The three reference statements over `[from, to)`.
fn reference(
    db: &mut postgres::Client,
    from: &chrono::DateTime<chrono::Utc>,
    to: &chrono::DateTime<chrono::Utc>,
) -> Result<(), postgres::Error> {
    for statement in [REFERENCE, REFERENCE_MODELS, REFERENCE_FAILURES] {
        db.query(statement, &[from, to])?;
    }
    Ok(())
}

struct DataSet {
    name: &'static str,
    hours: u32,
}

fn main() -> anyhow::Result<()> {
    let events = common::env_number("GENALYTICS_BENCH_EVENTS", 1_000_000);
    let pg = Postgres::start()?;
    let redis = Redis::start()?;
    let end: chrono::DateTime<chrono::Utc> = END.parse()?;
    let time_log = tempfile::NamedTempFile::new()?;
    println!("aggregate benchmark: {events} events per data set, medians of {RUNS} runs");
    for set in [
        DataSet {
            name: "spread",
            hours: 240,
        },
        DataSet {
            name: "dense",
            hours: 10,
        },
    ] {
        pg.create_database(set.name)?;
        let url = pg.url(set.name);
        let redis_url = redis.url();
        let genalytics = common::Genalytics {
            database_url: &url,
            redis_url: &redis_url,
            namespace: None,
            time_log: Some(time_log.path()),
        };
        let run = |args: &[&str]| genalytics.time(&[args, &["--stream", set.name, "-q"]].concat());
        let n = events.to_string();
        let hours = set.hours.to_string();
        run(&["migrate"])?;
        run(&[
            "simulate", "--events", &n, "--hours", &hours, "--end", END, "--seed", "3", "--maxlen",
            "0",
        ])?;
        run(&["transfer", "--keep", "0"])?;
        let mut db = pg.admin_of(set.name)?;
        db.batch_execute("VACUUM ANALYZE generation_events")?;
        let start = end - chrono::TimeDelta::hours(i64::from(set.hours));
        // The busiest hour, for the one-hour figures.
        let busiest: chrono::DateTime<chrono::Utc> = db
            .query_one(
                "SELECT date_trunc('hour', timestamp, 'UTC') FROM generation_events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
                &[],
            )?
            .get(0);
        let busiest_events: i64 = db
            .query_one(
                "SELECT count(*) FROM generation_events WHERE timestamp >= $1 AND timestamp < $1 + interval '1 hour'",
                &[&busiest],
            )?
            .get(0);
        let hour_arg = busiest.to_rfc3339();
        let (from, to) = (start.to_rfc3339(), end.to_rfc3339());

        // Alternating, so the machine's noise falls on both sides alike.
        let hour_end = busiest + chrono::TimeDelta::hours(1);
        let (mut one_hour, mut backfill, mut reference_hour, mut reference_all) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut hour_rss, mut backfill_rss) = (0.0_f64, 0.0_f64);
        for _ in 0..RUNS {
            one_hour.push(run(&["aggregate", "--hour", &hour_arg])?);
            hour_rss = hour_rss.max(common::peak_rss_kib(time_log.path())? as f64 / 1024.0);
            reference_hour.push(timed(|| reference(&mut db, &busiest, &hour_end))?);
            backfill.push(run(&["aggregate", "--from", &from, "--to", &to])?);
            backfill_rss = backfill_rss.max(common::peak_rss_kib(time_log.path())? as f64 / 1024.0);
            reference_all.push(timed(|| reference(&mut db, &start, &end))?);
        }
        let (one_hour, backfill) = (common::median(&one_hour), common::median(&backfill));
        let (reference_hour, reference_all) = (
            common::median(&reference_hour),
            common::median(&reference_all),
        );
        println!(
            "  {} ({} hours, busiest hour {busiest_events} events):",
            set.name, set.hours
        );
        println!(
            "    one hour   genalytics {one_hour:>7.3} s (whole process, {hour_rss:.0} MiB)   reference {reference_hour:>7.3} s   ratio {:.2}",
            one_hour / reference_hour
        );
        println!(
            "    backfill   genalytics {backfill:>7.3} s (whole process, {backfill_rss:.0} MiB)   reference {reference_all:>7.3} s   ratio {:.2}",
            backfill / reference_all
        );
    }
    println!("  targets: one hour of 100k events < 1 s; backfill ratio <= 1.00");
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<(), postgres::Error>) -> anyhow::Result<f64> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed().as_secs_f64())
}
