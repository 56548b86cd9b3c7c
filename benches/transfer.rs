//! Transfer against its limit, side by side in one run on throwaway servers:
//! (a) `genalytics transfer` draining N simulated entries end to end, and
//! (b) PostgreSQL's own `COPY … FROM STDIN (FORMAT binary)` of the same
//! rows, pre-rendered, into the same table with the same indexes.
//!
//! `cargo bench --bench transfer` (N = 1,000,000; `GENALYTICS_BENCH_EVENTS`
//! changes it). Each side runs `ROUNDS` times, alternating; medians and
//! their ratio are printed, with the transfer process's peak RSS as GNU
//! time (`/usr/bin/time`, Debian package `time`) reports it. The last
//! runs drain small entries and then giant ones (2 MB, 15 MB, and 15 MB
//! with Redis scripts forbidden) and report their peak RSS: memory is
//! bounded by bytes, not only by entries. Then one entry too large to store
//! (a 30 MiB field name, a 100 MiB value, a 512 MiB value — Redis's
//! limit) between small ones: it becomes a dead letter read without being
//! held, and the peak RSS shows it.

use std::io::Write;
use std::time::Instant;

use genalytics::throwaway::{Postgres, Redis};

mod common;

const ROUNDS: usize = 3;
const COLUMNS: &str = "stream, stream_id, event_type, generation_id, user_id, timestamp, \
    generation_type, duration_ms, success, error_type, error_message, queue_wait_time_ms, \
    generation_time_ms, model_checkpoint, image_dimensions, batch_size, prompt_tokens, \
    queue_length, attributes";
/// Small entries before the giants of the last runs: reads grown on small
/// entries meet the giants.
const SMALL_ENTRIES: usize = 2_000;

// A benchmark reads best as one script, top to bottom.
#[allow(clippy::too_many_lines)]
fn main() -> anyhow::Result<()> {
    let events = common::env_number("GENALYTICS_BENCH_EVENTS", 1_000_000);
    let pg = Postgres::start()?;
    let redis = Redis::start()?;
    pg.create_database("bench")?;
    let url = pg.url("bench");
    let time_log = tempfile::NamedTempFile::new()?;
    // Under GNU time, which reports the peak RSS of exactly this process.
    let run_with = |args: &[&str], redis_url: &str| {
        common::Genalytics {
            database_url: &url,
            redis_url,
            namespace: None,
            time_log: Some(time_log.path()),
        }
        .time(args)
    };
    let genalytics = |args: &[&str]| run_with(args, &redis.url());
    genalytics(&["migrate", "-q"])?;
    let n = events.to_string();
    // One hour of traffic ending now: nothing is old enough for --keep to trim,
    // so every round drains the same entries.
    genalytics(&[
        "simulate", "-q", "--hours", "1", "--seed", "1", "--maxlen", "0", "--events", &n,
    ])?;

    let mut db = pg.admin_of("bench")?;
    let reset = common::reset_transfer;

    let mut transfer_secs = Vec::new();
    let mut copy_secs = Vec::new();
    let mut rows: Vec<u8> = Vec::new();
    let mut peak_kib = 0;
    let mut cpu: Vec<[f64; 4]> = Vec::new();
    for round in 0..ROUNDS {
        reset(&mut db)?;
        // Where the CPU goes: the transfer process, Redis, PostgreSQL.
        let redis_before = common::redis_cpu_seconds(&redis)?;
        let pg_before = common::tree_cpu_seconds(pg.pid().expect("running"))?;
        let seconds = genalytics(&["transfer", "-q"])?;
        transfer_secs.push(seconds);
        peak_kib = peak_kib.max(common::peak_rss_kib(time_log.path())?);
        cpu.push([
            seconds,
            common::cpu_seconds(time_log.path())?,
            common::redis_cpu_seconds(&redis)? - redis_before,
            common::tree_cpu_seconds(pg.pid().expect("running"))? - pg_before,
        ]);
        let stored: i64 = db
            .query_one("SELECT count(*) FROM generation_events", &[])?
            .get(0);
        anyhow::ensure!(
            stored as u64 == events,
            "transfer stored {stored} of {events}"
        );
        if round == 0 {
            let mut reader = db.copy_out(&format!(
                "COPY (SELECT {COLUMNS} FROM generation_events ORDER BY id) TO STDOUT (FORMAT binary)"
            ))?;
            std::io::copy(&mut reader, &mut rows)?;
        }
        reset(&mut db)?;
        let started = Instant::now();
        common::copy_in(&mut db, COLUMNS, &rows)?;
        copy_secs.push(started.elapsed().as_secs_f64());
    }

    // A user without scripts, as on a managed Redis that forbids them.
    let _: String = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("noscripts")
        .arg(&["on", ">noscripts", "~*", "+@all", "-@scripting"][..])
        .query(&mut redis.connection()?)?;
    let unscripted = format!("redis://noscripts:noscripts@127.0.0.1:{}", redis.port());
    let mut giants = Vec::new();
    for (label, size, count, url) in [
        ("150 of 2 MB", 2 << 20, 150, redis.url()),
        ("20 of 15 MB", 15 << 20, 20, redis.url()),
        ("20 of 15 MB, no scripts", 15 << 20, 20, unscripted),
    ] {
        reset(&mut db)?;
        let run = |args: &[&str]| run_with(args, &url);
        let (secs, rss) = big_entries(&mut db, &redis, &run, time_log.path(), size, count)?;
        giants.push((label, secs, rss));
    }

    let mut letters = Vec::new();
    for (label, name, value) in [
        ("a 30 MiB field name", 30 << 20, 1),
        ("a 100 MiB value", 16, 100 << 20),
        ("a 512 MiB value", 16, 512 << 20),
    ] {
        reset(&mut db)?;
        let (secs, rss) = dead_letter(&mut db, &redis, &genalytics, time_log.path(), name, value)?;
        letters.push((label, secs, rss));
    }

    print_figures(
        events,
        &transfer_secs,
        &copy_secs,
        peak_kib as f64 / 1024.0,
        &giants,
    );
    for (label, secs, rss) in &letters {
        println!(
            "  {SMALL_ENTRIES} small, {label:<20} and {SMALL_ENTRIES} small: {secs:>6.2} s, peak RSS {rss:.1} MiB \
             (target < 100)"
        );
    }
    for [seconds, transfer, redis, postgres] in &cpu {
        println!(
            "  CPU of a transfer round ({seconds:.2} s): transfer {transfer:.2} s, Redis {redis:.2} s, \
             PostgreSQL {postgres:.2} s — {:.2} cores busy of 2",
            (transfer + redis + postgres) / seconds
        );
    }
    std::io::stdout().flush()?;
    Ok(())
}

fn rounded(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| (v * 100.0).round() / 100.0).collect()
}

/// Drains `SMALL_ENTRIES` small entries and then `count` of `size` bytes
/// (a traceback or a payload in each): seconds and peak RSS in MiB.
fn big_entries(
    db: &mut postgres::Client,
    redis: &Redis,
    genalytics: &dyn Fn(&[&str]) -> anyhow::Result<f64>,
    time_log: &std::path::Path,
    size: usize,
    count: usize,
) -> anyhow::Result<(f64, f64)> {
    let key = "genonaut:generation_events:stream";
    let mut con = redis.connection()?;
    let _: i64 = redis::cmd("DEL").arg(key).query(&mut con)?;
    let mut small = redis::pipe();
    for _ in 0..SMALL_ENTRIES {
        small
            .cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("event_type")
            .arg("request")
            .ignore();
    }
    small.exec(&mut con)?;
    let big = "x".repeat(size);
    for _ in 0..count {
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("event_type")
            .arg("completion")
            .arg("success")
            .arg("False")
            .arg("error_message")
            .arg(&big)
            .query(&mut con)?;
    }
    let seconds = genalytics(&["transfer", "-q"])?;
    let rss = common::peak_rss_kib(time_log)? as f64 / 1024.0;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM generation_events", &[])?
        .get(0);
    anyhow::ensure!(
        stored as usize == SMALL_ENTRIES + count,
        "stored {stored} of {SMALL_ENTRIES} small and {count} big entries"
    );
    Ok((seconds, rss))
}

/// Drains small entries, one entry with a name of `name` bytes and a value
/// of `value` bytes (too large to store), and small entries again: seconds
/// and peak RSS in MiB.
fn dead_letter(
    db: &mut postgres::Client,
    redis: &Redis,
    genalytics: &dyn Fn(&[&str]) -> anyhow::Result<f64>,
    time_log: &std::path::Path,
    name: usize,
    value: usize,
) -> anyhow::Result<(f64, f64)> {
    let key = "genonaut:generation_events:stream";
    let mut con = redis.connection()?;
    let _: i64 = redis::cmd("DEL").arg(key).query(&mut con)?;
    let small = |con: &mut redis::Connection| -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for _ in 0..SMALL_ENTRIES {
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("event_type")
                .arg("request")
                .ignore();
        }
        pipe.exec(con)?;
        Ok(())
    };
    small(&mut con)?;
    {
        let (name, value) = (vec![b'n'; name], vec![b'v'; value]);
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg(&name[..])
            .arg(&value[..])
            .query(&mut con)?;
    }
    small(&mut con)?;
    let seconds = genalytics(&["transfer", "-q"])?;
    let rss = common::peak_rss_kib(time_log)? as f64 / 1024.0;
    let counts = db.query_one(
        "SELECT (SELECT count(*) FROM generation_events), (SELECT count(*) FROM generation_events_rejected)",
        &[],
    )?;
    let (stored, letters): (i64, i64) = (counts.get(0), counts.get(1));
    anyhow::ensure!(
        stored as usize == 2 * SMALL_ENTRIES && letters == 1,
        "stored {stored} of {} small entries and {letters} dead letters of 1",
        2 * SMALL_ENTRIES
    );
    Ok((seconds, rss))
}

fn print_figures(
    events: u64,
    transfer_secs: &[f64],
    copy_secs: &[f64],
    rss_in_mebibytes: f64,
    giants: &[(&str, f64, f64)],
) {
    let transfer = common::median(transfer_secs);
    let copy = common::median(copy_secs);
    let rate = |secs: f64| events as f64 / secs;
    println!("transfer benchmark: {events} entries, {ROUNDS} rounds, medians");
    println!(
        "  genalytics transfer (end to end)  {:>7.2} s  {:>9.0} events/s   rounds {:?}",
        transfer,
        rate(transfer),
        rounded(transfer_secs)
    );
    println!(
        "  COPY FROM STDIN binary (limit)    {:>7.2} s  {:>9.0} events/s   rounds {:?}",
        copy,
        rate(copy),
        rounded(copy_secs)
    );
    println!(
        "  ratio transfer/limit              {:>7.2}   (target >= 0.80)",
        rate(transfer) / rate(copy)
    );
    println!("  peak RSS of transfer              {rss_in_mebibytes:>7.1} MiB (target < 100)");
    for (label, secs, rss) in giants {
        println!(
            "  {SMALL_ENTRIES} small, then {label:<24} {secs:>7.2} s, peak RSS {rss:.1} MiB (target < 100)"
        );
    }
}
