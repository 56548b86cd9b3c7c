//! `genalytics status`: is data flowing? The stream and its distance to
//! the producer's trim cap, what is not yet transferred and how old it is,
//! the last transfer, dead letters, the newest stored event, hours waiting
//! for their rollup, and table sizes — with a warning for each thing an
//! operator should act on.
//!
//! Redis being unreachable is itself an answer (a warning), so status still
//! reports what PostgreSQL knows; it fails only without PostgreSQL.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::config::Settings;
use crate::db::{self, health, migrations, streams};
use crate::error::Exit;
use crate::output::{SummaryFormat, table, thousands};
use crate::stream::{self, EntryId, producer::PRODUCER_MAXLEN, reader};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

/// The stream fills up to this share of the producer's cap before status
/// warns.
const WARN_AT: u64 = PRODUCER_MAXLEN / 2;

#[derive(Debug, Default, Serialize)]
struct Status {
    stream: String,
    stream_length: Option<u64>,
    producer_cap: u64,
    cap_used_pct: Option<f64>,
    newest_entry_at: Option<DateTime<Utc>>,
    position: Option<String>,
    behind: Option<u64>,
    behind_exact: Option<bool>,
    oldest_untransferred_at: Option<DateTime<Utc>>,
    oldest_untransferred_age_seconds: Option<i64>,
    last_transfer_at: Option<DateTime<Utc>>,
    events_transferred: i64,
    rejected_entries: i64,
    newest_event_at: Option<DateTime<Utc>>,
    hours_awaiting_rollup: i64,
    stale_hours: i64,
    oldest_hour_awaiting_rollup: Option<DateTime<Utc>>,
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
    let mut client = db::connect(database)?;
    migrations::ensure_current(&mut client)?;
    let now = Utc::now();
    let mut status = Status {
        stream: key.to_string(),
        producer_cap: PRODUCER_MAXLEN,
        ..Status::default()
    };

    let state = streams::state(&mut client, key)?;
    let position = if let Some(state) = &state {
        status.position = Some(state.position.to_string());
        status.last_transfer_at = Some(state.last_transfer_at);
        status.events_transferred = state.events_stored;
        state.position
    } else {
        status
            .warnings
            .push(format!("nothing has been transferred from {key} yet"));
        EntryId::ZERO
    };
    if let Err(err) = stream_figures(settings, position, now, &mut status) {
        status.warnings.push(format!("{err:#}"));
    }

    status.rejected_entries = client
        .query_one("SELECT count(*) FROM generation_events_rejected", &[])?
        .get(0);
    status.newest_event_at = health::newest_event(&mut client)?;
    let backlog = health::rollup_backlog(&mut client)?;
    status.hours_awaiting_rollup = backlog.queued;
    status.stale_hours = backlog.stale;
    status.oldest_hour_awaiting_rollup = backlog.oldest;
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
    status.tables = health::table_sizes(&mut client)?
        .into_iter()
        .map(|t| TableRow {
            table: t.table,
            rows: t.rows,
            rows_exact: t.exact,
            bytes: t.bytes,
        })
        .collect();
    print(args.format, &status)?;
    Ok(Exit::Success)
}

/// Fills in what Redis knows; an error here becomes a warning.
fn stream_figures(
    settings: &Settings,
    position: EntryId,
    now: DateTime<Utc>,
    status: &mut Status,
) -> anyhow::Result<()> {
    let key = settings.stream_key.as_str();
    let mut con = stream::connect(&settings.redis)?;
    let info = reader::info(&mut con, key)?;
    status.stream_length = Some(info.length);
    status.cap_used_pct = Some(crate::report::round2(
        info.length as f64 * 100.0 / PRODUCER_MAXLEN as f64,
    ));
    status.newest_entry_at = info.last_id.and_then(EntryId::time);
    let behind = reader::count_after(&mut con, key, &info, position, 10_000)?;
    status.behind = Some(behind.entries);
    status.behind_exact = Some(behind.exact);
    if let Some(oldest) = reader::first_after(&mut con, key, position)? {
        let at = oldest.time();
        status.oldest_untransferred_at = at;
        status.oldest_untransferred_age_seconds = at.map(|at| (now - at).num_seconds().max(0));
    }
    if info.length > WARN_AT {
        status.warnings.push(format!(
            "the stream holds {} entries, more than half the producer's ~{} cap: transfer is falling behind, \
             and the producer trims unread entries at the cap",
            thousands(info.length),
            thousands(PRODUCER_MAXLEN)
        ));
    }
    if let Some(lost) = info.max_deleted_id.filter(|&lost| lost > position) {
        status.warnings.push(format!(
            "entries up to {lost} were removed from the stream before they were stored (the producer's cap?)"
        ));
    }
    Ok(())
}

fn print(format: SummaryFormat, status: &Status) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if format == SummaryFormat::Json {
        serde_json::to_writer_pretty(&mut out, status)?;
        writeln!(out)?;
        return Ok(());
    }
    let json = serde_json::to_value(status)?;
    writeln!(
        out,
        "Status of {}, {}",
        status.stream,
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    )?;
    let figures = table::figures(
        json.as_object().expect("an object"),
        &[
            ("stream_length", "stream length"),
            ("cap_used_pct", "of the producer's cap"),
            ("newest_entry_at", "newest entry"),
            ("behind", "not yet transferred"),
            ("oldest_untransferred_at", "oldest not transferred"),
            ("last_transfer_at", "last transfer"),
            ("events_transferred", "events transferred"),
            ("rejected_entries", "dead letters"),
            ("newest_event_at", "newest stored event"),
            ("hours_awaiting_rollup", "hours awaiting rollup"),
            ("stale_hours", "stale hours"),
        ],
    );
    writeln!(out, "{figures}")?;
    let tables: Vec<Value> = json["tables"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut row| {
            let bytes = row["bytes"].as_i64().unwrap_or(0);
            row["size"] = Value::String(human_bytes(bytes));
            row
        })
        .collect();
    writeln!(
        out,
        "{}",
        table::rows(
            &tables,
            &[("table", "table"), ("rows", "rows"), ("size", "size")],
            None
        )
    )?;
    if status.warnings.is_empty() {
        writeln!(out, "no warnings: data is flowing")?;
    }
    for warning in &status.warnings {
        writeln!(out, "warning: {warning}")?;
    }
    Ok(())
}

fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
