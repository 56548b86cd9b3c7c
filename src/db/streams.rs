//! Where transfer stands in each stream: the position (the last entry
//! stored or dead-lettered), which incarnation of the key is being read,
//! what Redis said about it, and the lock that lets one transfer of a
//! stream run at a time.

use anyhow::Context;
use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient};

use crate::event::EntryId;
use crate::event::Position;
use crate::event::RawEntry;
use crate::stream::identity::Match;

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

/// The stored position is no longer the one this run read from: another
/// transfer (one that ran while this one was cut off from PostgreSQL), or a
/// hand, moved it. Nothing was written; reading the state again mends it.
#[derive(Debug, thiserror::Error)]
#[error(
    "another transfer moved the position of {0} while this one ran; nothing was stored twice — run transfer again to continue"
)]
pub struct PositionMoved(pub String);

/// What transfer has recorded for one stream key.
#[derive(Debug, Clone)]
pub struct TransferState {
    pub stream_key: String,
    /// The incarnation of the key being read (`genalytics_streams.id`).
    pub stream_ref: i32,
    pub position: EntryId,
    pub position_index: Option<u64>,
    pub observed_added: Option<u64>,
    pub events_stored: i64,
    pub entries_skipped: i64,
    pub last_transfer_at: DateTime<Utc>,
    pub resets: i32,
    pub last_reset_at: Option<DateTime<Utc>>,
    pub last_reset_lost: Option<i64>,
}

impl TransferState {
    pub fn position(&self) -> Position {
        Position {
            id: self.position,
            index: self.position_index,
        }
    }

    /// Entries the stream received that were never stored, as far as
    /// known: what Redis reported having added, less the position's index.
    pub fn unseen(&self) -> Option<u64> {
        Some(self.observed_added?.saturating_sub(self.position_index?))
    }
}

const STATE_COLUMNS: &str = "stream_key, stream_ref, last_id, \
    CASE WHEN index_id = last_id THEN position_index END, observed_added, \
    events_stored, entries_skipped, last_transfer_at, resets, last_reset_at, \
    last_reset_lost";

fn state_of(row: &postgres::Row) -> anyhow::Result<TransferState> {
    let count = |index: usize| row.get::<_, Option<i64>>(index).map(i64::unsigned_abs);
    let stream_key: String = row.get(0);
    let position = row.try_get(2).map_err(|_| {
        anyhow::anyhow!(
            "the stored position of {stream_key} (genalytics_transfer_state.last_id) is not a stream entry ID; \
             set it to the last entry ID stored, or '0-0' to read the stream from its start"
        )
    })?;
    Ok(TransferState {
        stream_key,
        stream_ref: row.get(1),
        position,
        position_index: count(3),
        observed_added: count(4),
        events_stored: row.get(5),
        entries_skipped: row.get(6),
        last_transfer_at: row.get(7),
        resets: row.get(8),
        last_reset_at: row.get(9),
        last_reset_lost: row.get(10),
    })
}

/// The recorded state, without creating anything.
pub fn state(
    client: &mut impl GenericClient,
    stream_key: &str,
) -> anyhow::Result<Option<TransferState>> {
    client
        .query_opt(
            &format!("SELECT {STATE_COLUMNS} FROM genalytics_transfer_state WHERE stream_key = $1"),
            &[&stream_key],
        )?
        .as_ref()
        .map(state_of)
        .transpose()
}

/// The state of a stream, creating it (and the key's first incarnation)
/// when transfer meets the key for the first time.
pub fn open(client: &mut Client, stream_key: &str) -> anyhow::Result<TransferState> {
    if let Some(state) = state(client, stream_key)? {
        // A position set by hand as `0` or `01795866564637` means `0-0` or
        // `1795866564637-0`: written so, since commits compare the text.
        // Computed from the row itself, so a commit meanwhile is kept.
        client.execute(
            "UPDATE genalytics_transfer_state
             SET last_id = split_part(last_id, '-', 1)::numeric::text || '-'
                 || coalesce(nullif(split_part(last_id, '-', 2), ''), '0')::numeric::text
             WHERE stream_key = $1 AND last_id ~ '^[0-9]+(-[0-9]+)?$'
               AND last_id <> split_part(last_id, '-', 1)::numeric::text || '-'
                 || coalesce(nullif(split_part(last_id, '-', 2), ''), '0')::numeric::text",
            &[&stream_key],
        )?;
        return Ok(state);
    }
    let mut tx = client.transaction()?;
    tx.execute(
        "WITH incarnation AS (
             INSERT INTO genalytics_streams (stream_key, incarnation) VALUES ($1, 1)
             ON CONFLICT (stream_key, incarnation) DO UPDATE SET stream_key = EXCLUDED.stream_key
             RETURNING id)
         INSERT INTO genalytics_transfer_state (stream_key, last_id, stream_ref)
         SELECT $1, '0-0', id FROM incarnation
         ON CONFLICT (stream_key) DO NOTHING",
        &[&stream_key],
    )?;
    let state =
        state(&mut tx, stream_key)?.context("the transfer state just created is missing")?;
    tx.commit()?;
    Ok(state)
}

/// Records that the key now holds another stream: a new incarnation, the
/// reset counted with the entries the old one had that were never stored
/// (`lost`, when known). With `from_start`, reading starts at the new
/// stream's first entry (`transfer --new-stream`); otherwise it goes on
/// after the position (the new stream's entries all come after it).
/// Refuses if another transfer moved the position meanwhile.
pub fn new_incarnation(
    client: &mut Client,
    old: &TransferState,
    lost: Option<u64>,
    from_start: bool,
) -> anyhow::Result<TransferState> {
    let mut tx = client.transaction()?;
    let created: i32 = tx
        .query_one(
            "INSERT INTO genalytics_streams (stream_key, incarnation)
             SELECT $1, coalesce(max(incarnation), 0) + 1 FROM genalytics_streams WHERE stream_key = $1
             RETURNING id",
            &[&old.stream_key],
        )?
        .get(0);
    let position = if from_start {
        EntryId::ZERO
    } else {
        old.position
    };
    let lost = lost.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let changed = tx.execute(
        "UPDATE genalytics_transfer_state
         SET stream_ref = $3, last_id = $4, position_index = NULL, observed_added = NULL,
             observed_at = NULL, resets = resets + 1, last_reset_at = now(), last_reset_lost = $5
         WHERE stream_key = $1 AND last_id = $2 AND stream_ref = $6",
        &[
            &old.stream_key,
            &old.position,
            &created,
            &position,
            &lost,
            &old.stream_ref,
        ],
    )?;
    if changed != 1 {
        return Err(PositionMoved(old.stream_key.clone()).into());
    }
    let state = state(&mut tx, &old.stream_key)?.context("the transfer state is missing")?;
    tx.commit()?;
    Ok(state)
}

/// What Redis said of the stream since the last commit, for the next
/// comparison: written only while the position is still `position`.
pub fn note_observed(
    client: &mut Client,
    stream_key: &str,
    position: &Position,
    observed_added: Option<u64>,
) -> anyhow::Result<()> {
    let to_sql = |n: Option<u64>| n.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    client.execute(
        "UPDATE genalytics_transfer_state
         SET position_index = coalesce($3, position_index),
             index_id = CASE WHEN $3::int8 IS NULL THEN index_id ELSE last_id END,
             observed_added = greatest(observed_added, $4),
             observed_at = CASE WHEN $4::int8 IS NULL THEN observed_at ELSE now() END
         WHERE stream_key = $1 AND last_id = $2",
        &[
            &stream_key,
            &position.id,
            &to_sql(position.index),
            &to_sql(observed_added),
        ],
    )?;
    Ok(())
}

/// What the database holds of an entry, for [`identity`]: the entry
/// itself, another entry under its ID, or nothing under its ID.
///
/// [`identity`]: crate::stream::identity
pub struct Stored<'a> {
    pub client: &'a mut Client,
    pub stream_key: &'a str,
    /// The incarnation the position belongs to.
    pub stream_ref: i32,
}

impl crate::stream::identity::Store for Stored<'_> {
    /// A row with its ID and every column the entry gave it, or a dead
    /// letter with its ID and exactly its bytes: an ID alone proves
    /// nothing, a new stream hands out the same IDs, and a replacement may
    /// repeat an entry's type, generation, user and time while every other
    /// field differs.
    fn compare(&mut self, entry: &RawEntry) -> anyhow::Result<Match> {
        let row: Option<bool> = match crate::event::parse(entry.id, &entry.fields) {
            Ok(event) => self
                .client
                .query_opt(
                    "SELECT event_type = $3 AND generation_id IS NOT DISTINCT FROM $4
                         AND user_id IS NOT DISTINCT FROM $5 AND timestamp = $6
                         AND generation_type IS NOT DISTINCT FROM $7
                         AND duration_ms IS NOT DISTINCT FROM $8
                         AND success IS NOT DISTINCT FROM $9
                         AND error_type IS NOT DISTINCT FROM $10
                         AND error_message IS NOT DISTINCT FROM $11
                         AND queue_wait_time_ms IS NOT DISTINCT FROM $12
                         AND generation_time_ms IS NOT DISTINCT FROM $13
                         AND model_checkpoint IS NOT DISTINCT FROM $14
                         AND image_dimensions IS NOT DISTINCT FROM $15
                         AND batch_size IS NOT DISTINCT FROM $16
                         AND prompt_tokens IS NOT DISTINCT FROM $17
                         AND queue_length IS NOT DISTINCT FROM $18
                         AND attributes IS NOT DISTINCT FROM $19
                     FROM generation_events WHERE stream = $1 AND stream_id = $2",
                    &[
                        &self.stream_ref,
                        &entry.id,
                        &event.event_type.as_str(),
                        &event.generation_id,
                        &event.user_id,
                        &event.timestamp,
                        &event.generation_type,
                        &event.duration_ms,
                        &event.success,
                        &event.error_type,
                        &event.error_message,
                        &event.queue_wait_time_ms,
                        &event.generation_time_ms,
                        &event.model_checkpoint,
                        &event.image_dimensions,
                        &event.batch_size,
                        &event.prompt_tokens,
                        &event.queue_length,
                        &event.attributes,
                    ],
                )?
                .map(|row| row.get(0)),
            Err(_) => self
                .client
                .query_opt(
                    "SELECT false FROM generation_events WHERE stream = $1 AND stream_id = $2",
                    &[&self.stream_ref, &entry.id],
                )?
                .map(|row| row.get(0)),
        };
        let same = match row {
            Some(same) => Some(same),
            None => self
                .client
                .query_opt(
                    "SELECT raw_fields IS NOT DISTINCT FROM $3 FROM generation_events_rejected
                     WHERE stream = $1 AND stream_id = $2",
                    &[&self.stream_ref, &entry.id, &super::flat_raw(&entry.fields)],
                )?
                .map(|row| row.get(0)),
        };
        Ok(match same {
            Some(true) => Match::Same,
            Some(false) => Match::Different,
            None => Match::Absent,
        })
    }

    /// Stored as a row or a dead letter from any stream of the key.
    fn holds_id(&mut self, id: EntryId) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM generation_events e JOIN genalytics_streams s ON s.id = e.stream
                                WHERE s.stream_key = $1 AND e.stream_id = $2)
                     OR EXISTS (SELECT 1 FROM generation_events_rejected r
                                JOIN genalytics_streams s ON s.id = r.stream
                                WHERE s.stream_key = $1 AND r.stream_id = $2)",
                &[&self.stream_key, &id],
            )?
            .get(0))
    }
}

/// Records that the stream went back to an older state of itself: what
/// was known of its counters no longer holds.
pub fn rewound(client: &mut Client, state: &TransferState) -> anyhow::Result<()> {
    client.execute(
        "UPDATE genalytics_transfer_state SET position_index = NULL, observed_added = NULL
         WHERE stream_key = $1 AND last_id = $2",
        &[&state.stream_key, &state.position],
    )?;
    Ok(())
}
