//! `genalytics transfer`: drain the stream into `generation_events`
//! exactly once.
//!
//! A reader thread pulls batches from Redis — bounded by entries and by
//! bytes — and parses them while the main thread commits the previous batch
//! to PostgreSQL: rows by binary COPY, dead letters, the hours to roll up
//! and the new stream position in one transaction. At most three batches
//! are in memory, whatever the backlog. Only after a commit is the stream
//! trimmed, never past what is stored, and never once the key holds
//! another stream.
//!
//! Before reading, transfer checks that the stream under the key is the
//! one its position belongs to (`stream::identity`). With `--follow` it
//! runs as a service: a server that goes away is waited for with backoff,
//! what was read is committed before reconnecting, and only what no retry
//! can mend ends the run.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use chrono::{DateTime, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Settings;
use crate::db::events::{self, BATCH_BYTES, Claim, Outcome, Prepared};
use crate::db::streams::{self, TransferState};
use crate::db::{self};
use crate::error::{Exit, UsageError};
use crate::output::{SummaryFormat, thousands};
use crate::retry::Backoff;
use crate::service;
use crate::stream::identity::{self, Identity};
use crate::stream::reader::{self, RawEntry, ReadSize, StreamInfo};
use crate::stream::{self, EntryId};
use crate::timearg::parse_span;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Entries per transaction (and at most per read from Redis)
    #[arg(long, default_value_t = 5_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,

    /// Stop after this many entries
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_events: Option<u64>,

    /// Keep reading new entries until SIGINT/SIGTERM, committing at least every second; survives server restarts
    #[arg(long)]
    pub follow: bool,

    /// Stored entries younger than this stay in the stream for live monitoring
    #[arg(long, default_value = "2h", value_name = "DURATION", value_parser = parse_span)]
    pub keep: TimeDelta,

    /// Wait for a transfer already running instead of exiting
    #[arg(long)]
    pub wait: bool,

    /// The key holds a new stream (recreated below the stored position): store all its entries, from its first
    #[arg(long)]
    pub new_stream: bool,

    /// Summary format
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

/// How long `--follow` waits before committing a partial batch.
const FOLLOW_FLUSH: Duration = Duration::from_secs(1);
/// How long one blocking read waits, so a stop request is noticed.
const FOLLOW_BLOCK_MS: u64 = 250;

#[derive(Debug, Default, Serialize)]
struct Summary {
    stream: String,
    events: u64,
    rejected: u64,
    /// Entries read again that were already stored: not transferred.
    skipped: u64,
    seconds: f64,
    events_per_second: f64,
    /// Entries in the stream not yet transferred when the run ended (null
    /// when Redis could not say).
    behind: Option<u64>,
    behind_exact: bool,
    last_id: String,
    trimmed: u64,
    /// Set when the key turned out to hold a new stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    reset: Option<Reset>,
    /// Times a server went away and came back (follow mode).
    reconnects: u32,
}

#[derive(Debug, Clone, Serialize)]
struct Reset {
    at: DateTime<Utc>,
    /// Entries the replaced stream had received that were never stored, at
    /// least (unknown without Redis 7's `entries-added`).
    lost_at_least: Option<u64>,
}

/// How a session ended when it did not simply finish.
enum Fault {
    /// A server went away or the stream changed under the reader: in
    /// follow mode, wait and start a new session.
    Transient(anyhow::Error),
    /// What no retry mends.
    Fatal(anyhow::Error),
}

impl Fault {
    fn of_pg(err: anyhow::Error) -> Fault {
        if db::is_transient(&err) {
            Fault::Transient(err)
        } else {
            Fault::Fatal(err)
        }
    }

    /// For what may come from either server.
    fn of(err: anyhow::Error) -> Fault {
        if db::is_transient(&err) || stream::is_transient(&err) {
            Fault::Transient(err)
        } else {
            Fault::Fatal(err)
        }
    }

    fn of_redis(err: anyhow::Error) -> Fault {
        if stream::is_transient(&err) {
            Fault::Transient(err)
        } else {
            Fault::Fatal(err)
        }
    }
}

/// The reader saw the stream's last ID or entry count go back: the key
/// holds another stream, which a new session judges.
#[derive(Debug, thiserror::Error)]
#[error(
    "the stream {0} changed under the reader (its last ID or entry count went back); run transfer again to check it"
)]
struct StreamChanged(String);

/// What the reader thread sends.
enum Message {
    Batch(Box<Prepared>, Progress),
    /// Reading stopped; whatever was read before was sent first.
    Failed(Fault),
}

/// What the reader knew after a batch's last entry.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// The stream's `entries-added` when that entry was added, if known.
    index: Option<u64>,
    /// The highest `entries-added` Redis reported so far.
    observed_added: Option<u64>,
}

/// Everything a run keeps across sessions.
struct Run<'a> {
    args: &'a Args,
    settings: &'a Settings,
    key: &'a str,
    stop: Arc<AtomicBool>,
    pg: Option<postgres::Client>,
    redis: Option<redis::Connection>,
    state: Option<TransferState>,
    summary: Summary,
    progress: ProgressBar,
    trim_warned: bool,
    ready: bool,
    /// `--new-stream`, until it has been used once.
    new_stream: bool,
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let stop = crate::interrupt::install()?;
    let mut run = Run {
        args,
        settings,
        key: settings.stream_key.as_str(),
        stop: Arc::clone(&stop),
        pg: None,
        redis: None,
        state: None,
        summary: Summary {
            stream: settings.stream_key.clone(),
            ..Summary::default()
        },
        progress: ProgressBar::hidden(),
        trim_warned: false,
        ready: false,
        new_stream: args.new_stream,
    };
    if !args.follow && !run.take_turn()? {
        return Ok(Exit::Success);
    }
    let mut backoff = Backoff::new("transfer cannot go on", &stop);
    let outcome = loop {
        let before = run.summary.entries();
        match run.session() {
            Ok(()) => break Ok(()),
            Err(Fault::Transient(err)) if args.follow => {
                // A session that got work done starts the backoff afresh.
                if run.summary.entries() > before {
                    backoff.reset();
                }
                if !backoff.wait(&err) {
                    break Ok(());
                }
                run.summary.reconnects += 1;
            }
            Err(Fault::Transient(err) | Fault::Fatal(err)) => break Err(err),
        }
    };
    run.progress.finish_and_clear();
    service::stopping();
    outcome?;
    run.finish(started)?;
    Ok(Exit::Success)
}

impl Summary {
    /// Entries dealt with so far.
    fn entries(&self) -> u64 {
        self.events + self.rejected + self.skipped
    }
}

impl Run<'_> {
    /// Connects to PostgreSQL and takes the stream's lock: false when
    /// another transfer holds it and this run should step aside.
    fn take_turn(&mut self) -> anyhow::Result<bool> {
        let database = self.settings.database()?;
        let mut client = db::connect_current(database)?;
        if self.args.wait {
            wait_for_lock(&mut client, self.key, &self.stop)?;
        } else if !streams::try_lock(&mut client, self.key)? {
            if !self.settings.quiet {
                say_skipped(self.args.format, self.key)?;
            }
            return Ok(false);
        }
        self.pg = Some(client);
        Ok(true)
    }

    /// PostgreSQL, reconnected and relocked if the connection was lost.
    fn pg(&mut self) -> Result<&mut postgres::Client, Fault> {
        if self.pg.as_ref().is_some_and(postgres::Client::is_closed) {
            self.pg = None;
        }
        if self.pg.is_none() {
            let database = self
                .settings
                .database()
                .map_err(|e| Fault::Fatal(e.into()))?;
            let mut client = db::connect_current(database).map_err(Fault::of_pg)?;
            wait_for_lock(&mut client, self.key, &self.stop).map_err(Fault::of_pg)?;
            self.pg = Some(client);
        }
        Ok(self.pg.as_mut().expect("connected above"))
    }

    fn redis(&mut self) -> Result<&mut redis::Connection, Fault> {
        if self.redis.is_none() {
            self.redis = Some(stream::connect(&self.settings.redis).map_err(Fault::of_redis)?);
        }
        Ok(self.redis.as_mut().expect("connected above"))
    }

    /// Reads and stores until the stream is drained (or, following, until
    /// a stop); a fault ends it with what was read committed.
    fn session(&mut self) -> Result<(), Fault> {
        let key = self.key;
        let state = streams::open(self.pg()?, key).map_err(Fault::of_pg)?;
        let (mut info, mut verdict) = self.inspect(&state)?;
        if self.args.follow && verdict == Identity::Missing {
            // The key is gone (Redis restarted empty?). Whatever appears
            // under it is judged before a single entry of it is read.
            self.wait_for_stream()?;
            (info, verdict) = self.inspect(&state)?;
        }
        let state = self.act_on(state, &verdict)?;
        let position = state.position;
        self.state = Some(state.clone());
        if self.summary.last_id.is_empty() {
            self.summary.last_id = position.to_string();
        }
        if let Some(lost) = info.max_deleted_id.filter(|&lost| lost > position) {
            tracing::warn!(
                "entries of {key} up to {lost} were removed from the stream (the producer's MAXLEN cap?) \
                 before genalytics stored them; transfer more often to keep up"
            );
        }
        if !self.ready {
            self.progress = self.progress_bar(&info)?;
            service::ready();
            service::status(&format!("transferring {key}"));
            self.ready = true;
        }

        let plan = ReadPlan {
            key: key.to_string(),
            redis: self.settings.redis.target(),
            after: position,
            until: if self.args.follow { None } else { info.last_id },
            batch_size: self.args.batch_size as usize,
            max_events: self.args.max_events.map(|cap| {
                cap.saturating_sub(
                    self.summary.events + self.summary.rejected + self.summary.skipped,
                )
            }),
            follow: self.args.follow,
            stop: Arc::clone(&self.stop),
            index: state.position_index,
        };
        if !plan.follow && plan.until.is_none_or(|until| until <= position) {
            return Ok(());
        }
        let reader_con = stream::connect(&self.settings.redis).map_err(Fault::of_redis)?;
        let (sender, batches) = sync_channel::<Message>(1);
        let reader = std::thread::Builder::new()
            .name("stream-reader".into())
            .spawn(move || read_batches(reader_con, &plan, &sender))
            .map_err(|err| Fault::Fatal(anyhow!("cannot start the reader thread: {err}")))?;
        let outcome = self.store(&batches);
        // Dropping the receiver stops a reader still waiting to send.
        drop(batches);
        let _ = reader.join();
        outcome
    }

    /// What the stream under the key is, against the stored position.
    fn inspect(&mut self, state: &TransferState) -> Result<(StreamInfo, Identity), Fault> {
        self.pg()?;
        self.redis()?;
        let (Some(pg), Some(con)) = (self.pg.as_mut(), self.redis.as_mut()) else {
            unreachable!("both connected above");
        };
        identity::inspect(con, self.key, state.position(), |id| {
            streams::stores(pg, state.stream_ref, id)
        })
        .map_err(Fault::of)
    }

    /// Waits for the stream key to exist again (following), feeding the
    /// watchdog; a stop ends the session.
    fn wait_for_stream(&mut self) -> Result<StreamInfo, Fault> {
        let key = self.key;
        tracing::warn!("the stream {key} does not exist (Redis restarted empty?); waiting for it");
        service::status(&format!("waiting for the stream {key} to exist"));
        loop {
            if !crate::retry::sleep_unless_stopped(Duration::from_millis(250), &self.stop) {
                return Err(Fault::Transient(anyhow!(
                    "stopped while waiting for the stream {key}"
                )));
            }
            let info = reader::info(self.redis()?, key).map_err(Fault::of_redis)?;
            if info.exists {
                return Ok(info);
            }
        }
    }

    /// Acts on what the stream turned out to be (see `stream::identity`):
    /// records a new stream when it is one to read on, refuses one that
    /// needs an operator; returns the state to read from.
    fn act_on(&mut self, state: TransferState, verdict: &Identity) -> Result<TransferState, Fault> {
        let key = self.key;
        let position = state.position;
        let from_start = match (verdict, self.new_stream) {
            (Identity::ResetBelow { .. } | Identity::Gap | Identity::ResetAbove, true) => true,
            (Identity::Same | Identity::Missing | Identity::Rewound { .. }, true)
                if self.summary.reset.is_none() =>
            {
                return Err(Fault::Fatal(
                    UsageError(format!(
                        "--new-stream: the stream {key} is still the one transfer has been reading \
                         (its entries up to {position} are the ones stored); run transfer without --new-stream"
                    ))
                    .into(),
                ));
            }
            (
                Identity::ResetBelow {
                    first,
                    last,
                    length,
                    certain,
                },
                false,
            ) => {
                return Err(Fault::Fatal(anyhow!(
                    "the stream {key} was replaced: it now holds {} entries ({first} to {last}) at or below \
                     the stored position {position}, which transfer would never read; nothing was trimmed{} — \
                     if it is a new stream, run `genalytics transfer --new-stream` to store all its entries once",
                    thousands(*length),
                    if *certain {
                        String::new()
                    } else {
                        format!(
                            " (Redis < 7 cannot tell a replaced stream from one whose entry {position} was deleted)"
                        )
                    }
                )));
            }
            (Identity::ResetAbove, false) => false,
            (Identity::Gap, false) => {
                tracing::warn!(
                    "the entry {position} of {key} is gone: the producer's cap trimmed entries after it before \
                     they were stored, or the stream was replaced (Redis < 7 cannot tell which); reading on"
                );
                return Ok(state);
            }
            (Identity::Rewound { last }, _) => {
                tracing::warn!(
                    "the stream {key} went back to an older state of itself (Redis restarted from a snapshot, \
                     or failed over to a replica that lagged): its entries after {last} up to {position} were \
                     stored before Redis lost them; reading on after {position}"
                );
                streams::rewound(self.pg()?, &state).map_err(Fault::of_pg)?;
                let mut state = state;
                state.position_index = None;
                return Ok(state);
            }
            (Identity::Same | Identity::Missing, _) => return Ok(state),
        };
        let lost = state.unseen();
        self.new_stream = false;
        let pg = self.pg()?;
        let state = streams::new_incarnation(pg, &state, lost, from_start).map_err(Fault::of_pg)?;
        let at = state.last_reset_at.unwrap_or_else(Utc::now);
        tracing::warn!(
            "the stream {key} was replaced (Redis restarted empty, flushed, or failed over){}; {}",
            identity::loss(lost),
            if from_start {
                "storing the new stream from its first entry".to_string()
            } else {
                format!("reading on after {position}")
            }
        );
        self.summary.reset = Some(Reset {
            at,
            lost_at_least: lost,
        });
        Ok(state)
    }

    /// Commits batches in order until the reader is done or something
    /// fails; the reader sends what it read before it reports a failure, so
    /// nothing read is dropped.
    fn store(&mut self, batches: &Receiver<Message>) -> Result<(), Fault> {
        loop {
            let message = match batches.recv_timeout(Duration::from_millis(500)) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    service::watchdog();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            service::watchdog();
            match message {
                Message::Batch(mut prepared, progress) => {
                    self.commit(&mut prepared, progress)?;
                }
                Message::Failed(fault) => return Err(fault),
            }
        }
    }

    /// Commits one batch; following, a lost connection to PostgreSQL is
    /// waited for and the batch committed after it (or dropped when another
    /// run stored it meanwhile).
    fn commit(&mut self, prepared: &mut Prepared, progress: Progress) -> Result<(), Fault> {
        let mut backoff = Backoff::new("cannot store entries in PostgreSQL", &self.stop);
        loop {
            let state = self.state.clone().expect("a session has a state");
            if !prepared.skip_through(state.position) {
                return Ok(());
            }
            let claim = Claim {
                stream_key: self.key,
                stream_ref: state.stream_ref,
                expected: state.position,
                index: progress.index,
                observed_added: progress.observed_added,
            };
            let database = self
                .settings
                .database()
                .map_err(|e| Fault::Fatal(e.into()))?
                .target();
            let committed = match self.pg() {
                Ok(pg) => events::commit(pg, &claim, prepared).with_context(|| {
                    format!(
                        "cannot store entries after {} in PostgreSQL at {database}; that batch was not \
                         committed and the next run resumes there",
                        state.position
                    )
                }),
                Err(Fault::Transient(err) | Fault::Fatal(err)) => Err(err),
            };
            match committed {
                Ok(outcome) => {
                    self.committed(prepared, progress, outcome);
                    return Ok(());
                }
                Err(err) if self.args.follow && db::is_transient(&err) => {
                    self.pg = None;
                    if !backoff.wait(&err) {
                        return Err(Fault::Fatal(err.context(format!(
                            "stopped with {} entries read but not stored; they are still in the stream",
                            prepared.len()
                        ))));
                    }
                    self.summary.reconnects += 1;
                    // Where the stream stands now: another run may have
                    // stored some of these entries meanwhile.
                    let key = self.key;
                    let fresh = match self.pg() {
                        Ok(pg) => streams::state(pg, key).map_err(Fault::of_pg)?,
                        Err(Fault::Transient(_)) => continue,
                        Err(fatal) => return Err(fatal),
                    };
                    match fresh {
                        Some(fresh) if fresh.stream_ref == state.stream_ref => {
                            self.state = Some(fresh);
                        }
                        _ => {
                            return Err(Fault::Transient(anyhow!(
                                "the transfer state of {key} changed while PostgreSQL was away; starting over"
                            )));
                        }
                    }
                }
                Err(err) => return Err(Fault::of_pg(err)),
            }
        }
    }

    /// Books a committed batch and trims what is now stored.
    fn committed(&mut self, prepared: &Prepared, progress: Progress, outcome: Outcome) {
        let state = self.state.as_mut().expect("a session has a state");
        state.position = prepared.last_id;
        state.position_index = progress.index;
        self.summary.events += outcome.stored;
        self.summary.rejected += outcome.rejected;
        self.summary.skipped += outcome.skipped;
        self.summary.last_id = prepared.last_id.to_string();
        self.progress.inc(prepared.len() as u64);
        let position = prepared.last_id;
        let horizon = Utc::now() - self.args.keep;
        let bound = position.min(EntryId::at_ms(
            horizon.timestamp_millis().max(0).unsigned_abs(),
        ));
        let key = self.key;
        let trimmed = match self.redis() {
            Ok(con) => reader::trim_stored(con, key, position, bound).map_err(anyhow::Error::from),
            Err(Fault::Transient(err) | Fault::Fatal(err)) => Err(err),
        };
        match trimmed {
            Ok(Some(trimmed)) => self.summary.trimmed += trimmed,
            Ok(None) if !self.trim_warned => {
                self.trim_warned = true;
                tracing::warn!(
                    "not trimming {key}: its entry {position} is gone without a deletion on record, so the key \
                     may hold another stream now; the next run checks"
                );
            }
            Ok(None) => {}
            Err(err) => {
                // The entries are stored; a later commit or run trims them.
                self.redis = None;
                tracing::info!(
                    "cannot trim the stream {key} now (the entries are stored): {err:#}"
                );
            }
        }
        service::status(&format!(
            "transferring {key}: {} events stored, last entry {position}",
            thousands(self.summary.events)
        ));
    }

    /// Counts what is left and prints the summary.
    fn finish(&mut self, started: Instant) -> anyhow::Result<()> {
        let end: EntryId = self.summary.last_id.parse().unwrap_or_default();
        match self.count_behind(end) {
            Ok(behind) => {
                self.summary.behind = Some(behind.entries);
                self.summary.behind_exact = behind.exact;
            }
            Err(err) => tracing::warn!("cannot count the entries left in {}: {err:#}", self.key),
        }
        let summary = &mut self.summary;
        summary.seconds = started.elapsed().as_secs_f64();
        summary.events_per_second = summary.entries() as f64 / summary.seconds.max(1e-9);
        if !self.settings.quiet {
            print_summary(self.args.format, summary)?;
        }
        Ok(())
    }

    /// Entries after `end`, noting what Redis says of the stream for the
    /// next run's identity check.
    fn count_behind(&mut self, end: EntryId) -> anyhow::Result<reader::Backlog> {
        let key = self.key;
        let state = self.state.clone();
        let con = match self.redis() {
            Ok(con) => con,
            Err(Fault::Transient(err) | Fault::Fatal(err)) => return Err(err),
        };
        let info = reader::info(con, key)?;
        let position = match &state {
            Some(state) if state.position == end => {
                let index = (info.last_generated_id == end)
                    .then_some(info.entries_added)
                    .flatten()
                    .or(state.position_index);
                identity::Position { id: end, index }
            }
            _ => identity::Position {
                id: end,
                index: None,
            },
        };
        let behind = reader::behind(con, key, &info, position)?;
        if position.index.is_some()
            && let Some(pg) = self.pg.as_mut()
        {
            streams::note_observed(pg, key, &position, info.entries_added)?;
        }
        Ok(behind)
    }

    fn progress_bar(&mut self, info: &StreamInfo) -> Result<ProgressBar, Fault> {
        if self.settings.quiet || !std::io::stderr().is_terminal() {
            return Ok(ProgressBar::hidden());
        }
        if self.args.follow {
            let spinner = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{spinner} {human_pos} entries  {elapsed_precise}  following…",
                )
                .expect("valid template"),
            );
            spinner.enable_steady_tick(Duration::from_millis(250));
            return Ok(spinner);
        }
        let key = self.key;
        let position = self
            .state
            .as_ref()
            .map_or_else(Default::default, TransferState::position);
        let backlog =
            reader::behind(self.redis()?, key, info, position).map_err(Fault::of_redis)?;
        let total = self
            .args
            .max_events
            .map_or(backlog.entries, |cap| cap.min(backlog.entries));
        Ok(ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{bar:40} {human_pos}/{human_len} entries  {elapsed_precise}  eta {eta}",
            )
            .expect("valid template"),
        ))
    }
}

/// Takes the stream's lock, waiting for a run that holds it; a stop ends
/// the wait.
fn wait_for_lock(
    client: &mut postgres::Client,
    key: &str,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut told = false;
    while !streams::try_lock(client, key)? {
        if !told {
            tracing::warn!("another transfer of {key} is running; waiting for it");
            told = true;
        }
        if !crate::retry::sleep_unless_stopped(Duration::from_secs(1), stop) {
            anyhow::bail!("stopped while waiting for another transfer of {key}");
        }
    }
    Ok(())
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
    /// The position's index in the stream, if known.
    index: Option<u64>,
}

/// Entries read but not yet sent.
#[derive(Default)]
struct Pending {
    entries: Vec<RawEntry>,
    bytes: usize,
    since: Option<Instant>,
}

impl Pending {
    fn add(&mut self, entries: Vec<RawEntry>) {
        if self.entries.is_empty() && !entries.is_empty() {
            self.since = Some(Instant::now());
        }
        self.bytes += entries.iter().map(RawEntry::size).sum::<usize>();
        self.entries.extend(entries);
    }

    /// Drops what was read after the first `keep` entries.
    fn truncate(&mut self, keep: usize) {
        self.entries.truncate(keep);
        self.bytes = self.entries.iter().map(RawEntry::size).sum();
        if self.entries.is_empty() {
            self.since = None;
        }
    }

    /// Parses and encodes what is pending and sends it; false when the
    /// receiver is gone.
    fn flush(&mut self, sender: &SyncSender<Message>, progress: Progress) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let entries = std::mem::take(&mut self.entries);
        self.bytes = 0;
        self.since = None;
        let message = match events::prepare(entries.into_iter().map(|e| (e.id, e.fields))) {
            Ok(prepared) => Message::Batch(Box::new(prepared), progress),
            Err(err) => Message::Failed(Fault::Fatal(err)),
        };
        sender.send(message).is_ok()
    }
}

/// Reads and parses batches until the plan is done, a stop is asked for,
/// or the receiver hangs up. A failure is sent on after what was read.
fn read_batches(mut con: redis::Connection, plan: &ReadPlan, sender: &SyncSender<Message>) {
    let mut after = plan.after;
    let mut left = plan.max_events.unwrap_or(u64::MAX);
    let mut pending = Pending::default();
    let mut size = ReadSize::default();
    let mut progress = Progress {
        index: plan.index,
        observed_added: None,
    };
    let fail = |pending: &mut Pending, progress, fault: Fault| {
        if pending.flush(sender, progress) {
            let _ = sender.send(Message::Failed(fault));
        }
    };
    let read_error = |err: anyhow::Error| {
        let transient = stream::is_transient(&err);
        let reason = match err.downcast_ref::<redis::RedisError>() {
            Some(redis) if redis.is_connection_dropped() || redis.is_io_error() => {
                format!("the connection was lost ({})", stream::describe(redis))
            }
            Some(redis) => stream::describe(redis),
            None => format!("{err:#}"),
        };
        let err = anyhow!(
            "cannot read the stream {} from Redis at {}: {reason}; what was read before is stored",
            plan.key,
            plan.redis,
        );
        if transient {
            Fault::Transient(err)
        } else {
            Fault::Fatal(err)
        }
    };
    loop {
        if left == 0 || plan.stop.load(Ordering::Relaxed) {
            pending.flush(sender, progress);
            return;
        }
        let entries_left = (plan.batch_size - pending.entries.len())
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let count = size.count(entries_left, BATCH_BYTES.saturating_sub(pending.bytes));
        let read = if plan.follow {
            reader::read_after(&mut con, &plan.key, after, count, FOLLOW_BLOCK_MS)
        } else {
            reader::range_after(&mut con, &plan.key, after, plan.until, count)
        };
        let entries = match read {
            Ok(entries) => entries,
            Err(err) => return fail(&mut pending, progress, read_error(err.into())),
        };
        size.observe(&entries);
        let read = entries.len();
        if let Some(last) = entries.last() {
            after = last.id;
        }
        let index_before = progress.index;
        progress.index = progress.index.map(|index| index + read as u64);
        left = left.saturating_sub(read as u64);
        let read_from = pending.entries.len();
        pending.add(entries);
        let reached_end = read < count;
        if reached_end {
            // Caught up for now: what Redis says anchors the position's
            // index, and shows a stream replaced under the reader.
            match reader::info(&mut con, &plan.key) {
                Ok(info) => {
                    progress.observed_added = progress.observed_added.max(info.entries_added);
                    let replaced = info.last_generated_id < after
                        || matches!((info.entries_added, progress.index), (Some(added), Some(index)) if added < index);
                    if replaced {
                        // The last read may hold the new stream's entries:
                        // they are left for a session that knows which
                        // stream they belong to.
                        pending.truncate(read_from);
                        progress.index = index_before;
                        let err = anyhow::Error::new(StreamChanged(plan.key.clone()));
                        return fail(&mut pending, progress, Fault::Transient(err));
                    }
                    if info.last_generated_id == after && info.entries_added.is_some() {
                        progress.index = info.entries_added;
                    }
                }
                Err(err) => return fail(&mut pending, progress, read_error(err)),
            }
        }
        let finished = !plan.follow && reached_end;
        let due = pending.entries.len() >= plan.batch_size
            || pending.bytes >= BATCH_BYTES
            || left == 0
            || finished
            || pending
                .since
                .is_some_and(|since| since.elapsed() >= FOLLOW_FLUSH);
        if due && !pending.flush(sender, progress) {
            return;
        }
        if finished {
            return;
        }
    }
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
        let mut line = format!(
            "transferred {} events and {} rejected entries from {} in {:.1} s ({} entries/s); {}",
            thousands(summary.events),
            thousands(summary.rejected),
            summary.stream,
            summary.seconds,
            thousands(summary.events_per_second.round() as u64),
            match summary.behind {
                Some(behind) => format!(
                    "{}{} entries behind",
                    if summary.behind_exact { "" } else { "about " },
                    thousands(behind)
                ),
                None => "entries behind unknown (Redis did not answer)".to_string(),
            }
        );
        if summary.skipped > 0 {
            let _ = write!(
                line,
                "; skipped {} entries that were already stored",
                thousands(summary.skipped)
            );
        }
        if let Some(reset) = &summary.reset {
            let _ = write!(
                line,
                "; the stream was replaced on {}{}",
                reset.at.format("%Y-%m-%d %H:%M:%S UTC"),
                identity::loss(reset.lost_at_least)
            );
        }
        line
    })?;
    Ok(())
}
