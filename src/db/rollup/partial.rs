//! The part of a queued hour rolled up so far, so that a report reads the
//! few events since instead of a busy current hour's every event.
//!
//! A part covers the hour's events before `through` and is trusted only
//! while it still holds all of them. Two rules keep it so, both under the
//! hour's queue row lock that transfer already takes for each hour it
//! stores events for: a refresh computes the part, then holds that row and
//! checks that no event before `through` was stored meanwhile; a transfer,
//! holding that row, deletes the part of each hour it stored an event for
//! from before `through` (`db::events::rows`). A rollup of the hour
//! deletes its part. Counts, sums, user lists and histograms add up; the
//! part keeps its successful completions' durations, sorted, so that the
//! percentiles stay exact — the same `percentile_cont` over the same
//! values as the hour's rollup.

use chrono::{DateTime, TimeDelta, Utc};
use postgres::Client;
use uuid::Uuid;

use super::sql::{BUCKETS, KIND_SQL};
use crate::histogram::KEY_SQL;

/// How long before now a refreshed part ends: events stored a little
/// after their time (on their way from the producer) land after it, in
/// the few events a report reads on their own, and leave the part valid.
pub const SETTLE: TimeDelta = TimeDelta::seconds(30);

/// The figures of an hour's events in `[lo, hi)` (SQL expressions), in
/// one pass, as a part stores them.
fn part_select(lo: &str, hi: &str) -> String {
    format!(
        "SELECT f.events, f.requests, f.successful, f.failed, f.cancelled, f.duration_sum,
            f.durations, f.user_ids, f.images, f.queue_sum, f.queue_samples, f.max_queue,
            coalesce(b.keys, '{{}}') AS hist_keys, coalesce(b.counts, '{{}}') AS hist_counts
        FROM (
            SELECT count(*) AS events,
                count(*) FILTER (WHERE kind = 1) AS requests,
                count(*) FILTER (WHERE kind = 2) AS successful,
                count(*) FILTER (WHERE kind = 3) AS failed,
                count(*) FILTER (WHERE kind = 4) AS cancelled,
                coalesce(sum(duration_ms) FILTER (WHERE kind = 2), 0)::int8 AS duration_sum,
                coalesce(array_agg(duration_ms ORDER BY duration_ms)
                    FILTER (WHERE kind = 2 AND duration_ms IS NOT NULL), '{{}}') AS durations,
                coalesce(array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL), '{{}}')
                    AS user_ids,
                coalesce(sum(coalesce(batch_size, 1)) FILTER (WHERE kind = 2), 0)::int8 AS images,
                coalesce(sum(queue_length), 0)::int8 AS queue_sum,
                count(queue_length) AS queue_samples,
                max(queue_length) AS max_queue,
                array_agg({KEY_SQL}) FILTER (WHERE kind = 2 AND duration_ms IS NOT NULL) AS bucket_keys
            FROM (SELECT {KIND_SQL} AS kind, e.duration_ms, e.user_id, e.batch_size, e.queue_length
                  FROM generation_events e WHERE e.timestamp >= {lo} AND e.timestamp < {hi}
                  OFFSET 0) e
        ) f
        CROSS JOIN LATERAL ({BUCKETS}) b"
    )
}

/// The hourly rows of the hours in `hours` (an SQL expression) that have
/// a part: the part and the hour's events since added up, under the
/// column names and types of `generation_metrics_hourly`, as the hour's
/// rollup will have them.
pub fn merged_select(hours: &str) -> String {
    format!(
        "SELECT p.hour AS timestamp,
            (p.requests + t.requests)::int AS total_requests,
            (p.successful + t.successful)::int AS successful_generations,
            (p.failed + t.failed)::int AS failed_generations,
            (p.cancelled + t.cancelled)::int AS cancelled_generations,
            (p.duration_sum + t.duration_sum)::int8 AS duration_sum_ms,
            round((p.duration_sum + t.duration_sum)::numeric
                / nullif(cardinality(p.durations) + cardinality(t.durations), 0))::int AS avg_duration_ms,
            (cardinality(p.durations) + cardinality(t.durations))::int AS duration_count,
            (p.images + t.images)::int8 AS total_images_generated,
            (p.queue_sum + t.queue_sum)::int8 AS queue_length_sum,
            (p.queue_samples + t.queue_samples)::int AS queue_length_samples,
            greatest(p.max_queue, t.max_queue) AS max_queue_length,
            round(q.percentiles[1]::numeric)::int AS p50_duration_ms,
            round(q.percentiles[2]::numeric)::int AS p95_duration_ms,
            round(q.percentiles[3]::numeric)::int AS p99_duration_ms,
            cardinality(u.user_ids)::int AS unique_users,
            coalesce(h.keys, '{{}}') AS duration_hist_keys,
            coalesce(h.counts, '{{}}') AS duration_hist_counts,
            true AS percentiles_exact, true AS hist_complete, true AS users_complete,
            false AS legacy, u.user_ids
        FROM generation_rollup_partial p
        CROSS JOIN LATERAL ({tail}) t
        CROSS JOIN LATERAL (
            SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY d) AS percentiles
            FROM unnest(p.durations || t.durations) AS d) q
        CROSS JOIN LATERAL (
            SELECT ARRAY(SELECT DISTINCT x FROM unnest(p.user_ids || t.user_ids) AS x) AS user_ids) u
        CROSS JOIN LATERAL (
            SELECT array_agg(k ORDER BY k) AS keys, array_agg(n ORDER BY k) AS counts
            FROM (SELECT k, sum(n)::int AS n
                  FROM unnest(p.hist_keys || t.hist_keys, p.hist_counts || t.hist_counts) AS x(k, n)
                  GROUP BY k) buckets) h
        WHERE p.hour = ANY({hours})",
        tail = part_select("p.through", "p.hour + interval '1 hour'")
    )
}

/// `hours` (an SQL expression) less those with a part.
pub fn without_part(hours: &str) -> String {
    format!(
        "ARRAY(SELECT r FROM unnest({hours}::timestamptz[]) AS r
               WHERE r NOT IN (SELECT hour FROM generation_rollup_partial))"
    )
}

/// Brings the part of a queued `hour` up to `through` (at most the hour's
/// end); whether it did. Nothing is made for an hour off the queue,
/// without events, or that received an event from before `through` while
/// this ran (the next refresh tries again); a part made before and still
/// whole stays.
pub fn refresh(
    client: &mut Client,
    hour: DateTime<Utc>,
    through: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let through = through.min(hour + TimeDelta::hours(1));
    if through <= hour {
        return Ok(false);
    }
    let mut tx = client.transaction()?;
    tx.batch_execute("SET LOCAL genalytics.writer = 'genalytics'; SET LOCAL jit = off")?;
    // Computed before holding the queue row: a transfer's commit waits
    // only for the check below, not for this pass over the hour.
    let part = tx.query_one(&part_select("$1", "$2"), &[&hour, &through])?;
    let events: i64 = part.get(0);
    if events == 0 {
        return Ok(false);
    }
    let queued = tx.query_opt(
        "SELECT 1 FROM generation_rollup_queue WHERE hour = $1 FOR UPDATE",
        &[&hour],
    )?;
    if queued.is_none() {
        return Ok(false);
    }
    // Events are never deleted from a queued hour, so the same count is
    // the same events.
    let now: i64 = tx
        .query_one(
            "SELECT count(*) FROM generation_events WHERE timestamp >= $1 AND timestamp < $2",
            &[&hour, &through],
        )?
        .get(0);
    if now != events {
        return Ok(false);
    }
    let durations: Vec<i32> = part.get(6);
    let users: Vec<Uuid> = part.get(7);
    let (keys, counts): (Vec<i32>, Vec<i32>) = (part.get(12), part.get(13));
    tx.execute(
        "INSERT INTO generation_rollup_partial (hour, through, events, requests, successful, failed,
             cancelled, duration_sum, durations, user_ids, images, queue_sum, queue_samples,
             max_queue, hist_keys, hist_counts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (hour) DO UPDATE SET through = EXCLUDED.through, events = EXCLUDED.events,
             requests = EXCLUDED.requests, successful = EXCLUDED.successful,
             failed = EXCLUDED.failed, cancelled = EXCLUDED.cancelled,
             duration_sum = EXCLUDED.duration_sum, durations = EXCLUDED.durations,
             user_ids = EXCLUDED.user_ids, images = EXCLUDED.images,
             queue_sum = EXCLUDED.queue_sum, queue_samples = EXCLUDED.queue_samples,
             max_queue = EXCLUDED.max_queue, hist_keys = EXCLUDED.hist_keys,
             hist_counts = EXCLUDED.hist_counts, refreshed_at = now()",
        &[
            &hour,
            &through,
            &events,
            &part.get::<_, i64>(1),
            &part.get::<_, i64>(2),
            &part.get::<_, i64>(3),
            &part.get::<_, i64>(4),
            &part.get::<_, i64>(5),
            &durations,
            &users,
            &part.get::<_, i64>(8),
            &part.get::<_, i64>(9),
            &part.get::<_, i64>(10),
            &part.get::<_, Option<i32>>(11),
            &keys,
            &counts,
        ],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Brings the part of the current hour, if queued, up to [`SETTLE`] ago
/// (see [`refresh`]).
pub fn refresh_current(client: &mut Client) -> anyhow::Result<bool> {
    let through = Utc::now() - SETTLE;
    refresh(client, crate::hour::floor(through), through)
}
