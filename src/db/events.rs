//! Storing what transfer read: events by binary COPY, dead letters, the
//! hours to roll up, and the stream position — all in one transaction, so
//! a crash at any instant leaves either the whole batch or none of it.
//!
//! Should PostgreSQL refuse a batch for something in the data that the
//! parser did not foresee (a constraint added by hand, a limit), the batch
//! is split in halves, in savepoints, until the refused rows stand alone;
//! they become dead letters with PostgreSQL's own words, their neighbours
//! are stored, and the position still moves once. Rows already stored
//! (a position set back by hand) are skipped and counted as such.

use std::collections::BTreeSet;
use std::ops::Range;

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, Transaction};
use serde_json::Value;

use crate::db::partitions;
use crate::db::streams::PositionMoved;
use crate::event::EntryId;
use crate::event::RawEntry;
use crate::event::{Event, RawFields, Rejection, parse};
use crate::hour;
use crate::text::{escape_bytes, escape_controls, truncate};

/// Largest entry whose raw fields a prepared batch keeps beside its row.
const RAW_KEEP_MAX: usize = 64 << 10;

/// The unique index that makes an entry a row once per stream: on the
/// partitioned table (`sql/0008`), and on a table adopted before it.
const ENTRY_KEY: &str = "generation_events_stream_entry_time_key";
const LEGACY_ENTRY_KEY: &str = "generation_events_stream_entry_key";

const COPY_COLUMNS: &str = "stream, stream_id, event_type, generation_id, user_id, timestamp, \
    generation_type, duration_ms, success, error_type, error_message, queue_wait_time_ms, \
    generation_time_ms, model_checkpoint, image_dimensions, batch_size, prompt_tokens, \
    queue_length, attributes";

const COPY_TYPES: &[Type] = &[
    Type::INT4,
    Type::TEXT,
    Type::VARCHAR,
    Type::UUID,
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::VARCHAR,
    Type::INT4,
    Type::BOOL,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT4,
    Type::TEXT,
    Type::JSONB,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::JSONB,
];

/// Where the stream column's value sits in an encoded row: after the
/// field count (2 bytes) and the field's length (4 bytes).
const STREAM_OFFSET: usize = 6;

/// A batch with its rows already in COPY's binary format, so encoding can
/// happen on another thread while PostgreSQL ingests the previous batch.
/// The stream column is filled in at commit, when the stream is known.
#[derive(Debug)]
pub struct Prepared {
    /// Encoded rows, without the COPY header and trailer.
    rows: BytesMut,
    /// Where each row starts in `rows`, and one past the last.
    bounds: Vec<usize>,
    /// Per row: its entry, its hour and its raw fields, packed (see
    /// [`crate::event::pack`]) — kept only up to [`RAW_KEEP_MAX`] bytes:
    /// they serve only should PostgreSQL refuse the row, and a giant entry
    /// is read again from Redis then rather than held twice meanwhile.
    ids: Vec<EntryId>,
    hours: Vec<DateTime<Utc>>,
    raws: Vec<Option<Box<[u8]>>>,
    rejected: Vec<Rejection>,
    pub first_id: EntryId,
    pub last_id: EntryId,
    /// The fingerprint of the entry `last_id`, which the trim after the
    /// commit checks is still in the stream.
    pub last_print: String,
    /// Whether the entry `last_id` was too large to store (and was cut).
    pub last_cut: bool,
}

impl Prepared {
    /// Entries in the batch: rows and dead letters.
    pub fn len(&self) -> usize {
        self.ids.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the batch holds on the heap, near enough to bound memory by.
    pub fn heap_bytes(&self) -> usize {
        let per_row = size_of::<usize>()
            + size_of::<EntryId>()
            + size_of::<DateTime<Utc>>()
            + size_of::<Option<Box<[u8]>>>()
            + 16;
        self.rows.capacity()
            + self.ids.len() * per_row
            + self
                .raws
                .iter()
                .flatten()
                .map(|raw| raw.len())
                .sum::<usize>()
            + self
                .rejected
                .iter()
                .map(|r| {
                    64 + r
                        .fields
                        .iter()
                        .map(|(n, v)| n.len() + v.len() + 128)
                        .sum::<usize>()
                })
                .sum::<usize>()
    }

    /// The hour of each row.
    pub fn hours(&self) -> &[DateTime<Utc>] {
        &self.hours
    }

    /// Drops the entries at or before `position` — stored by another run
    /// while this one held them — and says whether any are left.
    pub fn skip_through(&mut self, position: EntryId) -> bool {
        if self.first_id > position {
            return true;
        }
        if self.last_id <= position {
            return false;
        }
        let keep = self.ids.partition_point(|id| *id <= position);
        let from = self.bounds[keep];
        let mut rows = self.rows.split_off(from);
        std::mem::swap(&mut rows, &mut self.rows);
        self.bounds = self.bounds[keep..].iter().map(|b| b - from).collect();
        self.ids.drain(..keep);
        self.hours.drain(..keep);
        self.raws.drain(..keep);
        self.rejected.retain(|r| r.stream_id > position);
        self.first_id = self
            .ids
            .first()
            .into_iter()
            .chain(self.rejected.first().map(|r| &r.stream_id))
            .min()
            .copied()
            .unwrap_or(self.last_id);
        true
    }
}

/// Parses consecutive entries and encodes the events among them (see
/// [`Prepared`]), one entry at a time: an event lives only until its row
/// is encoded, so a batch costs its raw entries and their rows, no more.
pub fn prepare(entries: impl IntoIterator<Item = RawEntry>) -> anyhow::Result<Prepared> {
    let entries = entries.into_iter();
    let (expected, _) = entries.size_hint();
    let mut prepared = Prepared {
        rows: BytesMut::new(),
        bounds: Vec::with_capacity(expected + 1),
        ids: Vec::with_capacity(expected),
        hours: Vec::with_capacity(expected),
        raws: Vec::with_capacity(expected),
        rejected: Vec::new(),
        first_id: EntryId::ZERO,
        last_id: EntryId::ZERO,
        last_print: String::new(),
        last_cut: false,
    };
    prepared.bounds.push(0);
    // The fingerprint of the last entry whose raw fields were let go, and
    // of the last dead letter.
    let mut dropped_print = String::new();
    let mut rejected_print = String::new();
    for (
        index,
        RawEntry {
            id,
            fields: raw,
            cut,
        },
    ) in entries.enumerate()
    {
        if index == 0 {
            prepared.first_id = id;
        }
        prepared.last_id = id;
        prepared.last_cut = cut.is_some();
        // A cut entry was too large to store: what is left of it is never
        // parsed as an event.
        let parsed = match &cut {
            Some(cut) => Err(cut.reason(raw.len())),
            None => parse(id, &raw),
        };
        match parsed {
            Ok(event) => {
                let size: usize = raw.iter().map(|(n, v)| n.len() + v.len()).sum();
                // Room for the row at once: a giant value is copied once,
                // not through a doubling buffer.
                prepared.rows.reserve(size + 256);
                let kept = if size > RAW_KEEP_MAX {
                    dropped_print = crate::event::fingerprint(&raw);
                    None
                } else {
                    Some(crate::event::pack::packed(&raw).into_boxed_slice())
                };
                drop(raw);
                encode_row(&mut prepared.rows, &event)?;
                prepared.raws.push(kept);
                prepared.bounds.push(prepared.rows.len());
                prepared.ids.push(id);
                prepared.hours.push(hour::floor(event.timestamp));
            }
            Err(reason) => {
                rejected_print = match &cut {
                    Some(cut) => cut.fingerprint.clone(),
                    None => String::new(),
                };
                prepared.rejected.push(Rejection {
                    stream_id: id,
                    fields: raw,
                    reason,
                    cut: cut.is_some(),
                });
            }
        }
    }
    prepared.last_print = match (prepared.ids.last(), prepared.rejected.last()) {
        (Some(&id), _) if id == prepared.last_id => match prepared.raws.last() {
            Some(Some(packed)) => crate::event::fingerprint_packed(packed),
            _ => dropped_print,
        },
        (_, Some(_)) if !rejected_print.is_empty() => rejected_print,
        (_, Some(rejected)) => crate::event::fingerprint(&rejected.fields),
        _ => String::new(),
    };
    Ok(prepared)
}

/// One row in PostgreSQL's binary COPY format: a field count, then each
/// field as length + `ToSql` bytes (-1 for NULL).
fn encode_row(out: &mut BytesMut, e: &Event) -> anyhow::Result<()> {
    let event_type = e.event_type.as_str();
    let stream_placeholder = 0_i32;
    let row: [&(dyn ToSql + Sync); 19] = [
        &stream_placeholder,
        &e.stream_id,
        &event_type,
        &e.generation_id,
        &e.user_id,
        &e.timestamp,
        &e.generation_type,
        &e.duration_ms,
        &e.success,
        &e.error_type,
        &e.error_message,
        &e.queue_wait_time_ms,
        &e.generation_time_ms,
        &e.model_checkpoint,
        &e.image_dimensions,
        &e.batch_size,
        &e.prompt_tokens,
        &e.queue_length,
        &e.attributes,
    ];
    out.put_i16(row.len() as i16);
    for (value, ty) in row.iter().zip(COPY_TYPES) {
        let at = out.len();
        out.put_i32(0);
        let length = match value
            .to_sql_checked(ty, out)
            .map_err(|err| anyhow::anyhow!("cannot encode entry {}: {err}", e.stream_id))?
        {
            IsNull::No => i32::try_from(out.len() - at - 4)
                .with_context(|| format!("entry {} has a value over 2 GB", e.stream_id))?,
            IsNull::Yes => -1,
        };
        out[at..at + 4].copy_from_slice(&length.to_be_bytes());
    }
    Ok(())
}

/// What one committed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Rows stored.
    pub stored: u64,
    /// Entries dead-lettered (by the parser or by PostgreSQL).
    pub rejected: u64,
    /// Rows that were already stored, left as they were.
    pub skipped: u64,
}

/// The claim a commit makes: the stream is still at `expected`, in the
/// incarnation `stream_ref`; after it, at the batch's last entry, whose
/// index in the stream is `index` (when known).
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub stream_key: &'a str,
    pub stream_ref: i32,
    pub expected: EntryId,
    pub index: Option<u64>,
    pub observed_added: Option<u64>,
}

/// Commits one batch if the stream is still where this run left it.
/// `refetch` reads an entry's fields again from Redis, for a row that
/// PostgreSQL refused and whose raw fields the batch did not keep.
pub fn commit(
    client: &mut Client,
    claim: &Claim<'_>,
    prepared: &mut Prepared,
    refetch: &mut dyn FnMut(EntryId) -> Option<RawFields>,
) -> anyhow::Result<Outcome> {
    set_stream(prepared, claim.stream_ref);
    let to_sql = |n: Option<u64>| n.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let mut tx = client.transaction()?;
    // The claim comes first: it locks the state row, and a second writer
    // that got here with the same expectation finds it no longer holds.
    let claimed = tx.execute(
        "UPDATE genalytics_transfer_state
         SET last_id = $3, last_transfer_at = now(), position_index = $5, index_id = $3,
             observed_added = greatest(observed_added, $6),
             observed_at = CASE WHEN $6::int8 IS NULL THEN observed_at ELSE now() END
         WHERE stream_key = $1 AND last_id = $2 AND stream_ref = $4",
        &[
            &claim.stream_key,
            &claim.expected,
            &prepared.last_id,
            &claim.stream_ref,
            &to_sql(claim.index),
            &to_sql(claim.observed_added),
        ],
    )?;
    if claimed != 1 {
        return Err(PositionMoved(claim.stream_key.to_string()).into());
    }

    let RowsStored {
        stored, refused, ..
    } = store_rows(&mut tx, claim.stream_ref, prepared, Mode::Copy)?;
    let rows = prepared.ids.len();
    let again: Vec<Option<RawFields>> = refused
        .iter()
        .map(|(row, _)| match &prepared.raws[*row] {
            Some(packed) => crate::event::pack::decode(packed),
            None => refetch(prepared.ids[*row]),
        })
        .collect();
    let letters = letters(prepared, &refused, &again);
    let lettered = store_dead_letters(&mut tx, claim.stream_ref, &letters)?;
    let outcome = Outcome {
        stored,
        rejected: lettered,
        skipped: (rows - refused.len()) as u64 - stored + (letters.len() as u64 - lettered),
    };
    tx.execute(
        "UPDATE genalytics_transfer_state
         SET events_stored = events_stored + $2, entries_rejected = entries_rejected + $3,
             entries_skipped = entries_skipped + $4
         WHERE stream_key = $1",
        &[
            &claim.stream_key,
            &(outcome.stored as i64),
            &(outcome.rejected as i64),
            &(outcome.skipped as i64),
        ],
    )?;
    tx.commit().context("cannot commit the batch")?;
    Ok(outcome)
}

/// Fills in the stream column of every row.
fn set_stream(prepared: &mut Prepared, stream: i32) {
    for &start in &prepared.bounds[..prepared.bounds.len() - 1] {
        prepared.rows[start + STREAM_OFFSET..start + STREAM_OFFSET + 4]
            .copy_from_slice(&stream.to_be_bytes());
    }
}

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
    let days: Vec<_> = partitions::days_of(&prepared.hours).into_iter().collect();
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

/// What [`store_rows`] did: rows stored, rows PostgreSQL refused (with its
/// words), and the hours queued for their rollup.
struct RowsStored {
    stored: u64,
    refused: Vec<(usize, String)>,
    hours: BTreeSet<DateTime<Utc>>,
}

/// Stores a batch's rows as transfer and replay both do: each refused row
/// isolated, rows for hours before the raw horizon marked late, and the
/// hours of the rows stored queued for their rollup.
fn store_rows(
    tx: &mut Transaction<'_>,
    stream: i32,
    prepared: &Prepared,
    mut mode: Mode,
) -> anyhow::Result<RowsStored> {
    // Held until commit: a prune cannot move the horizon meanwhile, so an
    // event is marked late exactly when its hour's raw events are gone.
    let horizon: Option<DateTime<Utc>> = tx
        .query_one("SELECT horizon FROM genalytics_raw_horizon FOR SHARE", &[])?
        .get(0);
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
    let hours: BTreeSet<DateTime<Utc>> = (0..rows)
        .filter(|row| !refused_rows.contains(row))
        .map(|row| prepared.hours[row])
        .collect();
    if !hours.is_empty() {
        let list: Vec<DateTime<Utc>> = hours.iter().copied().collect();
        tx.execute(
            // DO UPDATE, not DO NOTHING: it locks a queued hour's row, so an
            // aggregate taking that hour off the queue waits for this commit
            // and then sees these events (see db::rollup::roll_up). The time
            // it was first queued stays: how long it has waited.
            "INSERT INTO generation_rollup_queue AS q (hour) SELECT unnest($1::timestamptz[]) ORDER BY 1
             ON CONFLICT (hour) DO UPDATE SET queued_at = q.queued_at",
            &[&list],
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
        .hours
        .iter()
        .enumerate()
        .filter(|(row, hour)| **hour < horizon && !refused.contains(row))
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
enum Mode {
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
        refused.push((range.start, describe(&err)));
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
    // runtime once per row, which cost more than encoding.
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

/// Refusals caused by what a row holds: data exceptions (22…), integrity
/// constraints (23…) and program limits (54…, e.g. an index row too large).
fn is_data_error(err: &anyhow::Error) -> bool {
    pg_error(err)
        .and_then(postgres::Error::code)
        .is_some_and(|code| matches!(&code.code()[..2], "22" | "23" | "54"))
}

fn pg_error(err: &anyhow::Error) -> Option<&postgres::Error> {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<postgres::Error>())
}

/// PostgreSQL's words for a refused row, safe to store and to show.
fn describe(err: &anyhow::Error) -> String {
    match pg_error(err).and_then(postgres::Error::as_db_error) {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            escape_controls(&truncate(&text, 2_000)).into_owned()
        }
        None => escape_controls(&format!("{err:#}")).into_owned(),
    }
}

/// The batch's dead letters: entries the parser refused, and rows
/// PostgreSQL refused (with their raw fields as kept, or as `again` read
/// them from Redis).
fn letters<'a>(
    prepared: &'a Prepared,
    refused: &[(usize, String)],
    again: &'a [Option<RawFields>],
) -> Vec<Letter<'a>> {
    static NONE: RawFields = Vec::new();
    let mut letters: Vec<Letter<'a>> = prepared
        .rejected
        .iter()
        .map(|r| Letter {
            stream_id: r.stream_id,
            fields: &r.fields,
            reason: r.reason.clone(),
            cut: r.cut,
        })
        .collect();
    letters.extend(refused.iter().zip(again).map(|((row, message), again)| {
        let kept = again.as_ref();
        Letter {
            stream_id: prepared.ids[*row],
            cut: false,
            fields: kept.unwrap_or(&NONE),
            reason: match kept {
                Some(_) => format!("PostgreSQL refused the row: {message}"),
                None => format!(
                    "PostgreSQL refused the row: {message}; its fields were no longer in Redis to keep"
                ),
            },
        }
    }));
    letters
}

/// A dead letter about to be stored.
struct Letter<'a> {
    stream_id: EntryId,
    fields: &'a RawFields,
    reason: String,
    cut: bool,
}

/// Longest value `fields` shows; the exact bytes are in `raw_fields`.
const READABLE_VALUE_MAX: usize = 64 << 10;
/// Most fields, and bytes of them, `fields` shows: enough to see what is
/// wrong with any entry a producer meant to write, and a dead letter of a
/// million fields stays a row one can SELECT.
const READABLE_FIELDS_MAX: usize = 1_000;
const READABLE_BYTES_MAX: usize = 1 << 20;

/// The raw fields as a readable JSON object: names and values as text,
/// escaped where they are not printable UTF-8, long values shortened, every
/// value of a repeated name kept (as an array, in order) — up to the first
/// [`READABLE_FIELDS_MAX`] fields or [`READABLE_BYTES_MAX`] bytes. Returns
/// the object and how many fields it shows.
pub fn readable_fields(raw: &RawFields) -> (Value, usize) {
    let mut map = serde_json::Map::new();
    let mut bytes = 0;
    let mut shown = 0;
    for (name, value) in raw {
        if shown == READABLE_FIELDS_MAX || bytes >= READABLE_BYTES_MAX {
            break;
        }
        let name = escape_bytes(name).into_owned();
        let value = readable_value(value);
        bytes += name.len() + value.len();
        shown += 1;
        let value = Value::String(value);
        match map.get_mut(&name) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                map.insert(name, Value::Array(vec![first, value]));
            }
            None => {
                map.insert(name, value);
            }
        }
    }
    (Value::Object(map), shown)
}

/// A value as readable text, at most [`READABLE_VALUE_MAX`] bytes and a
/// note of what is left out. Escaping may take four bytes a byte, so only
/// the part that can be shown is escaped.
fn readable_value(value: &[u8]) -> String {
    let prefix = &value[..value.len().min(READABLE_VALUE_MAX)];
    let escaped = escape_bytes(prefix);
    if prefix.len() == value.len() && escaped.len() <= READABLE_VALUE_MAX {
        return escaped.into_owned();
    }
    let mut end = escaped.len().min(READABLE_VALUE_MAX);
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes)",
        &escaped[..end],
        escaped.len() - end + (value.len() - prefix.len())
    )
}

/// Stores dead letters; one that is already there (a position set back by
/// hand) stays as it was. Everything in them is escaped or bytes, so
/// nothing in an entry can refuse them; should PostgreSQL refuse one all
/// the same, it is stored without its fields, with the reason why.
fn store_dead_letters(
    tx: &mut Transaction<'_>,
    stream: i32,
    letters: &[Letter<'_>],
) -> anyhow::Result<u64> {
    const INSERT: &str =
        "INSERT INTO generation_events_rejected (stream, stream_id, fields, reason, raw_fields, cut)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream, stream_id) DO NOTHING";
    if letters.is_empty() {
        return Ok(0);
    }
    let statement = tx.prepare(INSERT)?;
    let mut inserted = 0;
    for letter in letters {
        let (fields, shown) = readable_fields(letter.fields);
        let reason = if shown < letter.fields.len() {
            format!(
                "{}; `fields` shows the first {shown} of its {} fields, `raw_fields` holds them all",
                letter.reason,
                letter.fields.len()
            )
        } else {
            letter.reason.clone()
        };
        let raw = super::flat_raw(letter.fields);
        let mut attempt = tx.transaction()?;
        let stored = attempt.execute(
            &statement,
            &[
                &stream,
                &letter.stream_id,
                &fields,
                &reason,
                &raw,
                &letter.cut,
            ],
        );
        match stored.map_err(anyhow::Error::from) {
            Ok(n) => {
                attempt.commit()?;
                inserted += n;
            }
            Err(err) if is_data_error(&err) => {
                attempt.rollback()?;
                let reason = format!(
                    "{}; the entry's fields could not be stored either: {}",
                    letter.reason,
                    describe(&err)
                );
                let none: Option<Vec<&[u8]>> = None;
                inserted += tx.execute(
                    &statement,
                    &[
                        &stream,
                        &letter.stream_id,
                        &serde_json::json!({}),
                        &reason,
                        &none,
                        &letter.cut,
                    ],
                )?;
            }
            Err(err) => return Err(err).context("cannot store a dead letter"),
        }
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&[u8], &[u8])]) -> RawFields {
        pairs
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn readable_fields_keep_every_value_and_escape_what_json_cannot_hold() {
        let (fields, _) = readable_fields(&raw(&[
            (b"event_type", b"request"),
            (b"event_type", b"completion\0x"),
            (b"bad\xff", b"\x1b[2J"),
            (b"event_type", b"third"),
        ]));
        assert_eq!(
            fields,
            serde_json::json!({
                "event_type": ["request", "completion\\0x", "third"],
                "bad\\xff": "\\x1b[2J",
            })
        );
        let (huge, _) = readable_fields(&raw(&[(b"blob", &vec![b'x'; 1 << 20])]));
        let shown = huge["blob"].as_str().unwrap();
        assert!(
            shown.len() < 70_000 && shown.ends_with("more bytes)"),
            "{}",
            shown.len()
        );
        // A million fields: the first thousand shown.
        let many: RawFields = (0..1_000_000)
            .map(|i| (format!("f{i}").into_bytes(), b"v".to_vec()))
            .collect();
        let (fields, shown) = readable_fields(&many);
        assert_eq!(shown, READABLE_FIELDS_MAX);
        assert_eq!(fields.as_object().unwrap().len(), READABLE_FIELDS_MAX);
        assert_eq!(fields["f999"], "v");
        // Big values: the bytes budget ends it first.
        let big: RawFields = (0..100)
            .map(|i| (format!("f{i}").into_bytes(), vec![b'x'; 100_000]))
            .collect();
        let (_, shown) = readable_fields(&big);
        assert_eq!(shown, 16, "16 values of 64 KiB make 1 MiB");
    }

    fn batch(ids: &[u64]) -> Prepared {
        prepare(ids.iter().map(|&ms| {
            RawEntry::new(
                EntryId::at_ms(ms),
                raw(&[(
                    b"event_type",
                    if ms % 2 == 0 {
                        b"request" as &[u8]
                    } else {
                        b"bogus"
                    },
                )]),
            )
        }))
        .unwrap()
    }

    #[test]
    fn skipping_what_another_run_stored_keeps_rows_and_letters_consistent() {
        let mut prepared = batch(&[10, 11, 12, 13, 14, 16]);
        assert_eq!(prepared.len(), 6);
        assert!(prepared.skip_through(EntryId::at_ms(5)));
        assert_eq!(prepared.len(), 6);
        assert!(prepared.skip_through(EntryId::at_ms(12)));
        assert_eq!(prepared.ids, [EntryId::at_ms(14), EntryId::at_ms(16)]);
        assert_eq!(prepared.rejected.len(), 1);
        assert_eq!(prepared.first_id, EntryId::at_ms(13));
        assert_eq!(prepared.bounds.len(), 3);
        assert_eq!(prepared.bounds[0], 0);
        assert_eq!(*prepared.bounds.last().unwrap(), prepared.rows.len());
        assert!(!prepared.skip_through(EntryId::at_ms(16)));
    }
}
