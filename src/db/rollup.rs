//! Hourly rollups: the figures of SPEC §4 per UTC hour, computed by
//! PostgreSQL and upserted into `generation_metrics_hourly`, and the queue
//! of hours that received events since they were last rolled up.
//!
//! Every hour boundary is computed in UTC explicitly, never through the
//! session's `TimeZone`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use postgres::Client;

use crate::histogram::KEY_SQL;

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

/// Rolls up `hours` (hour starts) in one transaction; returns how many of
/// them had events (and so have a row now).
///
/// The hours are first taken off the queue — locking their queue rows, in
/// order — and only then computed, in a later statement with a fresh
/// snapshot: a transfer that queued one of them meanwhile either committed
/// before (and its events are seen) or waits for this transaction and
/// queues the hour again.
pub fn roll_up(client: &mut Client, hours: &[DateTime<Utc>]) -> anyhow::Result<u64> {
    if hours.is_empty() {
        return Ok(0);
    }
    let mut tx = client.transaction()?;
    tx.execute(
        "DELETE FROM generation_rollup_queue WHERE hour IN (
             SELECT hour FROM generation_rollup_queue WHERE hour = ANY($1) ORDER BY hour FOR UPDATE)",
        &[&hours],
    )?;
    let written = tx
        .execute(&rollup_sql(), &[&hours])
        .context("cannot compute the hourly figures")?;
    tx.execute(
        "DELETE FROM generation_metrics_hourly_models WHERE timestamp = ANY($1)",
        &[&hours],
    )?;
    tx.execute(&models_sql(), &[&hours])
        .context("cannot compute the hourly figures per model")?;
    tx.execute(
        "DELETE FROM generation_metrics_hourly_failures WHERE timestamp = ANY($1)",
        &[&hours],
    )?;
    tx.execute(FAILURES_SQL, &[&hours])
        .context("cannot compute the hourly figures per error type")?;
    tx.commit()?;
    Ok(written)
}

/// Per hour and model: completions, outcomes, the duration sum, count and
/// histogram over successful completions, and the last use.
fn models_sql() -> String {
    format!(
        "WITH hours AS (SELECT DISTINCT unnest($1::timestamptz[]) AS hour)
        INSERT INTO generation_metrics_hourly_models (
            timestamp, model_checkpoint, total_generations, successful_generations, failed_generations,
            duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts, last_used_at)
        SELECT m.hour, m.model_checkpoint, m.total, m.successful, m.failed,
            coalesce(m.duration_sum, 0), m.duration_count,
            coalesce(b.keys, '{{}}'), coalesce(b.counts, '{{}}'), m.last_used_at
        FROM (
            SELECT h.hour, e.model_checkpoint,
                count(*)::int AS total,
                (count(*) FILTER (WHERE e.success))::int AS successful,
                (count(*) FILTER (WHERE NOT e.success))::int AS failed,
                sum(e.duration_ms) FILTER (WHERE e.success) AS duration_sum,
                (count(e.duration_ms) FILTER (WHERE e.success))::int AS duration_count,
                array_agg({KEY_SQL}) FILTER (WHERE e.success AND e.duration_ms IS NOT NULL) AS bucket_keys,
                max(e.timestamp) AS last_used_at
            FROM hours h
            JOIN generation_events e
              ON e.timestamp >= h.hour AND e.timestamp < h.hour + interval '1 hour'
            WHERE e.event_type = 'completion'
            GROUP BY h.hour, e.model_checkpoint
        ) m
        CROSS JOIN LATERAL (
            SELECT array_agg(key ORDER BY key) AS keys, array_agg(n ORDER BY key) AS counts
            FROM (SELECT key, count(*)::int AS n FROM unnest(m.bucket_keys) AS key GROUP BY key) buckets
        ) b"
    )
}

/// Per hour and error type of failed completions: how many, their
/// duration as sent (zeros included), who was affected, a few messages.
const FAILURES_SQL: &str = "
    WITH hours AS (SELECT DISTINCT unnest($1::timestamptz[]) AS hour)
    INSERT INTO generation_metrics_hourly_failures (
        timestamp, error_type, failures, duration_sum_ms, duration_count, user_ids, sample_messages)
    SELECT h.hour, e.error_type,
        count(*)::int,
        coalesce(sum(e.duration_ms), 0),
        count(e.duration_ms)::int,
        coalesce(array_agg(DISTINCT e.user_id) FILTER (WHERE e.user_id IS NOT NULL), '{}'),
        coalesce((array_agg(DISTINCT e.error_message) FILTER (WHERE e.error_message IS NOT NULL))[1:3], '{}')
    FROM hours h
    JOIN generation_events e
      ON e.timestamp >= h.hour AND e.timestamp < h.hour + interval '1 hour'
    WHERE e.event_type = 'completion' AND NOT e.success
    GROUP BY h.hour, e.error_type";

/// The upsert for a set of hours: counts, duration figures over successful
/// completions with a duration (exact percentiles as `percentile_cont`,
/// rounded half away from zero), the hour's user set, images, queue-length
/// samples, the duration sum and count, and the histogram.
///
/// Each hour is aggregated on its own (LATERAL over an index range) in one
/// pass over its events — the histogram is counted from the bucket keys
/// that pass collects — which needs neither a sort of the whole chunk by
/// hour nor a materialised copy of its events. An hour without events
/// yields no row.
fn rollup_sql() -> String {
    const HOUR: &str = "e.timestamp >= h.hour AND e.timestamp < h.hour + interval '1 hour'";
    const OK: &str = "event_type = 'completion' AND success";
    format!(
        "WITH hours AS (SELECT DISTINCT unnest($1::timestamptz[]) AS hour)
        INSERT INTO generation_metrics_hourly AS m (
            timestamp, total_requests, successful_generations, failed_generations, cancelled_generations,
            avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms, unique_users,
            avg_queue_length, max_queue_length, total_images_generated,
            duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts, user_ids,
            queue_length_sum, queue_length_samples, updated_at)
        SELECT h.hour, f.requests, f.successful, f.failed, f.cancelled,
            round(f.duration_sum::numeric / nullif(f.duration_count, 0))::int,
            round(f.percentiles[1]::numeric)::int,
            round(f.percentiles[2]::numeric)::int,
            round(f.percentiles[3]::numeric)::int,
            coalesce(cardinality(f.user_ids), 0),
            f.avg_queue::float8, f.max_queue, coalesce(f.images, 0),
            coalesce(f.duration_sum, 0), f.duration_count,
            coalesce(b.keys, '{{}}'), coalesce(b.counts, '{{}}'), coalesce(f.user_ids, '{{}}'),
            coalesce(f.queue_sum, 0), f.queue_samples, now()
        FROM hours h
        CROSS JOIN LATERAL (
            SELECT count(*) AS events,
                count(*) FILTER (WHERE event_type = 'request') AS requests,
                count(*) FILTER (WHERE {OK}) AS successful,
                count(*) FILTER (WHERE event_type = 'completion' AND NOT success) AS failed,
                count(*) FILTER (WHERE event_type = 'cancellation') AS cancelled,
                sum(duration_ms) FILTER (WHERE {OK}) AS duration_sum,
                count(duration_ms) FILTER (WHERE {OK}) AS duration_count,
                percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
                    FILTER (WHERE {OK}) AS percentiles,
                array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL) AS user_ids,
                sum(coalesce(batch_size, 1)) FILTER (WHERE {OK}) AS images,
                avg(queue_length) AS avg_queue,
                max(queue_length) AS max_queue,
                sum(queue_length) AS queue_sum,
                count(queue_length) AS queue_samples,
                array_agg({KEY_SQL}) FILTER (WHERE {OK} AND duration_ms IS NOT NULL) AS bucket_keys
            FROM generation_events e
            WHERE {HOUR}
        ) f
        CROSS JOIN LATERAL (
            SELECT array_agg(key ORDER BY key) AS keys, array_agg(n ORDER BY key) AS counts
            FROM (SELECT key, count(*)::int AS n FROM unnest(f.bucket_keys) AS key GROUP BY key) buckets
        ) b
        WHERE f.events > 0
        -- Rows are locked in hour order, so overlapping runs cannot deadlock.
        ORDER BY h.hour
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
            updated_at = EXCLUDED.updated_at"
    )
}
