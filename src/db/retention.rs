//! Deleting old raw events and dead letters, in bounded batches.

use chrono::{DateTime, Utc};
use postgres::Client;

/// The oldest hour whose rollup is still to be done, if any.
pub fn oldest_pending_hour(client: &mut Client) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(client
        .query_one("SELECT min(hour) FROM generation_rollup_queue", &[])?
        .get(0))
}

/// Raw events and dead letters older than `cutoff`.
pub fn count_older(client: &mut Client, cutoff: DateTime<Utc>) -> anyhow::Result<(i64, i64)> {
    let row = client.query_one(
        "SELECT (SELECT count(*) FROM generation_events WHERE timestamp < $1),
                (SELECT count(*) FROM generation_events_rejected WHERE received_at < $1)",
        &[&cutoff],
    )?;
    Ok((row.get(0), row.get(1)))
}

/// Deletes up to `limit` raw events older than `cutoff`, oldest first (via
/// the timestamp index); returns how many.
pub fn delete_events_batch(
    client: &mut Client,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> anyhow::Result<i64> {
    let deleted = client.execute(
        "DELETE FROM generation_events WHERE id IN (
             SELECT id FROM generation_events WHERE timestamp < $1 ORDER BY timestamp LIMIT $2)",
        &[&cutoff, &limit],
    )?;
    Ok(deleted as i64)
}

/// Deletes up to `limit` dead letters received before `cutoff`.
pub fn delete_rejected_batch(
    client: &mut Client,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> anyhow::Result<i64> {
    let deleted = client.execute(
        "DELETE FROM generation_events_rejected WHERE stream_id IN (
             SELECT stream_id FROM generation_events_rejected WHERE received_at < $1 LIMIT $2)",
        &[&cutoff, &limit],
    )?;
    Ok(deleted as i64)
}
