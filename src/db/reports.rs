//! The queries behind the reports. Window figures read hourly rollups —
//! thousands of rows for a quarter, whatever the event volume — except the
//! user report, which reads one user's raw events through their index.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use postgres::Client;
use uuid::Uuid;

use crate::histogram::Histogram;
use crate::report::{
    Activity, ErrorCount, ErrorTypeRow, HourFigures, ModelRow, Totals, UserReport, Window, mean,
    percentiles, success_rate, whole_ms,
};

/// An hourly row with its own exact percentiles.
#[derive(Debug, Clone)]
pub struct HourRow {
    pub figures: HourFigures,
    pub exact: [Option<i64>; 3],
}

/// Hourly rows whose hour starts in the window, oldest first.
pub fn hours(client: &mut Client, window: &Window) -> anyhow::Result<Vec<HourRow>> {
    let rows = client.query(
        "SELECT timestamp, total_requests, successful_generations, failed_generations,
                cancelled_generations, coalesce(duration_sum_ms, 0), coalesce(duration_count, 0),
                coalesce(total_images_generated, 0), coalesce(queue_length_sum, 0),
                coalesce(queue_length_samples, 0), max_queue_length,
                p50_duration_ms, p95_duration_ms, p99_duration_ms, coalesce(unique_users, 0),
                coalesce(duration_hist_keys, '{}'), coalesce(duration_hist_counts, '{}')
         FROM generation_metrics_hourly
         WHERE timestamp >= $1 AND timestamp < $2
         ORDER BY timestamp",
        &[&window.start, &window.end],
    )?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let keys: Vec<i32> = row.get(15);
            let counts: Vec<i32> = row.get(16);
            let int = |index: usize| i64::from(row.get::<_, i32>(index));
            let optional = |index: usize| row.get::<_, Option<i32>>(index).map(i64::from);
            HourRow {
                figures: HourFigures {
                    hour: row.get(0),
                    totals: Totals {
                        requests: int(1),
                        successful: int(2),
                        failed: int(3),
                        cancelled: int(4),
                        duration_sum: row.get(5),
                        duration_count: int(6),
                        images: row.get(7),
                        queue_sum: row.get(8),
                        queue_samples: int(9),
                        max_queue: optional(10),
                        histogram: Histogram::from_parts(&keys, &counts),
                    },
                    unique_users: int(14),
                },
                exact: [optional(11), optional(12), optional(13)],
            }
        })
        .collect())
}

/// Distinct users over the whole window: a union of hourly sets.
pub fn unique_users(client: &mut Client, window: &Window) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(DISTINCT u) FROM generation_metrics_hourly h, unnest(h.user_ids) AS u
             WHERE h.timestamp >= $1 AND h.timestamp < $2",
            &[&window.start, &window.end],
        )?
        .get(0))
}

/// Distinct users per UTC day of the window.
pub fn unique_users_by_day(
    client: &mut Client,
    window: &Window,
) -> anyhow::Result<BTreeMap<NaiveDate, i64>> {
    let rows = client.query(
        "SELECT (date_trunc('day', h.timestamp, 'UTC') AT TIME ZONE 'UTC')::date, count(DISTINCT u)
         FROM generation_metrics_hourly h, unnest(h.user_ids) AS u
         WHERE h.timestamp >= $1 AND h.timestamp < $2
         GROUP BY 1",
        &[&window.start, &window.end],
    )?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// One user's figures over the window, exact, from their raw events.
pub fn user(client: &mut Client, window: &Window, user_id: Uuid) -> anyhow::Result<UserReport> {
    let row = client.query_one(
        "SELECT count(*) FILTER (WHERE event_type = 'request'),
                count(*) FILTER (WHERE event_type = 'completion' AND success),
                count(*) FILTER (WHERE event_type = 'completion' AND NOT success),
                count(*) FILTER (WHERE event_type = 'cancellation'),
                coalesce(sum(duration_ms) FILTER (WHERE event_type = 'completion' AND success), 0)::bigint,
                count(duration_ms) FILTER (WHERE event_type = 'completion' AND success),
                percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY duration_ms)
                    FILTER (WHERE event_type = 'completion' AND success),
                min(timestamp), max(timestamp)
         FROM generation_events
         WHERE user_id = $1 AND timestamp >= $2 AND timestamp < $3",
        &[&user_id, &window.start, &window.end],
    )?;
    let (successful, failed): (i64, i64) = (row.get(1), row.get(2));
    let quantiles: Option<Vec<f64>> = row.get(6);
    let quantile = |i: usize| {
        quantiles
            .as_ref()
            .and_then(|q| q.get(i))
            .map(|&v| whole_ms(v))
    };
    let recent_activity = client
        .query(
            "SELECT timestamp, duration_ms, success, error_type, generation_type, model_checkpoint
             FROM generation_events
             WHERE user_id = $1 AND event_type = 'completion' AND timestamp >= $2 AND timestamp < $3
             ORDER BY timestamp DESC, id DESC
             LIMIT 20",
            &[&user_id, &window.start, &window.end],
        )?
        .into_iter()
        .map(|r| Activity {
            timestamp: r.get(0),
            duration_ms: r.get::<_, Option<i32>>(1).map(i64::from),
            success: r.get(2),
            error_type: r.get(3),
            generation_type: r.get(4),
            model_checkpoint: r.get(5),
        })
        .collect();
    let failure_breakdown = client
        .query(
            "SELECT error_type, count(*)
             FROM generation_events
             WHERE user_id = $1 AND event_type = 'completion' AND NOT success
               AND timestamp >= $2 AND timestamp < $3
             GROUP BY error_type
             ORDER BY count(*) DESC, error_type NULLS LAST",
            &[&user_id, &window.start, &window.end],
        )?
        .into_iter()
        .map(|r| ErrorCount {
            error_type: r.get(0),
            count: r.get(1),
        })
        .collect();
    Ok(UserReport {
        user_id,
        lookback_days: window.days,
        total_requests: row.get(0),
        successful_generations: successful,
        failed_generations: failed,
        cancelled_generations: row.get(3),
        success_rate_pct: success_rate(successful, failed),
        avg_duration_ms: mean(row.get(4), row.get(5)),
        p50_duration_ms: quantile(0),
        p95_duration_ms: quantile(1),
        first_generation_at: row.get(7),
        last_generation_at: row.get(8),
        recent_activity,
        failure_breakdown,
    })
}

/// One row per model checkpoint (NULL is a group of its own), busiest
/// first.
pub fn models(client: &mut Client, window: &Window) -> anyhow::Result<Vec<ModelRow>> {
    #[derive(Default)]
    struct Acc {
        total: i64,
        successful: i64,
        failed: i64,
        duration_sum: i64,
        duration_count: i64,
        histogram: Histogram,
        last_used_at: Option<DateTime<Utc>>,
    }
    let mut by_model: BTreeMap<Option<String>, Acc> = BTreeMap::new();
    for row in client.query(
        "SELECT model_checkpoint, total_generations, successful_generations, failed_generations,
                duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts, last_used_at
         FROM generation_metrics_hourly_models
         WHERE timestamp >= $1 AND timestamp < $2",
        &[&window.start, &window.end],
    )? {
        let acc = by_model.entry(row.get(0)).or_default();
        acc.total += i64::from(row.get::<_, i32>(1));
        acc.successful += i64::from(row.get::<_, i32>(2));
        acc.failed += i64::from(row.get::<_, i32>(3));
        acc.duration_sum += row.get::<_, i64>(4);
        acc.duration_count += i64::from(row.get::<_, i32>(5));
        let (keys, counts): (Vec<i32>, Vec<i32>) = (row.get(6), row.get(7));
        acc.histogram.merge(&Histogram::from_parts(&keys, &counts));
        acc.last_used_at = acc.last_used_at.max(Some(row.get(8)));
    }
    let mut models: Vec<ModelRow> = by_model
        .into_iter()
        .map(|(model_checkpoint, acc)| {
            let [p50, p95, _] = percentiles(&acc.histogram);
            ModelRow {
                model_checkpoint,
                total_generations: acc.total,
                successful_generations: acc.successful,
                failed_generations: acc.failed,
                success_rate_pct: success_rate(acc.successful, acc.failed),
                avg_duration_ms: mean(acc.duration_sum, acc.duration_count),
                p50_duration_ms: p50,
                p95_duration_ms: p95,
                last_used_at: acc.last_used_at,
            }
        })
        .collect();
    models.sort_by(|a, b| {
        b.total_generations
            .cmp(&a.total_generations)
            .then_with(|| a.model_checkpoint.cmp(&b.model_checkpoint))
    });
    Ok(models)
}

/// Failed completions by error type (NULL is a group of its own), most
/// frequent first.
pub fn error_types(client: &mut Client, window: &Window) -> anyhow::Result<Vec<ErrorTypeRow>> {
    let range: [&(dyn postgres::types::ToSql + Sync); 2] = [&window.start, &window.end];
    let users: BTreeMap<Option<String>, i64> = client
        .query(
            "SELECT f.error_type, count(DISTINCT u)
             FROM generation_metrics_hourly_failures f LEFT JOIN LATERAL unnest(f.user_ids) AS u ON true
             WHERE f.timestamp >= $1 AND f.timestamp < $2
             GROUP BY f.error_type",
            &range,
        )?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let messages: BTreeMap<Option<String>, Vec<String>> = client
        .query(
            "SELECT f.error_type, (array_agg(DISTINCT m ORDER BY m))[1:3]
             FROM generation_metrics_hourly_failures f, unnest(f.sample_messages) AS m
             WHERE f.timestamp >= $1 AND f.timestamp < $2
             GROUP BY f.error_type",
            &range,
        )?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut rows: Vec<ErrorTypeRow> = client
        .query(
            "SELECT error_type, sum(failures)::bigint, sum(duration_sum_ms)::bigint, sum(duration_count)::bigint
             FROM generation_metrics_hourly_failures
             WHERE timestamp >= $1 AND timestamp < $2
             GROUP BY error_type",
            &range,
        )?
        .into_iter()
        .map(|row| {
            let error_type: Option<String> = row.get(0);
            ErrorTypeRow {
                count: row.get(1),
                affected_users: users.get(&error_type).copied().unwrap_or(0),
                avg_duration_ms: mean(row.get(2), row.get(3)),
                sample_messages: messages.get(&error_type).cloned().unwrap_or_default(),
                error_type,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.error_type.cmp(&b.error_type))
    });
    Ok(rows)
}
