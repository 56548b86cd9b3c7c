//! Storing what transfer read: a batch encoded for binary COPY here (on
//! the reader's thread), then committed (`commit`): events, dead letters, the
//! hours to roll up, and the stream position — all in one transaction, so
//! a crash at any instant leaves either the whole batch or none of it.
//!
//! Should PostgreSQL refuse a batch for something in the data that the
//! parser did not foresee (a constraint added by hand, a limit), the batch
//! is split in halves, in savepoints, until the refused rows stand alone;
//! they become dead letters with PostgreSQL's own words, their neighbours
//! are stored, and the position still moves once. Rows already stored
//! (a position set back by hand) are skipped and counted as such.

mod commit;
mod replay;
mod rows;

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use postgres::types::{IsNull, ToSql, Type};

use crate::event::{
    EntryId, Event, Fingerprint, RawEntry, Rejection, held_size, parse, payload_bytes,
};

pub use commit::{Claim, Outcome, commit};
pub use replay::{Replayed, replay};

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
    /// Per row: its event's time (its hour is queued for the rollup).
    times: Vec<DateTime<Utc>>,
    raws: Vec<Option<Box<[u8]>>>,
    rejected: Vec<Rejection>,
    pub first_id: EntryId,
    pub last_id: EntryId,
    /// The fingerprint of the entry `last_id`, which the trim after the
    /// commit checks is still in the stream.
    pub last_print: Option<Fingerprint>,
    /// Whether the entry `last_id` was too large to store (and was cut).
    pub last_cut: bool,
}

impl Prepared {
    /// Entries in the batch: rows and dead letters.
    pub fn len(&self) -> usize {
        self.ids.len() + self.rejected.len()
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
                .map(|r| held_size(&r.fields))
                .sum::<usize>()
    }

    /// The event time of each row.
    pub fn times(&self) -> &[DateTime<Utc>] {
        &self.times
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
        self.times.drain(..keep);
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
        times: Vec::with_capacity(expected),
        raws: Vec::with_capacity(expected),
        rejected: Vec::new(),
        first_id: EntryId::ZERO,
        last_id: EntryId::ZERO,
        last_print: None,
        last_cut: false,
    };
    prepared.bounds.push(0);
    // The fingerprint of the last entry whose raw fields were let go, and
    // of the last dead letter.
    let mut dropped_print = None;
    let mut rejected_print = None;
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
                let size = payload_bytes(&raw);
                // Room for the row at once: a giant value is copied once,
                // not through a doubling buffer.
                prepared.rows.reserve(size + 256);
                let kept = if size > RAW_KEEP_MAX {
                    dropped_print = Some(Fingerprint::of(&raw));
                    None
                } else {
                    Some(crate::event::pack::packed(&raw).into_boxed_slice())
                };
                drop(raw);
                encode_row(&mut prepared.rows, &event)?;
                prepared.raws.push(kept);
                prepared.bounds.push(prepared.rows.len());
                prepared.ids.push(id);
                prepared.times.push(event.timestamp);
            }
            Err(reason) => {
                rejected_print = cut.as_ref().map(|cut| cut.fingerprint);
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
            Some(Some(packed)) => Some(Fingerprint::of_packed(packed)),
            _ => dropped_print,
        },
        (_, Some(rejected)) => rejected_print.or_else(|| Some(Fingerprint::of(&rejected.fields))),
        _ => None,
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

/// Fills in the stream column of every row.
fn set_stream(prepared: &mut Prepared, stream: i32) {
    for &start in &prepared.bounds[..prepared.bounds.len() - 1] {
        prepared.rows[start + STREAM_OFFSET..start + STREAM_OFFSET + 4]
            .copy_from_slice(&stream.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::raw;

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
