//! Every report at 10,000,000 events over 90 days, each against the
//! equivalent naive query over raw events, on throwaway servers.
//!
//! Loads the events the honest way — `simulate` in ten chunks of nine days
//! and `transfer` after each (so Redis holds one chunk at a time) — then
//! `aggregate`, then times each report (whole process, median of 5 warm
//! runs) and its naive query (median of 5). A heavy user — an API
//! integration with 1,000,000 events in the last 30 days, inserted straight
//! into the table and rolled up — gets the user report too, its figures
//! checked against the naive query's, and the naive query is timed once
//! more with a covering index, the alternative to per-user rollups.
//! Last, a fresh tail: a current hour of 200,000 events not rolled up
//! (`GENALYTICS_BENCH_CURRENT_EVENTS`) and 10,000 late events queueing ten
//! hours again, every report timed fresh — the current hour raw, then
//! rolled up so far as a follower keeps it — and from rollups alone.
//! `cargo bench --bench report`; `GENALYTICS_BENCH_EVENTS` scales it.

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

/// Every figure of the heavy user's report, for the check.
const NAIVE_USER_FIGURES: &str = "SELECT count(*) FILTER (WHERE event_type = 'request'),
        count(*) FILTER (WHERE event_type = 'completion' AND success),
        count(*) FILTER (WHERE event_type = 'completion' AND NOT success),
        count(*) FILTER (WHERE event_type = 'cancellation'),
        round(avg(duration_ms) FILTER (WHERE event_type = 'completion' AND success))::int8,
        percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY duration_ms)
            FILTER (WHERE event_type = 'completion' AND success)
    FROM generation_events WHERE timestamp >= $1 AND timestamp < $2 AND user_id = $3::text::uuid";

/// Events of the heavy user, evenly over the 30 days before `$1`: 40 %
/// requests, 40 % successes (durations spread over a minute), 10 %
/// failures of three types, 10 % cancellations.
const HEAVY_USER_EVENTS: &str = "INSERT INTO generation_events (stream, stream_id, event_type,
        generation_id, user_id, timestamp, duration_ms, success, error_type, model_checkpoint)
    SELECT 1, 'heavy-' || i,
        CASE WHEN i % 10 < 4 THEN 'request' WHEN i % 10 < 9 THEN 'completion' ELSE 'cancellation' END,
        gen_random_uuid(), $2::text::uuid,
        $1::timestamptz - interval '30 days' + i * (interval '30 days' / ($3::int8 + 1)),
        CASE WHEN i % 10 BETWEEN 4 AND 8 THEN 500 + (i * 7919) % 60000 END,
        CASE WHEN i % 10 BETWEEN 4 AND 7 THEN true WHEN i % 10 = 8 THEN false END,
        CASE WHEN i % 10 = 8 THEN (ARRAY['Timeout', 'OutOfMemory', 'BadPrompt'])[1 + i % 3] END,
        CASE WHEN i % 10 BETWEEN 4 AND 8 THEN 'sd_xl_base_1.0' END
    FROM generate_series(1, $3::int8) AS i";

const HEAVY_USER: &str = "00000000-0000-4000-8000-00000000beef";

/// Events stored and not rolled up: `$3` of them spread over `$2` hours
/// ending at `$1`, with 2,000 users and three models.
const TAIL_EVENTS: &str = "INSERT INTO generation_events (stream, stream_id, event_type,
        generation_id, user_id, timestamp, duration_ms, success, error_type, model_checkpoint)
    SELECT 1, 'tail-' || $1::timestamptz || '-' || i,
        CASE WHEN i % 10 < 4 THEN 'request' WHEN i % 10 < 9 THEN 'completion' ELSE 'cancellation' END,
        gen_random_uuid(),
        ('00000000-0000-4000-8000-' || lpad((i % 2000)::text, 12, '0'))::uuid,
        $1::timestamptz - $2::int * interval '1 hour' + (i % ($2::int * 3600)) * interval '1 second',
        CASE WHEN i % 10 BETWEEN 4 AND 8 THEN 500 + (i * 7919) % 60000 END,
        CASE WHEN i % 10 BETWEEN 4 AND 7 THEN true WHEN i % 10 = 8 THEN false END,
        CASE WHEN i % 10 = 8 THEN (ARRAY['Timeout', 'OutOfMemory', 'BadPrompt'])[1 + i % 3] END,
        (ARRAY['sd_xl_base_1.0', 'sd_1.5', 'flux_dev'])[1 + i % 3]
    FROM generate_series(1, $3::int8) AS i";

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
    let events = common::env_number("GENALYTICS_BENCH_EVENTS", 10_000_000);
    let pg = Postgres::start()?;
    let redis = Redis::start()?;
    pg.create_database("bench")?;
    let url = pg.url("bench");
    let redis_url = redis.url();
    let time_log = tempfile::NamedTempFile::new()?;
    let genalytics = |time_log| common::Genalytics {
        database_url: &url,
        redis_url: &redis_url,
        namespace: Some("bench"),
        time_log,
    };
    let run = |args: &[&str]| genalytics(None).run(args);
    let end: DateTime<Utc> = END.parse()?;
    let loading = Instant::now();
    run(&["migrate", "-q"])?;
    let per_chunk_events = events / CHUNKS as u64;
    let per_chunk = per_chunk_events.to_string();
    // Sustained transfer: each chunk's rate into the growing
    // partitioned table, and the peak RSS of any chunk's transfer.
    let run_timed = |args: &[&str]| genalytics(Some(time_log.path())).time(args);
    let mut chunk_rates: Vec<f64> = Vec::new();
    let mut peak_kib = 0;
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
        let seconds = run_timed(&["transfer", "-q", "--keep", "0"])?;
        chunk_rates.push(per_chunk_events as f64 / seconds);
        peak_kib = peak_kib.max(common::peak_rss_kib(time_log.path())?);
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
    let heavy_events = (events / 10) as i64;
    db.execute(HEAVY_USER_EVENTS, &[&end, &HEAVY_USER, &heavy_events])?;
    db.execute(
        "INSERT INTO generation_rollup_queue (hour)
         SELECT DISTINCT date_trunc('hour', timestamp, 'UTC') FROM generation_events
         WHERE user_id = $1::text::uuid ON CONFLICT DO NOTHING",
        &[&HEAVY_USER],
    )?;
    run(&["aggregate", "-q"])?;
    db.batch_execute("VACUUM ANALYZE")?;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM generation_events", &[])?
        .get(0);
    println!(
        "report benchmark: {stored} events over 90 days (loaded and rolled up in {:.0} s), medians of {RUNS} warm runs",
        loading.elapsed().as_secs_f64()
    );
    let (first, last) = (chunk_rates[0], chunk_rates[chunk_rates.len() - 1]);
    println!(
        "  transfer of each tenth: first {first:.0} events/s, last {last:.0} events/s ({:+.0} %, target within 20 %), \
         all {:?}; peak RSS {:.1} MiB (target < 100)",
        (last / first - 1.0) * 100.0,
        chunk_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        peak_kib as f64 / 1024.0
    );
    let user: uuid::Uuid = db
        .query_one(
            "SELECT user_id FROM generation_events WHERE user_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
            &[],
        )?
        .get(0);
    let user = user.to_string();

    let since = |days: i64| end - TimeDelta::days(days);

    let heavy_name = format!("user, {}k events (30 d)", heavy_events / 1000);
    let cases: [(&str, Vec<&str>, &str, i64); 7] = [
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
            &heavy_name,
            vec!["report", "user", HEAVY_USER],
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
                let who = if args.contains(&HEAVY_USER) {
                    HEAVY_USER
                } else {
                    user.as_str()
                };
                db.query(naive, &[&since(days), &end, &who])?;
            } else {
                db.query(naive, &[&since(days), &end])?;
            }
            theirs.push(started.elapsed().as_secs_f64());
        }
        let (ours, theirs) = (common::median(&ours), common::median(&theirs));
        worst = worst.max(ours);
        println!(
            "  {name:<26} genalytics {:>7.0} ms (whole process)   naive query over raw events {:>8.0} ms   {:>6.1}x",
            ours * 1000.0,
            theirs * 1000.0,
            theirs / ours
        );
    }
    println!(
        "  slowest report {:.0} ms (target < 300 ms)",
        worst * 1000.0
    );
    check_heavy_user(&run, &mut db, since(30), end)?;

    // The alternative to per-user rollups: a covering index, so that the
    // naive query reads the heavy user's events from the index alone.
    db.batch_execute(
        "CREATE INDEX bench_user_covering ON generation_events (user_id, timestamp)
             INCLUDE (event_type, success, duration_ms, error_type)",
    )?;
    // Its own statement: VACUUM cannot run in a multi-statement batch.
    db.batch_execute("VACUUM ANALYZE generation_events")?;
    let mut covered = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        db.query(NAIVE_USER_FIGURES, &[&since(30), &end, &HEAVY_USER])?;
        covered.push(started.elapsed().as_secs_f64());
    }
    println!(
        "  heavy user, naive query with a covering index (index-only scan): {:.0} ms",
        common::median(&covered) * 1000.0
    );
    fresh_tail(&run, &mut db, end, &user)
}

/// Reports fresh to the second: a current hour of 200,000 events not
/// rolled up and 10,000 late events (stored by transfer, which lists them)
/// queueing ten rolled-up hours again. Every report is timed as it reads
/// the current hour from its raw events and the ten hours from their
/// rollups and late lists; again once the current hour is rolled up so
/// far, through a minute before its end, as a follower keeps it (the
/// report then reads that minute's events beside the part); and from
/// rollups alone (`--materialized-only`). Each report's JSON must be the
/// same with the part as without it.
fn fresh_tail(
    run: &Run<'_>,
    db: &mut postgres::Client,
    end: DateTime<Utc>,
    user: &str,
) -> anyhow::Result<()> {
    let current = common::env_number("GENALYTICS_BENCH_CURRENT_EVENTS", 200_000) as i64;
    db.execute(TAIL_EVENTS, &[&end, &1_i32, &current])?;
    db.execute(
        "INSERT INTO generation_rollup_queue (hour)
         SELECT DISTINCT date_trunc('hour', timestamp, 'UTC') FROM generation_events
         WHERE stream_id LIKE 'tail-%' ON CONFLICT DO NOTHING",
        &[],
    )?;
    // The late events come the way they do in production: written to the
    // stream and stored by transfer, which lists them for their hours.
    for hours_back in 1..=10_i64 {
        let hour_end = end - TimeDelta::hours(hours_back * 12);
        run(&[
            "simulate",
            "-q",
            "--events",
            "1000",
            "--hours",
            "1",
            "--users",
            "2000",
            "--seed",
            &(100 + hours_back).to_string(),
            "--maxlen",
            "0",
            "--end",
            &hour_end.to_rfc3339(),
        ])?;
    }
    run(&["transfer", "-q", "--keep", "0"])?;
    let listed: i64 = db
        .query_one(
            "SELECT count(*) FROM generation_rollup_late l
             JOIN generation_rollup_queue q ON q.hour = l.hour AND q.late_listed",
            &[],
        )?
        .get(0);
    anyhow::ensure!(listed == 10_000, "{listed} late events listed, not 10,000");
    db.batch_execute("VACUUM ANALYZE generation_events")?;
    println!(
        "  with {current} events of the last hour not rolled up and 10,000 late events in 10 queued hours:"
    );
    let cases: [(&str, Vec<&str>); 6] = [
        ("overview (7 days)", vec!["report", "overview"]),
        ("trends hourly (7 days)", vec!["report", "trends"]),
        ("user (30 days)", vec!["report", "user", user]),
        ("models (30 days)", vec!["report", "models"]),
        ("failures (7 days)", vec!["report", "failures"]),
        ("peak-hours (30 days)", vec!["report", "peak-hours"]),
    ];
    let median_of = |args: &[&str]| -> anyhow::Result<f64> {
        Ok(common::median(
            &(0..RUNS)
                .map(|_| run(args).map(|(seconds, _)| seconds))
                .collect::<anyhow::Result<Vec<_>>>()?,
        ))
    };
    // Per report: JSON without the part, all raw, and rollups alone.
    let mut before = Vec::new();
    for (_, args) in &cases {
        let mut args = args.clone();
        args.extend(["--until", END, "--format", "json"]);
        let json = run(&args)?.1;
        let raw = median_of(&args)?;
        args.push("--materialized-only");
        before.push((json, raw, median_of(&args)?));
    }
    let hour = genalytics::testing::hour_floor(end - TimeDelta::hours(1));
    anyhow::ensure!(
        genalytics::testing::refresh_partial(db, hour, end - TimeDelta::minutes(1))?,
        "the current hour was not rolled up so far"
    );
    println!(
        "  {:<26} {:>13} {:>22} {:>17}",
        "", "all raw", "hour so far + 1 min", "rollups alone"
    );
    let mut worst: f64 = 0.0;
    for ((name, mut args), (json, raw, materialized)) in cases.into_iter().zip(before) {
        args.extend(["--until", END, "--format", "json"]);
        let out = run(&args)?.1;
        let figures =
            |text: &str| -> anyhow::Result<serde_json::Value> { Ok(serde_json::from_str(text)?) };
        anyhow::ensure!(
            figures(&out)? == figures(&json)?,
            "{name}: the report differs once the current hour is rolled up so far"
        );
        let raw_hours = figures(&out)?["hours_from_raw_events"].clone();
        let fresh = median_of(&args)?;
        worst = worst.max(fresh);
        println!(
            "  {name:<26} {:>10.0} ms {:>19.0} ms {:>14.0} ms   ({raw_hours} hours from raw events)",
            raw * 1000.0,
            fresh * 1000.0,
            materialized * 1000.0
        );
    }
    println!(
        "  slowest fresh report {:.0} ms with the current hour rolled up so far (target < 300 ms); same figures as all raw",
        worst * 1000.0
    );
    Ok(())
}

/// Runs genalytics: seconds and stdout.
type Run<'a> = dyn Fn(&[&str]) -> anyhow::Result<(f64, String)> + 'a;

/// The heavy user's report against the naive query: counts exactly,
/// percentiles within the histograms' 1 %.
fn check_heavy_user(
    run: &Run<'_>,
    db: &mut postgres::Client,
    from: DateTime<Utc>,
    end: DateTime<Utc>,
) -> anyhow::Result<()> {
    let (_, out) = run(&[
        "report", "user", HEAVY_USER, "--until", END, "--format", "json",
    ])?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let naive = db.query_one(NAIVE_USER_FIGURES, &[&from, &end, &HEAVY_USER])?;
    let counts = [
        "total_requests",
        "successful_generations",
        "failed_generations",
        "cancelled_generations",
        "avg_duration_ms",
    ];
    for (i, field) in counts.iter().enumerate() {
        let want: i64 = naive.get(i);
        anyhow::ensure!(
            report[field] == want,
            "heavy user {field}: report {} vs naive {want}",
            report[field]
        );
    }
    let quantiles: Vec<f64> = naive.get(5);
    for (field, want) in ["p50_duration_ms", "p95_duration_ms"].iter().zip(quantiles) {
        let got = report[field].as_f64().unwrap_or(f64::NAN);
        anyhow::ensure!(
            (got - want).abs() <= want * 0.01 + 1.0,
            "heavy user {field}: report {got} vs naive {want}"
        );
    }
    println!(
        "  heavy user's figures equal the naive query's (counts exactly, p50/p95 within 1 %; percentiles_exact = {})",
        report["percentiles_exact"]
    );
    Ok(())
}
