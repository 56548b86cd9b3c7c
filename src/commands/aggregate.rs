//! `genalytics aggregate`: roll events up by UTC hour.
//!
//! With no argument it rolls up every complete hour that received events
//! since it was last rolled up (transfer queues them, late arrivals
//! included), so cron needs nothing smarter. `--hour` and `--from/--to`
//! recompute given hours. Hours go in chunks, one transaction each, so a
//! backfill over a year neither holds a year in memory nor in one
//! transaction.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::bail;
use chrono::{DateTime, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Settings;
use crate::db::{self, rollup};
use crate::error::{Exit, UsageError};
use crate::hour;
use crate::output::{SummaryFormat, counted, thousands};
use crate::timearg::parse_instant;

/// Most hours per transaction: a day. Each hour is aggregated on its own,
/// so a chunk bounds the transaction, not the memory; chunks this small
/// keep each connection of a parallel backfill busy until the end.
const CHUNK_HOURS: usize = 24;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Roll up the hour containing this time (2026-11-27T14, RFC 3339 or naive UTC)
    #[arg(long, value_name = "TIME", value_parser = parse_instant, conflicts_with_all = ["from", "to"])]
    pub hour: Option<DateTime<Utc>>,

    /// Backfill every hour from this time …
    #[arg(long, value_name = "TIME", value_parser = parse_instant, requires = "to")]
    pub from: Option<DateTime<Utc>>,

    /// … up to this time (exclusive)
    #[arg(long, value_name = "TIME", value_parser = parse_instant, requires = "from")]
    pub to: Option<DateTime<Utc>>,

    /// Also roll up the hour in progress
    #[arg(long)]
    pub include_current: bool,

    /// Connections rolling up hours at once (default: the CPUs, at most 4)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=32))]
    pub jobs: Option<u32>,

    /// Summary format
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

const EXAMPLES: &str = "Examples:
  genalytics aggregate
  genalytics aggregate --hour 2026-11-27T14
  genalytics aggregate --from 2026-11-01 --to 2026-11-28";

#[derive(Debug, Default, Serialize)]
struct Summary {
    /// Hours looked at.
    hours: u64,
    /// Of those, hours with events: each has an up-to-date row now.
    rolled_up: u64,
    /// Hours before the raw horizon that late events were merged into.
    merged: u64,
    /// Hours before the raw horizon kept as they were: their raw events
    /// were pruned, so they are not rolled up again.
    kept: u64,
    /// Hours whose rollup PostgreSQL refused: they stay queued.
    failed: Vec<FailedHour>,
    seconds: f64,
}

impl Summary {
    /// The summary for people and cron mail.
    fn line(&self) -> String {
        let before_horizon = self.merged + self.kept;
        let empty = match self.hours - self.rolled_up - before_horizon - self.failed.len() as u64 {
            0 => String::new(),
            empty => format!(" ({} without events)", thousands(empty)),
        };
        let mut line = format!("rolled up {}{empty}", counted(self.rolled_up, "hour"));
        if before_horizon > 0 {
            let merged = match self.merged {
                0 => String::new(),
                merged => format!("; late events merged into {}", counted(merged, "hour")),
            };
            let _ = write!(
                line,
                " and kept {} before the raw horizon as they were (their raw events were \
                 pruned{merged})",
                counted(before_horizon, "hour"),
            );
        }
        let _ = write!(line, " in {:.1} s", self.seconds);
        line
    }

    fn add(&mut self, outcome: rollup::Outcome) {
        self.rolled_up += outcome.rolled_up;
        self.merged += outcome.merged;
        self.kept += outcome.kept;
    }
}

#[derive(Debug, Serialize)]
pub struct FailedHour {
    pub hour: DateTime<Utc>,
    pub error: String,
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let range = match (args.hour, args.from, args.to) {
        (Some(at), _, _) => Some((hour::floor(at), hour::floor(at) + TimeDelta::hours(1))),
        (None, Some(from), Some(to)) => {
            if from >= to {
                return Err(UsageError(format!(
                    "--from {} is not before --to {}",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                ))
                .into());
            }
            Some((from, to))
        }
        _ => None,
    };
    let database = settings.database()?;
    let mut client = db::connect_current(database)?;
    let (count, hours): (u64, Box<dyn Iterator<Item = DateTime<Utc>> + Send>) =
        if let Some((from, to)) = range {
            (hour::count(from, to), Box::new(hour::starts(from, to)))
        } else {
            let queued = rollup::queued_hours(&mut client, args.include_current)?;
            (queued.len() as u64, Box::new(queued.into_iter()))
        };

    let progress = if range.is_some()
        && count > CHUNK_HOURS as u64
        && std::io::stderr().is_terminal()
        && !settings.quiet
    {
        ProgressBar::new(count).with_style(
            ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} hours  eta {eta}")
                .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let jobs = args.jobs.map_or_else(
        || {
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(4)
        },
        |jobs| jobs as usize,
    );
    let mut summary = roll_up_all(database, &mut client, hours, count, jobs, &progress)?;
    summary.hours = count;
    progress.finish_and_clear();

    summary.seconds = started.elapsed().as_secs_f64();
    if !settings.quiet {
        args.format.print(&summary, || summary.line())?;
    }
    match summary.failed.as_slice() {
        [] => Ok(Exit::Success),
        [first, ..] => bail!(
            "{} hour{} could not be rolled up (the first, {}: {}); {} stay{} queued, `genalytics status` \
             shows {}, and every other hour was rolled up",
            summary.failed.len(),
            if summary.failed.len() == 1 { "" } else { "s" },
            first.hour.format("%Y-%m-%d %H:00 UTC"),
            first.error,
            if summary.failed.len() == 1 {
                "it"
            } else {
                "they"
            },
            if summary.failed.len() == 1 { "s" } else { "" },
            if summary.failed.len() == 1 {
                "it"
            } else {
                "them"
            },
        ),
    }
}

/// Rolls up the queued complete hours before `before` on `client`, chunk
/// by chunk as aggregate does (an hour PostgreSQL refuses stays queued with
/// its error); returns the hours refused, for prune, which must not hold
/// its horizon back for hours no one rolled up yet.
pub fn roll_up_queued_before(
    client: &mut postgres::Client,
    before: DateTime<Utc>,
) -> anyhow::Result<Vec<FailedHour>> {
    let hours: Vec<DateTime<Utc>> = rollup::queued_hours(client, false)?
        .into_iter()
        .filter(|hour| *hour < before)
        .collect();
    let mut summary = Summary::default();
    for chunk in hours.chunks(CHUNK_HOURS) {
        roll_up_chunk(client, chunk, &mut summary)?;
    }
    Ok(summary.failed)
}

/// Rolls up `hours` on up to `jobs` connections (`client` and more), each
/// taking the next chunk: PostgreSQL then works on every core, and each
/// hour stays atomic in its own transaction.
fn roll_up_all(
    database: &crate::config::DatabaseUrl,
    client: &mut postgres::Client,
    hours: Box<dyn Iterator<Item = DateTime<Utc>> + Send>,
    count: u64,
    jobs: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Summary> {
    // Chunks small enough that every connection gets some: ten busy hours
    // go to two connections as chunks of three.
    let size = count.div_ceil(2 * jobs as u64).clamp(1, CHUNK_HOURS as u64) as usize;
    let chunks = Mutex::new(Chunks {
        hours: hours.peekable(),
        size,
    });
    let parallel = jobs.min(count.div_ceil(size as u64).max(1) as usize);
    let outcomes = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..parallel)
            .map(|_| {
                scope.spawn(|| {
                    let mut client = db::connect_current(database)?;
                    roll_up_chunks(&mut client, &chunks, progress)
                })
            })
            .collect();
        let mut outcomes = vec![roll_up_chunks(client, &chunks, progress)];
        outcomes.extend(workers.into_iter().map(|worker| {
            worker
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a rollup worker failed")))
        }));
        outcomes
    });
    let mut summary = Summary::default();
    for outcome in outcomes {
        let part = outcome?;
        summary.rolled_up += part.rolled_up;
        summary.merged += part.merged;
        summary.kept += part.kept;
        summary.failed.extend(part.failed);
    }
    summary.failed.sort_by_key(|failed| failed.hour);
    Ok(summary)
}

/// The hours left to roll up, handed out a chunk at a time.
struct Chunks<I: Iterator<Item = DateTime<Utc>>> {
    hours: std::iter::Peekable<I>,
    size: usize,
}

impl<I: Iterator<Item = DateTime<Utc>>> Chunks<I> {
    fn next_chunk(&mut self) -> Option<Vec<DateTime<Utc>>> {
        self.hours.peek()?;
        Some(self.hours.by_ref().take(self.size).collect())
    }
}

/// Takes chunks until none are left; stops at a server that went away.
fn roll_up_chunks<I: Iterator<Item = DateTime<Utc>>>(
    client: &mut postgres::Client,
    chunks: &Mutex<Chunks<I>>,
    progress: &ProgressBar,
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    loop {
        let chunk = chunks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next_chunk();
        let Some(chunk) = chunk else {
            return Ok(summary);
        };
        roll_up_chunk(client, &chunk, &mut summary)?;
        progress.inc(chunk.len() as u64);
    }
}

/// Rolls up a chunk in one transaction; should PostgreSQL refuse it for
/// something in the data, each hour on its own, so one bad hour is named,
/// stays queued, and holds up no other. A server that went away stops the
/// run: the next one picks up.
fn roll_up_chunk(
    client: &mut postgres::Client,
    chunk: &[DateTime<Utc>],
    summary: &mut Summary,
) -> anyhow::Result<()> {
    match rollup::roll_up(client, chunk) {
        Ok(outcome) => {
            summary.add(outcome);
            return Ok(());
        }
        Err(err) if crate::error::is_transient(&err) => return Err(err),
        Err(_) if chunk.len() > 1 => {}
        Err(err) => {
            fail(client, chunk[0], &err, summary)?;
            return Ok(());
        }
    }
    for &hour in chunk {
        match rollup::roll_up(client, &[hour]) {
            Ok(outcome) => summary.add(outcome),
            Err(err) if crate::error::is_transient(&err) => return Err(err),
            Err(err) => fail(client, hour, &err, summary)?,
        }
    }
    Ok(())
}

fn fail(
    client: &mut postgres::Client,
    hour: DateTime<Utc>,
    err: &anyhow::Error,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let error = crate::text::escape_controls(&format!("{err:#}")).into_owned();
    tracing::error!(
        "cannot roll up the hour {}: {error}; it stays queued",
        hour.format("%Y-%m-%d %H:00 UTC")
    );
    rollup::record_failure(client, hour, &error)?;
    summary.failed.push(FailedHour { hour, error });
    Ok(())
}
