//! The statements that roll hours up from their raw events, one pass over
//! each hour: overall, per model, per error type, per user.

use crate::histogram::KEY_SQL;

/// A sample message as kept: its first 300 characters (a message of
/// megabytes is an example, not a report), ordered by its bytes as the
/// merge of late events orders them (`crate::rollup`), whatever the
/// database's collation: which few an hour keeps does not depend on when
/// its events came.
pub(super) const SAMPLE: &str = "left(error_message, 300) COLLATE \"C\"";

/// A derived table `f` with a column `hour` and, per hour and `keys`, the
/// `aggregates` over the rows `columns` selects from the events matching
/// `filter`, the parameter `hours` (`$1`, …) being the hours. Each hour is read on its own through the
/// timestamp index (LATERAL): one range grouped by hour would sort every
/// event by its hour, and a join of hours to events by range lets the
/// planner scan every failure of the table once per hour.
fn each_hour(hours: &str, columns: &str, filter: &str, keys: &str, aggregates: &str) -> String {
    let (keys_out, group) = if keys.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{keys}, "), format!("GROUP BY {keys}"))
    };
    format!(
        "(SELECT h.hour, f.* FROM (SELECT DISTINCT unnest({hours}::timestamptz[]) AS hour) h
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
pub(super) fn models_sql() -> String {
    format!(
        "INSERT INTO generation_metrics_hourly_models (
            timestamp, model_checkpoint, total_generations, successful_generations, failed_generations,
            duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts, last_used_at)
        {}",
        models_select("$1")
    )
}

/// The rows [`models_sql`] stores, under the table's column names, for the
/// hours in the parameter `hours`: reports read hours not yet rolled up so.
pub fn models_select(hours: &str) -> String {
    let source = each_hour(
        hours,
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
        "SELECT f.hour AS timestamp, f.model_checkpoint, f.total AS total_generations,
            f.successful AS successful_generations, f.failed AS failed_generations,
            coalesce(f.duration_sum, 0)::int8 AS duration_sum_ms, f.duration_count,
            coalesce(b.keys, '{{}}') AS duration_hist_keys,
            coalesce(b.counts, '{{}}') AS duration_hist_counts, f.last_used_at
        FROM {source}
        CROSS JOIN LATERAL ({BUCKETS}) b"
    )
}

/// Per hour and error type of failed completions: how many, their
/// duration as sent (zeros included), who was affected, a few messages
/// (their first 300 characters).
pub(super) fn failures_sql() -> String {
    format!(
        "INSERT INTO generation_metrics_hourly_failures (
            timestamp, error_type, failures, duration_sum_ms, duration_count, user_ids, sample_messages)
        {}",
        failures_select("$1")
    )
}

/// The rows [`failures_sql`] stores, under the table's column names, for
/// the hours in the parameter `hours`.
pub fn failures_select(hours: &str) -> String {
    let source = each_hour(
        hours,
        "e.error_type, e.duration_ms, e.user_id, e.error_message",
        "AND e.event_type = 'completion' AND NOT e.success",
        "error_type",
        &format!(
            "count(*)::int AS failures,
             coalesce(sum(duration_ms), 0) AS duration_sum,
             count(duration_ms)::int AS duration_count,
             coalesce(array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL), '{{}}') AS user_ids,
             coalesce((array_agg(DISTINCT {SAMPLE}) FILTER (WHERE error_message IS NOT NULL))[1:3], '{{}}')
                 AS sample_messages"
        ),
    );
    format!(
        "SELECT f.hour AS timestamp, f.error_type, f.failures, f.duration_sum::int8 AS duration_sum_ms,
            f.duration_count, f.user_ids, f.sample_messages
        FROM {source}"
    )
}

/// A histogram from the bucket keys one pass collected: keys and counts
/// in two parallel arrays, as the rows store them.
pub(super) const BUCKETS: &str =
    "SELECT array_agg(key ORDER BY key) AS keys, array_agg(n ORDER BY key) AS counts
    FROM (SELECT key, count(*)::int AS n FROM unnest(f.bucket_keys) AS key GROUP BY key) buckets";

/// The upsert for a set of hours: counts, duration figures over successful
/// completions with a duration (exact percentiles as `percentile_cont`,
/// rounded half away from zero), the hour's user set, images, queue-length
/// samples, the duration sum and count, and the histogram — all in one
/// pass over each hour's events, with each event's kind computed once as a
/// small integer, so the filters compare integers, not the event type's
/// text. An hour without events yields no row; rows are locked in hour
/// order, so overlapping runs cannot deadlock.
pub(super) fn rollup_sql() -> String {
    super::rows::hourly_upsert(&hourly_select("$1"), &[])
}

/// The rows [`rollup_sql`] stores, under the table's column names and
/// types, for the hours in the parameter `hours`: reports read hours not
/// yet rolled up so, and find them as the rollup will be.
pub fn hourly_select(hours: &str) -> String {
    let source = each_hour(
        hours,
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
        "SELECT f.hour AS timestamp, f.requests::int AS total_requests,
            f.successful::int AS successful_generations, f.failed::int AS failed_generations,
            f.cancelled::int AS cancelled_generations,
            round(f.duration_sum::numeric / nullif(f.duration_count, 0))::int AS avg_duration_ms,
            round(f.percentiles[1]::numeric)::int AS p50_duration_ms,
            round(f.percentiles[2]::numeric)::int AS p95_duration_ms,
            round(f.percentiles[3]::numeric)::int AS p99_duration_ms,
            coalesce(cardinality(f.user_ids), 0) AS unique_users,
            f.avg_queue::float8 AS avg_queue_length, f.max_queue AS max_queue_length,
            coalesce(f.images, 0)::int8 AS total_images_generated,
            coalesce(f.duration_sum, 0)::int8 AS duration_sum_ms,
            f.duration_count::int AS duration_count,
            coalesce(b.keys, '{{}}') AS duration_hist_keys,
            coalesce(b.counts, '{{}}') AS duration_hist_counts,
            coalesce(f.user_ids, '{{}}') AS user_ids,
            coalesce(f.queue_sum, 0)::int8 AS queue_length_sum,
            f.queue_samples::int AS queue_length_samples,
            true AS percentiles_exact, true AS hist_complete, true AS users_complete,
            false AS legacy, true AS users_rolled_up, now() AS updated_at
        FROM {source}
        CROSS JOIN LATERAL ({BUCKETS}) b
        WHERE f.events > 0
        ORDER BY f.hour"
    )
}

/// Per hour and user: counts, the duration sum, count and histogram over
/// successful completions, failures by error type, the first and last
/// event — what the user report adds up.
pub(super) fn users_sql() -> String {
    let source = each_hour(
        "$1",
        &format!("{KIND_SQL} AS kind, e.duration_ms, e.user_id, e.error_type, e.timestamp"),
        "AND e.user_id IS NOT NULL",
        "user_id",
        &super::rows::user_aggregates(),
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
