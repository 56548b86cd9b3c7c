//! `genalytics rejected list | show | replay | purge`: dead letters an
//! operator can work with. Transfer keeps every entry it could not store
//! exactly as received; after a parser fix (or a fix of the producer's
//! data), `replay` stores them exactly once — each letter's event and its
//! removal in one transaction — and those still refused stay, with
//! today's reason.

use std::fmt::Write as _;
use std::io::Write;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::db::rejected::{self, Filter, Letter, Summary};
use crate::db::{self, events, migrations};
use crate::error::{Exit, UsageError};
use crate::event::EntryId;
use crate::output::{SummaryFormat, thousands};
use crate::render::{self, Cell, Layout, Report, Section};
use crate::text::{escape_bytes, escape_controls, truncate};
use crate::timearg::{parse_instant, parse_span};

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

const EXAMPLES: &str = "Examples:
  genalytics rejected list --since 2026-11-27 --reason timestamp
  genalytics rejected show 1764331200000-0
  genalytics rejected replay --all
  genalytics rejected purge --older-than 30d";

/// Which letters, by reason and time received: for list and replay.
#[derive(Debug, clap::Args)]
pub struct Which {
    /// Only letters whose reason contains this text (any case)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Only letters received at or after this time
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub since: Option<DateTime<Utc>>,

    /// Only letters received before this time
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List dead letters, oldest first: entry ID, stream, when, why
    List {
        #[command(flatten)]
        which: Which,
        /// Show at most this many (0: all)
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: u64,
        #[arg(long, value_enum, default_value_t = render::Format::Table)]
        format: render::Format,
        /// With --format csv: text exactly as stored, even where a
        /// spreadsheet would run it as a formula (by default such cells get
        /// a leading ')
        #[arg(long)]
        csv_raw: bool,
    },
    /// Show one dead letter's fields exactly as received (bytes that are not
    /// printable UTF-8 escaped as \xNN)
    Show {
        /// The entry ID, e.g. 1764331200000-0
        #[arg(value_name = "STREAM_ID", value_parser = parse_entry_id)]
        stream_id: EntryId,
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        format: SummaryFormat,
    },
    /// Parse dead letters again with today's parser and store those that now
    /// pass, exactly once; the rest stay with today's reason
    Replay {
        /// Replay every letter (that the filters match)
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        all: bool,
        /// Replay the letters of these entry IDs
        #[arg(value_name = "STREAM_ID", value_parser = parse_entry_id)]
        ids: Vec<EntryId>,
        #[command(flatten)]
        which: Which,
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        format: SummaryFormat,
    },
    /// Delete dead letters received before a cutoff
    Purge {
        /// Delete letters older than this (e.g. 30d, 2w; 0 for all)
        #[arg(long, value_name = "DURATION", value_parser = parse_span)]
        older_than: TimeDelta,
        /// Only letters whose reason contains this text (any case)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        format: SummaryFormat,
    },
}

fn parse_entry_id(text: &str) -> Result<EntryId, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "'{}' is not an entry ID (e.g. 1764331200000-0)",
            escape_controls(text)
        )
    })
}

impl Which {
    fn filter(&self) -> anyhow::Result<Filter> {
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since >= until
        {
            return Err(
                UsageError(format!("--since {since} is not before --until {until}")).into(),
            );
        }
        Ok(Filter {
            reason: self.reason.clone(),
            since: self.since,
            until: self.until,
            ids: None,
        })
    }
}

/// Letters replayed in one transaction: a chunk is stored, or none of it.
const REPLAY_CHUNK: usize = 1_000;

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let database = settings.database()?;
    let (mut client, server) = db::connect_to(database)?;
    if matches!(args.action, Action::Replay { .. } | Action::Purge { .. }) {
        db::ensure_primary(&mut client, &server)?;
    }
    migrations::ensure_current(&mut client)?;
    let mut out = std::io::stdout().lock();
    match &args.action {
        Action::List {
            which,
            limit,
            format,
            csv_raw,
        } => {
            let filter = which.filter()?;
            let limit = (*limit > 0).then(|| i64::try_from(*limit).unwrap_or(i64::MAX));
            let (letters, total) = rejected::list(&mut client, &filter, limit)?;
            let listing = Listing { letters, total };
            let csv = render::CsvChoice {
                section: None,
                raw: *csv_raw,
            };
            render::renderer(*format, csv, chrono_tz::UTC, settings.color)
                .render(&listing, &mut out)?;
        }
        Action::Show { stream_id, format } => {
            let id = *stream_id;
            let letters = rejected::show(&mut client, &id.to_string())?;
            if letters.is_empty() {
                anyhow::bail!("no dead letter has entry ID {id}");
            }
            show(&letters, *format, &mut out)?;
        }
        Action::Replay {
            all: _,
            ids,
            which,
            format,
        } => {
            let mut filter = which.filter()?;
            if !ids.is_empty() {
                filter.ids = Some(ids.clone());
            }
            let replayed = replay(&mut client, &filter, settings.raw_retention_days)?;
            let summary = ReplaySummary {
                letters: replayed.letters(),
                hours_queued: replayed.hours.len() as u64,
                replayed,
            };
            if !ids.is_empty() && summary.letters == 0 {
                anyhow::bail!(
                    "no dead letter has entry ID {}",
                    ids.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            format.print(&summary, || replay_line(&summary))?;
        }
        Action::Purge {
            older_than,
            reason,
            format,
        } => {
            let cutoff = Utc::now() - *older_than;
            let filter = Filter {
                reason: reason.clone(),
                until: Some(cutoff),
                ..Filter::default()
            };
            let purged = rejected::purge(&mut client, &filter)?;
            let summary = Purged {
                purged,
                received_before: cutoff,
            };
            format.print(&summary, || {
                format!(
                    "purged {} dead letter{} received before {}",
                    thousands(purged),
                    plural(purged),
                    cutoff.format("%Y-%m-%d %H:%M:%S UTC")
                )
            })?;
        }
    }
    Ok(Exit::Success)
}

fn replay_line(summary: &ReplaySummary) -> String {
    let done = &summary.replayed;
    let mut line = format!(
        "replayed {} dead letter{}: {} stored, {} still rejected",
        thousands(summary.letters),
        plural(summary.letters),
        thousands(done.stored),
        thousands(done.still_rejected),
    );
    if done.already_stored > 0 {
        let _ = write!(
            line,
            ", {} were stored already (their letters removed)",
            thousands(done.already_stored)
        );
    }
    if done.not_replayable > 0 {
        let _ = write!(
            line,
            ", {} left as they are (no stream or entry ID recorded, or fields not kept exactly: \
             cut or rebuilt)",
            thousands(done.not_replayable)
        );
    }
    if summary.hours_queued > 0 {
        let _ = write!(
            line,
            "; {} hour{} await{} `genalytics aggregate`",
            thousands(summary.hours_queued),
            plural(summary.hours_queued),
            if summary.hours_queued == 1 { "s" } else { "" }
        );
    }
    line
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[derive(Serialize)]
struct Purged {
    purged: u64,
    received_before: DateTime<Utc>,
}

/// Replays the letters `filter` matches, stream by stream, in chunks of
/// [`REPLAY_CHUNK`], each chunk one transaction.
fn replay(
    client: &mut postgres::Client,
    filter: &Filter,
    retention_days: i32,
) -> anyhow::Result<events::Replayed> {
    let mut done = events::Replayed {
        not_replayable: rejected::without_stream(client, filter)?.unsigned_abs(),
        ..events::Replayed::default()
    };
    for stream in rejected::streams(client, filter)? {
        let (ids, invalid) = rejected::ids(client, stream, filter)?;
        done.not_replayable += invalid;
        for chunk in ids.chunks(REPLAY_CHUNK) {
            let mut tx = client.transaction()?;
            // Locks in transfer's order: the stream's state row first.
            rejected::lock_stream(&mut tx, stream)?;
            let letters = rejected::take(&mut tx, stream, chunk)?;
            let mut entries = Vec::with_capacity(letters.len());
            for (id, fields) in &letters {
                match fields.replayable() {
                    Some(raw) => entries.push((*id, raw.clone())),
                    None => done.not_replayable += 1,
                }
            }
            drop(letters);
            done += events::replay(&mut tx, stream, entries, retention_days)?;
            tx.commit()?;
        }
    }
    Ok(done)
}

/// What a replay did, as its summary shows it.
#[derive(Serialize)]
struct ReplaySummary {
    letters: u64,
    #[serde(flatten)]
    replayed: events::Replayed,
    hours_queued: u64,
}

/// The letters `list` found, and how many matched in all.
struct Listing {
    letters: Vec<Summary>,
    total: i64,
}

/// Longest reason a table shows; CSV and JSON carry it whole.
const REASON_SHOWN: usize = 100;

impl Report for Listing {
    fn heading(&self) -> String {
        format!(
            "Dead letters: {} of {}",
            thousands(self.letters.len() as u64),
            thousands(self.total.unsigned_abs())
        )
    }

    fn sections(&self) -> Vec<Section> {
        self.section(None)
    }

    fn table_sections(&self) -> Vec<Section> {
        self.section(Some(REASON_SHOWN))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "total": self.total, "letters": self.letters })
    }
}

impl Listing {
    fn section(&self, reason_max: Option<usize>) -> Vec<Section> {
        vec![Section {
            name: "letters",
            title: None,
            layout: Layout::Rows,
            columns: vec![
                ("stream_id", "entry"),
                ("stream", "stream"),
                ("received_at", "received"),
                ("fields", "fields"),
                ("reason", "reason"),
            ],
            rows: self
                .letters
                .iter()
                .map(|l| {
                    let reason = match reason_max {
                        Some(max) => truncate(&l.reason, max).into_owned(),
                        None => l.reason.clone(),
                    };
                    vec![
                        Cell::Text(Some(l.stream_id.clone())),
                        Cell::Text(Some(stream_name(l))),
                        Cell::Time(Some(l.received_at)),
                        Cell::Count(l.fields),
                        Cell::Text(Some(reason)),
                    ]
                })
                .collect(),
            bar: None,
        }]
    }
}

/// The stream key, with the incarnation when the key was replaced.
fn stream_name(letter: &Summary) -> String {
    if letter.incarnation > 1 {
        format!("{} (#{})", letter.stream, letter.incarnation)
    } else {
        letter.stream.clone()
    }
}

#[derive(Serialize)]
struct Shown<'a> {
    stream: &'a str,
    incarnation: i32,
    stream_id: &'a str,
    received_at: DateTime<Utc>,
    reason: &'a str,
    /// Whether `fields` are the bytes received (not rebuilt from the JSON
    /// `fields` of a letter without `raw_fields`).
    exact: bool,
    /// [name, value] pairs in order, escaped as `\xNN` where not UTF-8.
    fields: Vec<[String; 2]>,
}

fn show(letters: &[Letter], format: SummaryFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    for letter in letters {
        let s = &letter.summary;
        let fields: Vec<[String; 2]> = letter
            .fields
            .raw
            .iter()
            .flatten()
            .map(|(n, v)| [escape_bytes(n).into_owned(), escape_bytes(v).into_owned()])
            .collect();
        if format == SummaryFormat::Json {
            let shown = Shown {
                stream: &s.stream,
                incarnation: s.incarnation,
                stream_id: &s.stream_id,
                received_at: s.received_at,
                reason: &s.reason,
                exact: letter.fields.exact,
                fields,
            };
            writeln!(out, "{}", serde_json::to_string(&shown)?)?;
            continue;
        }
        writeln!(out, "entry     {}", s.stream_id)?;
        writeln!(out, "stream    {}", escape_controls(&stream_name(s)))?;
        writeln!(
            out,
            "received  {}",
            s.received_at.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
        writeln!(out, "reason    {}", escape_controls(&s.reason))?;
        match &letter.fields.raw {
            None => writeln!(out, "fields    (not kept)")?,
            Some(raw) => {
                let origin = if letter.fields.exact {
                    ""
                } else {
                    ", rebuilt from JSON"
                };
                writeln!(out, "fields    {}{origin}", raw.len())?;
                for [name, value] in &fields {
                    writeln!(out, "  {name} = {value}")?;
                }
            }
        }
        writeln!(out)?;
    }
    Ok(())
}
