//! Hourly rollups: the figures of SPEC §4 per UTC hour, computed by
//! PostgreSQL and upserted into `generation_metrics_hourly`, and the queue
//! of hours that received events since they were last rolled up.
//!
//! Every hour boundary is computed in UTC explicitly, never through the
//! session's `TimeZone`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use postgres::{Client, Transaction};
use uuid::Uuid;

use crate::histogram::{Histogram, KEY_SQL};
use crate::rollup::{FailureRollup, HourRollup, ModelRollup, UserRollup};

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
/// order — and only then computed, in a later statement with a fresh
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
    // JIT compiled these index-driven statements for ~170 ms each, more
    // than running them took (measured by the aggregate benchmark).
    tx.batch_execute("SET LOCAL genalytics.writer = 'genalytics'; SET LOCAL jit = off")?;
    let horizon: Option<DateTime<Utc>> = tx
        .query_one("SELECT horizon FROM genalytics_raw_horizon FOR SHARE", &[])?
        .get(0);
    tx.execute(
        "DELETE FROM generation_rollup_queue WHERE hour IN (
             SELECT hour FROM generation_rollup_queue WHERE hour = ANY($1) ORDER BY hour FOR UPDATE)",
        &[&hours],
    )?;
    let (before, from): (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) = hours
        .iter()
        .partition(|hour| horizon.is_some_and(|horizon| **hour < horizon));
    if !from.is_empty() {
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

/// The late events of `hours`, taken off their list, as (id, timestamp).
fn take_late(
    tx: &mut Transaction<'_>,
    hours: &[DateTime<Utc>],
) -> anyhow::Result<(Vec<i64>, Vec<DateTime<Utc>>)> {
    Ok(tx
        .query(
            "DELETE FROM generation_rollup_late WHERE hour = ANY($1) RETURNING event_id, event_at",
            &[&hours],
        )?
        .into_iter()
        .map(|row| (row.get::<_, i64>(0), row.get::<_, DateTime<Utc>>(1)))
        .unzip())
}

/// The late events themselves, for the statements below: `$1` their ids,
/// `$2` their times (which lets PostgreSQL go straight to their partition).
const LATE: &str = "late AS (
    SELECT e.* FROM unnest($1::int8[], $2::timestamptz[]) AS l(id, at)
    JOIN generation_events e ON e.id = l.id AND e.timestamp = l.at)";

/// Merges the late events of hours before the horizon into the hours'
/// rollups; returns how many hours had any.
fn merge_late(tx: &mut Transaction<'_>, hours: &[DateTime<Utc>]) -> anyhow::Result<u64> {
    let (ids, ats) = take_late(tx, hours)?;
    if ids.is_empty() {
        return Ok(0);
    }
    let ok = "event_type = 'completion' AND success";
    let late_hours = tx.query(
        &format!(
            "WITH {LATE}
             SELECT date_trunc('hour', timestamp, 'UTC'),
                 count(*) FILTER (WHERE event_type = 'request'),
                 count(*) FILTER (WHERE {ok}),
                 count(*) FILTER (WHERE event_type = 'completion' AND NOT success),
                 count(*) FILTER (WHERE event_type = 'cancellation'),
                 coalesce(sum(duration_ms) FILTER (WHERE {ok}), 0)::int8,
                 count(duration_ms) FILTER (WHERE {ok}),
                 percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
                     FILTER (WHERE {ok}),
                 coalesce(array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL), '{{}}'),
                 coalesce(sum(coalesce(batch_size, 1)) FILTER (WHERE {ok}), 0)::int8,
                 coalesce(sum(queue_length), 0)::int8, count(queue_length), max(queue_length),
                 coalesce(array_agg({KEY_SQL}) FILTER (WHERE {ok} AND duration_ms IS NOT NULL), '{{}}')
             FROM late GROUP BY 1"
        ),
        &[&ids, &ats],
    )?;
    for row in &late_hours {
        let hour: DateTime<Utc> = row.get(0);
        let exact: Option<Vec<f64>> = row.get(7);
        let users: Vec<Uuid> = row.get(8);
        let keys: Vec<i32> = row.get(13);
        let late = HourRollup {
            requests: row.get(1),
            successful: row.get(2),
            failed: row.get(3),
            cancelled: row.get(4),
            duration_sum: row.get(5),
            duration_count: row.get(6),
            histogram: Histogram::from_keys(&keys),
            unique_users: users.len() as i64,
            users: users.into_iter().collect(),
            images: row.get(9),
            queue_sum: row.get(10),
            queue_samples: row.get(11),
            max_queue: row.get::<_, Option<i32>>(12).map(i64::from),
            percentiles: [0, 1, 2].map(|i| {
                exact
                    .as_ref()
                    .and_then(|q| q.get(i))
                    .map(|&v| crate::report::whole_ms(v))
            }),
            percentiles_exact: Some(true),
            hist_complete: true,
            users_complete: true,
            legacy: false,
        };
        let (merged, new) = match read_hour(tx, hour)? {
            Some(mut stored) => {
                stored.merge(&late);
                (stored, false)
            }
            // An hour that had no events: these are all of them.
            None => (late, true),
        };
        write_hour(tx, hour, &merged, new)?;
    }
    merge_late_models(tx, &ids, &ats)?;
    merge_late_failures(tx, &ids, &ats)?;
    merge_late_users(tx, &ids, &ats)?;
    Ok(late_hours.len() as u64)
}

const HOUR_COLUMNS: &str = "total_requests, successful_generations, failed_generations,
    cancelled_generations, duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts,
    user_ids, unique_users, total_images_generated, queue_length_sum, queue_length_samples,
    max_queue_length, p50_duration_ms, p95_duration_ms, p99_duration_ms, percentiles_exact,
    hist_complete, users_complete, legacy, avg_duration_ms";

/// An hourly row, locked for the merge. The original service's rows have
/// no duration sum: their average, weighted by their successes, stands in.
fn read_hour(tx: &mut Transaction<'_>, hour: DateTime<Utc>) -> anyhow::Result<Option<HourRollup>> {
    let Some(row) = tx.query_opt(
        &format!(
            "SELECT {HOUR_COLUMNS} FROM generation_metrics_hourly WHERE timestamp = $1 FOR UPDATE"
        ),
        &[&hour],
    )?
    else {
        return Ok(None);
    };
    let int = |i: usize| i64::from(row.get::<_, i32>(i));
    let optional = |i: usize| row.get::<_, Option<i32>>(i).map(i64::from);
    let successful = int(1);
    let average = optional(21);
    let keys: Option<Vec<i32>> = row.get(6);
    let counts: Option<Vec<i32>> = row.get(7);
    let users: Option<Vec<Uuid>> = row.get(8);
    Ok(Some(HourRollup {
        requests: int(0),
        successful,
        failed: int(2),
        cancelled: int(3),
        duration_sum: row
            .get::<_, Option<i64>>(4)
            .unwrap_or_else(|| average.map_or(0, |avg| avg * successful)),
        duration_count: optional(5).unwrap_or(if average.is_some() { successful } else { 0 }),
        histogram: Histogram::from_parts(
            keys.as_deref().unwrap_or_default(),
            counts.as_deref().unwrap_or_default(),
        ),
        users: users.unwrap_or_default().into_iter().collect(),
        unique_users: optional(9).unwrap_or(0),
        images: row.get::<_, Option<i64>>(10).unwrap_or(0),
        queue_sum: row.get::<_, Option<i64>>(11).unwrap_or(0),
        queue_samples: optional(12).unwrap_or(0),
        max_queue: optional(13),
        percentiles: [optional(14), optional(15), optional(16)],
        percentiles_exact: row.get(17),
        hist_complete: row.get(18),
        users_complete: row.get(19),
        legacy: row.get(20),
    }))
}

/// Writes a merged hour; `new` when the hour had no row, so that its
/// per-user rows, merged beside it, are all of them.
fn write_hour(
    tx: &mut Transaction<'_>,
    hour: DateTime<Utc>,
    h: &HourRollup,
    new: bool,
) -> anyhow::Result<()> {
    let (keys, counts) = h.histogram.to_parts();
    let users: Vec<Uuid> = h.users.iter().copied().collect();
    let [p50, p95, p99] = h.percentiles;
    tx.execute(
        "INSERT INTO generation_metrics_hourly AS m (
             timestamp, total_requests, successful_generations, failed_generations, cancelled_generations,
             avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms, unique_users,
             avg_queue_length, max_queue_length, total_images_generated, duration_sum_ms, duration_count,
             duration_hist_keys, duration_hist_counts, user_ids, queue_length_sum, queue_length_samples,
             percentiles_exact, hist_complete, users_complete, legacy, users_rolled_up, updated_at)
         VALUES ($1, $2::int8::int4, $3::int8::int4, $4::int8::int4, $5::int8::int4,
             $6::int8::int4, $7::int8::int4, $8::int8::int4, $9::int8::int4, $10::int8::int4,
             $11, $12::int8::int4, $13, $14, $15::int8::int4,
             $16, $17, $18, $19, $20::int8::int4, $21, $22, $23, $24, $25, now())
         ON CONFLICT (timestamp) DO UPDATE SET
             total_requests = EXCLUDED.total_requests,
             successful_generations = EXCLUDED.successful_generations,
             failed_generations = EXCLUDED.failed_generations,
             cancelled_generations = EXCLUDED.cancelled_generations,
             avg_duration_ms = EXCLUDED.avg_duration_ms,
             p50_duration_ms = EXCLUDED.p50_duration_ms,
             p95_duration_ms = EXCLUDED.p95_duration_ms,
             p99_duration_ms = EXCLUDED.p99_duration_ms,
             unique_users = EXCLUDED.unique_users,
             avg_queue_length = EXCLUDED.avg_queue_length,
             max_queue_length = EXCLUDED.max_queue_length,
             total_images_generated = EXCLUDED.total_images_generated,
             duration_sum_ms = EXCLUDED.duration_sum_ms,
             duration_count = EXCLUDED.duration_count,
             duration_hist_keys = EXCLUDED.duration_hist_keys,
             duration_hist_counts = EXCLUDED.duration_hist_counts,
             user_ids = EXCLUDED.user_ids,
             queue_length_sum = EXCLUDED.queue_length_sum,
             queue_length_samples = EXCLUDED.queue_length_samples,
             percentiles_exact = EXCLUDED.percentiles_exact,
             hist_complete = EXCLUDED.hist_complete,
             users_complete = EXCLUDED.users_complete,
             legacy = EXCLUDED.legacy,
             updated_at = EXCLUDED.updated_at",
        &[
            &hour,
            &h.requests,
            &h.successful,
            &h.failed,
            &h.cancelled,
            &h.avg_duration_ms(),
            &p50,
            &p95,
            &p99,
            &h.unique_users,
            &h.avg_queue_length(),
            &h.max_queue,
            &h.images,
            &h.duration_sum,
            &h.duration_count,
            &keys,
            &counts,
            &users,
            &h.queue_sum,
            &h.queue_samples,
            &h.percentiles_exact,
            &h.hist_complete,
            &h.users_complete,
            &h.legacy,
            &new,
        ],
    )?;
    Ok(())
}

fn merge_late_models(
    tx: &mut Transaction<'_>,
    ids: &[i64],
    ats: &[DateTime<Utc>],
) -> anyhow::Result<()> {
    let rows = tx.query(
        &format!(
            "WITH {LATE}
             SELECT date_trunc('hour', timestamp, 'UTC'), model_checkpoint, count(*),
                 count(*) FILTER (WHERE success), count(*) FILTER (WHERE NOT success),
                 coalesce(sum(duration_ms) FILTER (WHERE success), 0)::int8,
                 count(duration_ms) FILTER (WHERE success),
                 coalesce(array_agg({KEY_SQL}) FILTER (WHERE success AND duration_ms IS NOT NULL), '{{}}'),
                 max(timestamp)
             FROM late WHERE event_type = 'completion' GROUP BY 1, 2"
        ),
        &[&ids, &ats],
    )?;
    for row in rows {
        let hour: DateTime<Utc> = row.get(0);
        let model: Option<String> = row.get(1);
        let keys: Vec<i32> = row.get(7);
        let late = ModelRollup {
            total: row.get(2),
            successful: row.get(3),
            failed: row.get(4),
            duration_sum: row.get(5),
            duration_count: row.get(6),
            histogram: Histogram::from_keys(&keys),
            last_used_at: row.get(8),
        };
        let stored = tx.query_opt(
            "DELETE FROM generation_metrics_hourly_models
             WHERE timestamp = $1 AND model_checkpoint IS NOT DISTINCT FROM $2
             RETURNING total_generations, successful_generations, failed_generations, duration_sum_ms,
                 duration_count, duration_hist_keys, duration_hist_counts, last_used_at",
            &[&hour, &model],
        )?;
        let merged = match stored {
            Some(row) => {
                let (keys, counts): (Vec<i32>, Vec<i32>) = (row.get(5), row.get(6));
                let mut stored = ModelRollup {
                    total: i64::from(row.get::<_, i32>(0)),
                    successful: i64::from(row.get::<_, i32>(1)),
                    failed: i64::from(row.get::<_, i32>(2)),
                    duration_sum: row.get(3),
                    duration_count: i64::from(row.get::<_, i32>(4)),
                    histogram: Histogram::from_parts(&keys, &counts),
                    last_used_at: row.get(7),
                };
                stored.merge(&late);
                stored
            }
            None => late,
        };
        let (keys, counts) = merged.histogram.to_parts();
        tx.execute(
            "INSERT INTO generation_metrics_hourly_models (
                 timestamp, model_checkpoint, total_generations, successful_generations, failed_generations,
                 duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts, last_used_at)
             VALUES ($1, $2, $3::int8::int4, $4::int8::int4, $5::int8::int4, $6, $7::int8::int4, $8, $9, $10)",
            &[
                &hour,
                &model,
                &merged.total,
                &merged.successful,
                &merged.failed,
                &merged.duration_sum,
                &merged.duration_count,
                &keys,
                &counts,
                &merged.last_used_at,
            ],
        )?;
    }
    Ok(())
}

fn merge_late_failures(
    tx: &mut Transaction<'_>,
    ids: &[i64],
    ats: &[DateTime<Utc>],
) -> anyhow::Result<()> {
    let rows = tx.query(
        &format!(
            "WITH {LATE}
             SELECT date_trunc('hour', timestamp, 'UTC'), error_type, count(*),
                 coalesce(sum(duration_ms), 0)::int8, count(duration_ms),
                 coalesce(array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL), '{{}}'),
                 coalesce((array_agg(DISTINCT {SAMPLE}) FILTER (WHERE error_message IS NOT NULL))[1:3], '{{}}')
             FROM late WHERE event_type = 'completion' AND NOT success GROUP BY 1, 2"
        ),
        &[&ids, &ats],
    )?;
    for row in rows {
        let hour: DateTime<Utc> = row.get(0);
        let error_type: Option<String> = row.get(1);
        let users: Vec<Uuid> = row.get(5);
        let late = FailureRollup {
            failures: row.get(2),
            duration_sum: row.get(3),
            duration_count: row.get(4),
            users: users.into_iter().collect(),
            sample_messages: row.get(6),
        };
        let stored = tx.query_opt(
            "DELETE FROM generation_metrics_hourly_failures
             WHERE timestamp = $1 AND error_type IS NOT DISTINCT FROM $2
             RETURNING failures, duration_sum_ms, duration_count, user_ids, sample_messages",
            &[&hour, &error_type],
        )?;
        let merged = match stored {
            Some(row) => {
                let users: Vec<Uuid> = row.get(3);
                let mut stored = FailureRollup {
                    failures: i64::from(row.get::<_, i32>(0)),
                    duration_sum: row.get(1),
                    duration_count: i64::from(row.get::<_, i32>(2)),
                    users: users.into_iter().collect(),
                    sample_messages: row.get(4),
                };
                stored.merge(&late);
                stored
            }
            None => late,
        };
        let users: Vec<Uuid> = merged.users.iter().copied().collect();
        tx.execute(
            "INSERT INTO generation_metrics_hourly_failures (
                 timestamp, error_type, failures, duration_sum_ms, duration_count, user_ids, sample_messages)
             VALUES ($1, $2, $3::int8::int4, $4, $5::int8::int4, $6, $7)",
            &[
                &hour,
                &error_type,
                &merged.failures,
                &merged.duration_sum,
                &merged.duration_count,
                &users,
                &merged.sample_messages,
            ],
        )?;
    }
    Ok(())
}

fn merge_late_users(
    tx: &mut Transaction<'_>,
    ids: &[i64],
    ats: &[DateTime<Utc>],
) -> anyhow::Result<()> {
    let rows = tx.query(
        &format!(
            "WITH {LATE}
             SELECT date_trunc('hour', e.timestamp, 'UTC'), e.user_id,
                 count(*) FILTER (WHERE kind = 1), count(*) FILTER (WHERE kind = 2),
                 count(*) FILTER (WHERE kind = 3), count(*) FILTER (WHERE kind = 4),
                 coalesce(sum(e.duration_ms) FILTER (WHERE kind = 2), 0)::int8,
                 count(e.duration_ms) FILTER (WHERE kind = 2),
                 coalesce(array_agg({KEY_SQL}) FILTER (WHERE kind = 2 AND e.duration_ms IS NOT NULL), '{{}}'),
                 coalesce(array_agg(e.error_type) FILTER (WHERE kind = 3), '{{}}'),
                 min(e.timestamp), max(e.timestamp)
             FROM late e CROSS JOIN LATERAL (SELECT {KIND_SQL} AS kind) k
             WHERE e.user_id IS NOT NULL GROUP BY 1, 2"
        ),
        &[&ids, &ats],
    )?;
    for row in rows {
        let hour: DateTime<Utc> = row.get(0);
        let user: Uuid = row.get(1);
        let keys: Vec<i32> = row.get(8);
        let errors: Vec<Option<String>> = row.get(9);
        let mut late = UserRollup {
            requests: row.get(2),
            successful: row.get(3),
            failed: row.get(4),
            cancelled: row.get(5),
            duration_sum: row.get(6),
            duration_count: row.get(7),
            histogram: Histogram::from_keys(&keys),
            first_event_at: row.get(10),
            last_event_at: row.get(11),
            ..UserRollup::default()
        };
        for error in errors {
            *late.errors.entry(error).or_default() += 1;
        }
        let stored = tx.query_opt(
            &format!(
                "DELETE FROM generation_metrics_hourly_users WHERE timestamp = $1 AND user_id = $2
                 RETURNING {USER_COLUMNS}"
            ),
            &[&hour, &user],
        )?;
        let merged = match stored {
            Some(row) => {
                let mut stored = user_rollup(&row);
                stored.merge(&late);
                stored
            }
            None => late,
        };
        let (keys, counts) = merged.histogram.to_parts();
        let (types, type_counts): (Vec<Option<String>>, Vec<i64>) =
            merged.errors.into_iter().unzip();
        tx.execute(
            "INSERT INTO generation_metrics_hourly_users (
                 timestamp, user_id, total_requests, successful_generations, failed_generations,
                 cancelled_generations, duration_sum_ms, duration_count, duration_hist_keys,
                 duration_hist_counts, error_types, error_counts, first_event_at, last_event_at)
             VALUES ($1, $2, $3::int8::int4, $4::int8::int4, $5::int8::int4, $6::int8::int4, $7,
                 $8::int8::int4, $9, $10, $11, $12::int8[]::int4[], $13, $14)",
            &[
                &hour,
                &user,
                &merged.requests,
                &merged.successful,
                &merged.failed,
                &merged.cancelled,
                &merged.duration_sum,
                &merged.duration_count,
                &keys,
                &counts,
                &types,
                &type_counts,
                &merged.first_event_at,
                &merged.last_event_at,
            ],
        )?;
    }
    Ok(())
}

/// The columns [`user_rollup`] reads, in its order.
pub const USER_COLUMNS: &str = "total_requests, successful_generations, failed_generations,
    cancelled_generations, duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts,
    error_types, error_counts, first_event_at, last_event_at";

/// A `generation_metrics_hourly_users` row, selected as [`USER_COLUMNS`].
pub fn user_rollup(row: &postgres::Row) -> UserRollup {
    let int = |i: usize| i64::from(row.get::<_, i32>(i));
    let (keys, counts): (Vec<i32>, Vec<i32>) = (row.get(6), row.get(7));
    let (types, type_counts): (Vec<Option<String>>, Vec<i32>) = (row.get(8), row.get(9));
    UserRollup {
        requests: int(0),
        successful: int(1),
        failed: int(2),
        cancelled: int(3),
        duration_sum: row.get(4),
        duration_count: int(5),
        histogram: Histogram::from_parts(&keys, &counts),
        errors: types
            .into_iter()
            .zip(type_counts.into_iter().map(i64::from))
            .collect(),
        first_event_at: row.get(10),
        last_event_at: row.get(11),
    }
}

/// A sample message as kept: its first 300 characters (a message of
/// megabytes is an example, not a report).
const SAMPLE: &str = "left(error_message, 300)";

/// A derived table `f` with a column `hour` and, per hour and `keys`, the
/// `aggregates` over the rows `columns` selects from the events matching
/// `filter`, `$1` being the hours. Each hour is read on its own through the
/// timestamp index (LATERAL): faster than one range grouped by hour (which
/// sorts every event by its hour) and than a join of hours to events by
/// range (for which the planner scanned every failure of the table once
/// per hour) — measured by the aggregate benchmark.
fn each_hour(columns: &str, filter: &str, keys: &str, aggregates: &str) -> String {
    let (keys_out, group) = if keys.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{keys}, "), format!("GROUP BY {keys}"))
    };
    format!(
        "(SELECT h.hour, f.* FROM (SELECT DISTINCT unnest($1::timestamptz[]) AS hour) h
         CROSS JOIN LATERAL (
             SELECT {keys_out}{aggregates}
             FROM (SELECT {columns} FROM generation_events e
                   WHERE e.timestamp >= h.hour AND e.timestamp < h.hour + interval '1 hour' {filter}
                   OFFSET 0) e
             {group}
         ) f) f"
    )
}

/// Per hour and model: completions, outcomes, the duration sum, count and
/// histogram over successful completions, and the last use.
fn models_sql() -> String {
    let source = each_hour(
        "e.model_checkpoint, e.success, e.duration_ms, e.timestamp AS at",
        "AND e.event_type = 'completion'",
        "model_checkpoint",
        &format!(
            "count(*)::int AS total,
             (count(*) FILTER (WHERE success))::int AS successful,
             (count(*) FILTER (WHERE NOT success))::int AS failed,
             sum(duration_ms) FILTER (WHERE success) AS duration_sum,
             (count(duration_ms) FILTER (WHERE success))::int AS duration_count,
             array_agg({KEY_SQL}) FILTER (WHERE success AND duration_ms IS NOT NULL) AS bucket_keys,
             max(at) AS last_used_at"
        ),
    );
    format!(
        "INSERT INTO generation_metrics_hourly_models (
            timestamp, model_checkpoint, total_generations, successful_generations, failed_generations,
            duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts, last_used_at)
        SELECT f.hour, f.model_checkpoint, f.total, f.successful, f.failed,
            coalesce(f.duration_sum, 0), f.duration_count,
            coalesce(b.keys, '{{}}'), coalesce(b.counts, '{{}}'), f.last_used_at
        FROM {source}
        CROSS JOIN LATERAL ({BUCKETS}) b"
    )
}

/// Per hour and error type of failed completions: how many, their
/// duration as sent (zeros included), who was affected, a few messages
/// (their first 300 characters).
fn failures_sql() -> String {
    let source = each_hour(
        "e.error_type, e.duration_ms, e.user_id, e.error_message",
        "AND e.event_type = 'completion' AND NOT e.success",
        "error_type",
        "count(*)::int AS failures,
         coalesce(sum(duration_ms), 0) AS duration_sum,
         count(duration_ms)::int AS duration_count,
         coalesce(array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL), '{}') AS user_ids,
         coalesce((array_agg(DISTINCT left(error_message, 300))
             FILTER (WHERE error_message IS NOT NULL))[1:3], '{}') AS sample_messages",
    );
    format!(
        "INSERT INTO generation_metrics_hourly_failures (
            timestamp, error_type, failures, duration_sum_ms, duration_count, user_ids, sample_messages)
        SELECT f.hour, f.error_type, f.failures, f.duration_sum, f.duration_count, f.user_ids,
            f.sample_messages
        FROM {source}"
    )
}

/// A histogram from the bucket keys one pass collected: keys and counts
/// in two parallel arrays, as the rows store them.
const BUCKETS: &str =
    "SELECT array_agg(key ORDER BY key) AS keys, array_agg(n ORDER BY key) AS counts
    FROM (SELECT key, count(*)::int AS n FROM unnest(f.bucket_keys) AS key GROUP BY key) buckets";

/// The upsert for a set of hours: counts, duration figures over successful
/// completions with a duration (exact percentiles as `percentile_cont`,
/// rounded half away from zero), the hour's user set, images, queue-length
/// samples, the duration sum and count, and the histogram — all in one
/// pass over each hour's events, with each event's kind computed once as a
/// small integer (comparing the event type's text in every filter cost a
/// third of the time). An hour without events yields no row; rows are
/// locked in hour order, so overlapping runs cannot deadlock.
fn rollup_sql() -> String {
    let source = each_hour(
        &format!("{KIND_SQL} AS kind, e.duration_ms, e.user_id, e.batch_size, e.queue_length"),
        "",
        "",
        &format!(
            "count(*) AS events,
             count(*) FILTER (WHERE kind = 1) AS requests,
             count(*) FILTER (WHERE kind = 2) AS successful,
             count(*) FILTER (WHERE kind = 3) AS failed,
             count(*) FILTER (WHERE kind = 4) AS cancelled,
             sum(duration_ms) FILTER (WHERE kind = 2) AS duration_sum,
             count(duration_ms) FILTER (WHERE kind = 2) AS duration_count,
             percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
                 FILTER (WHERE kind = 2) AS percentiles,
             array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL) AS user_ids,
             sum(coalesce(batch_size, 1)) FILTER (WHERE kind = 2) AS images,
             avg(queue_length) AS avg_queue,
             max(queue_length) AS max_queue,
             sum(queue_length) AS queue_sum,
             count(queue_length) AS queue_samples,
             array_agg({KEY_SQL}) FILTER (WHERE kind = 2 AND duration_ms IS NOT NULL) AS bucket_keys"
        ),
    );
    format!(
        "INSERT INTO generation_metrics_hourly AS m (
            timestamp, total_requests, successful_generations, failed_generations, cancelled_generations,
            avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms, unique_users,
            avg_queue_length, max_queue_length, total_images_generated,
            duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts, user_ids,
            queue_length_sum, queue_length_samples, percentiles_exact, hist_complete, users_complete,
            legacy, users_rolled_up, updated_at)
        SELECT f.hour, f.requests, f.successful, f.failed, f.cancelled,
            round(f.duration_sum::numeric / nullif(f.duration_count, 0))::int,
            round(f.percentiles[1]::numeric)::int,
            round(f.percentiles[2]::numeric)::int,
            round(f.percentiles[3]::numeric)::int,
            coalesce(cardinality(f.user_ids), 0),
            f.avg_queue::float8, f.max_queue, coalesce(f.images, 0),
            coalesce(f.duration_sum, 0), f.duration_count,
            coalesce(b.keys, '{{}}'), coalesce(b.counts, '{{}}'), coalesce(f.user_ids, '{{}}'),
            coalesce(f.queue_sum, 0), f.queue_samples, true, true, true, false, true, now()
        FROM {source}
        CROSS JOIN LATERAL ({BUCKETS}) b
        WHERE f.events > 0
        ORDER BY f.hour
        ON CONFLICT (timestamp) DO UPDATE SET
            total_requests = EXCLUDED.total_requests,
            successful_generations = EXCLUDED.successful_generations,
            failed_generations = EXCLUDED.failed_generations,
            cancelled_generations = EXCLUDED.cancelled_generations,
            avg_duration_ms = EXCLUDED.avg_duration_ms,
            p50_duration_ms = EXCLUDED.p50_duration_ms,
            p95_duration_ms = EXCLUDED.p95_duration_ms,
            p99_duration_ms = EXCLUDED.p99_duration_ms,
            unique_users = EXCLUDED.unique_users,
            avg_queue_length = EXCLUDED.avg_queue_length,
            max_queue_length = EXCLUDED.max_queue_length,
            total_images_generated = EXCLUDED.total_images_generated,
            duration_sum_ms = EXCLUDED.duration_sum_ms,
            duration_count = EXCLUDED.duration_count,
            duration_hist_keys = EXCLUDED.duration_hist_keys,
            duration_hist_counts = EXCLUDED.duration_hist_counts,
            user_ids = EXCLUDED.user_ids,
            queue_length_sum = EXCLUDED.queue_length_sum,
            queue_length_samples = EXCLUDED.queue_length_samples,
            percentiles_exact = EXCLUDED.percentiles_exact,
            hist_complete = EXCLUDED.hist_complete,
            users_complete = EXCLUDED.users_complete,
            legacy = EXCLUDED.legacy,
            users_rolled_up = EXCLUDED.users_rolled_up,
            updated_at = EXCLUDED.updated_at"
    )
}

/// Per hour and user: counts, the duration sum, count and histogram over
/// successful completions, failures by error type, the first and last
/// event — what the user report adds up.
fn users_sql() -> String {
    let source = each_hour(
        &format!("{KIND_SQL} AS kind, e.duration_ms, e.user_id, e.error_type, e.timestamp AS at"),
        "AND e.user_id IS NOT NULL",
        "user_id",
        &format!(
            "(count(*) FILTER (WHERE kind = 1))::int AS requests,
             (count(*) FILTER (WHERE kind = 2))::int AS successful,
             (count(*) FILTER (WHERE kind = 3))::int AS failed,
             (count(*) FILTER (WHERE kind = 4))::int AS cancelled,
             coalesce(sum(duration_ms) FILTER (WHERE kind = 2), 0) AS duration_sum,
             (count(duration_ms) FILTER (WHERE kind = 2))::int AS duration_count,
             array_agg({KEY_SQL}) FILTER (WHERE kind = 2 AND duration_ms IS NOT NULL) AS bucket_keys,
             array_agg(error_type) FILTER (WHERE kind = 3) AS errors,
             min(at) AS first_at, max(at) AS last_at"
        ),
    );
    format!(
        "INSERT INTO generation_metrics_hourly_users (
            timestamp, user_id, total_requests, successful_generations, failed_generations,
            cancelled_generations, duration_sum_ms, duration_count, duration_hist_keys,
            duration_hist_counts, error_types, error_counts, first_event_at, last_event_at)
        SELECT f.hour, f.user_id, f.requests, f.successful, f.failed, f.cancelled, f.duration_sum,
            f.duration_count, coalesce(b.keys, '{{}}'), coalesce(b.counts, '{{}}'),
            coalesce(x.types, '{{}}'), coalesce(x.counts, '{{}}'), f.first_at, f.last_at
        FROM {source}
        CROSS JOIN LATERAL ({BUCKETS}) b
        CROSS JOIN LATERAL (
            SELECT array_agg(t ORDER BY t NULLS LAST) AS types, array_agg(n ORDER BY t NULLS LAST) AS counts
            FROM (SELECT t, count(*)::int AS n FROM unnest(f.errors) AS t GROUP BY t) errors
        ) x"
    )
}

/// An event's kind as a small integer, computed once per event: 1 request,
/// 2 successful and 3 failed completion, 4 cancellation.
pub const KIND_SQL: &str = "CASE e.event_type
    WHEN 'request' THEN 1
    WHEN 'completion' THEN CASE WHEN e.success THEN 2 WHEN NOT e.success THEN 3 END
    WHEN 'cancellation' THEN 4
END";
