//! The queries behind the reports: they fetch the hourly parts a window is
//! made of — thousands of rows for a quarter, whatever the event volume —
//! and the report (`report/`) does the arithmetic. An hour not rolled up
//! yet (the current hour, an hour late events came to) is read from its
//! raw events by the very statement that will roll it up, so a report
//! counts every stored event and rolling up later changes no figure. The
//! user report reads one user's hourly rollups and, for what they do not
//! cover, raw events.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use postgres::Client;
use uuid::Uuid;

use crate::db::rollup::{
    KIND_SQL, USER_COLUMNS, failures_select, hourly_select, merged_select, models_select,
    raw_user_rollup, user_aggregates, user_rollup, without_part,
};
use crate::histogram::Histogram;
use crate::histogram::whole_ms;
use crate::report::user::{Activity, Sources};
use crate::report::{HourPart, Totals, Window};
use crate::rollup::{FailureRollup, ModelRollup, UserRollup};

/// The hours of the window read from their raw events instead of their
/// rollup, oldest first: queued for a rollup (transfer queues every hour
/// it stores events for, aggregate takes them off) and still holding all
/// their raw events (from the raw horizon on). An hour whose rollup
/// PostgreSQL refused is left to its rollup (status names it): the same
/// statement would fail every report over it. None with
/// `materialized_only`, for reports from rollups alone.
pub fn raw_hours(
    client: &mut Client,
    window: &Window,
    materialized_only: bool,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    if materialized_only {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            "SELECT hour FROM generation_rollup_queue
             WHERE hour >= $1 AND hour < $2 AND failures = 0
               AND hour >= coalesce((SELECT horizon FROM genalytics_raw_horizon), '-infinity')
             ORDER BY hour",
            &[&window.start, &window.end],
        )?
        .into_iter()
        .map(|row| row.get(0))
        .collect())
}

/// The hourly columns a window reads, from the table or from raw events.
const HOUR_READ: &str = "timestamp, total_requests, successful_generations, failed_generations,
    cancelled_generations, duration_sum_ms, avg_duration_ms, duration_count, total_images_generated,
    queue_length_sum, queue_length_samples, max_queue_length, p50_duration_ms, p95_duration_ms,
    p99_duration_ms, unique_users, duration_hist_keys, duration_hist_counts, percentiles_exact,
    hist_complete, users_complete, legacy, user_ids";

/// `rolled` — rows of a rollup table in the window `$1`…`$2`, but the
/// hours `$3` — and, when there are any, `fresh`: those hours' rows from
/// their raw events. Without raw hours the statement stays the plain read
/// of rollups, which PostgreSQL plans in a fraction of the time.
fn with_raw(rolled: &str, fresh: impl FnOnce() -> String, raw: &[DateTime<Utc>]) -> String {
    if raw.is_empty() {
        rolled.to_string()
    } else {
        format!("{rolled} UNION ALL {}", fresh())
    }
}

/// A rollup table's rows in the window but the hours `$3`, and those
/// hours' rows from their raw events by `raw_select`, under `columns`.
fn window_rows(
    table: &str,
    columns: &str,
    raw_select: impl FnOnce() -> String,
    raw: &[DateTime<Utc>],
) -> String {
    with_raw(
        &format!(
            "SELECT {columns} FROM {table}
             WHERE timestamp >= $1 AND timestamp < $2 AND timestamp <> ALL($3)"
        ),
        || format!("SELECT {columns} FROM ({}) raw", raw_select()),
        raw,
    )
}

/// The window's hourly rows as a derived table `h`: rolled-up hours from
/// the table, the hours `$3` from their raw events.
fn hourly_rows(raw: &[DateTime<Utc>]) -> String {
    let rolled = format!(
        "SELECT {HOUR_READ} FROM generation_metrics_hourly
         WHERE timestamp >= $1 AND timestamp < $2 AND timestamp <> ALL($3)"
    );
    // An hour with a part rolled up so far (the busy current hour) from the
    // part and its events since; any other from all its events.
    let fresh = || {
        format!(
            "SELECT {HOUR_READ} FROM ({}) raw UNION ALL SELECT {HOUR_READ} FROM ({}) part",
            hourly_select(&without_part("$3")),
            merged_select("$3")
        )
    };
    format!("({}) h", with_raw(&rolled, fresh, raw))
}

/// Hourly rows whose hour starts in the window, oldest first; the hours in
/// `raw` from their raw events. The original service's rows have no
/// duration sum: their average, weighted by their successes, stands in;
/// they have no histogram or user list, which the parts say.
pub fn hours(
    client: &mut Client,
    window: &Window,
    raw: &[DateTime<Utc>],
) -> anyhow::Result<Vec<HourPart>> {
    Ok(hours_and_raw_users(client, window, raw)?.0)
}

/// [`hours`], and the users of the hours read from raw events (which
/// [`users_in_lists`] then need not read again).
pub fn hours_and_raw_users(
    client: &mut Client,
    window: &Window,
    raw: &[DateTime<Utc>],
) -> anyhow::Result<(Vec<HourPart>, Vec<Uuid>)> {
    let rows = client.query(
        &format!("SELECT timestamp, total_requests, successful_generations, failed_generations,
                cancelled_generations,
                coalesce(duration_sum_ms, avg_duration_ms::int8 * successful_generations, 0),
                coalesce(duration_count,
                         CASE WHEN avg_duration_ms IS NOT NULL THEN successful_generations ELSE 0 END),
                coalesce(total_images_generated, 0), coalesce(queue_length_sum, 0),
                coalesce(queue_length_samples, 0), max_queue_length,
                p50_duration_ms, p95_duration_ms, p99_duration_ms, coalesce(unique_users, 0),
                coalesce(duration_hist_keys, '{{}}'), coalesce(duration_hist_counts, '{{}}'),
                percentiles_exact, hist_complete, users_complete, legacy,
                CASE WHEN timestamp = ANY($3) THEN user_ids END
         FROM {}
         ORDER BY timestamp",
            hourly_rows(raw)
        ),
        &[&window.start, &window.end, &raw],
    )?;
    let mut raw_users = BTreeSet::new();
    for row in &rows {
        if let Some(users) = row.get::<_, Option<Vec<Uuid>>>(21) {
            raw_users.extend(users);
        }
    }
    let parts = rows
        .into_iter()
        .map(|row| {
            let keys: Vec<i32> = row.get(15);
            let counts: Vec<i32> = row.get(16);
            let int = |index: usize| i64::from(row.get::<_, i32>(index));
            let optional = |index: usize| row.get::<_, Option<i32>>(index).map(i64::from);
            let exact: Option<bool> = row.get(17);
            let (hist_complete, users_complete, legacy): (bool, bool, bool) =
                (row.get(18), row.get(19), row.get(20));
            let successful = int(2);
            let unique_users = int(14);
            HourPart {
                hour: row.get(0),
                totals: Totals {
                    requests: int(1),
                    successful,
                    failed: int(3),
                    cancelled: int(4),
                    duration_sum: row.get(5),
                    duration_count: int(6),
                    images: row.get(7),
                    queue_sum: row.get(8),
                    queue_samples: int(9),
                    max_queue: optional(10),
                    histogram: Histogram::from_parts(&keys, &counts),
                    partial_hours: i64::from(!hist_complete && successful > 0),
                    users_floor: if users_complete { 0 } else { unique_users },
                    users_partial_hours: i64::from(!users_complete),
                    legacy_hours: i64::from(legacy),
                },
                unique_users,
                own_percentiles: exact.map(|_| [optional(11), optional(12), optional(13)]),
            }
        })
        .collect();
    Ok((parts, raw_users.into_iter().collect()))
}

/// Distinct users in the window's hourly user lists: those of rolled-up
/// hours, and `raw_users`, the users of the hours in `raw` (see
/// [`hours_and_raw_users`]).
pub fn users_in_lists(
    client: &mut Client,
    window: &Window,
    raw: &[DateTime<Utc>],
    raw_users: &[Uuid],
) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(DISTINCT u) FROM (
                 SELECT u FROM generation_metrics_hourly h, unnest(h.user_ids) AS u
                 WHERE h.timestamp >= $1 AND h.timestamp < $2 AND h.timestamp <> ALL($3)
                 UNION ALL
                 SELECT unnest($4::uuid[])) x",
            &[&window.start, &window.end, &raw, &raw_users],
        )?
        .get(0))
}

/// Each hour's users as a derived table `x (hour, u)`: from the user lists
/// of rolled-up hours, and from the raw events of the hours `$3`.
fn hourly_users(raw: &[DateTime<Utc>]) -> String {
    let rolled =
        "SELECT h.timestamp AS hour, u FROM generation_metrics_hourly h, unnest(h.user_ids) AS u
         WHERE h.timestamp >= $1 AND h.timestamp < $2 AND h.timestamp <> ALL($3)";
    let fresh = || {
        "SELECT r.hour, x.u FROM unnest($3::timestamptz[]) AS r(hour)
         CROSS JOIN LATERAL (
             SELECT DISTINCT e.user_id AS u FROM generation_events e
             WHERE e.timestamp >= r.hour AND e.timestamp < r.hour + interval '1 hour'
               AND e.user_id IS NOT NULL) x"
            .to_string()
    };
    format!("({}) x", with_raw(rolled, fresh, raw))
}

/// Distinct users in the hourly user lists of each local day of the window
/// (an hour belongs to the day its start falls on).
pub fn users_by_day(
    client: &mut Client,
    window: &Window,
    raw: &[DateTime<Utc>],
) -> anyhow::Result<BTreeMap<NaiveDate, i64>> {
    let rows = client.query(
        &format!(
            "SELECT (x.hour AT TIME ZONE $4)::date, count(DISTINCT u) FROM {} GROUP BY 1",
            hourly_users(raw)
        ),
        &[&window.start, &window.end, &raw, &window.tz.name()],
    )?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// The window's per-hour-and-model rows (the hours in `raw` from their
/// raw events).
pub fn model_parts(
    client: &mut Client,
    window: &Window,
    raw: &[DateTime<Utc>],
) -> anyhow::Result<Vec<(Option<String>, ModelRollup)>> {
    let columns = "model_checkpoint, total_generations, successful_generations, failed_generations,
        duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts, last_used_at";
    Ok(client
        .query(
            &window_rows(
                "generation_metrics_hourly_models",
                columns,
                || models_select("$3"),
                raw,
            ),
            &[&window.start, &window.end, &raw],
        )?
        .into_iter()
        .map(|row| {
            let (keys, counts): (Vec<i32>, Vec<i32>) = (row.get(6), row.get(7));
            let model = ModelRollup {
                total: i64::from(row.get::<_, i32>(1)),
                successful: i64::from(row.get::<_, i32>(2)),
                failed: i64::from(row.get::<_, i32>(3)),
                duration_sum: row.get(4),
                duration_count: i64::from(row.get::<_, i32>(5)),
                histogram: Histogram::from_parts(&keys, &counts),
                last_used_at: row.get(8),
            };
            (row.get(0), model)
        })
        .collect())
}

/// The window's per-hour-and-error-type rows (the hours in `raw` from
/// their raw events).
pub fn failure_parts(
    client: &mut Client,
    window: &Window,
    raw: &[DateTime<Utc>],
) -> anyhow::Result<Vec<(Option<String>, FailureRollup)>> {
    let columns =
        "error_type, failures, duration_sum_ms, duration_count, user_ids, sample_messages";
    Ok(client
        .query(
            &window_rows(
                "generation_metrics_hourly_failures",
                columns,
                || failures_select("$3"),
                raw,
            ),
            &[&window.start, &window.end, &raw],
        )?
        .into_iter()
        .map(|row| {
            let users: Vec<Uuid> = row.get(4);
            let failure = FailureRollup {
                failures: i64::from(row.get::<_, i32>(1)),
                duration_sum: row.get(2),
                duration_count: i64::from(row.get::<_, i32>(3)),
                users: users.into_iter().collect(),
                sample_messages: row.get(5),
            };
            (row.get(0), failure)
        })
        .collect())
}

/// Hours of the window queued for their rollup: the user report reads
/// them from raw events (see [`crate::report::user::sources`]).
pub fn queued_in(client: &mut Client, window: &Window) -> anyhow::Result<BTreeSet<DateTime<Utc>>> {
    Ok(client
        .query(
            "SELECT hour FROM generation_rollup_queue WHERE hour >= $1 AND hour < $2",
            &[&crate::hour::floor(window.start), &window.end],
        )?
        .into_iter()
        .map(|row| row.get(0))
        .collect())
}

/// What the user report is made of (see [`crate::report::user::build`]).
pub struct UserParts {
    /// Rolled-up hours and raw events merged.
    pub figures: UserRollup,
    /// p50 and p95 from raw events, when they were read.
    pub exact: Option<[Option<i64>; 2]>,
    pub recent: Vec<Activity>,
    /// Rolled-up hours without per-user figures.
    pub hours_missing: i64,
}

/// One user's figures over the window, from the per-user rollups of the
/// hours `sources` says are rolled up and the raw events of the rest.
/// Percentiles are read from raw events while the window holds at most
/// `exact_max` successful completions of the user and all its raw events.
pub fn user(
    client: &mut Client,
    window: &Window,
    user_id: Uuid,
    sources: &Sources,
    exact_max: i64,
) -> anyhow::Result<UserParts> {
    let mut figures = UserRollup::default();
    for row in client.query(
        &format!(
            "SELECT {USER_COLUMNS} FROM generation_metrics_hourly_users
             WHERE user_id = $1 AND timestamp = ANY($2)"
        ),
        &[&user_id, &sources.rolled],
    )? {
        figures.merge(&user_rollup(&row));
    }
    let hours_missing: i64 = client
        .query_one(
            "SELECT count(*) FROM generation_metrics_hourly
             WHERE timestamp = ANY($1) AND NOT users_rolled_up",
            &[&sources.rolled],
        )?
        .get(0);
    if !sources.raw.is_empty() {
        let (from, to): (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) =
            sources.raw.iter().copied().unzip();
        let row = client.query_one(
            &format!(
                "SELECT {}
                 FROM unnest($2::timestamptz[], $3::timestamptz[]) AS r(lo, hi)
                 CROSS JOIN LATERAL (
                     SELECT {KIND_SQL} AS kind, e.duration_ms, e.error_type, e.timestamp
                     FROM generation_events e
                     WHERE e.user_id = $1 AND e.timestamp >= r.lo AND e.timestamp < r.hi) e",
                user_aggregates()
            ),
            &[&user_id, &from, &to],
        )?;
        figures.merge(&raw_user_rollup(&row, 0));
    }
    let exact = if sources.raw_complete && figures.duration_count <= exact_max {
        Some(user_exact(client, window, user_id)?)
    } else {
        None
    };
    Ok(UserParts {
        figures,
        exact,
        recent: recent_activity(client, window, user_id)?,
        hours_missing,
    })
}

/// The user's p50 and p95 over the window, from its raw events.
fn user_exact(
    client: &mut Client,
    window: &Window,
    user_id: Uuid,
) -> anyhow::Result<[Option<i64>; 2]> {
    let quantiles: Option<Vec<f64>> = client
        .query_one(
            "SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY duration_ms)
             FROM generation_events
             WHERE user_id = $1 AND timestamp >= $2 AND timestamp < $3
               AND event_type = 'completion' AND success",
            &[&user_id, &window.start, &window.end],
        )?
        .get(0);
    let quantile = |i: usize| {
        quantiles
            .as_ref()
            .and_then(|q| q.get(i))
            .map(|&v| whole_ms(v))
    };
    Ok([quantile(0), quantile(1)])
}

/// The user's newest 20 completions in the window, through the
/// `(user_id, timestamp)` index.
fn recent_activity(
    client: &mut Client,
    window: &Window,
    user_id: Uuid,
) -> anyhow::Result<Vec<Activity>> {
    Ok(client
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
        .collect())
}

/// Hours in the window the original service rolled up.
pub fn legacy_hours(parts: &[HourPart]) -> i64 {
    parts.iter().map(|p| p.totals.legacy_hours).sum()
}

/// [`legacy_hours`] without reading the hours: hours read from raw events
/// are never the original service's.
pub fn legacy_hours_in(
    client: &mut Client,
    window: &Window,
    raw: &[DateTime<Utc>],
) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM generation_metrics_hourly
             WHERE timestamp >= $1 AND timestamp < $2 AND timestamp <> ALL($3) AND legacy",
            &[&window.start, &window.end, &raw],
        )?
        .get(0))
}
