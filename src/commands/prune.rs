//! `genalytics prune --older-than 90d`: retention of raw events.
//!
//! Deletes raw events (and dead letters) older than the cutoff in bounded
//! batches, one transaction each, so a prune of millions of rows neither
//! holds long locks nor bloats one transaction. Hourly rollups are kept
//! forever. It refuses a cutoff that would take raw events of an hour still
//! waiting for its rollup.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::bail;
use chrono::{TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Settings;
use crate::db::{self, migrations, retention};
use crate::error::Exit;
use crate::output::{SummaryFormat, thousands};
use crate::timearg::parse_span;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Delete raw events older than this (e.g. 90d, 36h)
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    pub older_than: TimeDelta,

    /// Count what would be deleted; delete nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Rows deleted per transaction
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub batch_size: i64,

    /// Summary format
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

#[derive(Debug, Serialize)]
struct Summary {
    cutoff: chrono::DateTime<Utc>,
    dry_run: bool,
    events: i64,
    rejected: i64,
    seconds: f64,
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let cutoff = Utc::now() - args.older_than;
    let database = settings.database()?;
    let mut client = db::connect(database)?;
    migrations::ensure_current(&mut client)?;
    if let Some(hour) = retention::oldest_pending_hour(&mut client)?
        && hour < cutoff
    {
        bail!(
            "the hour {} still waits for its rollup, and --older-than {} would delete its raw events; \
             run `genalytics aggregate` first (or prune less)",
            hour.format("%Y-%m-%d %H:00 UTC"),
            crate::timearg::format_span(args.older_than)
        );
    }

    let (events, rejected) = retention::count_older(&mut client, cutoff)?;
    let mut summary = Summary {
        cutoff,
        dry_run: args.dry_run,
        events,
        rejected,
        seconds: 0.0,
    };
    if !args.dry_run {
        let progress = if std::io::stderr().is_terminal() && !settings.quiet {
            ProgressBar::new((events + rejected).unsigned_abs()).with_style(
                ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} rows  eta {eta}")
                    .expect("valid template"),
            )
        } else {
            ProgressBar::hidden()
        };
        summary.events = drain(&progress, args.batch_size, |size| {
            retention::delete_events_batch(&mut client, cutoff, size)
        })?;
        summary.rejected = drain(&progress, args.batch_size, |size| {
            retention::delete_rejected_batch(&mut client, cutoff, size)
        })?;
        progress.finish_and_clear();
    }
    summary.seconds = started.elapsed().as_secs_f64();
    if !settings.quiet {
        args.format.print(&summary, || {
            format!(
                "{} {} events and {} rejected entries older than {} in {:.1} s; hourly rollups are kept",
                if args.dry_run { "would prune" } else { "pruned" },
                thousands(summary.events.unsigned_abs()),
                thousands(summary.rejected.unsigned_abs()),
                cutoff.format("%Y-%m-%d %H:%M UTC"),
                summary.seconds
            )
        })?;
    }
    Ok(Exit::Success)
}

/// Deletes batch after batch until one comes back short of `size`;
/// returns the total.
fn drain(
    progress: &ProgressBar,
    size: i64,
    mut batch: impl FnMut(i64) -> anyhow::Result<i64>,
) -> anyhow::Result<i64> {
    let mut total = 0;
    loop {
        let deleted = batch(size)?;
        total += deleted;
        progress.inc(deleted.unsigned_abs());
        if deleted < size {
            return Ok(total);
        }
    }
}
