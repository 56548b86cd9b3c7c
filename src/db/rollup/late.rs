//! Late events — stored for an hour after it was rolled up, or after its
//! raw events were pruned — listed per hour (`generation_rollup_late`),
//! rolled up on their own, and added to the hour's stored rollups: merged
//! into them for good before the raw horizon (those rollups are never
//! recomputed), and by a report meanwhile, which so reads a few events
//! instead of the whole hour (`db::reports`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use postgres::{GenericClient, Transaction};
use uuid::Uuid;

use super::rows::{
    USER_COLUMNS, raw_user_rollup, read_hour, stored_hours, user_aggregates, user_rollup,
    write_hour,
};
use super::sql::{KIND_SQL, SAMPLE};
use crate::histogram::{Histogram, KEY_SQL};
use crate::rollup::{FailureRollup, HourRollup, ModelRollup};

/// The late events listed for the hours `hours` (an SQL expression),
/// under the names of `generation_events`' columns: the list carries what
/// the rollups read of them, so a report reads the few late events of an
/// hour through the list's hour index alone.
pub fn late_events(hours: &str) -> String {
    format!(
        "SELECT l.event_at AS timestamp, l.event_type, l.success, l.duration_ms, l.user_id,
             l.batch_size, l.queue_length, l.model_checkpoint, l.error_type, l.error_message
         FROM generation_rollup_late l WHERE l.hour = ANY({hours})"
    )
}

/// Per hour of `hours`, the rollup of its listed late events.
pub(super) fn late_hours(
    client: &mut impl GenericClient,
    hours: &[DateTime<Utc>],
) -> anyhow::Result<BTreeMap<DateTime<Utc>, HourRollup>> {
    let late = late_events("$1");
    let ok = "event_type = 'completion' AND success";
    let rows = client.query(
        &format!(
            "WITH late AS ({late})
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
        &[&hours],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
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
                        .map(|&v| crate::histogram::whole_ms(v))
                }),
                percentiles_exact: Some(true),
                hist_complete: true,
                users_complete: true,
                legacy: false,
            };
            (row.get(0), late)
        })
        .collect())
}

/// Per hour of `hours`, its stored rollup with its listed late events
/// added — what [`merge_late`] would make of it. An hour with neither has
/// no entry.
pub fn with_late(
    client: &mut impl GenericClient,
    hours: &[DateTime<Utc>],
) -> anyhow::Result<BTreeMap<DateTime<Utc>, HourRollup>> {
    if hours.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut merged = stored_hours(client, hours)?;
    for (hour, late) in late_hours(client, hours)? {
        let stored = merged.remove(&hour);
        merged.insert(hour, HourRollup::with_late(stored, late));
    }
    Ok(merged)
}

/// Merges the late events of hours before the horizon into the hours'
/// rollups, and takes them off the list; returns how many hours had any.
/// The hours' queue rows are held: no transfer lists events for them
/// meanwhile.
pub(super) fn merge_late(tx: &mut Transaction<'_>, hours: &[DateTime<Utc>]) -> anyhow::Result<u64> {
    let late = late_hours(tx, hours)?;
    let merged = late.len() as u64;
    for (hour, late) in late {
        let stored = read_hour(tx, hour)?;
        let new = stored.is_none();
        write_hour(tx, hour, &HourRollup::with_late(stored, late), new)?;
    }
    if merged > 0 {
        merge_late_models(tx, hours)?;
        merge_late_failures(tx, hours)?;
        merge_late_users(tx, hours)?;
    }
    forget(tx, hours)?;
    Ok(merged)
}

/// Takes the late events of `hours` off the list: merged into their
/// rollups, or counted by a rollup from raw events.
pub(super) fn forget(tx: &mut Transaction<'_>, hours: &[DateTime<Utc>]) -> anyhow::Result<()> {
    tx.execute(
        "DELETE FROM generation_rollup_late WHERE hour = ANY($1)",
        &[&hours],
    )?;
    Ok(())
}

/// A rollup of an hour and a key (a model, an error type).
pub type Keyed<T> = (DateTime<Utc>, Option<String>, T);

/// Per hour of `hours` and model, the rollup of its listed late
/// completions.
pub fn late_models(
    client: &mut impl GenericClient,
    hours: &[DateTime<Utc>],
) -> anyhow::Result<Vec<Keyed<ModelRollup>>> {
    if hours.is_empty() {
        return Ok(Vec::new());
    }
    let late = late_events("$1");
    Ok(client
        .query(
            &format!(
                "WITH late AS ({late})
                 SELECT date_trunc('hour', timestamp, 'UTC'), model_checkpoint, count(*),
                     count(*) FILTER (WHERE success), count(*) FILTER (WHERE NOT success),
                     coalesce(sum(duration_ms) FILTER (WHERE success), 0)::int8,
                     count(duration_ms) FILTER (WHERE success),
                     coalesce(array_agg({KEY_SQL}) FILTER (WHERE success AND duration_ms IS NOT NULL), '{{}}'),
                     max(timestamp)
                 FROM late WHERE event_type = 'completion' GROUP BY 1, 2"
            ),
            &[&hours],
        )?
        .into_iter()
        .map(|row| {
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
            (row.get(0), row.get(1), late)
        })
        .collect())
}

/// Per hour of `hours` and error type, the rollup of its listed late
/// failures.
pub fn late_failures(
    client: &mut impl GenericClient,
    hours: &[DateTime<Utc>],
) -> anyhow::Result<Vec<Keyed<FailureRollup>>> {
    if hours.is_empty() {
        return Ok(Vec::new());
    }
    let late = late_events("$1");
    Ok(client
        .query(
            &format!(
                "WITH late AS ({late})
                 SELECT date_trunc('hour', timestamp, 'UTC'), error_type, count(*),
                     coalesce(sum(duration_ms), 0)::int8, count(duration_ms),
                     coalesce(array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL), '{{}}'),
                     coalesce((array_agg(DISTINCT {SAMPLE}) FILTER (WHERE error_message IS NOT NULL))[1:3], '{{}}')
                 FROM late WHERE event_type = 'completion' AND NOT success GROUP BY 1, 2"
            ),
            &[&hours],
        )?
        .into_iter()
        .map(|row| {
            let users: Vec<Uuid> = row.get(5);
            let late = FailureRollup {
                failures: row.get(2),
                duration_sum: row.get(3),
                duration_count: row.get(4),
                users: users.into_iter().collect(),
                sample_messages: row.get(6),
            };
            (row.get(0), row.get(1), late)
        })
        .collect())
}

fn merge_late_models(tx: &mut Transaction<'_>, hours: &[DateTime<Utc>]) -> anyhow::Result<()> {
    for (hour, model, late) in late_models(tx, hours)? {
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

fn merge_late_failures(tx: &mut Transaction<'_>, hours: &[DateTime<Utc>]) -> anyhow::Result<()> {
    for (hour, error_type, late) in late_failures(tx, hours)? {
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

fn merge_late_users(tx: &mut Transaction<'_>, hours: &[DateTime<Utc>]) -> anyhow::Result<()> {
    let late = late_events("$1");
    let rows = tx.query(
        &format!(
            "WITH late AS ({late})
             SELECT date_trunc('hour', e.timestamp, 'UTC'), e.user_id, {}
             FROM late e CROSS JOIN LATERAL (SELECT {KIND_SQL} AS kind) k
             WHERE e.user_id IS NOT NULL GROUP BY 1, 2",
            user_aggregates()
        ),
        &[&hours],
    )?;
    for row in rows {
        let hour: DateTime<Utc> = row.get(0);
        let user: Uuid = row.get(1);
        let late = raw_user_rollup(&row, 2);
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
