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
use std::time::Instant;

use anyhow::bail;
use chrono::{DateTime, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Settings;
use crate::db::{self, rollup};
use crate::error::{Exit, UsageError};
use crate::hour;
use crate::output::{SummaryFormat, thousands};
use crate::timearg::parse_instant;

/// Hours per transaction: a week. Each hour is aggregated on its own, so a
/// chunk bounds the transaction, not the memory.
const CHUNK_HOURS: usize = 168;

#[derive(Debug, clap::Args)]
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

    /// Summary format
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

#[derive(Debug, Serialize)]
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
    fn add(&mut self, outcome: rollup::Outcome) {
        self.rolled_up += outcome.rolled_up;
        self.merged += outcome.merged;
        self.kept += outcome.kept;
    }
}

#[derive(Debug, Serialize)]
struct FailedHour {
    hour: DateTime<Utc>,
    error: String,
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
    let (count, hours): (u64, Box<dyn Iterator<Item = DateTime<Utc>>>) =
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
    let mut summary = Summary {
        hours: count,
        rolled_up: 0,
        merged: 0,
        kept: 0,
        failed: Vec::new(),
        seconds: 0.0,
    };
    let mut hours = hours.peekable();
    while hours.peek().is_some() {
        let chunk: Vec<DateTime<Utc>> = hours.by_ref().take(CHUNK_HOURS).collect();
        roll_up_chunk(&mut client, &chunk, &mut summary)?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();

    summary.seconds = started.elapsed().as_secs_f64();
    if !settings.quiet {
        args.format.print(&summary, || {
            let before_horizon = summary.merged + summary.kept;
            let empty = match summary.hours
                - summary.rolled_up
                - before_horizon
                - summary.failed.len() as u64
            {
                0 => String::new(),
                empty => format!(" ({} without events)", thousands(empty)),
            };
            let mut line = format!("rolled up {} hours{empty}", thousands(summary.rolled_up));
            if before_horizon > 0 {
                let _ = write!(
                    line,
                    "; kept {} hours before the raw horizon (their raw events were pruned), merging late \
                     events into {} of them",
                    thousands(before_horizon),
                    thousands(summary.merged)
                );
            }
            let _ = write!(line, " in {:.1} s", summary.seconds);
            line
        })?;
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
        Err(err) if db::is_transient(&err) => return Err(err),
        Err(_) if chunk.len() > 1 => {}
        Err(err) => {
            fail(client, chunk[0], &err, summary)?;
            return Ok(());
        }
    }
    for &hour in chunk {
        match rollup::roll_up(client, &[hour]) {
            Ok(outcome) => summary.add(outcome),
            Err(err) if db::is_transient(&err) => return Err(err),
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
