//! `genalytics status`: is data flowing? The stream and whether it is still
//! the one the position belongs to, what is not yet transferred (and so at
//! risk from the producer's trim cap) and how old it is, the last transfer
//! and the last time the stream was replaced, dead letters, the newest
//! stored event, hours waiting for their rollup or failing it, and table
//! sizes — with a warning for each thing an operator should act on.
//!
//! Redis being unreachable is itself an answer (a warning), so status still
//! reports what PostgreSQL knows; it fails only without PostgreSQL.

mod exposition;
mod table;
pub mod waiting;

use std::io::Write;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::db::streams::{self, TransferState};
use crate::db::{self, health, migrations};
use crate::error::Exit;
use crate::event::EntryId;

use crate::output::thousands;
use crate::render::Renderer;
use crate::render::table::TableRenderer;
use crate::stream::identity::Identity;
use crate::stream::producer::PRODUCER_MAXLEN;
use crate::stream::verdict;
use waiting::Waiting;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write to this file instead of stdout, atomically (a temporary file in
    /// the same directory, renamed over it), readable by all: what
    /// the textfile collector of Prometheus' node exporter needs
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub grace: StaleGrace,
}

/// When a queued hour counts as stale: shared by status and check.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct StaleGrace {
    /// A complete hour counts as stale once it has waited this long for its rollup (since it ended, or since a late event queued it)
    #[arg(
        long = "stale-grace",
        env = "GENALYTICS_STALE_GRACE",
        default_value = "10m",
        value_name = "DURATION",
        value_parser = crate::timearg::parse_span
    )]
    pub stale_grace: TimeDelta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table of figures and one line per warning
    Text,
    /// One JSON object
    Json,
    /// Gauges and counters in the Prometheus/OpenMetrics text format, for
    /// the textfile collector of Prometheus' node exporter
    Openmetrics,
}

const EXAMPLES: &str = "Examples:
  genalytics status
  genalytics status --format json | jq .warnings
  genalytics status --format openmetrics -o /var/lib/prometheus/node-exporter/genalytics.prom";

/// Entries not yet stored may fill up to this share of the producer's cap
/// before status warns: past the cap, the producer trims them unread.
pub const WARN_AT: u64 = PRODUCER_MAXLEN / 2;

#[derive(Debug, Default, Serialize)]
struct Status {
    stream: String,
    /// When status looked.
    at: DateTime<Utc>,
    /// The PostgreSQL server status read (host:port), and what it is.
    database: String,
    database_role: &'static str,
    /// Standbys streaming from it (a primary), and the furthest one's
    /// replay lag in seconds.
    standbys: i64,
    standby_replay_lag_seconds: Option<f64>,
    stream_length: Option<u64>,
    producer_cap: u64,
    /// The stream's length as a share of the producer's cap.
    cap_used_pct: Option<f64>,
    /// Entries not yet stored as a share of the cap: what the producer's
    /// trimming can destroy.
    behind_cap_pct: Option<f64>,
    /// Requests per hour over the last 24 hours, from the rollups.
    requests_last_24h: Vec<i64>,
    newest_entry_at: Option<DateTime<Utc>>,
    position: Option<EntryId>,
    /// Whether the key still holds the stream the position belongs to:
    /// `same`, `missing`, `gap`, `rewound`, `replaced` (read on) or
    /// `replaced_below_position`.
    #[serde(serialize_with = "identity_name")]
    stream_identity: Option<Identity>,
    behind: Option<u64>,
    behind_exact: Option<bool>,
    oldest_untransferred_at: Option<DateTime<Utc>>,
    oldest_untransferred_age_seconds: Option<i64>,
    last_transfer_at: Option<DateTime<Utc>>,
    events_transferred: i64,
    entries_skipped: i64,
    stream_resets: i32,
    /// Whether Redis answered (its figures are missing when it did not).
    redis_up: bool,
    last_reset_at: Option<DateTime<Utc>>,
    last_reset_lost_entries: Option<i64>,
    rejected_entries: i64,
    newest_event_at: Option<DateTime<Utc>>,
    /// Hours reports count from their stored events (raw, or the late
    /// ones beside the rollup) until their rollup: every queued hour whose
    /// rollup has not failed.
    hours_from_raw_events: i64,
    hours_awaiting_rollup: i64,
    stale_hours: i64,
    oldest_hour_awaiting_rollup: Option<DateTime<Utc>>,
    failing_hours: i64,
    last_rollup_error: Option<String>,
    /// Raw events are complete from this hour on; rollups of earlier hours
    /// are only merged into, never recomputed.
    raw_horizon: Option<DateTime<Utc>>,
    /// Hours rolled up only by the original service (no histogram or user
    /// list): they count, but their percentiles and users are partial.
    legacy_hours: i64,
    /// Hourly rows written or changed by something other than genalytics.
    foreign_rollup_rows: i64,
    /// Late events listed for hours already rolled up (or pruned), waiting
    /// for their rollup.
    late_events_waiting: i64,
    /// Events in the default partition: times outside the window day
    /// partitions are made for (older than the raw retention, or hostile
    /// clocks far ahead).
    events_outside_partitions: i64,
    /// Successful and failed completions stored for the last hour.
    successful_last_hour: i64,
    failed_last_hour: i64,
    tables: Vec<TableRow>,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct TableRow {
    table: String,
    rows: i64,
    rows_exact: bool,
    bytes: i64,
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let key = settings.stream_key.as_str();
    let database = settings.database()?;
    let (mut client, server) = db::connect_to(database)?;
    migrations::ensure_current(&mut client)?;
    let now = Utc::now();
    let role = crate::db::replication::role(&mut client)?;
    let mut status = Status {
        stream: key.to_string(),
        at: now,
        database: server,
        database_role: if role.standby { "standby" } else { "primary" },
        standbys: role.standbys,
        standby_replay_lag_seconds: role.replay_lag_seconds,
        producer_cap: PRODUCER_MAXLEN,
        requests_last_24h: health::requests_per_hour(&mut client, now, 24)?,
        ..Status::default()
    };

    let state = streams::state(&mut client, key)?;
    if state
        .as_ref()
        .is_none_or(|state| state.position == EntryId::ZERO && state.events_stored == 0)
    {
        status
            .warnings
            .push(format!("nothing has been transferred from {key} yet"));
    }
    if let Some(state) = &state {
        status.position = Some(state.position);
        status.last_transfer_at = Some(state.last_transfer_at);
        status.events_transferred = state.events_stored;
        status.entries_skipped = state.entries_skipped;
        status.stream_resets = state.resets;
        status.last_reset_at = state.last_reset_at;
        status.last_reset_lost_entries = state.last_reset_lost;
        if let Some(at) = state
            .last_reset_at
            .filter(|at| now - *at < TimeDelta::days(1))
        {
            status.warnings.push(verdict::replaced_on(
                at,
                state.last_reset_lost.map(i64::unsigned_abs),
            ));
        }
    }
    match stream_figures(settings, &mut client, state.as_ref(), now, &mut status) {
        Ok(()) => status.redis_up = true,
        Err(err) => status.warnings.push(format!("{err:#}")),
    }
    stored_figures(&mut client, now, args.grace.stale_grace, &mut status)?;
    match &args.output {
        None => {
            let renderer = TableRenderer::for_stdout(settings.color, chrono_tz::UTC);
            print(
                args.format,
                &status,
                &renderer,
                &mut std::io::stdout().lock(),
            )?;
        }
        Some(path) => {
            let renderer = TableRenderer::plain(chrono_tz::UTC);
            crate::output::write_atomically(path, |out| {
                print(args.format, &status, &renderer, out)
            })?;
        }
    }
    Ok(Exit::Success)
}

/// Fills in what PostgreSQL knows besides the position: completions, dead
/// letters, rollups, tables.
fn stored_figures(
    client: &mut postgres::Client,
    now: DateTime<Utc>,
    grace: TimeDelta,
    status: &mut Status,
) -> anyhow::Result<()> {
    let last_hour = health::window_health(client, now - TimeDelta::hours(1), now)?;
    status.successful_last_hour = last_hour.successful;
    status.failed_last_hour = last_hour.failed;

    status.rejected_entries = crate::db::rejected::count(client)?;
    status.newest_event_at = health::newest_event(client)?;
    let backlog = health::rollup_backlog(client, grace)?;
    status.hours_awaiting_rollup = backlog.queued;
    status.stale_hours = backlog.stale;
    status.oldest_hour_awaiting_rollup = backlog.oldest;
    let rollups = health::rollup_health(client)?;
    status.raw_horizon = rollups.raw_horizon;
    status.legacy_hours = rollups.legacy_hours;
    status.foreign_rollup_rows = rollups.foreign_rows;
    status.late_events_waiting = rollups.late_events;
    status.hours_from_raw_events = rollups.raw_hours;
    status.events_outside_partitions = health::default_partition_rows(client)?;
    let outside = status.events_outside_partitions.unsigned_abs();
    if outside > 0 {
        status.warnings.push(format!(
            "{} {} in the default partition: their times lie outside the raw retention window and the \
             week ahead that day partitions are made for (old events, or clocks far off), or their day's \
             partition could not be made yet; `genalytics prune` deletes the old ones",
            crate::output::counted(outside, "event"),
            if outside == 1 { "is" } else { "are" }
        ));
    }
    if rollups.foreign_rows > 0 {
        status.warnings.push(format!(
            "{} hourly rollup row{} were written or changed by something other than genalytics — is the \
             original service's aggregate task still running? Stop it: it rewrites hours without failures' \
             rules and knows nothing of the histograms",
            thousands(rollups.foreign_rows.unsigned_abs()),
            if rollups.foreign_rows == 1 { "" } else { "s" },
        ));
    }
    let failing = health::failing_hours(client)?;
    status.failing_hours = failing.count;
    status.last_rollup_error.clone_from(&failing.last_error);
    if let (Some(hour), Some(error)) = (failing.oldest, &failing.last_error) {
        status.warnings.push(format!(
            "{} hour{} could not be rolled up (oldest {}; last error: {error}); they stay queued",
            failing.count,
            if failing.count == 1 { "" } else { "s" },
            hour.format("%Y-%m-%d %H:00 UTC"),
        ));
    }
    if backlog.stale > 0 {
        status.warnings.push(format!(
            "{} complete hour{} with events not yet rolled up (oldest {}); run `genalytics aggregate`",
            backlog.stale,
            if backlog.stale == 1 { "" } else { "s" },
            backlog.oldest.map_or_else(String::new, |h| h.format("%Y-%m-%d %H:00 UTC").to_string())
        ));
    }
    if status.rejected_entries > 0 {
        status.warnings.push(format!(
            "{} entries are in the dead-letter table generation_events_rejected",
            thousands(status.rejected_entries.unsigned_abs())
        ));
    }
    status.tables = health::table_sizes(client)?
        .into_iter()
        .map(|t| TableRow {
            table: t.table,
            rows: t.rows,
            rows_exact: t.exact,
            bytes: t.bytes,
        })
        .collect();
    Ok(())
}

/// Fills in what Redis knows; an error here becomes a warning.
fn stream_figures(
    settings: &Settings,
    client: &mut postgres::Client,
    state: Option<&TransferState>,
    now: DateTime<Utc>,
    status: &mut Status,
) -> anyhow::Result<()> {
    let key = settings.stream_key.as_str();
    let Waiting {
        info,
        verdict,
        position,
        backlog: behind,
        oldest_at,
    } = waiting::waiting(settings, client, state)?;
    status.stream_length = Some(info.length);
    status.cap_used_pct = Some(crate::report::round2(
        info.length as f64 * 100.0 / PRODUCER_MAXLEN as f64,
    ));
    status.newest_entry_at = info.last_id.and_then(EntryId::time);
    if let Some(warning) = verdict::warning(key, position.id, &verdict) {
        status.warnings.push(warning);
    }
    status.stream_identity = Some(verdict);
    status.behind = Some(behind.entries);
    status.behind_exact = Some(behind.exact);
    status.behind_cap_pct = Some(crate::report::round2(
        behind.entries as f64 * 100.0 / PRODUCER_MAXLEN as f64,
    ));
    status.oldest_untransferred_at = oldest_at;
    status.oldest_untransferred_age_seconds = oldest_at.map(|at| (now - at).num_seconds().max(0));
    if behind.entries > WARN_AT {
        status.warnings.push(format!(
            "{}{} entries are not yet stored, more than half the producer's ~{} cap: transfer is falling \
             behind, and the producer trims unread entries at the cap",
            if behind.exact { "" } else { "about " },
            thousands(behind.entries),
            thousands(PRODUCER_MAXLEN)
        ));
    }
    if let Some(lost) = info.max_deleted_id.filter(|&lost| lost > position.id) {
        status.warnings.push(verdict::removed_unstored(key, lost));
    }
    Ok(())
}

/// The verdict as its name, in JSON.
#[allow(
    clippy::ref_option,
    reason = "serde's serialize_with hands over the field"
)]
fn identity_name<S: serde::Serializer>(
    verdict: &Option<Identity>,
    out: S,
) -> Result<S::Ok, S::Error> {
    match verdict {
        Some(verdict) => out.serialize_some(verdict.name()),
        None => out.serialize_none(),
    }
}

fn print(
    format: Format,
    status: &Status,
    renderer: &TableRenderer,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, status)?;
            writeln!(out)?;
            return Ok(());
        }
        Format::Openmetrics => {
            out.write_all(status.exposition().as_bytes())?;
            return Ok(());
        }
        Format::Text => {}
    }
    renderer.render(status, out)?;
    if status.warnings.is_empty() {
        writeln!(out, "no warnings: data is flowing")?;
    }
    for warning in &status.warnings {
        writeln!(out, "warning: {}", crate::text::escape_controls(warning))?;
    }
    Ok(())
}
