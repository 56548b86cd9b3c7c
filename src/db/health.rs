//! What `status` and `check` ask PostgreSQL: rollup backlog, table sizes,
//! and a window's failure rate and p95 from raw events.

use chrono::{DateTime, TimeDelta, Utc};
use postgres::Client;

/// Hours awaiting rollup: how many, the oldest, and how many of them are
/// stale — complete hours that have waited for their rollup longer than a
/// grace since they were complete and queued (an hour a late event queued
/// a minute ago is not late yet).
pub struct RollupBacklog {
    pub queued: i64,
    pub stale: i64,
    pub oldest: Option<DateTime<Utc>>,
}

pub fn rollup_backlog(client: &mut Client, grace: TimeDelta) -> anyhow::Result<RollupBacklog> {
    let row = client.query_one(
        "SELECT count(*),
                count(*) FILTER (WHERE hour < date_trunc('hour', now(), 'UTC')
                                   AND greatest(queued_at, hour + interval '1 hour')
                                       < now() - make_interval(secs => $1)),
                min(hour)
         FROM generation_rollup_queue",
        &[&(grace.num_milliseconds() as f64 / 1_000.0)],
    )?;
    Ok(RollupBacklog {
        queued: row.get(0),
        stale: row.get(1),
        oldest: row.get(2),
    })
}

/// Requests per hour over the `hours` complete and current hours up to
/// `now`, oldest first, from the rollups (zeros where there is no row).
pub fn requests_per_hour(
    client: &mut Client,
    now: DateTime<Utc>,
    hours: i64,
) -> anyhow::Result<Vec<i64>> {
    let last = crate::hour::floor(now);
    let first = last - chrono::TimeDelta::hours(hours - 1);
    let rows: std::collections::HashMap<DateTime<Utc>, i64> = client
        .query(
            "SELECT timestamp, total_requests::int8 FROM generation_metrics_hourly
             WHERE timestamp >= $1 AND timestamp <= $2",
            &[&first, &last],
        )?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(
        crate::hour::starts(first, last + chrono::TimeDelta::hours(1))
            .map(|hour| rows.get(&hour).copied().unwrap_or(0))
            .collect(),
    )
}

/// Queued hours whose rollup failed: how many, the oldest, and the last
/// error PostgreSQL gave.
pub struct FailingHours {
    pub count: i64,
    pub oldest: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

pub fn failing_hours(client: &mut Client) -> anyhow::Result<FailingHours> {
    let row = client.query_one(
        "SELECT count(*), min(hour),
                (SELECT last_error FROM generation_rollup_queue
                 WHERE last_error IS NOT NULL ORDER BY failed_at DESC LIMIT 1)
         FROM generation_rollup_queue WHERE last_error IS NOT NULL",
        &[],
    )?;
    Ok(FailingHours {
        count: row.get(0),
        oldest: row.get(1),
        last_error: row.get(2),
    })
}

/// What status says of the rollups themselves: where raw events start
/// being complete, how many hours only the original service rolled up, and
/// how many rows something other than genalytics wrote or changed.
pub struct RollupHealth {
    pub raw_horizon: Option<DateTime<Utc>>,
    pub legacy_hours: i64,
    pub foreign_rows: i64,
    pub late_events: i64,
    /// Queued hours reports read beside their rollups (from raw events,
    /// or their rollup and late events) until they are rolled up.
    pub raw_hours: i64,
}

pub fn rollup_health(client: &mut Client) -> anyhow::Result<RollupHealth> {
    let row = client.query_one(
        "SELECT (SELECT horizon FROM genalytics_raw_horizon),
                count(*) FILTER (WHERE m.legacy),
                count(*) FILTER (WHERE m.checksum IS DISTINCT FROM genalytics_hourly_checksum(m)),
                (SELECT count(*) FROM generation_rollup_late),
                (SELECT count(*) FROM generation_rollup_queue
                 WHERE failures = 0)
         FROM generation_metrics_hourly m",
        &[],
    )?;
    Ok(RollupHealth {
        raw_horizon: row.get(0),
        legacy_hours: row.get(1),
        foreign_rows: row.get(2),
        late_events: row.get(3),
        raw_hours: row.get(4),
    })
}

/// A table's rows (exact below a million, else the planner's estimate) and
/// its size on disk with indexes.
pub struct TableSize {
    pub table: String,
    pub rows: i64,
    pub exact: bool,
    pub bytes: i64,
}

pub const TABLES: &[&str] = &[
    "generation_events",
    "generation_events_rejected",
    "generation_metrics_hourly",
    "generation_metrics_hourly_models",
    "generation_metrics_hourly_failures",
    "generation_metrics_hourly_users",
];

pub fn table_sizes(client: &mut Client) -> anyhow::Result<Vec<TableSize>> {
    let mut sizes = Vec::new();
    for &table in TABLES {
        let row = client.query_one(
            // A partitioned table is summed over its partitions (it has no
            // storage of its own); a plain one has no partition tree.
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::int8,
                    coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8
             FROM pg_class c
             WHERE (c.oid = $1::text::regclass AND c.relkind <> 'p')
                OR c.oid IN (SELECT relid FROM pg_partition_tree($1::text::regclass) WHERE isleaf)",
            &[&table],
        )?;
        let (estimate, bytes): (i64, i64) = (row.get(0), row.get(1));
        let (rows, exact) = if estimate < 1_000_000 {
            // Table names are our own constants, never input.
            let count: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM (SELECT FROM {table} LIMIT 1000001) AS rows"),
                    &[],
                )?
                .get(0);
            (count, true)
        } else {
            (estimate, false)
        };
        sizes.push(TableSize {
            table: table.to_string(),
            rows,
            exact,
            bytes,
        });
    }
    Ok(sizes)
}

/// Rows of the default partition of `generation_events` (0 without one),
/// counted up to a million and one: a scrape never scans more.
pub fn default_partition_rows(client: &mut Client) -> anyhow::Result<i64> {
    let default: Option<String> = client
        .query_opt(
            "SELECT partition::text FROM genalytics_event_partitions WHERE is_default",
            &[],
        )?
        .map(|row| row.get(0));
    let Some(table) = default else {
        return Ok(0);
    };
    // The name comes from the catalog, already quoted by regclass's text.
    Ok(client
        .query_one(
            &format!("SELECT count(*) FROM (SELECT FROM {table} LIMIT 1000001) AS rows"),
            &[],
        )?
        .get(0))
}

/// The newest stored event's time.
pub fn newest_event(client: &mut Client) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(client
        .query_one("SELECT max(timestamp) FROM generation_events", &[])?
        .get(0))
}

/// Completions and the p95 of successful durations in `[from, to)`, from
/// raw events (exact, and cheap for the short windows alerting uses).
pub struct WindowHealth {
    pub successful: i64,
    pub failed: i64,
    pub p95_ms: Option<f64>,
}

pub fn window_health(
    client: &mut Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<WindowHealth> {
    let row = client.query_one(
        "SELECT count(*) FILTER (WHERE success), count(*) FILTER (WHERE NOT success),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE success)
         FROM generation_events
         WHERE event_type = 'completion' AND timestamp >= $1 AND timestamp < $2",
        &[&from, &to],
    )?;
    Ok(WindowHealth {
        successful: row.get(0),
        failed: row.get(1),
        p95_ms: row.get(2),
    })
}
