//! The read-ahead: reads the stream in batches bounded by entries and by
//! bytes, sending the next read before the last one is used, so Redis
//! works while a batch is parsed and committed. Each read is anchored on
//! the entry read last (its fingerprint checked in the same MULTI), so a
//! stream replaced under the key is noticed before any of its entries is
//! handed on. Batches go to a [`Sink`]; what it does with them (parse,
//! encode, commit) is not this module's business.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::identity::{self, Identity};
use super::reader;
use super::wire::Wire;
use crate::event::{EntryId, Fingerprint, GIANT_ENTRY, Position, RawEntry};

/// Most bytes of entries one batch holds, besides `--batch-size` entries.
/// Each batch costs a COPY's set-up on the partitioned table, a commit and
/// a trim, so batches are large; a prepared batch keeps its entries packed,
/// so it holds far less than it was read from (docs/performance.md has the
/// measurements behind the size).
pub const BATCH_BYTES: usize = 8 << 20;

/// [`BATCH_BYTES`] once a batch or its last read holds a giant entry (see
/// [`GIANT_ENTRY`]): with one batch being read, one queued and one being
/// stored, memory stays bounded with entries of megabytes, and no COPY
/// comes near PostgreSQL's 1 GB message limit.
pub const GIANT_BATCH_BYTES: usize = 4 << 20;

/// Most bytes of entries read and not yet committed before the reader
/// waits: a batch being read (counted as read) and batches handed on
/// (counted as the sink says they hold). Batches of small entries never
/// reach it (one being stored, one queued and one being read); while giant
/// entries are about the bound is [`GIANT_IN_FLIGHT_MAX`] and makes the
/// reader wait for a commit, so few giants at a time are in memory.
const IN_FLIGHT_MAX: usize = 2 * BATCH_BYTES;
const GIANT_IN_FLIGHT_MAX: usize = 2 * GIANT_BATCH_BYTES;

/// How long a follower waits before handing on a partial batch.
const FOLLOW_FLUSH: Duration = Duration::from_secs(1);
/// How long one blocking read waits, so a stop request is noticed.
const FOLLOW_BLOCK_MS: u64 = 250;

/// Where batches go.
pub trait Sink {
    /// Takes one batch and what the reader knew after its last entry,
    /// adding the bytes it holds on to to the plan's `in_flight`; false
    /// when nobody takes batches any more.
    fn batch(&mut self, entries: Vec<RawEntry>, progress: Progress) -> bool;
}

/// Why reading stopped before the plan was done. What was read before
/// was handed to the sink first.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The key holds what may be another stream (the entry read last is
    /// gone, or the last ID or entry count went back): a new session
    /// judges it.
    #[error(
        "the stream {0} changed under the reader (the entry it read last is gone, or its last ID or entry count went back); run transfer again to check it"
    )]
    StreamChanged(String),
    /// Redis failed or refused the read; `transient` when waiting may mend it.
    #[error("{error:#}")]
    Failed {
        error: anyhow::Error,
        transient: bool,
    },
}

/// What the reader knew after a batch's last entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// The stream's `entries-added` when that entry was added, if known.
    pub index: Option<u64>,
    /// The highest `entries-added` Redis reported so far.
    pub observed_added: Option<u64>,
}

/// What to read.
pub struct ReadPlan {
    pub key: String,
    /// `host:port`, for messages.
    pub redis: String,
    pub after: EntryId,
    /// Last entry to read (the stream's end when the run started); none
    /// when following.
    pub until: Option<EntryId>,
    pub batch_size: usize,
    pub max_events: Option<u64>,
    pub follow: bool,
    pub stop: Arc<AtomicBool>,
    /// Set once nobody takes batches any more (the committer failed): an
    /// idle follower waiting for entries, or for room, gives up.
    pub abandoned: Arc<AtomicBool>,
    /// The position's index in the stream, if known.
    pub index: Option<u64>,
    /// The fingerprint of the position's entry, when the session found it
    /// there as stored.
    pub anchor: Option<Fingerprint>,
    /// Bytes of entries handed on and not yet let go of (the sink adds,
    /// its consumer takes away).
    pub in_flight: Arc<AtomicUsize>,
}

impl ReadPlan {
    /// A stop was asked for, or the batches would go nowhere.
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.abandoned.load(Ordering::Relaxed)
    }

    /// The next read after `after`, filling what a batch holding `queued`
    /// entries of `bytes` has room for, with `left` entries to go.
    fn request(
        &self,
        after: EntryId,
        anchor: Option<Fingerprint>,
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

    /// Hands what is pending on; false when nobody takes it.
    fn flush(&mut self, sink: &mut impl Sink, progress: Progress) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let entries = std::mem::take(&mut self.entries);
        self.since = None;
        self.bytes = 0;
        sink.batch(entries, progress)
    }
}

/// Reads until the plan is done, a stop is asked for, or the sink hangs
/// up. On a failure, what was read before is handed on first.
pub fn drain(con: Wire, plan: &ReadPlan, sink: &mut impl Sink) -> Result<(), ReadError> {
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
        },
        reader: reader::BoundedReader::default(),
        anchor: plan.anchor,
        progress: Progress {
            index: plan.index,
            observed_added: None,
        },
        gap_warned: false,
    };
    let read = reading.run(sink);
    if read.is_err() {
        let progress = reading.progress;
        reading.pending.flush(sink, progress);
    }
    read
}

/// The reader's state.
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
    anchor: Option<Fingerprint>,
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
    fn run(&mut self, sink: &mut impl Sink) -> Result<(), ReadError> {
        // The session judged the stream at the position and found its entry
        // as stored (the plan's anchor); when that entry is gone (a trimmed
        // stream read on) the first read has no anchor, and every later one
        // starts at an entry it read.
        let mut caught_up = false;
        loop {
            if self.left == 0 || self.plan.stopped() {
                self.pending.flush(sink, self.progress);
                return Ok(());
            }
            if !self.reader.has_in_flight() && !self.wait_for_room() {
                self.pending.flush(sink, self.progress);
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
                    if self.pending.since.is_some() && !self.pending.flush(sink, self.progress) {
                        return Ok(());
                    }
                    continue;
                }
            }
            caught_up = match self.step(sink)? {
                Step::More => false,
                Step::CaughtUp => true,
                Step::Done => return Ok(()),
            };
        }
    }

    /// One read: checked, added to the batch, the next read sent ahead,
    /// the batch sent when due.
    fn step(&mut self, sink: &mut impl Sink) -> Result<Step, ReadError> {
        let key = &self.plan.key;
        let (request, read) = if let Some(request) = self.reader.in_flight().cloned() {
            (request, self.reader.receive(&mut self.con))
        } else {
            let request = self.plan.request(
                self.after,
                self.anchor,
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
        if !read.drained && room && self.left > 0 && !self.plan.stopped() {
            // Redis reads on while this read is parsed (not while giant
            // entries are about: one at a time is enough).
            let queued = if due {
                (0, 0)
            } else {
                (self.pending.entries.len(), self.pending.bytes)
            };
            let next = self.plan.request(
                self.after,
                self.anchor,
                queued,
                self.pending.budget(),
                self.left,
            );
            self.reader
                .send(&mut self.con, key, next)
                .map_err(|err| self.read_error(&err.into()))?;
        }
        if due && !self.pending.flush(sink, self.progress) || finished {
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
            if self.plan.stopped() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// The entry the read started from is gone: the same stream trimmed
    /// past it reads on; another stream waits for a new session, which
    /// knows which stream its entries belong to.
    fn judge_unanchored(&mut self) -> Result<(), ReadError> {
        let info = super::info::info(&mut self.con, &self.plan.key)
            .map_err(|err| self.read_error(&err))?;
        let position = Position {
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
                        super::verdict::gap_warning(&self.plan.key, self.after, lost)
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
    ) -> Result<(), ReadError> {
        let info = super::info::info(&mut self.con, &self.plan.key)
            .map_err(|err| self.read_error(&err))?;
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

    fn changed(&self) -> ReadError {
        ReadError::StreamChanged(self.plan.key.clone())
    }

    fn read_error(&self, err: &anyhow::Error) -> ReadError {
        let transient = crate::error::is_transient(err);
        if let Some(redis) = err
            .downcast_ref::<redis::RedisError>()
            .filter(|redis| super::cluster::redirects(redis))
        {
            // Kept as the cause: the run asks the cluster where the key is.
            let error = anyhow::Error::new(redis.clone()).context(format!(
                "cannot read the stream {} from Redis at {}: it answered {} {} (the key's slot is \
                 served elsewhere now); what was read before is stored",
                self.plan.key,
                self.plan.redis,
                redis.code().unwrap_or_default(),
                super::describe(redis)
            ));
            return ReadError::Failed {
                error,
                transient: true,
            };
        }
        let reason = match err.downcast_ref::<redis::RedisError>() {
            Some(redis) if let Some(refused) = reader::refused_reply_in(redis) => {
                refused.to_string()
            }
            Some(redis) if redis.is_connection_dropped() || redis.is_io_error() => {
                format!("the connection was lost ({})", super::describe(redis))
            }
            Some(redis) => super::describe(redis),
            None => format!("{err:#}"),
        };
        let message = format!(
            "cannot read the stream {} from Redis at {}: {reason}; what was read before is stored",
            self.plan.key, self.plan.redis,
        );
        // Said once, and still known as Redis's: a run behind sentinels
        // asks them again.
        let from_redis = err
            .chain()
            .any(|cause| cause.is::<redis::RedisError>() || cause.is::<std::io::Error>());
        let error = if from_redis {
            anyhow::Error::new(crate::error::RedisFailure(message))
        } else {
            anyhow!(message)
        };
        ReadError::Failed { error, transient }
    }
}
