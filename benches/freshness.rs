//! How fresh a report is: the time from an entry's XADD to the moment
//! `report overview` counts it, with `transfer --follow --aggregate`
//! running, at a steady rate of requests, on throwaway servers.
//!
//! A producer thread XADDs requests at `GENALYTICS_BENCH_RATE` a second
//! (default 5,000) for `GENALYTICS_BENCH_SECONDS` (default 30) and notes
//! when it wrote each; a prober runs `report overview --format json` back
//! to back, noting when each run started and the requests it counted. An
//! entry's latency is the start of the first report that counted it, less
//! its XADD: what an operator would see, whole process included. Prints
//! p50, p99 and the worst of all entries, and the goal (p99 < 2 s).
//! `cargo bench --bench freshness`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genalytics::throwaway::{Postgres, Redis};

mod common;

fn main() -> anyhow::Result<()> {
    let rate = common::env_number("GENALYTICS_BENCH_RATE", 5_000);
    let seconds = common::env_number("GENALYTICS_BENCH_SECONDS", 30);
    let pg = Postgres::start()?;
    pg.create_database("genalytics")?;
    let redis = Redis::start()?;
    let (database_url, redis_url) = (pg.url("genalytics"), redis.url());
    let genalytics = common::Genalytics {
        database_url: &database_url,
        redis_url: &redis_url,
        namespace: None,
        time_log: None,
    };
    genalytics.run(&["migrate", "-q"])?;
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_genalytics"))
        .args(["transfer", "--follow", "--aggregate", "-q"])
        .env("DATABASE_URL", &database_url)
        .env("REDIS_URL", &redis_url)
        .env_remove("GENALYTICS_REDIS_NS")
        .spawn()?;

    let started = Instant::now();
    // When each batch of entries was written: (time, entries written so far).
    let written: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (written, done, url) = (Arc::clone(&written), Arc::clone(&done), redis_url.clone());
        std::thread::spawn(move || produce(&url, rate, seconds, &written, &done))
    };
    // Back-to-back reports: (when it started, requests it counted).
    let mut probes: Vec<(Instant, u64)> = Vec::new();
    let total = rate * seconds;
    while probes.last().is_none_or(|(_, counted)| *counted < total) {
        let at = Instant::now();
        let (_, json) =
            genalytics.run(&["report", "overview", "--days", "1", "--format", "json"])?;
        let counted = serde_json::from_str::<serde_json::Value>(&json)?["total_requests"]
            .as_u64()
            .unwrap_or(0);
        probes.push((at, counted));
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(seconds + 120),
            "the reports never counted all {total} entries: {counted}"
        );
    }
    producer.join().expect("the producer")?;
    done.store(true, Ordering::Relaxed);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    follower.wait()?;

    // Each batch's latency, weighted by its entries.
    let written = written.lock().expect("the producer is done").clone();
    let mut latencies: Vec<(f64, u64)> = Vec::new();
    let mut before = 0;
    for (at, upto) in written {
        let counted = probes
            .iter()
            .find(|(_, counted)| *counted >= upto)
            .map(|(probe, _)| probe.saturating_duration_since(at).as_secs_f64())
            .expect("the last report counted every entry");
        latencies.push((counted, upto - before));
        before = upto;
    }
    latencies.sort_by(|a, b| a.0.total_cmp(&b.0));
    let quantile = |q: f64| {
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        latencies
            .iter()
            .find(|(_, n)| {
                seen += n;
                seen >= want
            })
            .map_or(f64::NAN, |(latency, _)| *latency)
    };
    let report_ms: Vec<f64> = probes
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64() * 1000.0)
        .collect();
    println!(
        "freshness benchmark: {total} requests at {rate}/s for {seconds} s, transfer --follow --aggregate"
    );
    println!(
        "  XADD → counted by report overview: p50 {:.2} s, p99 {:.2} s (goal < 2 s), worst {:.2} s",
        quantile(0.5),
        quantile(0.99),
        latencies.last().map_or(f64::NAN, |l| l.0)
    );
    println!(
        "  reports run: {} (median {:.0} ms apart)",
        probes.len(),
        common::median(&report_ms)
    );
    Ok(())
}

/// Writes `rate` requests a second for `seconds`, in pipelines of a
/// tenth of a second, noting after each when it was written.
fn produce(
    url: &str,
    rate: u64,
    seconds: u64,
    written: &Mutex<Vec<(Instant, u64)>>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut con = redis::Client::open(url)?.get_connection()?;
    let key = "genonaut:generation_events:stream";
    let per_tick = rate / 10;
    let begin = Instant::now();
    let mut sent = 0;
    for tick in 0..seconds * 10 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = begin + Duration::from_millis(tick * 100);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string();
        let mut pipe = redis::pipe();
        for _ in 0..per_tick {
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("event_type")
                .arg("request")
                .arg("timestamp")
                .arg(&now)
                .arg("user_id")
                .arg("00000000-0000-4000-8000-000000000001")
                .ignore();
        }
        pipe.exec(&mut con)?;
        sent += per_tick;
        written
            .lock()
            .expect("only the producer writes")
            .push((Instant::now(), sent));
    }
    Ok(())
}
