//! Reading and writing stored hourly rows as values (`crate::rollup`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::histogram::{Histogram, KEY_SQL};
use crate::rollup::{HourRollup, UserRollup};

/// The hourly columns [`hour_rollup`] reads, in its order, the user list
/// as `user_ids` (an SQL expression: a reader may leave it out).
pub fn hour_columns(user_ids: &str) -> String {
    format!(
        "total_requests, successful_generations, failed_generations,
        cancelled_generations, duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts,
        {user_ids}, unique_users, total_images_generated, queue_length_sum, queue_length_samples,
        max_queue_length, p50_duration_ms, p95_duration_ms, p99_duration_ms, percentiles_exact,
        hist_complete, users_complete, legacy, avg_duration_ms"
    )
}

/// An hourly row, locked for the merge.
pub(super) fn read_hour(
    tx: &mut Transaction<'_>,
    hour: DateTime<Utc>,
) -> anyhow::Result<Option<HourRollup>> {
    Ok(tx
        .query_opt(
            &format!(
                "SELECT {} FROM generation_metrics_hourly WHERE timestamp = $1 FOR UPDATE",
                hour_columns("user_ids")
            ),
            &[&hour],
        )?
        .map(|row| hour_rollup(&row, 0)))
}

/// The hourly rows of `hours`, as they stand.
pub(super) fn stored_hours(
    client: &mut impl GenericClient,
    hours: &[DateTime<Utc>],
) -> anyhow::Result<BTreeMap<DateTime<Utc>, HourRollup>> {
    Ok(client
        .query(
            &format!(
                "SELECT timestamp, {} FROM generation_metrics_hourly WHERE timestamp = ANY($1)",
                hour_columns("user_ids")
            ),
            &[&hours],
        )?
        .into_iter()
        .map(|row| (row.get(0), hour_rollup(&row, 1)))
        .collect())
}

/// An hourly row selected as [`hour_columns`] from column `at` on. The
/// original service's rows have no duration sum: their average, weighted
/// by their successes, stands in.
pub fn hour_rollup(row: &postgres::Row, at: usize) -> HourRollup {
    let int = |i: usize| i64::from(row.get::<_, i32>(at + i));
    let optional = |i: usize| row.get::<_, Option<i32>>(at + i).map(i64::from);
    let successful = int(1);
    let average = optional(21);
    let keys: Option<Vec<i32>> = row.get(at + 6);
    let counts: Option<Vec<i32>> = row.get(at + 7);
    let users: Option<Vec<Uuid>> = row.get(at + 8);
    HourRollup {
        requests: int(0),
        successful,
        failed: int(2),
        cancelled: int(3),
        duration_sum: row
            .get::<_, Option<i64>>(at + 4)
            .unwrap_or_else(|| average.map_or(0, |avg| avg * successful)),
        duration_count: optional(5).unwrap_or(if average.is_some() { successful } else { 0 }),
        histogram: Histogram::from_parts(
            keys.as_deref().unwrap_or_default(),
            counts.as_deref().unwrap_or_default(),
        ),
        users: users.unwrap_or_default().into_iter().collect(),
        unique_users: optional(9).unwrap_or(0),
        images: row.get::<_, Option<i64>>(at + 10).unwrap_or(0),
        queue_sum: row.get::<_, Option<i64>>(at + 11).unwrap_or(0),
        queue_samples: optional(12).unwrap_or(0),
        max_queue: optional(13),
        percentiles: [optional(14), optional(15), optional(16)],
        percentiles_exact: row.get(at + 17),
        hist_complete: row.get(at + 18),
        users_complete: row.get(at + 19),
        legacy: row.get(at + 20),
    }
}

/// Writes a merged hour; `new` when the hour had no row, so that its
/// per-user rows, merged beside it, are all of them.
pub(super) fn write_hour(
    tx: &mut Transaction<'_>,
    hour: DateTime<Utc>,
    h: &HourRollup,
    new: bool,
) -> anyhow::Result<()> {
    let (keys, counts) = h.histogram.to_parts();
    let users: Vec<Uuid> = h.users.iter().copied().collect();
    let [p50, p95, p99] = h.percentiles;
    tx.execute(
        &hourly_upsert(
            "VALUES ($1, $2::int8::int4, $3::int8::int4, $4::int8::int4, $5::int8::int4,
                 $6::int8::int4, $7::int8::int4, $8::int8::int4, $9::int8::int4, $10::int8::int4,
                 $11, $12::int8::int4, $13, $14, $15::int8::int4,
                 $16, $17, $18, $19, $20::int8::int4, $21, $22, $23, $24, $25, now())",
            // A merged hour's per-user rows are as complete as they were.
            &["users_rolled_up"],
        ),
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

/// Every column an hourly upsert writes, in the order of its values.
const HOURLY_WRITTEN: [&str; 26] = [
    "timestamp",
    "total_requests",
    "successful_generations",
    "failed_generations",
    "cancelled_generations",
    "avg_duration_ms",
    "p50_duration_ms",
    "p95_duration_ms",
    "p99_duration_ms",
    "unique_users",
    "avg_queue_length",
    "max_queue_length",
    "total_images_generated",
    "duration_sum_ms",
    "duration_count",
    "duration_hist_keys",
    "duration_hist_counts",
    "user_ids",
    "queue_length_sum",
    "queue_length_samples",
    "percentiles_exact",
    "hist_complete",
    "users_complete",
    "legacy",
    "users_rolled_up",
    "updated_at",
];

/// The upsert of hourly rows from `source` (a `VALUES` or a `SELECT` giving
/// [`HOURLY_WRITTEN`] in order): an hour already there has every column
/// replaced but `kept`.
pub(super) fn hourly_upsert(source: &str, kept: &[&str]) -> String {
    let replaced = HOURLY_WRITTEN[1..]
        .iter()
        .filter(|column| !kept.contains(column))
        .map(|column| format!("{column} = EXCLUDED.{column}"))
        .collect::<Vec<_>>()
        .join(",\n    ");
    format!(
        "INSERT INTO generation_metrics_hourly AS m ({})\n{source}\nON CONFLICT (timestamp) DO UPDATE SET\n    {replaced}",
        HOURLY_WRITTEN.join(", ")
    )
}

/// One user's figures over a set of events, as a select list: `kind` (see
/// [`super::KIND_SQL`]) and the event's columns as `e.` in scope. Read back
/// by [`raw_user_rollup`]. The per-user rollup, late events merged into an
/// hour and the user report's raw hours are added up alike.
pub fn user_aggregates() -> String {
    format!(
        "count(*) FILTER (WHERE kind = 1) AS requests,
         count(*) FILTER (WHERE kind = 2) AS successful,
         count(*) FILTER (WHERE kind = 3) AS failed,
         count(*) FILTER (WHERE kind = 4) AS cancelled,
         coalesce(sum(e.duration_ms) FILTER (WHERE kind = 2), 0)::int8 AS duration_sum,
         count(e.duration_ms) FILTER (WHERE kind = 2) AS duration_count,
         coalesce(array_agg({KEY_SQL}) FILTER (WHERE kind = 2 AND e.duration_ms IS NOT NULL), '{{}}')
             AS bucket_keys,
         coalesce(array_agg(e.error_type) FILTER (WHERE kind = 3), '{{}}') AS errors,
         min(e.timestamp) AS first_at, max(e.timestamp) AS last_at"
    )
}

/// The figures [`user_aggregates`] selected, from column `at` on.
pub fn raw_user_rollup(row: &postgres::Row, at: usize) -> UserRollup {
    let keys: Vec<i32> = row.get(at + 6);
    let errors: Vec<Option<String>> = row.get(at + 7);
    let mut figures = UserRollup {
        requests: row.get(at),
        successful: row.get(at + 1),
        failed: row.get(at + 2),
        cancelled: row.get(at + 3),
        duration_sum: row.get(at + 4),
        duration_count: row.get(at + 5),
        histogram: Histogram::from_keys(&keys),
        first_event_at: row.get(at + 8),
        last_event_at: row.get(at + 9),
        ..UserRollup::default()
    };
    for error in errors {
        *figures.errors.entry(error).or_default() += 1;
    }
    figures
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
