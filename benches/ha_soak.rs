//! High-availability soak: one `transfer --follow` left running through
//! alternating PostgreSQL and Redis failovers under steady traffic, on
//! throwaway servers — a PostgreSQL primary with a streaming hot standby,
//! and a Redis master, a replica and a sentinel.
//!
//! - PostgreSQL failover: the primary is crashed (immediate shutdown) and
//!   the standby promoted (`pg_ctl promote`); a new standby is then made of
//!   the new primary on the old one's port, so the follower's two-host
//!   `DATABASE_URL` (`target_session_attrs=read-write`) names both again.
//! - Redis failover: `SENTINEL FAILOVER`; the old master turns replica.
//!
//! A producer XADDs requests with IDs it chooses at `GENALYTICS_BENCH_RATE`
//! a second (default 200) and asks `WAIT 1` after each: an entry is
//! *confirmed* once the replica holds it (Redis replication is
//! asynchronous: an unconfirmed entry may die with its master). At the end
//! the bench checks, on the primary of the moment, that no entry is stored
//! twice, none is stored that was not written, and every confirmed entry
//! is stored — and exits non-zero otherwise. It prints how long each
//! failover took (the promote and a new standby made; the sentinel's
//! reconfiguration), how soon after it an entry written then was stored,
//! and the totals.
//!
//! `cargo bench --bench ha_soak`; `GENALYTICS_BENCH_FAILOVERS` (default 5,
//! PostgreSQL first), `GENALYTICS_BENCH_GAP` seconds between them (10).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genalytics::throwaway::{Postgres, RedisSentinel};

mod common;

const KEY: &str = "genonaut:generation_events:stream";

/// What the producer wrote: every ID tried, those the replica confirmed.
#[derive(Default)]
struct Written {
    attempted: Vec<String>,
    confirmed: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let rate = common::env_number("GENALYTICS_BENCH_RATE", 200);
    let failovers = common::env_number("GENALYTICS_BENCH_FAILOVERS", 5);
    let gap = Duration::from_secs(common::env_number("GENALYTICS_BENCH_GAP", 10));

    let mut primary = Postgres::start()?;
    primary.create_database("genalytics")?;
    let mut standby = primary.standby()?;
    let database_url = both(&primary, &standby);
    let group = Arc::new(RedisSentinel::start(false)?);
    let genalytics = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_genalytics"));
        command
            .args(args)
            .env("DATABASE_URL", &database_url)
            .env("REDIS_URL", group.url())
            .env("GENALYTICS_REDIS_SENTINEL", RedisSentinel::NAME)
            .env("GENALYTICS_CONFIG", "/dev/null")
            .env_remove("GENALYTICS_REDIS_NS");
        command
    };
    anyhow::ensure!(genalytics(&["migrate", "-q"]).status()?.success());
    let log = tempfile::NamedTempFile::new()?;
    let mut follower = genalytics(&["transfer", "--follow", "--keep", "0s"])
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen()?)
        .spawn()?;

    let written: Arc<Mutex<Written>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (group, written, stop) = (Arc::clone(&group), Arc::clone(&written), Arc::clone(&stop));
        std::thread::spawn(move || produce(&group, rate, &written, &stop))
    };
    let started = Instant::now();
    std::thread::sleep(gap);

    let mut recoveries = Vec::new();
    for n in 0..failovers {
        let postgres = n % 2 == 0;
        let fault = Instant::now();
        if postgres {
            fail_over_postgres(&mut primary, &mut standby)?;
        } else {
            group.fail_over()?;
        }
        let what = if postgres { "PostgreSQL" } else { "Redis" };
        let took = fault.elapsed().as_secs_f64();
        // The follower's part: from the failover done to an entry written
        // after it stored.
        let done = Instant::now();
        let last_before = written.lock().expect("producer").attempted.len();
        recovered(&written, last_before, &primary, &mut follower, log.path())
            .map_err(|err| err.context(format!("the {what} failover")))?;
        let recovery = done.elapsed().as_secs_f64();
        println!(
            "failover {} ({what}): done {took:.2} s after the fault; an entry written then stored \
             {recovery:.2} s later",
            n + 1
        );
        recoveries.push((what, recovery));
        std::thread::sleep(gap);
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("the producer");

    drained(&group, &primary)?;
    anyhow::ensure!(
        follower.try_wait()?.is_none(),
        "the follower stopped before the end"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(follower.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let ended = follower.wait()?;
    let log = std::fs::read_to_string(log.path())?;

    let elapsed = started.elapsed().as_secs_f64();
    verdict(
        &primary,
        &written.lock().expect("producer"),
        &recoveries,
        rate,
        elapsed,
        ended,
        &log,
    )
}

/// Prints the totals; an error unless every entry is stored once.
fn verdict(
    primary: &Postgres,
    written: &Written,
    recoveries: &[(&str, f64)],
    rate: u64,
    elapsed: f64,
    ended: std::process::ExitStatus,
    log: &str,
) -> anyhow::Result<()> {
    let rows = all_stored(primary)?;
    let unique: BTreeSet<&String> = rows.iter().collect();
    let attempted: BTreeSet<&String> = written.attempted.iter().collect();
    let missing = written
        .confirmed
        .iter()
        .filter(|id| !unique.contains(id))
        .count();
    let strangers = unique.iter().filter(|id| !attempted.contains(*id)).count();
    let duplicates = rows.len() - unique.len();
    let mut sorted: Vec<f64> = recoveries.iter().map(|(_, s)| *s).collect();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{} failovers in {elapsed:.0} s at {rate} entries/s: written {}, confirmed by the replica {}, \
         stored {} (duplicates {duplicates}, not written {strangers}, confirmed but missing {missing}); \
         stored after a failover within a median {:.2} s, worst {:.2} s; follower exit {ended}, {} reconnection warnings",
        recoveries.len(),
        written.attempted.len(),
        written.confirmed.len(),
        unique.len(),
        common::median(&sorted),
        sorted.last().copied().unwrap_or(0.0),
        log.matches("the follower waits for a server (attempt 1,")
            .count(),
    );
    anyhow::ensure!(
        duplicates == 0 && strangers == 0 && missing == 0 && ended.success(),
        "the soak failed; the follower's log:\n{log}"
    );
    Ok(())
}

/// Waits until an entry written after the fault is stored.
fn recovered(
    written: &Mutex<Written>,
    last_before: usize,
    primary: &Postgres,
    follower: &mut std::process::Child,
    log: &std::path::Path,
) -> anyhow::Result<()> {
    let fault = Instant::now();
    let first_after = loop {
        if let Some(id) = written.lock().expect("producer").attempted.get(last_before) {
            break id.clone();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    while !stored(primary)?.contains(&first_after) {
        anyhow::ensure!(
            follower.try_wait()?.is_none(),
            "the follower stopped; its log:\n{}",
            std::fs::read_to_string(log)?
        );
        anyhow::ensure!(
            fault.elapsed() < Duration::from_secs(120),
            "nothing stored within 2 minutes; the follower's log:\n{}",
            std::fs::read_to_string(log)?
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Crashes the primary and promotes the standby; a new standby of the new
/// primary takes the crashed one's port.
fn fail_over_postgres(primary: &mut Postgres, standby: &mut Postgres) -> anyhow::Result<()> {
    let old_port = primary.port();
    primary.crash();
    standby.promote()?;
    std::mem::swap(primary, standby);
    *standby = primary.standby_on_port(old_port)?;
    Ok(())
}

/// Both servers, the primary first, for a follower that must reach
/// whichever is primary.
fn both(primary: &Postgres, standby: &Postgres) -> String {
    let url = primary.url("genalytics");
    let (login, _) = url.split_once('@').expect("a throwaway URL has a login");
    format!(
        "{login}@127.0.0.1:{},127.0.0.1:{}/genalytics?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    )
}

/// Waits until everything the master of the moment holds is stored.
fn drained(group: &RedisSentinel, primary: &Postgres) -> anyhow::Result<()> {
    let mut master = group.master()?.connection()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let held: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(KEY)
            .arg("-")
            .arg("+")
            .query(&mut master)?;
        let stored = stored(primary)?;
        if held.iter().all(|(id, _)| stored.contains(id)) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the follower did not drain the stream"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_stored(primary: &Postgres) -> anyhow::Result<Vec<String>> {
    let mut db = primary.admin_of("genalytics")?;
    Ok(db
        .query(
            "SELECT stream_id FROM generation_events WHERE stream_id IS NOT NULL",
            &[],
        )?
        .into_iter()
        .map(|row| row.get(0))
        .collect())
}

fn stored(primary: &Postgres) -> anyhow::Result<BTreeSet<String>> {
    Ok(all_stored(primary)?.into_iter().collect())
}

/// XADDs at `rate` a second to the master the sentinel names, through
/// failovers: an entry whose reply was lost is known by its ID.
fn produce(group: &RedisSentinel, rate: u64, written: &Mutex<Written>, stop: &AtomicBool) {
    let base = chrono::Utc::now().timestamp_millis();
    let begin = Instant::now();
    let mut con: Option<redis::Connection> = None;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = begin + Duration::from_micros(n * 1_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = format!("{}-{}", base, n + 1);
        written
            .lock()
            .expect("one producer")
            .attempted
            .push(id.clone());
        let now = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string();
        loop {
            let Some(c) = con.as_mut() else {
                con = group.master().ok().and_then(|m| m.connection().ok());
                if con.is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            };
            let added = redis::cmd("XADD")
                .arg(KEY)
                .arg(&id)
                .arg("event_type")
                .arg("request")
                .arg("timestamp")
                .arg(&now)
                .arg("user_id")
                .arg("00000000-0000-4000-8000-000000000001")
                .query::<String>(c);
            match added {
                Ok(_) => {}
                Err(err) if err.to_string().contains("equal or smaller") => {}
                Err(_) => {
                    con = None;
                    continue;
                }
            }
            let acked: i64 = redis::cmd("WAIT").arg(1).arg(1000).query(c).unwrap_or(0);
            if acked >= 1 {
                written
                    .lock()
                    .expect("one producer")
                    .confirmed
                    .push(id.clone());
            }
            break;
        }
        n += 1;
    }
}
