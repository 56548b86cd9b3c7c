//! Dead letters stored as events after all, once today's parser passes
//! them: the same row storage as transfer's, in the caller's transaction.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use postgres::Transaction;

use super::rows::{Mode, RowsStored, store_rows};
use super::{prepare, set_stream};
use crate::db::partitions;
use crate::event::{EntryId, RawEntry, RawFields};

/// What a replay of dead letters did (one chunk, or all of them).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// Stored as events now, their dead letters removed.
    pub stored: u64,
    /// Already stored as events (their letters removed, nothing added).
    pub already_stored: u64,
    /// Still refused: they stay, with today's reason.
    pub still_rejected: u64,
    /// Left as they are: no stream or entry ID to store them under, or
    /// fields that were not kept exactly.
    pub not_replayable: u64,
    /// Hours queued for their rollup by the events stored.
    #[serde(skip)]
    pub hours: BTreeSet<DateTime<Utc>>,
}

impl Replayed {
    /// Letters looked at.
    pub fn letters(&self) -> u64 {
        self.stored + self.already_stored + self.still_rejected + self.not_replayable
    }
}

impl std::ops::AddAssign for Replayed {
    fn add_assign(&mut self, chunk: Replayed) {
        self.stored += chunk.stored;
        self.already_stored += chunk.already_stored;
        self.still_rejected += chunk.still_rejected;
        self.not_replayable += chunk.not_replayable;
        self.hours.extend(chunk.hours);
    }
}

/// Parses dead letters of `stream` again with today's parser and, in the
/// caller's transaction, stores those that now pass exactly as transfer
/// would (hours queued, late events marked), deletes their letters, and
/// gives those still refused today's reason. The caller has locked the
/// letters (`rejected::take`), so each is stored at most once; the unique
/// entry key makes an event already there a no-op.
pub fn replay(
    tx: &mut Transaction<'_>,
    stream: i32,
    entries: Vec<(EntryId, RawFields)>,
    retention_days: i32,
) -> anyhow::Result<Replayed> {
    let mut prepared = prepare(
        entries
            .into_iter()
            .map(|(id, fields)| RawEntry::new(id, fields)),
    )?;
    set_stream(&mut prepared, stream);
    // As in transfer: a partition that cannot be made sends its day's
    // events to the default one.
    let days: Vec<_> = partitions::days_of(&prepared.times).into_iter().collect();
    let mut attempt = tx.transaction()?;
    match partitions::create(&mut attempt, &days, retention_days) {
        Ok(_) => attempt.commit()?,
        Err(err) if !crate::error::is_transient(&err) => {
            attempt.rollback()?;
            tracing::warn!(
                "cannot create the partitions these events need: {err:#}; they go to the default partition"
            );
        }
        Err(err) => return Err(err),
    }
    let RowsStored {
        stored,
        refused,
        hours,
    } = store_rows(tx, stream, &prepared, Mode::Staged)?;
    let refused_rows: BTreeSet<usize> = refused.iter().map(|(row, _)| *row).collect();
    let done: Vec<EntryId> = (0..prepared.ids.len())
        .filter(|row| !refused_rows.contains(row))
        .map(|row| prepared.ids[row])
        .collect();
    tx.execute(
        "DELETE FROM generation_events_rejected WHERE stream = $1 AND stream_id = ANY($2)",
        &[&stream, &done],
    )?;
    let reasons = prepared
        .rejected
        .iter()
        .map(|r| (r.stream_id, r.reason.clone()))
        .chain(refused.iter().map(|(row, message)| {
            (
                prepared.ids[*row],
                format!("PostgreSQL refused the row: {message}"),
            )
        }));
    let update = tx.prepare(
        "UPDATE generation_events_rejected SET reason = $3 WHERE stream = $1 AND stream_id = $2",
    )?;
    let mut still_rejected = 0;
    for (id, reason) in reasons {
        tx.execute(&update, &[&stream, &id, &reason])?;
        still_rejected += 1;
    }
    tx.execute(
        "UPDATE genalytics_transfer_state
         SET events_stored = events_stored + $2, entries_rejected = greatest(entries_rejected - $3, 0)
         WHERE stream_ref = $1",
        &[&stream, &(stored as i64), &(done.len() as i64)],
    )?;
    Ok(Replayed {
        stored,
        already_stored: done.len() as u64 - stored,
        still_rejected,
        not_replayable: 0,
        hours,
    })
}
