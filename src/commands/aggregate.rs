//! `genalytics aggregate`: roll events up by UTC hour.
//!
//! With no argument it rolls up every complete hour that received events
//! since it was last rolled up (transfer queues them, late arrivals
//! included), so cron needs nothing smarter. `--hour` and `--from/--to`
//! recompute given hours. Hours go in chunks, one transaction each, so a
//! backfill over a year neither holds a year in memory nor in one
//! transaction.

use std::io::IsTerminal;
use std::time::Instant;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Settings;
use crate::db::{self, migrations, rollup};
use crate::error::{Exit, UsageError};
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
    seconds: f64,
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let hours = match (args.hour, args.from, args.to) {
        (Some(at), _, _) => Some(vec![hour_of(at)]),
        (None, Some(from), Some(to)) => {
            if from >= to {
                return Err(UsageError(format!(
                    "--from {} is not before --to {}",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                ))
                .into());
            }
            Some(hours_between(from, to))
        }
        _ => None,
    };
    let database = settings.database()?;
    let mut client = db::connect(database)?;
    migrations::ensure_current(&mut client)?;
    let backfill = hours.is_some();
    let hours = match hours {
        Some(hours) => hours,
        None => rollup::queued_hours(&mut client, args.include_current)?,
    };

    let progress = if backfill
        && hours.len() > CHUNK_HOURS
        && std::io::stderr().is_terminal()
        && !settings.quiet
    {
        ProgressBar::new(hours.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} hours  eta {eta}")
                .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut rolled_up = 0;
    for chunk in hours.chunks(CHUNK_HOURS) {
        rolled_up += rollup::roll_up(&mut client, chunk)?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();

    let summary = Summary {
        hours: hours.len() as u64,
        rolled_up,
        seconds: started.elapsed().as_secs_f64(),
    };
    if !settings.quiet {
        args.format.print(&summary, || {
            let empty = match summary.hours - summary.rolled_up {
                0 => String::new(),
                empty => format!(" ({} without events)", thousands(empty)),
            };
            format!(
                "rolled up {} hours{empty} in {:.1} s",
                thousands(summary.rolled_up),
                summary.seconds
            )
        })?;
    }
    Ok(Exit::Success)
}

/// Start of the UTC hour containing `at`.
pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::hours(1)).unwrap_or(at)
}

/// Starts of the hours that begin in `[from, to)`, counting the hour
/// containing `from`.
pub fn hours_between(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut hours = Vec::new();
    let mut at = hour_of(from);
    while at < to {
        hours.push(at);
        at += TimeDelta::hours(1);
    }
    hours
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timearg::parse_instant;

    #[test]
    fn hours_are_utc_hour_starts() {
        let at = parse_instant("2026-11-27T14:59:59.999999").unwrap();
        assert_eq!(hour_of(at), parse_instant("2026-11-27T14").unwrap());
        let hours = hours_between(
            parse_instant("2026-11-27T22:30").unwrap(),
            parse_instant("2026-11-28T01").unwrap(),
        );
        let want: Vec<_> = ["2026-11-27T22", "2026-11-27T23", "2026-11-28T00"]
            .iter()
            .map(|t| parse_instant(t).unwrap())
            .collect();
        assert_eq!(hours, want);
    }
}
