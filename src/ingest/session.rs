//! One stream's run, in sessions: each connects (or reconnects), judges
//! the stream under the key against the stored position, acts on the
//! verdict and reads on from the position until drained, a stop, or a
//! fault a new session may mend.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};

use super::commit::{Committer, Message};
use super::fault::Fault;
use super::{Reset, Run, Summary};
use crate::db;
use crate::db::streams::{self, TransferState};
use crate::error::UsageError;
use crate::event::EntryId;
use crate::service;
use crate::stream;
use crate::stream::drain::{self, ReadPlan};
use crate::stream::identity::{self, Identity};
use crate::stream::info::{self, Backlog, StreamInfo};
use crate::stream::verdict;
use crate::stream::wire::Wire;

impl Run<'_> {
    /// Connects to PostgreSQL and takes the stream's lock: false when
    /// another transfer holds it and this run should step aside.
    pub(super) fn take_turn(&mut self) -> anyhow::Result<bool> {
        let database = self.settings.database()?;
        let mut client = db::connect_writer(database)?;
        if self.options.wait {
            wait_for_lock(&mut client, self.key, &self.stop)?;
        } else if !streams::try_lock(&mut client, self.key)? {
            return Ok(false);
        }
        self.pg = Some(client);
        Ok(true)
    }

    /// PostgreSQL, reconnected and relocked if the connection was lost.
    pub(super) fn pg(&mut self) -> Result<&mut postgres::Client, Fault> {
        if self.pg.as_ref().is_some_and(postgres::Client::is_closed) {
            self.pg = None;
        }
        if self.pg.is_none() {
            let database = self
                .settings
                .database()
                .map_err(|e| Fault::Fatal(e.into()))?;
            let mut client = db::connect_writer(database).map_err(Fault::of)?;
            wait_for_lock(&mut client, self.key, &self.stop).map_err(Fault::of)?;
            self.pg = Some(client);
        }
        Ok(self.pg.as_mut().expect("connected above"))
    }

    pub(super) fn redis(&mut self) -> Result<&mut Wire, Fault> {
        if self.redis.is_none() {
            self.redis = Some(stream::connect_reader(self.settings, self.key).map_err(Fault::of)?);
        }
        Ok(self.redis.as_mut().expect("connected above"))
    }

    /// Reads and stores until the stream is drained (or, following, until
    /// a stop); a fault ends it with what was read committed.
    pub(super) fn session(&mut self) -> Result<(), Fault> {
        let key = self.key;
        let state = streams::open(self.pg()?, key).map_err(Fault::of)?;
        let mut inspected = self.inspect(&state)?;
        if inspected.verdict == Identity::Missing {
            if !self.options.follow {
                // Exit 0 all the same: a producer may simply not have started.
                tracing::warn!("{}; nothing to transfer", verdict::missing(key));
            } else if state.position == EntryId::ZERO {
                // Nothing was ever read from it: the first entries are read
                // as they come.
                tracing::warn!("{}; waiting for entries", verdict::missing(key));
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
        self.summary.last_id.get_or_insert(position);
        if let Some(lost) = info.max_deleted_id.filter(|&lost| lost > position) {
            tracing::warn!("{}", verdict::removed_unstored(key, lost));
        }
        if !self.ready {
            self.progress = self.progress_bar(&info)?;
            service::ready();
            service::status(&format!("transferring {key}"));
            self.ready = true;
        }

        let plan = ReadPlan {
            key: key.to_string(),
            redis: stream::described(self.settings),
            after: position,
            until: if self.options.follow {
                None
            } else {
                info.last_id
            },
            batch_size: self.options.batch_size as usize,
            max_events: self
                .options
                .max_events
                .map(|cap| cap.saturating_sub(self.summary.entries())),
            follow: self.options.follow,
            stop: Arc::clone(&self.stop),
            abandoned: Arc::new(AtomicBool::new(false)),
            index: state.position_index,
            anchor,
            in_flight: Arc::clone(&self.in_flight),
        };
        if !plan.follow && plan.until.is_none_or(|until| until <= position) {
            return Ok(());
        }
        self.read_and_store(plan)
    }

    /// Reads on a thread of its own while this one commits what it reads,
    /// until the plan is done or a fault; what was read is committed first.
    fn read_and_store(&mut self, plan: ReadPlan) -> Result<(), Fault> {
        let reader_con = stream::connect_reader(self.settings, self.key).map_err(Fault::of)?;
        self.in_flight.store(0, Ordering::Relaxed);
        let (sender, batches) = sync_channel::<Message>(1);
        let in_flight = Arc::clone(&self.in_flight);
        let abandoned = Arc::clone(&plan.abandoned);
        let reader = std::thread::Builder::new()
            .name("stream-reader".into())
            .spawn(move || {
                let mut committer = Committer { sender, in_flight };
                if let Err(err) = drain::drain(reader_con, &plan, &mut committer) {
                    // Nobody to tell when the committer has gone.
                    let _ = committer.sender.send(Message::Failed(err.into()));
                }
            })
            .map_err(|err| Fault::Fatal(anyhow!("cannot start the reader thread: {err}")))?;
        let outcome = self.store(&batches);
        // Dropping the receiver stops a reader still waiting to send; the
        // flag one waiting for entries or for room.
        abandoned.store(true, Ordering::Relaxed);
        drop(batches);
        let _ = reader.join();
        outcome
    }

    /// What the stream under the key is, against the stored position.
    pub(super) fn inspect(&mut self, state: &TransferState) -> Result<identity::Inspected, Fault> {
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
    pub(super) fn wait_for_stream(&mut self) -> Result<StreamInfo, Fault> {
        let key = self.key;
        tracing::warn!("{}; waiting for it", verdict::missing(key));
        service::status(&format!("waiting for the stream {key} to exist"));
        loop {
            if !crate::retry::sleep_unless_stopped(Duration::from_millis(250), &self.stop) {
                return Err(Fault::Transient(anyhow!(
                    "stopped while waiting for the stream {key}"
                )));
            }
            let info = info::info(self.redis()?, key).map_err(Fault::of)?;
            if info.exists {
                return Ok(info);
            }
        }
    }

    /// Acts on what the stream turned out to be (see `stream::identity`):
    /// records a new stream when it is one to read on, refuses one that
    /// needs an operator; returns the state to read from.
    pub(super) fn act_on(
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
                    verdict::below_position(key, position, verdict)
                )));
            }
            (Identity::ResetAbove, false) => false,
            (Identity::Gap, false) => {
                let lost = identity::gap_lost(info, state.position_index);
                tracing::warn!("{}; reading on", verdict::gap_warning(key, position, lost));
                return Ok(state);
            }
            (Identity::Rewound { last }, _) => {
                tracing::warn!(
                    "{}; reading on after {position}",
                    verdict::rewound(key, *last, position)
                );
                streams::rewound(self.pg()?, &state).map_err(Fault::of)?;
                let mut state = state;
                state.position_index = None;
                return Ok(state);
            }
            (Identity::Same | Identity::Missing, _) => return Ok(state),
        };
        let lost = state.unseen();
        self.new_stream = false;
        let pg = self.pg()?;
        let state = streams::new_incarnation(pg, &state, lost, from_start).map_err(Fault::of)?;
        let at = state.last_reset_at.unwrap_or_else(Utc::now);
        tracing::warn!(
            "{}{}; {}",
            verdict::replaced(key),
            verdict::loss(lost),
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

    /// Counts what is left: the run's summary.
    pub(super) fn finish(&mut self, started: Instant) -> Summary {
        let end = self.summary.last_id.unwrap_or_default();
        match self.count_behind(end) {
            Ok(behind) => {
                self.summary.behind = Some(behind.entries);
                self.summary.behind_exact = behind.exact;
            }
            Err(err) => tracing::warn!("cannot count the entries left in {}: {err:#}", self.key),
        }
        let mut summary = std::mem::take(&mut self.summary);
        summary.seconds = started.elapsed().as_secs_f64();
        summary.events_per_second = summary.entries() as f64 / summary.seconds.max(1e-9);
        summary
    }

    /// Entries after `end`, noting what Redis says of the stream for the
    /// next run's identity check.
    pub(super) fn count_behind(&mut self, end: EntryId) -> anyhow::Result<Backlog> {
        let key = self.key;
        let state = self.state.clone();
        let con = match self.redis() {
            Ok(con) => con,
            Err(Fault::Transient(err) | Fault::Fatal(err)) => return Err(err),
        };
        let info = info::info(con, key)?;
        let position = match &state {
            Some(state) if state.position == end => {
                let index = (info.last_generated_id == end)
                    .then_some(info.entries_added)
                    .flatten()
                    .or(state.position_index);
                crate::event::Position { id: end, index }
            }
            _ => crate::event::Position {
                id: end,
                index: None,
            },
        };
        let behind = info::behind(con, key, &info, position)?;
        if position.index.is_some()
            && let Some(pg) = self.pg.as_mut()
        {
            streams::note_observed(pg, key, &position, info.entries_added)?;
        }
        Ok(behind)
    }

    pub(super) fn progress_bar(&mut self, info: &StreamInfo) -> Result<ProgressBar, Fault> {
        // Streams side by side would draw over each other's bars.
        if self.settings.quiet
            || self.settings.several_streams()
            || !std::io::stderr().is_terminal()
        {
            return Ok(ProgressBar::hidden());
        }
        if self.options.follow {
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
        let backlog = info::behind(self.redis()?, key, info, position).map_err(Fault::of)?;
        let total = self
            .options
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
