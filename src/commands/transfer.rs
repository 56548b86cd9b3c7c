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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use chrono::{DateTime, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Settings;
use crate::db::events::{self, BATCH_BYTES, Claim, GIANT_BATCH_BYTES, Outcome, Prepared};
use crate::db::streams::{self, PositionMoved, TransferState};
use crate::db::{self, partitions};
use crate::error::{Exit, UsageError};
use crate::output::{SummaryFormat, counted, thousands};
use crate::retry::Backoff;
use crate::service;
use crate::stream::cluster;
use crate::stream::identity::{self, Identity};
use crate::stream::reader::{self, GIANT_ENTRY, RawEntry, StreamInfo};
use crate::stream::wire::Wire;
use crate::stream::{self, EntryId};
use crate::timearg::parse_span;

mod several;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Entries per transaction (and at most per read from Redis)
    #[arg(long, default_value_t = 10_000, value_name = "N",
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

    /// With several streams (--stream more than once, or a pattern): how many to transfer at once; following, each stream has its own
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,

    /// Summary format
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

const EXAMPLES: &str = "Examples:
  genalytics transfer
  genalytics transfer --follow
  genalytics transfer --keep 6h --format json
  genalytics transfer --new-stream
  genalytics transfer --stream 'genonaut:generation_events:stream:*' --parallel 2";

/// Most bytes of entries read and not yet committed before the reader
/// waits: a batch being read (counted as read) and prepared batches
/// (counted as held, see [`Prepared::heap_bytes`]). Batches of small
/// entries never reach it (one being stored, one queued and one being
/// read); while giant entries are about the bound is [`GIANT_IN_FLIGHT_MAX`]
/// and makes the reader wait for a commit, so few giants at a time are in
/// memory.
const IN_FLIGHT_MAX: usize = 2 * BATCH_BYTES;
const GIANT_IN_FLIGHT_MAX: usize = 2 * GIANT_BATCH_BYTES;

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

/// The reader found the key holding what may be another stream (the
/// entry it read last is gone, or the last ID or entry count went back):
/// a new session judges it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the stream {0} changed under the reader (the entry it read last is gone, or its last ID or entry count went back); run transfer again to check it"
)]
struct StreamChanged(String);

/// Another run recorded a new stream under the key while this one was cut
/// off from PostgreSQL: a new session judges the stream again.
#[derive(Debug, thiserror::Error)]
#[error("another transfer recorded a new stream under {0} while this one ran; run transfer again")]
struct StateChanged(String);

/// Whether a new session mends the fault, in a run that does not follow.
/// Whether a system call was interrupted by a signal (`EINTR`).
fn interrupted(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
            || cause
                .downcast_ref::<redis::RedisError>()
                .is_some_and(|redis| {
                    redis.is_io_error() && redis.to_string().contains("os error 4")
                })
    })
}

fn starts_over(err: &anyhow::Error) -> bool {
    err.is::<StreamChanged>() || err.is::<StateChanged>()
}

/// What the reader thread sends.
enum Message {
    /// A batch, with the bytes it holds.
    Batch(Box<Prepared>, Progress, usize),
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
    redis: Option<Wire>,
    state: Option<TransferState>,
    summary: Summary,
    progress: ProgressBar,
    trim_warned: bool,
    ready: bool,
    /// `--new-stream`, until it has been used once.
    new_stream: bool,
    /// Bytes of prepared batches not yet committed (see [`IN_FLIGHT_MAX`]).
    in_flight: Arc<AtomicUsize>,
    /// Days whose partition was seen to.
    partitions: partitions::Known,
    /// A follower's wait for a server that went away, across sessions.
    outage: Backoff,
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let stop = crate::interrupt::install()?;
    if !settings.several_streams() {
        transfer_stream(args, settings, &settings.stream_key, &stop)?;
        return Ok(Exit::Success);
    }
    several::run(args, settings, &stop)
}

/// Transfers one stream until it is drained (or, following, until a stop)
/// and prints its summary.
fn transfer_stream(
    args: &Args,
    settings: &Settings,
    key: &str,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut run = Run {
        args,
        settings,
        key,
        stop: Arc::clone(stop),
        pg: None,
        redis: None,
        state: None,
        summary: Summary {
            stream: key.to_string(),
            ..Summary::default()
        },
        progress: ProgressBar::hidden(),
        trim_warned: false,
        ready: false,
        new_stream: args.new_stream,
        in_flight: Arc::new(AtomicUsize::new(0)),
        partitions: partitions::Known::new(settings.raw_retention_days),
        outage: Backoff::new("the follower waits for a server", stop),
    };
    if !args.follow && !run.take_turn()? {
        return Ok(());
    }
    let (mut restarts, mut redirects) = (0, 0);
    let outcome = loop {
        let before = run.summary.entries();
        match run.session() {
            Ok(()) => break Ok(()),
            Err(Fault::Transient(err))
                if settings.redis_cluster.is_none() && cluster::is_redirect(&err) =>
            {
                break Err(err.context(
                    "Redis answered with a redirection: it is a cluster node — pass --redis-cluster \
                     (GENALYTICS_REDIS_CLUSTER=1)",
                ));
            }
            Err(Fault::Transient(err)) if args.follow => {
                // A connection a fault left behind may be dead: the next
                // session makes a new one.
                run.redis = None;
                if !run.outage.wait(&err) {
                    break Ok(());
                }
                run.summary.reconnects += 1;
            }
            Err(Fault::Transient(err)) if starts_over(&err) && restarts < 3 => {
                tracing::info!("{err:#}; judging the stream again");
                run.redis = None;
                restarts += 1;
            }
            // The key's slot is moving to another node (a reshard, a
            // failover): the next session asks the cluster where it is,
            // after a pause that lets a migration finish.
            Err(Fault::Transient(err)) if cluster::is_redirect(&err) && redirects < 10 => {
                // Counted since the last session that got work done.
                if run.summary.entries() > before {
                    redirects = 0;
                }
                redirects += 1;
                tracing::warn!("{err}; asking the cluster where {key} is now");
                run.redis = None;
                std::thread::sleep(Duration::from_millis(100 * redirects));
            }
            Err(Fault::Transient(err) | Fault::Fatal(err)) => break Err(err),
        }
    };
    run.progress.finish_and_clear();
    service::stopping();
    outcome?;
    run.finish(started)
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

    fn redis(&mut self) -> Result<&mut Wire, Fault> {
        if self.redis.is_none() {
            self.redis =
                Some(stream::connect_reader(self.settings, self.key).map_err(Fault::of_redis)?);
        }
        Ok(self.redis.as_mut().expect("connected above"))
    }

    /// Reads and stores until the stream is drained (or, following, until
    /// a stop); a fault ends it with what was read committed.
    fn session(&mut self) -> Result<(), Fault> {
        let key = self.key;
        let state = streams::open(self.pg()?, key).map_err(Fault::of_pg)?;
        let mut inspected = self.inspect(&state)?;
        if inspected.verdict == Identity::Missing {
            if !self.args.follow {
                // Exit 0 all the same: a producer may simply not have started.
                tracing::warn!(
                    "{}; nothing to transfer",
                    super::status::missing_stream(key)
                );
            } else if state.position == EntryId::ZERO {
                // Nothing was ever read from it: the first entries are read
                // as they come.
                tracing::warn!(
                    "{}; waiting for entries",
                    super::status::missing_stream(key)
                );
            } else {
                // The key is gone (Redis restarted empty?). Whatever appears
                // under it is judged before a single entry of it is read.
                self.wait_for_stream()?;
                inspected = self.inspect(&state)?;
            }
        }
        let identity::Inspected {
            info,
            verdict,
            anchor,
        } = inspected;
        let state = self.act_on(state, &info, &verdict)?;
        // Both servers answer: what an outage lasted ends here, though
        // "recovered" waits until storing resumes.
        self.outage.answered();
        let position = state.position;
        // The position's entry as the session found it, for the reader's
        // first read (the stream is the one the position belongs to).
        let anchor = anchor.filter(|_| verdict == Identity::Same);
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
            redis: match self.settings.redis_cluster {
                Some(_) => format!("the cluster of {}", self.settings.redis.target()),
                None => self.settings.redis.target(),
            },
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
            anchor,
            in_flight: Arc::clone(&self.in_flight),
        };
        if !plan.follow && plan.until.is_none_or(|until| until <= position) {
            return Ok(());
        }
        let reader_con =
            stream::connect_reader(self.settings, self.key).map_err(Fault::of_redis)?;
        self.in_flight.store(0, Ordering::Relaxed);
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
    fn inspect(&mut self, state: &TransferState) -> Result<identity::Inspected, Fault> {
        self.pg()?;
        self.redis()?;
        let (Some(pg), Some(con)) = (self.pg.as_mut(), self.redis.as_mut()) else {
            unreachable!("both connected above");
        };
        let mut store = streams::Stored {
            client: pg,
            stream_key: self.key,
            stream_ref: state.stream_ref,
        };
        identity::inspect(con, self.key, state.position(), &mut store).map_err(Fault::of)
    }

    /// Waits for the stream key to exist again (following), feeding the
    /// watchdog; a stop ends the session.
    fn wait_for_stream(&mut self) -> Result<StreamInfo, Fault> {
        let key = self.key;
        tracing::warn!("{}; waiting for it", super::status::missing_stream(key));
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
    fn act_on(
        &mut self,
        state: TransferState,
        info: &StreamInfo,
        verdict: &Identity,
    ) -> Result<TransferState, Fault> {
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
            (Identity::ResetBelow { .. }, false) => {
                return Err(Fault::Fatal(anyhow!(
                    "{}; nothing was trimmed",
                    identity::below_position(key, position, verdict)
                )));
            }
            (Identity::ResetAbove, false) => false,
            (Identity::Gap, false) => {
                let lost = identity::gap_lost(info, state.position_index);
                tracing::warn!("{}; reading on", identity::gap_warning(key, position, lost));
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
                Message::Batch(mut prepared, progress, bytes) => {
                    let committed = self.commit(&mut prepared, progress);
                    drop(prepared);
                    self.in_flight.fetch_sub(bytes, Ordering::Relaxed);
                    committed?;
                }
                Message::Failed(fault) => return Err(fault),
            }
        }
    }

    /// Commits one batch; following, a lost connection to PostgreSQL is
    /// waited for and the batch committed after it. Should the position
    /// have moved meanwhile (another run stored some of these entries while
    /// this one was cut off), the state is read again and only what is
    /// still unstored is committed.
    fn commit(&mut self, prepared: &mut Prepared, progress: Progress) -> Result<(), Fault> {
        let mut backoff = Backoff::new("cannot store entries in PostgreSQL", &self.stop);
        let mut moves = 0;
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
            let (settings, key) = (self.settings, self.key);
            let mut refetch = |id| refetch(settings, key, id);
            // Taken out for the call: it is used beside the connection.
            let mut known = std::mem::replace(
                &mut self.partitions,
                partitions::Known::new(self.settings.raw_retention_days),
            );
            let follow = self.args.follow;
            let committed = match self.pg() {
                Ok(pg) => known
                    .ensure(pg, partitions::days_of(prepared.hours()))
                    .context("cannot create the partitions for these events")
                    .and_then(|_| events::commit(pg, &claim, prepared, &mut refetch))
                    .with_context(|| {
                    format!(
                        "cannot store entries after {} in PostgreSQL at {database}; that batch was not \
                         committed and {}",
                        state.position,
                        if follow {
                            "is committed once PostgreSQL answers again"
                        } else {
                            "the next run resumes there"
                        }
                    )
                }),
                Err(Fault::Transient(err) | Fault::Fatal(err)) => Err(err),
            };
            self.partitions = known;
            match committed {
                Ok(outcome) => {
                    // Storing resumed: said once, with the outage's length.
                    backoff.recovered();
                    self.outage.recovered();
                    self.committed(prepared, progress, outcome);
                    return Ok(());
                }
                Err(err) if err.is::<PositionMoved>() && moves < 3 => {
                    moves += 1;
                    self.reread_state(&state)?;
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
                    // Another run may have stored some of these entries
                    // meanwhile: the claim finds out, and the state is
                    // read again.
                }
                Err(err) => return Err(Fault::of_pg(err)),
            }
        }
    }

    /// Reads the stored state again after the position may have moved:
    /// the session goes on if the key still holds the stream it read.
    fn reread_state(&mut self, old: &TransferState) -> Result<(), Fault> {
        let key = self.key;
        match streams::state(self.pg()?, key).map_err(Fault::of_pg)? {
            Some(fresh) if fresh.stream_ref == old.stream_ref => {
                self.state = Some(fresh);
                Ok(())
            }
            _ => Err(Fault::Transient(anyhow::Error::new(StateChanged(
                key.to_string(),
            )))),
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
        // A signal (SIGTERM asking this run to stop after the commit)
        // interrupts a socket read with a timeout even under SA_RESTART:
        // once more then, on a new connection (the old one may be mid-reply).
        let mut trimmed = Ok(None);
        for attempt in 0..2 {
            trimmed = match self.redis() {
                Ok(con) => reader::trim_stored(
                    con,
                    key,
                    position,
                    &prepared.last_print,
                    bound,
                    prepared.last_cut,
                )
                .map_err(anyhow::Error::from),
                Err(Fault::Transient(err) | Fault::Fatal(err)) => Err(err),
            };
            if attempt == 0 && trimmed.as_ref().is_err_and(interrupted) {
                self.redis = None;
                continue;
            }
            break;
        }
        match trimmed {
            Ok(Some(trimmed)) => self.summary.trimmed += trimmed,
            Ok(None) if !self.trim_warned => {
                self.trim_warned = true;
                tracing::warn!(
                    "not trimming {key}: its entry {position} is gone (the producer's cap trimmed it, or the key \
                     holds another stream now); the next commit or run checks"
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
        // Streams side by side would draw over each other's bars.
        if self.settings.quiet
            || self.settings.several_streams()
            || !std::io::stderr().is_terminal()
        {
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

/// An entry's fields read again from Redis (on a connection of its own:
/// a rare need, for a large row PostgreSQL refused); none if it is gone or
/// Redis cannot say.
fn refetch(settings: &Settings, key: &str, id: EntryId) -> Option<crate::event::RawFields> {
    let mut con = stream::connect_reader(settings, key).ok()?;
    let entry = reader::entry_at(&mut con, key, id).ok()??;
    Some(entry.fields)
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
    /// The fingerprint of the position's entry, when the session found it
    /// there as stored.
    anchor: Option<String>,
    /// Bytes of entries sent to the committer and not yet committed.
    in_flight: Arc<AtomicUsize>,
}

impl ReadPlan {
    /// The next read after `after`, filling what a batch holding `queued`
    /// entries of `bytes` has room for, with `left` entries to go.
    fn request(
        &self,
        after: EntryId,
        anchor: Option<String>,
        (queued, bytes): (usize, usize),
        budget: usize,
        left: u64,
    ) -> reader::ReadRequest {
        reader::ReadRequest {
            after,
            until: self.until,
            count: (self.batch_size - queued).min(usize::try_from(left).unwrap_or(usize::MAX)),
            budget: budget.saturating_sub(bytes),
            giant_budget: GIANT_BATCH_BYTES.saturating_sub(bytes),
            anchor,
        }
    }
}

/// Entries read but not yet sent.
struct Pending {
    entries: Vec<RawEntry>,
    bytes: usize,
    /// The batch, or the last read, holds a giant entry: batches are kept
    /// smaller.
    giants: bool,
    since: Option<Instant>,
    /// Bytes sent to the committer and not yet committed (shared with it).
    in_flight: Arc<AtomicUsize>,
}

impl Pending {
    /// Bytes of entries a batch holds at most, as things stand.
    fn budget(&self) -> usize {
        if self.giants {
            GIANT_BATCH_BYTES
        } else {
            BATCH_BYTES
        }
    }

    /// Bytes of entries read and not yet committed before the reader waits.
    fn in_flight_max(&self) -> usize {
        if self.giants {
            GIANT_IN_FLIGHT_MAX
        } else {
            IN_FLIGHT_MAX
        }
    }

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
        self.since = None;
        self.bytes = 0;
        let message = match events::prepare(entries) {
            Ok(prepared) => {
                let held = prepared.heap_bytes();
                self.in_flight.fetch_add(held, Ordering::Relaxed);
                Message::Batch(Box::new(prepared), progress, held)
            }
            Err(err) => Message::Failed(Fault::Fatal(err)),
        };
        sender.send(message).is_ok()
    }
}

/// Reads and parses batches until the plan is done, a stop is asked for,
/// or the receiver hangs up. A failure is sent on after what was read.
fn read_batches(con: Wire, plan: &ReadPlan, sender: &SyncSender<Message>) {
    let mut reading = Reading {
        con,
        plan,
        after: plan.after,
        left: plan.max_events.unwrap_or(u64::MAX),
        pending: Pending {
            entries: Vec::new(),
            bytes: 0,
            giants: false,
            since: None,
            in_flight: Arc::clone(&plan.in_flight),
        },
        reader: reader::BoundedReader::default(),
        anchor: plan.anchor.clone(),
        progress: Progress {
            index: plan.index,
            observed_added: None,
        },
        gap_warned: false,
    };
    if let Err(fault) = reading.run(sender) {
        let progress = reading.progress;
        if reading.pending.flush(sender, progress) {
            let _ = sender.send(Message::Failed(fault));
        }
    }
}

/// The reader thread's state.
///
/// Every read looks at its starting entry in the same atomic step: while
/// that entry is there, what follows it is its stream's. Should it be gone —
/// the producer's cap trimmed past it, or the key holds another stream —
/// the stream is judged again before the read is used.
struct Reading<'a> {
    con: Wire,
    plan: &'a ReadPlan,
    /// The last entry read.
    after: EntryId,
    /// The fingerprint of the entry `after`, as read: the next read checks
    /// it is still there (none when the entry is gone, e.g. trimmed).
    anchor: Option<String>,
    left: u64,
    pending: Pending,
    reader: reader::BoundedReader,
    progress: Progress,
    gap_warned: bool,
}

/// What came of one read.
enum Step {
    /// Read on at once.
    More,
    /// Nothing more in the stream for now.
    CaughtUp,
    /// The plan is done or the receiver is gone.
    Done,
}

impl Reading<'_> {
    /// Reads until done; a fault is returned with what was read still
    /// pending, for the caller to send on first.
    fn run(&mut self, sender: &SyncSender<Message>) -> Result<(), Fault> {
        // The session judged the stream at the position and found its entry
        // as stored (the plan's anchor); when that entry is gone (a trimmed
        // stream read on) the first read has no anchor, and every later one
        // starts at an entry it read.
        let mut caught_up = false;
        loop {
            if self.left == 0 || self.plan.stop.load(Ordering::Relaxed) {
                self.pending.flush(sender, self.progress);
                return Ok(());
            }
            if !self.reader.has_in_flight() && !self.wait_for_room() {
                self.pending.flush(sender, self.progress);
                return Ok(());
            }
            if self.plan.follow && caught_up {
                // Wait for the next entry, then read it with its anchor.
                let woken = reader::read_after(
                    &mut self.con,
                    &self.plan.key,
                    self.after,
                    1,
                    FOLLOW_BLOCK_MS,
                )
                .map_err(|err| self.read_error(&err.into()))?;
                if woken.is_empty() {
                    // Nothing more for now: what is read is committed at
                    // once, not after FOLLOW_FLUSH.
                    if self.pending.since.is_some() && !self.pending.flush(sender, self.progress) {
                        return Ok(());
                    }
                    continue;
                }
            }
            caught_up = match self.step(sender)? {
                Step::More => false,
                Step::CaughtUp => true,
                Step::Done => return Ok(()),
            };
        }
    }

    /// One read: checked, added to the batch, the next read sent ahead,
    /// the batch sent when due.
    fn step(&mut self, sender: &SyncSender<Message>) -> Result<Step, Fault> {
        let key = &self.plan.key;
        let (request, read) = if let Some(request) = self.reader.in_flight().cloned() {
            (request, self.reader.receive(&mut self.con))
        } else {
            let request = self.plan.request(
                self.after,
                self.anchor.clone(),
                (self.pending.entries.len(), self.pending.bytes),
                self.pending.budget(),
                self.left,
            );
            let read = self.reader.read(&mut self.con, key, &request);
            (request, read)
        };
        let read = read.map_err(|err| self.read_error(&err.into()))?;
        if !read.anchor_held {
            self.judge_unanchored()?;
        }
        let verified = request.anchor.is_some() && read.anchor_held;
        let largest = read
            .entries
            .iter()
            .map(RawEntry::size_in_redis)
            .max()
            .unwrap_or(0);
        // A fresh batch forgets the giants of the one before it, once a
        // read holds none.
        self.pending.giants =
            largest >= GIANT_ENTRY || (self.pending.giants && !self.pending.entries.is_empty());
        let count = read.entries.len() as u64;
        if let Some(last) = read.entries.last() {
            self.after = last.id;
            self.anchor = Some(last.fingerprint());
        }
        let index_before = self.progress.index;
        self.progress.index = self.progress.index.map(|index| index + count);
        self.left = self.left.saturating_sub(count);
        let read_from = self.pending.entries.len();
        self.pending.add(read.entries);
        if read.drained {
            self.check_caught_up(verified, read_from, index_before)?;
        }
        let finished = !self.plan.follow && read.drained;
        let due = self.pending.entries.len() >= self.plan.batch_size
            || self.pending.bytes >= self.pending.budget()
            || self.left == 0
            || finished
            || self
                .pending
                .since
                .is_some_and(|since| since.elapsed() >= FOLLOW_FLUSH);
        let room = largest < GIANT_ENTRY
            && self.plan.in_flight.load(Ordering::Relaxed) + self.pending.bytes
                < self.pending.in_flight_max();
        if !read.drained && room && self.left > 0 && !self.plan.stop.load(Ordering::Relaxed) {
            // Redis reads on while this read is parsed (not while giant
            // entries are about: one at a time is enough).
            let queued = if due {
                (0, 0)
            } else {
                (self.pending.entries.len(), self.pending.bytes)
            };
            let next = self.plan.request(
                self.after,
                self.anchor.clone(),
                queued,
                self.pending.budget(),
                self.left,
            );
            self.reader
                .send(&mut self.con, key, next)
                .map_err(|err| self.read_error(&err.into()))?;
        }
        if due && !self.pending.flush(sender, self.progress) || finished {
            return Ok(Step::Done);
        }
        Ok(if read.drained {
            Step::CaughtUp
        } else {
            Step::More
        })
    }

    /// Waits while the committer holds [`IN_FLIGHT_MAX`] bytes of entries
    /// or more ([`GIANT_IN_FLIGHT_MAX`] while giants are about); false if a
    /// stop came meanwhile.
    fn wait_for_room(&self) -> bool {
        while self.plan.in_flight.load(Ordering::Relaxed) + self.pending.bytes
            >= self.pending.in_flight_max()
            && self.plan.in_flight.load(Ordering::Relaxed) > 0
        {
            if self.plan.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// The entry the read started from is gone: the same stream trimmed
    /// past it reads on; another stream waits for a new session, which
    /// knows which stream its entries belong to.
    fn judge_unanchored(&mut self) -> Result<(), Fault> {
        let info =
            reader::info(&mut self.con, &self.plan.key).map_err(|err| self.read_error(&err))?;
        let position = identity::Position {
            id: self.after,
            index: self.progress.index,
        };
        match identity::judge(position, &info, identity::Below::default()) {
            Identity::Same => Ok(()),
            Identity::Gap => {
                if !self.gap_warned {
                    self.gap_warned = true;
                    let lost = identity::gap_lost(&info, self.progress.index);
                    tracing::warn!(
                        "{} (while transfer was reading it)",
                        identity::gap_warning(&self.plan.key, self.after, lost)
                    );
                }
                Ok(())
            }
            _ => Err(self.changed()),
        }
    }

    /// Caught up for now: what Redis says anchors the position's index,
    /// and shows a stream whose IDs or count went back since the read.
    fn check_caught_up(
        &mut self,
        verified: bool,
        read_from: usize,
        index_before: Option<u64>,
    ) -> Result<(), Fault> {
        let info =
            reader::info(&mut self.con, &self.plan.key).map_err(|err| self.read_error(&err))?;
        let progress = &mut self.progress;
        progress.observed_added = progress.observed_added.max(info.entries_added);
        let replaced = info.last_generated_id < self.after
            || matches!((info.entries_added, progress.index), (Some(added), Some(index)) if added < index);
        if replaced {
            // A read whose anchor held is the old stream's; any other is
            // left for a session that knows which stream it belongs to.
            if !verified {
                self.pending.truncate(read_from);
                progress.index = index_before;
            }
            return Err(self.changed());
        }
        if info.last_generated_id == self.after && info.entries_added.is_some() {
            progress.index = info.entries_added;
        }
        Ok(())
    }

    fn changed(&self) -> Fault {
        Fault::Transient(anyhow::Error::new(StreamChanged(self.plan.key.clone())))
    }

    fn read_error(&self, err: &anyhow::Error) -> Fault {
        let transient = stream::is_transient(err);
        if let Some(redis) = err
            .downcast_ref::<redis::RedisError>()
            .filter(|redis| matches!(redis.code(), Some("MOVED" | "ASK")))
        {
            // Kept as the cause: the run asks the cluster where the key is.
            return Fault::Transient(anyhow::Error::new(redis.clone()).context(format!(
                "cannot read the stream {} from Redis at {}: it answered {} {} (the key's slot is \
                 served elsewhere now); what was read before is stored",
                self.plan.key,
                self.plan.redis,
                redis.code().unwrap_or_default(),
                stream::describe(redis)
            )));
        }
        let reason = match err.downcast_ref::<redis::RedisError>() {
            Some(redis) if reader::is_refused_reply(redis) => stream::describe(redis),
            Some(redis) if redis.is_connection_dropped() || redis.is_io_error() => {
                format!("the connection was lost ({})", stream::describe(redis))
            }
            Some(redis) => stream::describe(redis),
            None => format!("{err:#}"),
        };
        let err = anyhow!(
            "cannot read the stream {} from Redis at {}: {reason}; what was read before is stored",
            self.plan.key,
            self.plan.redis,
        );
        if transient {
            Fault::Transient(err)
        } else {
            Fault::Fatal(err)
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
            "transferred {} and {} from {} in {:.1} s ({} entries/s); {}",
            counted(summary.events, "event"),
            counted(summary.rejected, "rejected entry"),
            crate::text::escape_controls(&summary.stream),
            summary.seconds,
            thousands(summary.events_per_second.round() as u64),
            match summary.behind {
                Some(behind) => format!(
                    "{}{} behind",
                    if summary.behind_exact { "" } else { "about " },
                    counted(behind, "entry")
                ),
                None => "entries behind unknown (Redis did not answer)".to_string(),
            }
        );
        if summary.skipped > 0 {
            let _ = write!(
                line,
                "; skipped {} that {} already stored",
                counted(summary.skipped, "entry"),
                if summary.skipped == 1 { "was" } else { "were" }
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
