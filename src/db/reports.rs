//! The queries behind the reports: they fetch the hourly parts a window is
//! made of — thousands of rows for a quarter, whatever the event volume —
//! and the report (`report/`) does the arithmetic. An hour not rolled up
//! yet (the current hour) is read from its raw events by the very
//! statement that will roll it up; an hour late events came to after its
//! rollup, from that rollup and the few late events, as aggregate will
//! merge them or roll the hour up again. So a report counts every stored
//! event and rolling up later changes no figure. The user report reads one
//! user's hourly rollups and, for what they do not cover, raw events.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use postgres::Client;
use uuid::Uuid;

use crate::db::rollup::{
    KIND_SQL, USER_COLUMNS, failures_select, hour_columns, hour_rollup, hourly_select, late_events,
    late_failures, late_models, merged_select, models_select, raw_user_rollup, user_aggregates,
    user_rollup, with_late, without_part,
};
use crate::histogram::Histogram;
use crate::histogram::whole_ms;
use crate::report::user::{Activity, Sources};
use crate::report::{HourPart, Window};
use crate::rollup::{FailureRollup, HourRollup, ModelRollup, UserRollup};

/// The hours of a window a report reads beside their rollups: queued for
/// a rollup (transfer queues every hour it stores events for, aggregate
/// takes them off). An hour whose rollup PostgreSQL refused is left to its
/// rollup (status names it): the same statement would fail every report
/// over it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Hours read from their raw events, oldest first: they hold all of
    /// them (from the raw horizon on) and are not late-listed.
    pub raw: Vec<DateTime<Utc>>,
    /// Late-listed hours, oldest first: their stored rollup (if any) and
    /// the late events listed for them are all their events.
    pub late: Vec<DateTime<Utc>>,
}

impl Pending {
    /// How many hours the window reads beside their rollups.
    pub fn len(&self) -> usize {
        self.raw.len() + self.late.len()
    }

    /// Every hour whose stored row a report replaces with its own reading.
    fn all(&self) -> Vec<DateTime<Utc>> {
        let mut all: Vec<DateTime<Utc>> = self.raw.iter().chain(&self.late).copied().collect();
        all.sort();
        all
    }
}

/// The window's [`Pending`] hours; none with `materialized_only`, for
/// reports from rollups alone.
pub fn pending(
    client: &mut Client,
    window: &Window,
    materialized_only: bool,
) -> anyhow::Result<Pending> {
    let mut pending = Pending::default();
    if materialized_only {
        return Ok(pending);
    }
    // Before the horizon an hour is late-listed whatever its flag: every
    // event stored for it is listed (see db::events::rows).
    for row in client.query(
        "SELECT hour, late_listed
             OR hour < coalesce((SELECT horizon FROM genalytics_raw_horizon), '-infinity')
         FROM generation_rollup_queue
         WHERE hour >= $1 AND hour < $2 AND failures = 0
         ORDER BY hour",
        &[&window.start, &window.end],
    )? {
        let hour = row.get(0);
        if row.get(1) {
            pending.late.push(hour);
        } else {
            pending.raw.push(hour);
        }
    }
    Ok(pending)
}

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
/// the table but the hours `$4`, the hours `$3` from their raw events.
fn hourly_rows(raw: &[DateTime<Utc>]) -> String {
    // One list for the table, the raw events and the part, so that the
    // UNION lines them up.
    let columns = format!("timestamp, {}", hour_columns("user_ids"));
    let rolled = format!(
        "SELECT {columns} FROM generation_metrics_hourly
         WHERE timestamp >= $1 AND timestamp < $2 AND timestamp <> ALL($4)"
    );
    // An hour with a part rolled up so far (the busy current hour) from the
    // part and its events since; any other from all its events.
    let fresh = || {
        format!(
            "SELECT {columns} FROM ({}) raw UNION ALL SELECT {columns} FROM ({}) part",
            hourly_select(&without_part("$3")),
            merged_select("$3")
        )
    };
    format!("({}) h", with_raw(&rolled, fresh, raw))
}

/// Hourly rows whose hour starts in the window, oldest first; the
/// [`Pending`] hours read beside their rollups. The original service's
/// rows have no duration sum: their average, weighted by their successes,
/// stands in; they have no histogram or user list, which the parts say.
pub fn hours(
    client: &mut Client,
    window: &Window,
    pending: &Pending,
) -> anyhow::Result<Vec<HourPart>> {
    Ok(hours_and_raw_users(client, window, pending)?.0)
}

/// [`hours`], and the users of the pending hours (which
/// [`users_in_lists`] then need not read again).
pub fn hours_and_raw_users(
    client: &mut Client,
    window: &Window,
    pending: &Pending,
) -> anyhow::Result<(Vec<HourPart>, Vec<Uuid>)> {
    let raw = &pending.raw;
    let rows = client.query(
        &format!(
            "SELECT timestamp, {} FROM {} ORDER BY timestamp",
            // The user lists of the hours read raw only: the rest are
            // counted by users_in_lists where they are.
            hour_columns("CASE WHEN timestamp = ANY($3) THEN user_ids END"),
            hourly_rows(raw)
        ),
        &[&window.start, &window.end, raw, &pending.all()],
    )?;
    let mut raw_users = BTreeSet::new();
    let mut parts = Vec::with_capacity(rows.len() + pending.late.len());
    for row in &rows {
        let rollup = hour_rollup(row, 1);
        raw_users.extend(rollup.users.iter().copied());
        parts.push(HourPart::from_rollup(row.get(0), &rollup));
    }
    for (hour, merged) in late_listed_hours(client, &pending.late)? {
        raw_users.extend(merged.users.iter().copied());
        parts.push(HourPart::from_rollup(hour, &merged));
    }
    parts.sort_by_key(|part| part.hour);
    Ok((parts, raw_users.into_iter().collect()))
}

/// The late-listed `hours`, each its stored rollup with its late events
/// added as aggregate will: merged before the raw horizon (percentiles
/// from the histogram then, if late events brought durations), rolled up
/// again from all its raw events from the horizon on — which only exact
/// percentiles need, read here from the hour's successful durations alone,
/// and only where late events brought some.
fn late_listed_hours(
    client: &mut Client,
    hours: &[DateTime<Utc>],
) -> anyhow::Result<BTreeMap<DateTime<Utc>, HourRollup>> {
    let mut merged = with_late(client, hours)?;
    let horizon = crate::db::retention::horizon(client)?;
    let inexact: Vec<DateTime<Utc>> = merged
        .iter()
        .filter(|(hour, rollup)| {
            rollup.percentiles_exact == Some(false)
                && horizon.is_none_or(|horizon| **hour >= horizon)
        })
        .map(|(hour, _)| *hour)
        .collect();
    if inexact.is_empty() {
        return Ok(merged);
    }
    for row in client.query(
        "SELECT h.hour, round(p.q[1]::numeric)::int, round(p.q[2]::numeric)::int,
             round(p.q[3]::numeric)::int
         FROM unnest($1::timestamptz[]) AS h(hour)
         CROSS JOIN LATERAL (
             SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY e.duration_ms) AS q
             FROM generation_events e
             WHERE e.timestamp >= h.hour AND e.timestamp < h.hour + interval '1 hour'
               AND e.event_type = 'completion' AND e.success) p",
        &[&inexact],
    )? {
        if let Some(hour) = merged.get_mut(&row.get(0)) {
            let quantile = |i: usize| row.get::<_, Option<i32>>(i).map(i64::from);
            hour.percentiles = [quantile(1), quantile(2), quantile(3)];
            hour.percentiles_exact = Some(true);
        }
    }
    Ok(merged)
}

/// Distinct users in the window's hourly user lists: those of rolled-up
/// hours but the pending ones, and `raw_users`, the users of those (see
/// [`hours_and_raw_users`]).
pub fn users_in_lists(
    client: &mut Client,
    window: &Window,
    pending: &Pending,
    raw_users: &[Uuid],
) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(DISTINCT u) FROM (
                 SELECT u FROM generation_metrics_hourly h, unnest(h.user_ids) AS u
                 WHERE h.timestamp >= $1 AND h.timestamp < $2 AND h.timestamp <> ALL($3)
                 UNION ALL
                 SELECT unnest($4::uuid[])) x",
            &[&window.start, &window.end, &pending.all(), &raw_users],
        )?
        .get(0))
}

/// Each hour's users as a derived table `x (hour, u)`: from the user lists
/// of rolled-up hours (late-listed ones too), the late events listed for
/// the hours `$5`, and the raw events of the hours `$3`.
fn hourly_users(raw: &[DateTime<Utc>]) -> String {
    let rolled = format!(
        "SELECT h.timestamp AS hour, u FROM generation_metrics_hourly h, unnest(h.user_ids) AS u
         WHERE h.timestamp >= $1 AND h.timestamp < $2 AND h.timestamp <> ALL($3)
         UNION ALL
         SELECT date_trunc('hour', e.timestamp, 'UTC'), e.user_id FROM ({}) e
         WHERE e.user_id IS NOT NULL",
        late_events("$5")
    );
    let fresh = || {
        "SELECT r.hour, x.u FROM unnest($3::timestamptz[]) AS r(hour)
         CROSS JOIN LATERAL (
             SELECT DISTINCT e.user_id AS u FROM generation_events e
             WHERE e.timestamp >= r.hour AND e.timestamp < r.hour + interval '1 hour'
               AND e.user_id IS NOT NULL) x"
            .to_string()
    };
    format!("({}) x", with_raw(&rolled, fresh, raw))
}

/// Distinct users in the hourly user lists of each local day of the window
/// (an hour belongs to the day its start falls on).
pub fn users_by_day(
    client: &mut Client,
    window: &Window,
    pending: &Pending,
) -> anyhow::Result<BTreeMap<NaiveDate, i64>> {
    let rows = client.query(
        &format!(
            "SELECT (x.hour AT TIME ZONE $4)::date, count(DISTINCT u) FROM {} GROUP BY 1",
            hourly_users(&pending.raw)
        ),
        &[
            &window.start,
            &window.end,
            &pending.raw,
            &window.tz.name(),
            &pending.late,
        ],
    )?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// The window's per-hour-and-model rows: the raw hours' from their raw
/// events, and the late-listed hours' late events beside their rows.
pub fn model_parts(
    client: &mut Client,
    window: &Window,
    pending: &Pending,
) -> anyhow::Result<Vec<(Option<String>, ModelRollup)>> {
    let raw = &pending.raw;
    let columns = "model_checkpoint, total_generations, successful_generations, failed_generations,
        duration_sum_ms, duration_count, duration_hist_keys, duration_hist_counts, last_used_at";
    let mut parts: Vec<(Option<String>, ModelRollup)> = client
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
        .collect();
    parts.extend(
        late_models(client, &pending.late)?
            .into_iter()
            .map(|(_, model, late)| (model, late)),
    );
    Ok(parts)
}

/// The window's per-hour-and-error-type rows: the raw hours' from their
/// raw events, and the late-listed hours' late failures beside their rows.
pub fn failure_parts(
    client: &mut Client,
    window: &Window,
    pending: &Pending,
) -> anyhow::Result<Vec<(Option<String>, FailureRollup)>> {
    let raw = &pending.raw;
    let columns =
        "error_type, failures, duration_sum_ms, duration_count, user_ids, sample_messages";
    let mut parts: Vec<(Option<String>, FailureRollup)> = client
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
        .collect();
    parts.extend(
        late_failures(client, &pending.late)?
            .into_iter()
            .map(|(_, error_type, late)| (error_type, late)),
    );
    Ok(parts)
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
    if !sources.late.is_empty() {
        // The user's late events of hours before the horizon, not merged
        // into the per-user rollups yet.
        let row = client.query_one(
            &format!(
                "SELECT {} FROM ({}) e CROSS JOIN LATERAL (SELECT {KIND_SQL} AS kind) k
                 WHERE e.user_id = $1",
                user_aggregates(),
                late_events("$2")
            ),
            &[&user_id, &sources.late],
        )?;
        figures.merge(&raw_user_rollup(&row, 0));
    }
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
