//! `genalytics aggregate`: roll events up by UTC hour.
//!
//! With no argument it rolls up every complete hour that received events
//! since it was last rolled up (transfer queues them, late arrivals
//! included), so cron needs nothing smarter; and it rolls up the current
//! hour so far, so that reports read only its newest events. `--hour` and `--from/--to`
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
use crate::db;
use crate::db::rollup::{self, CHUNK_HOURS, Tally, roll_up_all};
use crate::error::{Exit, UsageError};
use crate::hour;
use crate::output::{SummaryFormat, counted, thousands};
use crate::timearg::parse_instant;

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
    #[serde(flatten)]
    done: Tally,
    seconds: f64,
}

impl Summary {
    /// The summary for people and cron mail.
    fn line(&self) -> String {
        let Summary { hours, done, .. } = self;
        let before_horizon = done.merged + done.kept;
        let empty = match hours - done.rolled_up - before_horizon - done.failed.len() as u64 {
            0 => String::new(),
            empty => format!(" ({} without events)", thousands(empty)),
        };
        let mut line = format!("rolled up {}{empty}", counted(done.rolled_up, "hour"));
        if before_horizon > 0 {
            let merged = match done.merged {
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
    let mut client = db::connect_writer(database)?;
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
    let done = roll_up_all(database, &mut client, hours, count, jobs, &|n| {
        progress.inc(n);
    })?;
    if range.is_none() && !args.include_current {
        // Reports then read only the current hour's newest events.
        if let Err(err) = rollup::refresh_current(&mut client) {
            tracing::warn!("cannot roll up the current hour so far: {err:#}");
        }
    }
    let mut summary = Summary {
        hours: count,
        done,
        seconds: 0.0,
    };
    progress.finish_and_clear();

    summary.seconds = started.elapsed().as_secs_f64();
    if !settings.quiet {
        args.format.print(&summary, || summary.line())?;
    }
    match summary.done.failed.as_slice() {
        [] => Ok(Exit::Success),
        [first, ..] => bail!(
            "{} hour{} could not be rolled up (the first, {}: {}); {} stay{} queued, `genalytics status` \
             shows {}, and every other hour was rolled up",
            summary.done.failed.len(),
            if summary.done.failed.len() == 1 {
                ""
            } else {
                "s"
            },
            first.hour.format("%Y-%m-%d %H:00 UTC"),
            first.error,
            if summary.done.failed.len() == 1 {
                "it"
            } else {
                "they"
            },
            if summary.done.failed.len() == 1 {
                "s"
            } else {
                ""
            },
            if summary.done.failed.len() == 1 {
                "it"
            } else {
                "them"
            },
        ),
    }
}
