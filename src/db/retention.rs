//! Retention: the raw horizon and deleting what lies before it.
//!
//! The horizon is the start of the oldest hour that still has all its raw
//! events. It only moves forward, on whole hours, and never past an hour
//! still waiting for its rollup; it is moved in a transaction of its
//! own, under the lock transfer and aggregate share, before any raw event
//! is deleted. From then on, an hour before it is never rolled up again
//! from raw events (it would be rebuilt from a fraction); events arriving
//! for it are merged in instead.

use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient, Transaction};

/// Where the horizon stands and where a prune would move it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The horizon now (`None`: every hour has all its raw events).
    pub horizon: Option<DateTime<Utc>>,
    /// Where it goes: the cutoff, or earlier if an hour from the old
    /// horizon on still waits for its rollup.
    pub target: Option<DateTime<Utc>>,
    /// That hour, if it held the horizon back.
    pub held_by: Option<DateTime<Utc>>,
}

const PLAN_SQL: &str = "SELECT h.horizon,
        (SELECT min(q.hour) FROM generation_rollup_queue q
         WHERE q.hour >= coalesce(h.horizon, '-infinity'))
    FROM genalytics_raw_horizon h";

fn plan_of(row: &postgres::Row, cutoff: DateTime<Utc>) -> Plan {
    let horizon: Option<DateTime<Utc>> = row.get(0);
    let pending: Option<DateTime<Utc>> = row.get(1);
    let held_by = pending.filter(|hour| *hour < cutoff);
    let target = held_by
        .unwrap_or(cutoff)
        .max(horizon.unwrap_or(DateTime::<Utc>::MIN_UTC));
    Plan {
        horizon,
        target: Some(target),
        held_by,
    }
}

/// What a prune with this cutoff (a whole hour) would do; changes nothing.
pub fn plan(client: &mut Client, cutoff: DateTime<Utc>) -> anyhow::Result<Plan> {
    Ok(plan_of(&client.query_one(PLAN_SQL, &[])?, cutoff))
}

/// Moves the horizon to the plan's target, in a transaction of its own that
/// waits for running transfers and aggregates (they hold the horizon row
/// shared) and sees every hour they queued.
pub fn advance(client: &mut Client, cutoff: DateTime<Utc>) -> anyhow::Result<Plan> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT 1 FROM genalytics_raw_horizon FOR UPDATE", &[])?;
    let plan = plan_of(&tx.query_one(PLAN_SQL, &[])?, cutoff);
    if plan.target > plan.horizon {
        tx.execute(
            "UPDATE genalytics_raw_horizon SET horizon = $1, set_at = now()",
            &[&plan.target],
        )?;
    }
    tx.commit()?;
    Ok(plan)
}

/// Raw events before `horizon` whose hour waits for nothing, and dead
/// letters received before `received_before`.
pub fn count_older(
    client: &mut Client,
    horizon: DateTime<Utc>,
    received_before: DateTime<Utc>,
) -> anyhow::Result<(i64, i64)> {
    let row = client.query_one(
        &format!(
            "SELECT (SELECT count(*) FROM generation_events e WHERE {PRUNABLE}),
                    (SELECT count(*) FROM generation_events_rejected WHERE received_at < $2)"
        ),
        &[&horizon, &received_before],
    )?;
    Ok((row.get(0), row.get(1)))
}

/// A raw event prune may delete: before the horizon (`$1`), in an hour
/// that waits for nothing (late events wait to be merged).
const PRUNABLE: &str = "e.timestamp < $1 AND NOT EXISTS (
    SELECT 1 FROM generation_rollup_queue q WHERE q.hour = date_trunc('hour', e.timestamp, 'UTC'))";

/// Deletes up to `limit` prunable raw events, oldest first (via the
/// timestamp index); returns how many. Only the partitions at the edge
/// (and the default one) hold such events once whole days are dropped;
/// the outer condition on time keeps the others out of the plan.
pub fn delete_events_batch(
    client: &mut Client,
    horizon: DateTime<Utc>,
    limit: i64,
) -> anyhow::Result<i64> {
    let deleted = client.execute(
        &format!(
            "DELETE FROM generation_events WHERE timestamp < $1 AND (id, timestamp) IN (
                 SELECT e.id, e.timestamp FROM generation_events e WHERE {PRUNABLE}
                 ORDER BY e.timestamp LIMIT $2)"
        ),
        &[&horizon, &limit],
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
        "DELETE FROM generation_events_rejected WHERE ctid IN (
             SELECT ctid FROM generation_events_rejected WHERE received_at < $1 LIMIT $2)",
        &[&cutoff, &limit],
    )?;
    Ok(deleted as i64)
}

/// The horizon as it stands.
pub fn horizon(client: &mut impl GenericClient) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(client
        .query_one("SELECT horizon FROM genalytics_raw_horizon", &[])?
        .get(0))
}

/// The horizon, held where it stands until the transaction ends: a prune
/// waits to move it, so what the transaction decides by it stays true.
pub fn horizon_held(tx: &mut Transaction<'_>) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(tx
        .query_one("SELECT horizon FROM genalytics_raw_horizon FOR SHARE", &[])?
        .get(0))
}
