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
/// isolated, the hours of the rows stored queued for their rollup, and
/// rows for late-listed hours listed as late events.
pub(super) fn store_rows(
    tx: &mut Transaction<'_>,
    stream: i32,
    prepared: &Prepared,
    mut mode: Mode,
) -> anyhow::Result<RowsStored> {
    // Held until commit: a prune cannot move the horizon meanwhile, so an
    // hour is late-listed exactly when its raw events are gone or rolled up.
    let horizon: Option<DateTime<Utc>> = crate::db::retention::horizon_held(tx)?;
    let mut refused = Vec::new();
    let rows = prepared.ids.len();
    let stored = if rows == 0 {
        0
    } else {
        insert_rows(tx, prepared, 0..rows, &mut mode, &mut refused)?
    };
    let refused_rows: BTreeSet<usize> = refused.iter().map(|(row, _)| *row).collect();
    let kept = || (0..rows).filter(|row| !refused_rows.contains(row));
    // Per hour stored for, its earliest event.
    let mut earliest: BTreeMap<DateTime<Utc>, DateTime<Utc>> = BTreeMap::new();
    for row in kept() {
        let at = prepared.times[row];
        earliest
            .entry(hour::floor(at))
            .and_modify(|first| *first = (*first).min(at))
            .or_insert(at);
    }
    let hours: BTreeSet<DateTime<Utc>> = earliest.keys().copied().collect();
    if !hours.is_empty() {
        let (list, firsts): (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) = earliest.into_iter().unzip();
        let late_listed: BTreeSet<DateTime<Utc>> = tx
            .query(
                // DO UPDATE, not DO NOTHING: it locks a queued hour's row, so
                // an aggregate taking that hour off the queue waits for this
                // commit and then sees these events (see db::rollup::roll_up).
                // The time it was first queued stays: how long it has waited.
                // Whether the hour is late-listed is decided once, when it is
                // queued: its raw events are gone, or it has a rollup of our
                // own (not the original service's, not changed by hand: its
                // checksum holds) that cannot hold this transaction's
                // events. Not the
                // current hour, whose events all come after such a rollup
                // (`aggregate --include-current`): reports read it from its
                // part. Before the horizon every event is listed, whoever
                // queued the hour.
                "INSERT INTO generation_rollup_queue AS q (hour, late_listed)
                 SELECT s.hour, s.hour < coalesce($2::timestamptz, '-infinity') OR (
                     s.hour < date_trunc('hour', now(), 'UTC') AND EXISTS (
                         SELECT 1 FROM generation_metrics_hourly m
                         WHERE m.timestamp = s.hour AND NOT m.legacy
                           AND m.checksum IS NOT DISTINCT FROM genalytics_hourly_checksum(m)))
                 FROM unnest($1::timestamptz[]) AS s(hour) ORDER BY 1
                 ON CONFLICT (hour) DO UPDATE SET queued_at = q.queued_at
                 RETURNING hour, late_listed OR hour < coalesce($2::timestamptz, '-infinity')",
                &[&list, &horizon],
            )?
            .into_iter()
            .filter(|row| row.get::<_, bool>(1))
            .map(|row| row.get(0))
            .collect();
        if !late_listed.is_empty() {
            let late: Vec<usize> = kept()
                .filter(|row| late_listed.contains(&hour::floor(prepared.times[*row])))
                .collect();
            list_late(tx, stream, prepared, &late)?;
        }
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

/// Lists the rows this transaction stored for late-listed hours as late
/// events: a report adds them to the hour's rollup, and aggregate merges
/// them into it before the raw horizon or rolls the hour up again after
/// it. Rows that were already stored keep their older `created_at` and
/// are not listed.
fn list_late(
    tx: &mut Transaction<'_>,
    stream: i32,
    prepared: &Prepared,
    rows: &[usize],
) -> anyhow::Result<()> {
    let ids: Vec<EntryId> = rows.iter().map(|row| prepared.ids[*row]).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|row| prepared.times[*row]).collect();
    // By the whole entry key, time included, one entry at a time (kept so
    // by `OFFSET 0`): each probe goes to one partition's key, where a join
    // could scan them all. The list carries what the rollups read of the
    // event (of a message, its first 300 characters, as a sample keeps).
    tx.execute(
        "INSERT INTO generation_rollup_late (event_id, event_at, hour, event_type, success,
             duration_ms, user_id, batch_size, queue_length, model_checkpoint, error_type,
             error_message)
         SELECT x.* FROM unnest($2::text[], $3::timestamptz[]) AS l(stream_id, at)
         CROSS JOIN LATERAL (
             SELECT e.id, e.timestamp, date_trunc('hour', e.timestamp, 'UTC'), e.event_type,
                 e.success, e.duration_ms, e.user_id, e.batch_size, e.queue_length,
                 e.model_checkpoint, e.error_type, left(e.error_message, 300)
             FROM generation_events e
             WHERE e.stream = $1 AND e.stream_id = l.stream_id AND e.timestamp = l.at
               AND e.created_at = now()
             OFFSET 0) x
         ON CONFLICT (event_id) DO NOTHING",
        &[&stream, &ids, &times],
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
