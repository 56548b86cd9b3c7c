//! Committing what the reader hands on, batch by batch, and trimming the
//! stream after each commit, never past what is stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;

use super::Run;
use super::fault::{Fault, PositionWentBack, StateChanged};
use crate::config::Settings;
use crate::db::events::{self, Claim, Outcome, Prepared};
use crate::db::streams::{self, PositionMoved, TransferState};
use crate::db::{partitions, replication};
use crate::event::EntryId;
use crate::output::thousands;
use crate::retry::Backoff;
use crate::service;
use crate::stream::drain::{Progress, Sink};
use crate::stream::{self, reader, trim};

/// Longest a commit waits for the standbys to replay it before leaving
/// its trim to a later one.
const REPLAY_WAIT: Duration = Duration::from_secs(2);

/// What the reader thread sends the committer.
pub(super) enum Message {
    /// A batch, with the bytes it holds.
    Batch(Box<Prepared>, Progress, usize),
    /// Reading stopped; whatever was read before was sent first.
    Failed(Fault),
}

/// The reader thread's end of the channel: parses and encodes each batch
/// there (the committer's thread only commits) and counts what it holds.
pub(super) struct Committer {
    pub(super) sender: SyncSender<Message>,
    pub(super) in_flight: Arc<AtomicUsize>,
}

impl Sink for Committer {
    fn batch(&mut self, entries: Vec<crate::event::RawEntry>, progress: Progress) -> bool {
        let message = match events::prepare(entries) {
            Ok(prepared) => {
                let held = prepared.heap_bytes();
                self.in_flight.fetch_add(held, Ordering::Relaxed);
                Message::Batch(Box::new(prepared), progress, held)
            }
            Err(err) => Message::Failed(Fault::Fatal(err)),
        };
        self.sender.send(message).is_ok()
    }
}

impl Run<'_> {
    /// Commits batches in order until the reader is done or something
    /// fails; the reader sends what it read before it reports a failure, so
    /// nothing read is dropped.
    pub(super) fn store(&mut self, batches: &Receiver<Message>) -> Result<(), Fault> {
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
    pub(super) fn commit(
        &mut self,
        prepared: &mut Prepared,
        progress: Progress,
    ) -> Result<(), Fault> {
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
            let follow = self.options.follow;
            let committed = match self.pg() {
                Ok(pg) => known
                    .ensure(pg, partitions::days_of(prepared.times()))
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
                Err(err) if self.options.follow && crate::error::is_transient(&err) => {
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
                Err(err) => return Err(Fault::of(err)),
            }
        }
    }

    /// Reads the stored state again after the position may have moved:
    /// the session goes on if the key still holds the stream it read and
    /// the position moved on; one that went back (commits lost in a
    /// failover) starts a new session from it, or the entries between
    /// would be skipped.
    pub(super) fn reread_state(&mut self, old: &TransferState) -> Result<(), Fault> {
        let key = self.key;
        match streams::state(self.pg()?, key).map_err(Fault::of)? {
            Some(fresh) if fresh.stream_ref == old.stream_ref && fresh.position < old.position => {
                Err(Fault::Transient(anyhow::Error::new(PositionWentBack {
                    key: key.to_string(),
                    from: old.position,
                    to: fresh.position,
                })))
            }
            Some(fresh) if fresh.stream_ref == old.stream_ref => {
                self.state = Some(fresh);
                Ok(())
            }
            _ => Err(Fault::Transient(anyhow::Error::new(StateChanged(
                key.to_string(),
            )))),
        }
    }

    /// Whether every standby has replayed what is committed so far, waiting
    /// up to [`REPLAY_WAIT`] for it: if not, the trim waits for a later
    /// commit (or run), which trims all it would have. A role that may not
    /// see the standbys' replay trims as before, and says so once.
    fn replayed_by_standbys(&mut self) -> bool {
        let key = self.key;
        // Once a standby was found behind, later commits only look: a
        // standby that stays behind must not slow every commit down.
        let wait = if self.replay_said {
            Duration::ZERO
        } else {
            REPLAY_WAIT
        };
        let Ok(pg) = self.pg() else {
            return false;
        };
        let waited = Instant::now();
        let mut lsn = None;
        let behind = loop {
            match replication::standbys_behind(pg, lsn.as_deref()) {
                Ok((_, Some(0))) => return true,
                Ok((at, Some(_))) if waited.elapsed() < wait => {
                    lsn = Some(at);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok((_, behind)) => break behind,
                Err(err) => {
                    tracing::debug!("not trimming {key} now: {err:#}");
                    return false;
                }
            }
        };
        let said = std::mem::replace(&mut self.replay_said, true);
        match behind {
            None => {
                if !said {
                    tracing::warn!(
                        "cannot see the standbys' replay (grant pg_monitor to this role): trimming {key} \
                         without waiting for them"
                    );
                }
                true
            }
            Some(behind) => {
                if !said {
                    tracing::info!(
                        "not trimming {key} yet: {behind} standby(s) have not replayed the commit; a later \
                         commit or run trims"
                    );
                }
                false
            }
        }
    }

    /// Books a committed batch and trims what is now stored.
    pub(super) fn committed(&mut self, prepared: &Prepared, progress: Progress, outcome: Outcome) {
        let state = self.state.as_mut().expect("a session has a state");
        state.position = prepared.last_id;
        state.position_index = progress.index;
        self.summary.events += outcome.stored;
        self.summary.rejected += outcome.rejected;
        self.summary.skipped += outcome.skipped;
        self.summary.last_id = Some(prepared.last_id);
        self.progress.inc(prepared.len() as u64);
        let position = prepared.last_id;
        let horizon = Utc::now() - self.options.keep;
        let bound = position.min(EntryId::at_ms(
            horizon.timestamp_millis().max(0).unsigned_abs(),
        ));
        let key = self.key;
        // A signal (SIGTERM asking this run to stop after the commit)
        // interrupts a socket read with a timeout even under SA_RESTART:
        // once more then, on a new connection (the old one may be mid-reply).
        // Every batch sent ends with an entry, so it has its print.
        let Some(print) = prepared.last_print else {
            return;
        };
        if !self.replayed_by_standbys() {
            return;
        }
        let mut trimmed = Ok(None);
        for attempt in 0..2 {
            trimmed = match self.redis() {
                Ok(con) => trim::trim_stored(con, key, position, print, bound, prepared.last_cut)
                    .map_err(anyhow::Error::from),
                Err(Fault::Transient(err) | Fault::Fatal(err)) => Err(err),
            };
            if attempt == 0 && trimmed.as_ref().is_err_and(crate::error::interrupted) {
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
}

/// An entry's fields read again from Redis (on a connection of its own:
/// a rare need, for a large row PostgreSQL refused); none if it is gone or
/// Redis cannot say.
fn refetch(settings: &Settings, key: &str, id: EntryId) -> Option<crate::event::RawFields> {
    let mut con = stream::connect_reader(settings, key).ok()?;
    let entry = reader::entry_at(&mut con, key, id).ok()??;
    Some(entry.fields)
}
