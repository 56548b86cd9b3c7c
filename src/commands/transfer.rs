//! `genalytics transfer`: drain the stream into `generation_events`
//! exactly once.
//!
//! A reader thread pulls bounded batches from Redis and parses them while
//! the main thread commits the previous batch to PostgreSQL: rows by binary
//! COPY, dead letters, the hours to roll up and the new stream position in
//! one transaction. At most two batches are in memory, whatever the
//! backlog. Only after a commit is the stream trimmed, never past what is
//! stored.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Settings;
use crate::db::events::{self, Prepared};
use crate::db::{self, migrations};
use crate::error::Exit;
use crate::event::Batch;
use crate::output::{SummaryFormat, thousands};
use crate::stream::{
    self,
    reader::{self, EntryId, RawEntry},
};
use crate::timearg::parse_span;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Entries per transaction (and per read from Redis)
    #[arg(long, default_value_t = 5_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,

    /// Stop after this many entries
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_events: Option<u64>,

    /// Keep reading new entries until SIGINT/SIGTERM, committing at least every second
    #[arg(long)]
    pub follow: bool,

    /// Stored entries younger than this stay in the stream for live monitoring
    #[arg(long, default_value = "2h", value_name = "DURATION", value_parser = parse_span)]
    pub keep: TimeDelta,

    /// Wait for a transfer already running instead of exiting
    #[arg(long)]
    pub wait: bool,

    /// Summary format
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

/// How long `--follow` waits before committing a partial batch.
const FOLLOW_FLUSH: Duration = Duration::from_secs(1);
/// How long one blocking read waits, so a stop request is noticed.
const FOLLOW_BLOCK_MS: u64 = 250;

#[derive(Debug, Serialize)]
struct Summary {
    stream: String,
    events: u64,
    rejected: u64,
    seconds: f64,
    events_per_second: f64,
    /// Entries in the stream not yet transferred when the run ended.
    behind: u64,
    behind_exact: bool,
    last_id: String,
    trimmed: u64,
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let key = settings.stream_key.as_str();
    let database = settings.database()?;
    let mut client = db::connect(database)?;
    migrations::ensure_current(&mut client)?;
    if !take_turn(&mut client, key, args, settings)? {
        return Ok(Exit::Success);
    }

    let position = events::position(&mut client, key)?;
    let cursor: EntryId = position
        .parse()
        .map_err(|err| anyhow::anyhow!("the stored position of {key} is damaged: {err}"))?;
    let mut con = stream::connect(&settings.redis)?;
    let info = reader::info(&mut con, key)?;
    if let Some(lost) = info.max_deleted_id.filter(|&lost| lost > cursor) {
        tracing::warn!(
            "entries of {key} up to {lost} were removed from the stream (the producer's MAXLEN cap?) \
             before genalytics stored them; transfer more often to keep up"
        );
    }

    let stop = crate::interrupt::install()?;
    let progress = progress_bar(args, settings, &mut con, &info, cursor)?;

    let plan = ReadPlan {
        key: key.to_string(),
        redis: settings.redis.target(),
        after: cursor,
        until: if args.follow { None } else { info.last_id },
        batch_size: args.batch_size as usize,
        max_events: args.max_events,
        follow: args.follow,
        stop: Arc::clone(&stop),
    };
    let nothing_to_read = !plan.follow && plan.until.is_none_or(|until| until <= cursor);
    let (sender, batches) = sync_channel::<anyhow::Result<Prepared>>(1);
    let reader_con = stream::connect(&settings.redis)?;
    let reader = std::thread::Builder::new()
        .name("stream-reader".into())
        .spawn(move || {
            if !nothing_to_read {
                read_batches(reader_con, &plan, &sender);
            }
        })
        .context("cannot start the reader thread")?;

    let mut summary = Summary {
        stream: key.to_string(),
        events: 0,
        rejected: 0,
        seconds: 0.0,
        events_per_second: 0.0,
        behind: 0,
        behind_exact: true,
        last_id: position.clone(),
        trimmed: 0,
    };
    let sink = Sink {
        client: &mut client,
        con: &mut con,
        key,
        keep: args.keep,
        database: database.target(),
        progress: &progress,
    };
    let (outcome, trim_error) = sink.store(batches, &mut summary);
    // Dropping the receiver stops a reader still waiting to send.
    let _ = reader.join();
    progress.finish_and_clear();
    outcome?;
    if let Some(err) = trim_error {
        tracing::warn!("cannot trim the stream {key} (the entries are stored): {err:#}");
    }

    let end_cursor: EntryId = summary.last_id.parse().unwrap_or(cursor);
    let info = reader::info(&mut con, key)?;
    let behind = reader::count_after(&mut con, key, &info, end_cursor, 1_000)?;
    summary.behind = behind.entries;
    summary.behind_exact = behind.exact;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.events_per_second =
        (summary.events + summary.rejected) as f64 / summary.seconds.max(1e-9);
    if !settings.quiet {
        print_summary(args.format, &summary)?;
    }
    Ok(Exit::Success)
}

/// Checks this run may go ahead: the database holds no other stream, and
/// no other transfer of this one is running (or it has finished, with
/// `--wait`). The lock lives as long as `client`.
fn take_turn(
    client: &mut postgres::Client,
    key: &str,
    args: &Args,
    settings: &Settings,
) -> anyhow::Result<bool> {
    if let Some(other) = events::other_stream(client, key)? {
        bail!(
            "this database already holds events from the stream {other}; entry IDs are unique only within \
             one stream, so genalytics keeps one stream per database — use another database for {key}"
        );
    }
    if args.wait {
        events::lock(client, key)?;
    } else if !events::try_lock(client, key)? {
        if !settings.quiet {
            say_skipped(args.format, key)?;
        }
        return Ok(false);
    }
    Ok(true)
}

/// Where the main thread puts what the reader read.
struct Sink<'a> {
    client: &'a mut postgres::Client,
    con: &'a mut redis::Connection,
    key: &'a str,
    keep: TimeDelta,
    /// `host:port` of PostgreSQL, for messages.
    database: String,
    progress: &'a ProgressBar,
}

impl Sink<'_> {
    /// Commits batches in order until the reader is done or something
    /// fails; then the outcome, and the last trim failure (a warning: the
    /// entries are stored either way).
    fn store(
        self,
        batches: Receiver<anyhow::Result<Prepared>>,
        summary: &mut Summary,
    ) -> (anyhow::Result<()>, Option<anyhow::Error>) {
        let mut trim_error = None;
        for batch in batches {
            let stored = batch.and_then(|prepared| {
                events::commit(self.client, self.key, &summary.last_id, &prepared).with_context(|| {
                    format!(
                        "cannot store entries after {} in PostgreSQL at {}; that batch was not committed \
                         and the next run resumes there",
                        summary.last_id, self.database
                    )
                })?;
                Ok(prepared.batch)
            });
            let batch = match stored {
                Ok(batch) => batch,
                Err(err) => return (Err(err), trim_error),
            };
            summary.events += batch.events.len() as u64;
            summary.rejected += batch.rejected.len() as u64;
            self.progress.inc(batch.len() as u64);
            summary.last_id = batch.last_id;
            match trim(self.con, self.key, &summary.last_id, self.keep) {
                Ok(trimmed) => summary.trimmed += trimmed,
                Err(err) => trim_error = Some(err),
            }
        }
        (Ok(()), trim_error)
    }
}

/// What the reader thread reads.
struct ReadPlan {
    key: String,
    /// `host:port`, for messages.
    redis: String,
    after: EntryId,
    /// Last entry to read (the stream's end when the run started); none
    /// when following.
    until: Option<EntryId>,
    batch_size: usize,
    max_events: Option<u64>,
    follow: bool,
    stop: Arc<AtomicBool>,
}

/// Reads and parses batches until the plan is done, a stop is asked for,
/// or the receiver hangs up. Errors are sent on, not swallowed.
fn read_batches(
    mut con: redis::Connection,
    plan: &ReadPlan,
    sender: &SyncSender<anyhow::Result<Prepared>>,
) {
    let mut after = plan.after;
    let mut left = plan.max_events.unwrap_or(u64::MAX);
    let mut pending: Vec<RawEntry> = Vec::new();
    let mut pending_since = Instant::now();
    let read_error = |err: redis::RedisError| {
        let reason = if err.is_connection_dropped() || err.is_io_error() {
            format!("the connection was lost ({})", stream::describe(&err))
        } else {
            stream::describe(&err)
        };
        anyhow::anyhow!(
            "cannot read the stream {} from Redis at {}: {reason}; the next run resumes from the last committed entry",
            plan.key,
            plan.redis,
        )
    };
    while left > 0 {
        let stopping = plan.stop.load(Ordering::Relaxed);
        let want =
            (plan.batch_size - pending.len()).min(usize::try_from(left).unwrap_or(usize::MAX));
        let entries = if stopping {
            Ok(Vec::new())
        } else if plan.follow {
            reader::read_after(&mut con, &plan.key, after, want, FOLLOW_BLOCK_MS)
        } else {
            reader::range_after(&mut con, &plan.key, after, plan.until, want)
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(err) => {
                let _ = sender.send(Err(read_error(err)));
                return;
            }
        };
        let finished = stopping || (!plan.follow && entries.len() < want);
        if let Some(last) = entries.last() {
            match last.id.parse() {
                Ok(id) => after = id,
                Err(err) => {
                    let _ = sender.send(Err(anyhow::anyhow!(
                        "Redis returned a malformed entry ID: {err}"
                    )));
                    return;
                }
            }
            if pending.is_empty() {
                pending_since = Instant::now();
            }
            left -= entries.len() as u64;
            pending.extend(entries);
        }
        let due = pending.len() >= plan.batch_size
            || left == 0
            || finished
            || (plan.follow && pending_since.elapsed() >= FOLLOW_FLUSH);
        if due && !pending.is_empty() {
            let batch =
                Batch::from_entries(pending.iter().map(|e| (e.id.as_str(), e.fields.as_slice())));
            pending.clear();
            if sender.send(events::prepare(batch)).is_err() {
                return;
            }
        }
        if finished {
            return;
        }
    }
}

/// Trims entries that are both stored and older than `keep`.
fn trim(
    con: &mut redis::Connection,
    key: &str,
    last_stored: &str,
    keep: TimeDelta,
) -> anyhow::Result<u64> {
    let stored: EntryId = last_stored
        .parse()
        .map_err(|err: String| anyhow::anyhow!(err))?;
    let horizon_ms = (Utc::now() - keep).timestamp_millis().max(0) as u64;
    // MINID keeps IDs ≥ the bound: everything after the last stored entry
    // always survives.
    let bound = stored.min(EntryId {
        ms: horizon_ms,
        seq: 0,
    });
    Ok(reader::trim_before(con, key, bound)?)
}

fn progress_bar(
    args: &Args,
    settings: &Settings,
    con: &mut redis::Connection,
    info: &reader::StreamInfo,
    cursor: EntryId,
) -> anyhow::Result<ProgressBar> {
    if settings.quiet || !std::io::stderr().is_terminal() {
        return Ok(ProgressBar::hidden());
    }
    let style = ProgressStyle::with_template(
        "{bar:40} {human_pos}/{human_len} entries  {elapsed_precise}  eta {eta}",
    )
    .expect("valid template");
    if args.follow {
        let spinner = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(
                "{spinner} {human_pos} entries  {elapsed_precise}  following…",
            )
            .expect("valid template"),
        );
        spinner.enable_steady_tick(Duration::from_millis(250));
        return Ok(spinner);
    }
    let backlog = reader::count_after(con, &settings.stream_key, info, cursor, 10_000)?;
    let total = args
        .max_events
        .map_or(backlog.entries, |cap| cap.min(backlog.entries));
    Ok(ProgressBar::new(total).with_style(style))
}

fn say_skipped(format: SummaryFormat, key: &str) -> anyhow::Result<()> {
    let skipped = serde_json::json!({"stream": key, "skipped": "another transfer is running"});
    format.print(&skipped, || {
        format!("another transfer of {key} is running; nothing to do (pass --wait to wait for it)")
    })?;
    Ok(())
}

fn print_summary(format: SummaryFormat, summary: &Summary) -> anyhow::Result<()> {
    format.print(summary, || {
        format!(
            "transferred {} events and {} rejected entries from {} in {:.1} s ({} entries/s); {}{} entries behind",
            thousands(summary.events),
            thousands(summary.rejected),
            summary.stream,
            summary.seconds,
            thousands(summary.events_per_second.round() as u64),
            if summary.behind_exact { "" } else { "about " },
            thousands(summary.behind),
        )
    })?;
    Ok(())
}
