//! Hourly rollups: the figures per UTC hour, computed by PostgreSQL and
//! upserted into `generation_metrics_hourly` (`sql`), late events merged
//! into hours whose raw events are gone (`late`, `rows`), and the queue of
//! hours that received events since they were last rolled up.
//!
//! Every hour boundary is computed in UTC explicitly, never through the
//! session's `TimeZone`.

mod chunks;
mod late;
mod partial;
mod rows;
mod sql;

use anyhow::Context;
use chrono::{DateTime, Utc};
use postgres::Client;

pub use chunks::{CHUNK_HOURS, Tally, roll_up_all, roll_up_chunk, roll_up_queued_before};
use late::{forget, merge_late};
pub use late::{late_events, late_failures, late_models, with_late};
pub use partial::{merged_select, refresh, refresh_current, without_part};
pub use rows::{
    USER_COLUMNS, hour_columns, hour_rollup, raw_user_rollup, user_aggregates, user_rollup,
};
pub use sql::{KIND_SQL, failures_select, hourly_select, models_select};
use sql::{failures_sql, models_sql, rollup_sql, users_sql};

/// Queued hours that are complete (or all of them, `include_current`),
/// oldest first.
pub fn queued_hours(
    client: &mut Client,
    include_current: bool,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let rows = client.query(
        "SELECT hour FROM generation_rollup_queue
         WHERE $1 OR hour < date_trunc('hour', now(), 'UTC')
         ORDER BY hour",
        &[&include_current],
    )?;
    Ok(rows.into_iter().map(|row| row.get(0)).collect())
}

/// Files an hour whose rollup failed: it stays (or goes) on the queue with
/// PostgreSQL's words, for `status` and the next run.
pub fn record_failure(client: &mut Client, hour: DateTime<Utc>, error: &str) -> anyhow::Result<()> {
    client.execute(
        "INSERT INTO generation_rollup_queue AS q (hour, last_error, failed_at, failures)
         VALUES ($1, $2, now(), 1)
         ON CONFLICT (hour) DO UPDATE
         SET last_error = EXCLUDED.last_error, failed_at = now(), failures = q.failures + 1",
        &[&hour, &error],
    )?;
    Ok(())
}

/// What one call of [`roll_up`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Hours rolled up from their raw events (each has a row now).
    pub rolled_up: u64,
    /// Hours before the raw horizon that late events were merged into.
    pub merged: u64,
    /// Hours before the raw horizon left as they were: no late events.
    pub kept: u64,
}

/// Rolls up `hours` (hour starts) in one transaction. Hours from the raw
/// horizon on are computed from their raw events; hours before it, whose
/// raw events were pruned, are never recomputed — the late events stored
/// for them since are merged in (see [`crate::rollup`]).
///
/// The hours are first taken off the queue — locking their queue rows, in
/// order, queued or not — and only then computed, in a later statement with a fresh
/// snapshot: a transfer that queued one of them meanwhile either committed
/// before (and its events are seen) or waits for this transaction and
/// queues the hour again. The horizon is read with a share lock, so a
/// prune cannot move it while this runs.
pub fn roll_up(client: &mut Client, hours: &[DateTime<Utc>]) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    if hours.is_empty() {
        return Ok(outcome);
    }
    let mut tx = client.transaction()?;
    // No JIT: these are short index-driven statements, and compiling them
    // costs more than running them (docs/performance.md).
    tx.batch_execute("SET LOCAL genalytics.writer = 'genalytics'; SET LOCAL jit = off")?;
    let horizon: Option<DateTime<Utc>> = crate::db::retention::horizon_held(&mut tx)?;
    // Every hour's queue row is held, queued or not (an upsert, in hour
    // order as transfer takes them): a transfer storing events for one of
    // them waits for this commit, so its events are neither in this
    // rollup and on the hour's late list, nor listed after the list was
    // read and taken off. Then off the queue.
    tx.execute(
        "INSERT INTO generation_rollup_queue AS q (hour) SELECT unnest($1::timestamptz[]) ORDER BY 1
         ON CONFLICT (hour) DO UPDATE SET queued_at = q.queued_at",
        &[&hours],
    )?;
    tx.execute(
        "DELETE FROM generation_rollup_queue WHERE hour = ANY($1)",
        &[&hours],
    )?;
    tx.execute(
        "DELETE FROM generation_rollup_partial WHERE hour = ANY($1)",
        &[&hours],
    )?;
    let (before, from): (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) = hours
        .iter()
        .partition(|hour| horizon.is_some_and(|horizon| **hour < horizon));
    if !from.is_empty() {
        // Counted from their raw events now, listed late events included.
        forget(&mut tx, &from)?;
        outcome.rolled_up = tx
            .execute(&rollup_sql(), &[&from])
            .context("cannot compute the hourly figures")?;
        tx.execute(
            "DELETE FROM generation_metrics_hourly_models WHERE timestamp = ANY($1)",
            &[&from],
        )?;
        tx.execute(&models_sql(), &[&from])
            .context("cannot compute the hourly figures per model")?;
        tx.execute(
            "DELETE FROM generation_metrics_hourly_failures WHERE timestamp = ANY($1)",
            &[&from],
        )?;
        tx.execute(&failures_sql(), &[&from])
            .context("cannot compute the hourly figures per error type")?;
        tx.execute(
            "DELETE FROM generation_metrics_hourly_users WHERE timestamp = ANY($1)",
            &[&from],
        )?;
        tx.execute(&users_sql(), &[&from])
            .context("cannot compute the hourly figures per user")?;
    }
    if !before.is_empty() {
        outcome.merged = merge_late(&mut tx, &before).context("cannot merge late events")?;
        outcome.kept = before.len() as u64 - outcome.merged;
    }
    tx.commit()?;
    Ok(outcome)
}
