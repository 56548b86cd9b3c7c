//! One batch's transaction: the claim on the position, the rows, the dead
//! letters and the counters, committed together.

use anyhow::Context;
use postgres::Client;

use super::rows::{Mode, RowsStored, store_rows};
use super::{Prepared, set_stream};
use crate::db::rejected::write::{Letter, store_dead_letters};
use crate::db::streams::PositionMoved;
use crate::event::{EntryId, RawFields};

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
