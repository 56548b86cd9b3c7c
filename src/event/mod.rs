//! Stream entries, the ground floor every layer above shares: an entry's
//! ID and the stored position (`id`), the entry as read with its
//! fingerprint (`entry`), its fields packed as the trim script packs them
//! (`pack`), and the wire format → a typed event, or the reason it cannot
//! be stored (`parse`). Parsing is pure and total: any bytes give one or
//! the other, never a panic, in time linear in the entry's size and field
//! count (the property tests in `parse/tests.rs` check both).
//!
//! Liberal in what is clearly meant (zones honoured, `true`/`1`, a missing
//! timestamp taken from the entry ID), strict in what is not (a number that
//! is not an integer, a UUID that is not one). Anything PostgreSQL would
//! refuse — a NUL character, bytes that are not UTF-8, a number no column
//! holds, a value longer than an index entry may be — is refused here, so a
//! bad entry becomes a dead letter instead of failing its batch. (What this
//! misses, PostgreSQL still catches: `db::events` isolates such rows.)

mod entry;
mod id;
pub mod pack;
mod parse;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

pub use entry::{
    CUT_KEEP_BYTES, CUT_KEEP_FIELDS, CUT_STRING, Cut, CutString, Fingerprint, GIANT_ENTRY,
    RawEntry, held_size, hex, payload_bytes,
};
pub use id::{EntryId, Position};
pub use parse::{in_range, parse};

/// Longest `model_checkpoint` or `error_type`, in bytes. Both are indexed,
/// and a btree entry holds at most about 2.7 kB; a checkpoint file name or
/// an exception class is far shorter than this.
pub const INDEXED_TEXT_MAX: usize = 1_024;

/// Largest entry stored as an event, in bytes of field names and values.
/// Larger ones become dead letters (kept whole), so one giant entry cannot
/// blow a transfer's memory up three times over while it is encoded.
pub const ENTRY_MAX_BYTES: usize = 16 << 20;
/// [`ENTRY_MAX_BYTES`] for people.
pub const ENTRY_MAX_BYTES_TEXT: &str = "16 MiB";

/// Most fields an event may have. A producer writes about fifteen; an
/// entry with hundreds of thousands would make one `attributes` value of
/// them, so it becomes a dead letter (kept whole) instead.
pub const FIELDS_MAX: usize = 10_000;

/// Earliest and latest year of a time genalytics stores: within what every
/// part of the pipeline (rollup hours, reports, flags) handles.
pub const YEARS: std::ops::RangeInclusive<i32> = 1900..=9999;

/// The three kinds of entry the producer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Request,
    Completion,
    Cancellation,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Request => "request",
            EventType::Completion => "completion",
            EventType::Cancellation => "cancellation",
        }
    }
}

/// One row of `generation_events`, minus what the database assigns.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub stream_id: EntryId,
    pub event_type: EventType,
    pub generation_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub timestamp: DateTime<Utc>,
    pub generation_type: Option<String>,
    pub duration_ms: Option<i32>,
    pub success: Option<bool>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub queue_wait_time_ms: Option<i32>,
    pub generation_time_ms: Option<i32>,
    pub model_checkpoint: Option<String>,
    pub image_dimensions: Option<Value>,
    pub batch_size: Option<i32>,
    pub prompt_tokens: Option<i32>,
    pub queue_length: Option<i32>,
    /// Fields the producer added that the schema has no column for.
    pub attributes: Option<Value>,
}

/// An entry's raw fields, exactly as Redis returned them, in order.
pub type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

/// A stream entry that could not become a row, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub stream_id: EntryId,
    pub fields: RawFields,
    pub reason: String,
    /// The fields were cut as they were read (the entry was too large).
    pub cut: bool,
}

/// Fields from name and value bytes, for tests.
#[cfg(test)]
pub(crate) fn raw(pairs: &[(&[u8], &[u8])]) -> RawFields {
    pairs
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
}
