//! A batch's rows into `generation_events`: by COPY, or through a staging
//! table once some are found stored already; a refusal for something in
//! the data split in halves until each refused row stands alone.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use chrono::{DateTime, Utc};
use postgres::Transaction;
use postgres::error::SqlState;

use super::{COPY_COLUMNS, ENTRY_KEY, LEGACY_ENTRY_KEY, Prepared};
use crate::error::{is_data_error, pg_error, pg_refusal};
use crate::event::EntryId;
use crate::hour;

/// What [`store_rows`] did: rows stored, rows PostgreSQL refused (with its
/// words), and the hours queued for their rollup.
pub(super) struct RowsStored {
    pub(super) stored: u64,
    pub(super) refused: Vec<(usize, String)>,
    pub(super) hours: BTreeSet<DateTime<Utc>>,
}

/// Stores a batch's rows as transfer and replay both do: each refused row
/// isolated, rows for hours before the raw horizon marked late, and the
/// hours of the rows stored queued for their rollup.
pub(super) fn store_rows(
    tx: &mut Transaction<'_>,
    stream: i32,
    prepared: &Prepared,
    mut mode: Mode,
) -> anyhow::Result<RowsStored> {
    // Held until commit: a prune cannot move the horizon meanwhile, so an
    // event is marked late exactly when its hour's raw events are gone.
    let horizon: Option<DateTime<Utc>> = crate::db::retention::horizon_held(tx)?;
    let mut refused = Vec::new();
    let rows = prepared.ids.len();
    let stored = if rows == 0 {
        0
    } else {
        insert_rows(tx, prepared, 0..rows, &mut mode, &mut refused)?
    };
    let refused_rows: BTreeSet<usize> = refused.iter().map(|(row, _)| *row).collect();
    if let Some(horizon) = horizon {
        mark_late(tx, stream, prepared, &refused_rows, horizon)?;
    }
    // Per hour stored for, its earliest event.
    let mut earliest: BTreeMap<DateTime<Utc>, DateTime<Utc>> = BTreeMap::new();
    for row in (0..rows).filter(|row| !refused_rows.contains(row)) {
        let at = prepared.times[row];
        earliest
            .entry(hour::floor(at))
            .and_modify(|first| *first = (*first).min(at))
            .or_insert(at);
    }
    let hours: BTreeSet<DateTime<Utc>> = earliest.keys().copied().collect();
    if !hours.is_empty() {
        let (list, firsts): (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) = earliest.into_iter().unzip();
        tx.execute(
            // DO UPDATE, not DO NOTHING: it locks a queued hour's row, so an
            // aggregate taking that hour off the queue waits for this commit
            // and then sees these events (see db::rollup::roll_up). The time
            // it was first queued stays: how long it has waited.
            "INSERT INTO generation_rollup_queue AS q (hour) SELECT unnest($1::timestamptz[]) ORDER BY 1
             ON CONFLICT (hour) DO UPDATE SET queued_at = q.queued_at",
            &[&list],
        )?;
        // With the queue rows held, a part of an hour rolled up so far that
        // these events belong in is no longer the whole of its part: gone
        // (see db::rollup::partial).
        tx.execute(
            "DELETE FROM generation_rollup_partial p
             USING unnest($1::timestamptz[], $2::timestamptz[]) AS s(hour, earliest)
             WHERE p.hour = s.hour AND p.through > s.earliest",
            &[&list, &firsts],
        )?;
    }
    Ok(RowsStored {
        stored,
        refused,
        hours,
    })
}

/// Marks the rows this transaction stored for hours before the horizon as
/// late events, for aggregate to merge into those hours' rollups (their
/// raw events are gone, so the hours are never rolled up again). Rows that
/// were already stored keep their older `created_at` and are not marked.
fn mark_late(
    tx: &mut Transaction<'_>,
    stream: i32,
    prepared: &Prepared,
    refused: &BTreeSet<usize>,
    horizon: DateTime<Utc>,
) -> anyhow::Result<()> {
    let late: Vec<EntryId> = prepared
        .times
        .iter()
        .enumerate()
        .filter(|(row, at)| hour::floor(**at) < horizon && !refused.contains(row))
        .map(|(row, _)| prepared.ids[row])
        .collect();
    if late.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO generation_rollup_late (event_id, event_at, hour)
         SELECT id, timestamp, date_trunc('hour', timestamp, 'UTC') FROM generation_events
         WHERE stream = $1 AND stream_id = ANY($2) AND created_at = now()
         ON CONFLICT (event_id) DO NOTHING",
        &[&stream, &late],
    )?;
    Ok(())
}

/// How rows go in: straight by COPY, or — once some turned out to be
/// stored already — through a staging table that skips those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Copy,
    Staged,
}

/// Stores the rows in `range`, each attempt in a savepoint; a refusal for
/// something in the data splits the range until each refused row stands
/// alone (it goes to `refused` with PostgreSQL's message). Returns the rows
/// stored.
fn insert_rows(
    tx: &mut Transaction<'_>,
    prepared: &Prepared,
    range: Range<usize>,
    mode: &mut Mode,
    refused: &mut Vec<(usize, String)>,
) -> anyhow::Result<u64> {
    let mut attempt = tx.transaction()?;
    let result = match mode {
        Mode::Copy => copy_rows(&mut attempt, "generation_events", prepared, range.clone()),
        Mode::Staged => staged_insert(&mut attempt, prepared, range.clone()),
    };
    let err = match result {
        Ok(stored) => {
            attempt.commit()?;
            return Ok(stored);
        }
        Err(err) => err,
    };
    attempt.rollback()?;
    if *mode == Mode::Copy && is_entry_key_conflict(tx, &err)? {
        tracing::warn!("some entries were already stored; skipping them");
        *mode = Mode::Staged;
        return insert_rows(tx, prepared, range, mode, refused);
    }
    if !is_data_error(&err) {
        return Err(err);
    }
    if range.len() == 1 {
        refused.push((range.start, pg_refusal(&err)));
        return Ok(0);
    }
    let middle = range.start + range.len() / 2;
    let first = insert_rows(tx, prepared, range.start..middle, mode, refused)?;
    let second = insert_rows(tx, prepared, middle..range.end, mode, refused)?;
    Ok(first + second)
}

/// COPY's binary header: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// COPY's binary trailer: a field count of -1.
const COPY_TRAILER: &[u8] = &[0xff, 0xff];

fn copy_rows(
    tx: &mut Transaction<'_>,
    table: &str,
    prepared: &Prepared,
    range: Range<usize>,
) -> anyhow::Result<u64> {
    let body = &prepared.rows[prepared.bounds[range.start]..prepared.bounds[range.end]];
    let mut sink = tx.copy_in(&format!(
        "COPY {table} ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
    ))?;
    // Few large writes: the driver's row-at-a-time writer enters its async
    // runtime once per row, which costs more than encoding the row.
    let written = [COPY_HEADER, body, COPY_TRAILER]
        .into_iter()
        .try_for_each(|part| std::io::Write::write_all(&mut sink, part));
    match (written, sink.finish()) {
        (_, Err(err)) => Err(err.into()),
        (Err(err), Ok(_)) => Err(anyhow::Error::new(err).context("cannot send rows to PostgreSQL")),
        (Ok(()), Ok(stored)) => Ok(stored),
    }
}

/// Through the staging table: rows already stored are skipped by
/// `ON CONFLICT`, the rest inserted.
fn staged_insert(
    tx: &mut Transaction<'_>,
    prepared: &Prepared,
    range: Range<usize>,
) -> anyhow::Result<u64> {
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS genalytics_staging
             (LIKE generation_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    )?;
    copy_rows(tx, "genalytics_staging", prepared, range)?;
    let stored = tx.execute(
        &format!(
            "INSERT INTO generation_events ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM genalytics_staging
             ON CONFLICT (stream, stream_id, \"timestamp\") DO NOTHING"
        ),
        &[],
    )?;
    tx.batch_execute("DELETE FROM genalytics_staging")?;
    Ok(stored)
}

/// Whether a refusal is the entry key finding rows already stored. Told
/// by the index's name — one index per partition, each named by
/// PostgreSQL, all attached to the partitioned key, or the adopted table's
/// older key — not by the message, which may be translated or, for a role
/// that may not read the columns, leave the key out.
fn is_entry_key_conflict(tx: &mut Transaction<'_>, err: &anyhow::Error) -> anyhow::Result<bool> {
    let Some(index) = pg_error(err)
        .and_then(postgres::Error::as_db_error)
        .filter(|db| *db.code() == SqlState::UNIQUE_VIOLATION)
        .and_then(|db| db.constraint())
    else {
        return Ok(false);
    };
    Ok(tx
        .query_one(
            "SELECT $1 = $2 OR EXISTS (
                 SELECT 1 FROM pg_partition_tree($3::text::regclass) t
                 WHERE t.relid = to_regclass(quote_ident($1)))",
            &[&index, &LEGACY_ENTRY_KEY, &ENTRY_KEY],
        )?
        .get(0))
}
