//! Storing what transfer read: events by binary COPY, dead letters, the
//! hours to roll up, and the stream position — all in one transaction, so
//! a crash at any instant leaves either the whole batch or none of it.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, Transaction};

use crate::event::{Batch, Event};

/// The position before any entry.
pub const START: &str = "0-0";

const COPY_COLUMNS: &str = "event_type, generation_id, user_id, timestamp, generation_type, \
    duration_ms, success, error_type, error_message, queue_wait_time_ms, generation_time_ms, \
    model_checkpoint, image_dimensions, batch_size, prompt_tokens, stream_id, queue_length, attributes";

const COPY_TYPES: &[Type] = &[
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
    Type::TEXT,
    Type::INT4,
    Type::JSONB,
];

/// Transfers of different streams may run side by side; of one stream, one
/// at a time. (Class 0x67656e61 = "gena"; the two-key lock space is apart
/// from the one-key space `migrate` uses.)
const LOCK_CLASS: i32 = 0x6765_6e61;

/// Takes the stream's transfer lock without waiting; false if another
/// session holds it. The lock dies with the connection, so a killed
/// transfer never blocks the next one.
pub fn try_lock(client: &mut Client, stream_key: &str) -> anyhow::Result<bool> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &stream_key],
        )?
        .get(0))
}

/// Waits for the stream's transfer lock.
pub fn lock(client: &mut Client, stream_key: &str) -> anyhow::Result<()> {
    client.execute(
        "SELECT pg_advisory_lock($1, hashtext($2))",
        &[&LOCK_CLASS, &stream_key],
    )?;
    Ok(())
}

/// The committed position of a stream, creating its state row if needed.
pub fn position(client: &mut Client, stream_key: &str) -> anyhow::Result<String> {
    client.execute(
        "INSERT INTO genalytics_transfer_state (stream_key, last_id) VALUES ($1, $2)
         ON CONFLICT (stream_key) DO NOTHING",
        &[&stream_key, &START],
    )?;
    Ok(client
        .query_one(
            "SELECT last_id FROM genalytics_transfer_state WHERE stream_key = $1",
            &[&stream_key],
        )?
        .get(0))
}

/// What transfer has recorded for a stream, without creating anything.
#[derive(Debug, Clone)]
pub struct TransferState {
    pub last_id: String,
    pub events_stored: i64,
    pub entries_rejected: i64,
    pub last_transfer_at: DateTime<Utc>,
}

pub fn state(client: &mut Client, stream_key: &str) -> anyhow::Result<Option<TransferState>> {
    Ok(client
        .query_opt(
            "SELECT last_id, events_stored, entries_rejected, last_transfer_at
             FROM genalytics_transfer_state WHERE stream_key = $1",
            &[&stream_key],
        )?
        .map(|row| TransferState {
            last_id: row.get(0),
            events_stored: row.get(1),
            entries_rejected: row.get(2),
            last_transfer_at: row.get(3),
        }))
}

/// Another stream already transferred into this database, if any. Entry
/// IDs are unique only within one stream, so one database holds one.
pub fn other_stream(client: &mut Client, stream_key: &str) -> anyhow::Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT stream_key FROM genalytics_transfer_state
             WHERE stream_key <> $1 AND events_stored + entries_rejected > 0 LIMIT 1",
            &[&stream_key],
        )?
        .map(|row| row.get(0)))
}

/// A batch with its rows already in COPY's binary format, so encoding can
/// happen on another thread while PostgreSQL ingests the previous batch.
pub struct Prepared {
    pub batch: Batch,
    rows: BytesMut,
}

pub fn prepare(batch: Batch) -> anyhow::Result<Prepared> {
    let rows = encode_rows(&batch.events)?;
    Ok(Prepared { batch, rows })
}

/// Commits one batch if the stream is still where this run left it.
pub fn commit(
    client: &mut Client,
    stream_key: &str,
    expected: &str,
    prepared: &Prepared,
) -> anyhow::Result<()> {
    let batch = &prepared.batch;
    let mut tx = client.transaction()?;
    // The claim comes first: it locks the state row, and a second writer
    // that got here with the same expectation finds it no longer holds.
    let claimed = tx.execute(
        "UPDATE genalytics_transfer_state
         SET last_id = $3, events_stored = events_stored + $4,
             entries_rejected = entries_rejected + $5, last_transfer_at = now()
         WHERE stream_key = $1 AND last_id = $2",
        &[
            &stream_key,
            &expected,
            &batch.last_id,
            &(batch.events.len() as i64),
            &(batch.rejected.len() as i64),
        ],
    )?;
    if claimed != 1 {
        bail!(
            "another transfer moved the position of {stream_key} while this one ran; \
             nothing was stored twice — run transfer again to continue"
        );
    }
    if !batch.events.is_empty() {
        store_events(&mut tx, &prepared.rows)?;
    }
    for rejection in &batch.rejected {
        tx.execute(
            "INSERT INTO generation_events_rejected (stream_id, fields, reason) VALUES ($1, $2, $3)
             ON CONFLICT (stream_id) DO NOTHING",
            &[&rejection.stream_id, &rejection.fields, &rejection.reason],
        )?;
    }
    let hours: Vec<DateTime<Utc>> = batch
        .events
        .iter()
        .map(|e| {
            e.timestamp
                .duration_trunc(TimeDelta::hours(1))
                .unwrap_or(e.timestamp)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !hours.is_empty() {
        tx.execute(
            // DO UPDATE, not DO NOTHING: it locks a queued hour's row, so an
            // aggregate taking that hour off the queue waits for this commit
            // and then sees these events (see db::rollup::roll_up).
            "INSERT INTO generation_rollup_queue (hour) SELECT unnest($1::timestamptz[]) ORDER BY 1
             ON CONFLICT (hour) DO UPDATE SET queued_at = now()",
            &[&hours],
        )?;
    }
    tx.commit().context("cannot commit the batch")?;
    Ok(())
}

/// COPY straight into the table; should rows with these stream IDs already
/// exist (a position reset by hand), go through a staging table and skip
/// them instead of failing every run from now on.
fn store_events(tx: &mut Transaction<'_>, rows: &[u8]) -> anyhow::Result<()> {
    let mut attempt = tx.transaction()?;
    match copy_into(&mut attempt, "generation_events", rows) {
        Ok(()) => {
            attempt.commit()?;
            return Ok(());
        }
        Err(err) if is_unique_violation(&err) => attempt.rollback()?,
        Err(err) => return Err(err).context("cannot store events"),
    }
    tracing::warn!("some entries were already stored; skipping them");
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS genalytics_staging
             (LIKE generation_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    )?;
    copy_into(tx, "genalytics_staging", rows).context("cannot stage events")?;
    tx.batch_execute(&format!(
        "INSERT INTO generation_events ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM genalytics_staging
         ON CONFLICT (stream_id) DO NOTHING"
    ))?;
    Ok(())
}

fn copy_into(tx: &mut Transaction<'_>, table: &str, rows: &[u8]) -> anyhow::Result<()> {
    let mut sink = tx.copy_in(&format!(
        "COPY {table} ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
    ))?;
    // One write, one CopyData message: the driver's row-at-a-time writer
    // enters its async runtime once per row, which cost more than encoding.
    std::io::Write::write_all(&mut sink, rows)?;
    sink.finish()?;
    Ok(())
}

/// Encodes events in PostgreSQL's binary COPY format: a header, then per
/// row a field count and each field as length + `ToSql` bytes, then -1.
fn encode_rows(events: &[Event]) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::with_capacity(64 + events.len() * 200);
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0); // flags
    out.put_i32(0); // header extension length
    for e in events {
        let event_type = e.event_type.as_str();
        let row: [&(dyn ToSql + Sync); 18] = [
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
            &e.stream_id,
            &e.queue_length,
            &e.attributes,
        ];
        out.put_i16(row.len() as i16);
        for (value, ty) in row.iter().zip(COPY_TYPES) {
            let at = out.len();
            out.put_i32(0);
            let length = match value
                .to_sql_checked(ty, &mut out)
                .map_err(|err| anyhow::anyhow!("cannot encode entry {}: {err}", e.stream_id))?
            {
                IsNull::No => i32::try_from(out.len() - at - 4)?,
                IsNull::Yes => -1,
            };
            out[at..at + 4].copy_from_slice(&length.to_be_bytes());
        }
    }
    out.put_i16(-1);
    Ok(out)
}

fn is_unique_violation(err: &anyhow::Error) -> bool {
    err.downcast_ref::<postgres::Error>()
        .and_then(postgres::Error::code)
        == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}
