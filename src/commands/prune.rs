//! `genalytics prune --older-than 90d`: retention of raw events.
//!
//! Cuts on whole hours: it rolls up the hours queued before the cut (late
//! events keep queueing old hours; a cut must not wait for a cron job),
//! moves the raw horizon (see `db::retention`) to the start of the hour
//! the cutoff falls in — or less far, when an hour's rollup failed or a
//! late event queued it meanwhile — and removes the raw events before it: the
//! daily partitions wholly before it are detached and dropped (instant, no
//! bloat), and the rest, at the edge, deleted in bounded batches, one
//! transaction each, so a prune of millions of rows neither holds long
//! locks nor bloats one transaction. Events of an hour
//! that waits for a rollup or a merge are kept until it is done. Hourly
//! rollups are kept forever, and no later aggregate rebuilds an hour before
//! the horizon from the few raw events left. Dead letters received before
//! the cutoff go too.

use std::io::IsTerminal;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use postgres::Client;
use serde::Serialize;

use crate::config::Settings;
use crate::db::partitions::{self, Partition};
use crate::db::{self, retention};
use crate::error::Exit;
use crate::hour;
use crate::output::{SummaryFormat, thousands};
use crate::timearg::parse_span;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Delete raw events older than this (e.g. 90d, 36h, 1h30m, 2w)
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

const EXAMPLES: &str = "Examples:
  genalytics prune --older-than 90d
  genalytics prune --older-than 2w --dry-run";

#[derive(Debug, Serialize)]
struct Summary {
    /// Raw events before this are pruned: the raw horizon.
    horizon: Option<DateTime<Utc>>,
    /// The hour that held the horizon back: it waits for its rollup.
    held_by: Option<DateTime<Utc>>,
    /// Dead letters received before this are pruned.
    cutoff: DateTime<Utc>,
    dry_run: bool,
    events: i64,
    /// Daily partitions dropped whole (their events are in `events`).
    partitions_dropped: u64,
    rejected: i64,
    seconds: f64,
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let now = Utc::now();
    let cutoff = now - args.older_than;
    let hour = hour::floor(cutoff);
    let database = settings.database()?;
    let mut client = if args.dry_run {
        db::connect_current(database)?
    } else {
        db::connect_writer(database)?
    };
    // Hours queued before the cut (late events, or no aggregate since)
    // are rolled up first: their raw events are what a rollup is made of.
    let refused = if args.dry_run {
        Vec::new()
    } else {
        crate::db::rollup::roll_up_queued_before(&mut client, hour)?.failed
    };
    let plan = if args.dry_run {
        retention::plan(&mut client, hour)?
    } else {
        retention::advance(&mut client, hour)?
    };
    let horizon = plan.target.max(plan.horizon);
    let whole = match horizon {
        Some(horizon) => partitions::wholly_before(&mut client, horizon)?,
        None => Vec::new(),
    };
    let (partitions_dropped, dropped_events) = if args.dry_run {
        (0, 0)
    } else {
        drop_whole_days(&mut client, &whole)?
    };
    let (events, rejected) = retention::count_older(
        &mut client,
        horizon.unwrap_or(DateTime::<Utc>::MIN_UTC),
        cutoff,
    )?;
    let mut summary = Summary {
        horizon,
        held_by: plan.held_by,
        cutoff,
        dry_run: args.dry_run,
        events,
        partitions_dropped: if args.dry_run {
            whole.len() as u64
        } else {
            partitions_dropped
        },
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
        if let Some(horizon) = horizon {
            summary.events = dropped_events
                + drain(&progress, args.batch_size, |size| {
                    retention::delete_events_batch(&mut client, horizon, size)
                })?;
        }
        summary.rejected = drain(&progress, args.batch_size, |size| {
            retention::delete_rejected_batch(&mut client, cutoff, size)
        })?;
        progress.finish_and_clear();
    }
    summary.seconds = started.elapsed().as_secs_f64();
    if let Some(held) = summary.held_by {
        let why = match refused.iter().find(|failed| failed.hour == held) {
            Some(failed) => format!(
                "PostgreSQL refused its rollup ({}); `genalytics status` shows it, and prune goes \
                 on once `genalytics aggregate` rolls it up",
                failed.error
            ),
            None if args.dry_run => "it waits for its rollup, which prune does first".to_string(),
            None => "an event for it arrived while prune ran; the next prune goes on".to_string(),
        };
        tracing::warn!(
            "kept the raw events from {} on: {why}",
            held.format("%Y-%m-%d %H:00 UTC")
        );
    }
    if !settings.quiet {
        args.format.print(&summary, || summary.line())?;
    }
    Ok(Exit::Success)
}

impl Summary {
    /// The one-line text form.
    fn line(&self) -> String {
        let hour = |h: DateTime<Utc>| h.format("%Y-%m-%d %H:00 UTC").to_string();
        format!(
            "{} {} events older than {}{} and {} rejected entries received before {} in {:.1} s; \
             hourly rollups are kept, and raw events are complete from {} on",
            if self.dry_run {
                "would prune"
            } else {
                "pruned"
            },
            thousands(self.events.unsigned_abs()),
            self.horizon.map_or_else(|| "—".to_string(), hour),
            match self.partitions_dropped {
                0 => String::new(),
                n => format!(
                    " ({} {n} daily partition{})",
                    if self.dry_run { "at most" } else { "dropping" },
                    if n == 1 { "" } else { "s" }
                ),
            },
            thousands(self.rejected.unsigned_abs()),
            self.cutoff.format("%Y-%m-%d %H:%M UTC"),
            self.seconds,
            self.horizon
                .map_or_else(|| "the first event".to_string(), hour),
        )
    }
}

/// Drops the daily partitions `whole` (those whose hours all wait for
/// nothing), and any an interrupted prune left detached; returns how many
/// partitions and rows went.
fn drop_whole_days(client: &mut Client, whole: &[Partition]) -> anyhow::Result<(u64, i64)> {
    let (left, left_rows) = partitions::drop_detached(client)?;
    for partition in whole {
        partitions::detach_for_drop(client, partition)?;
    }
    let (dropped, rows) = partitions::drop_detached(client)?;
    Ok((left + dropped, left_rows + rows))
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
