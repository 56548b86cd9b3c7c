//! Standbys' replay, which a trim waits for: an entry leaves the stream
//! only once every standby streaming from the primary holds its commit, so
//! a failover to an asynchronous standby right after a trim loses nothing
//! (the entries are read again from Redis and stored once).

use postgres::Client;

/// Where the primary's WAL stands: its insert position, less the header
/// of a page (or, at a segment's start, the longer one) it has just
/// begun: a record that ended on the boundary leaves the position after
/// the new page's header, and a standby that replayed that record stays
/// at the boundary until more WAL comes.
const NOW: &str = "(SELECT CASE
        WHEN (p - '0/0') % seg = 40 THEN p - 40
        WHEN (p - '0/0') % blk = 24 THEN p - 24
        ELSE p END
    FROM (SELECT pg_current_wal_insert_lsn() AS p,
                 current_setting('wal_block_size')::int8 AS blk,
                 (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size') AS seg) w)";

/// How many standbys have not replayed up to `lsn` (none streaming: 0),
/// and that position; `lsn` is where the primary's WAL stands now unless
/// given. "Now" is the insert position, past every commit made so far:
/// with `synchronous_commit = off` a commit returns before its record is
/// written, and the write position (`pg_current_wal_lsn`) may still be
/// short of it while a standby has replayed all that was written — a trim
/// then would outrun the standby. The count is `None` when this
/// role may not see their replay (`pg_stat_replication` shows it to
/// `pg_read_all_stats` and superusers only). One statement: without
/// standbys, a commit's trim costs this one query.
pub fn standbys_behind(
    client: &mut Client,
    lsn: Option<&str>,
) -> anyhow::Result<(String, Option<i64>)> {
    let row = client.query_one(
        &format!(
            "SELECT at::text, pg_has_role('pg_read_all_stats', 'USAGE'),
                (SELECT count(*) FROM pg_stat_replication
                 WHERE replay_lsn IS NULL OR replay_lsn < at)
         FROM (SELECT coalesce($1::text::pg_lsn, {NOW}) AS at) now",
        ),
        &[&lsn],
    )?;
    let (lsn, visible, behind): (String, bool, i64) = (row.get(0), row.get(1), row.get(2));
    Ok((lsn, visible.then_some(behind)))
}

/// What a server is to the pipeline: a standby or the primary, and on a
/// primary its streaming standbys and how far the furthest lags in replay.
pub struct Role {
    pub standby: bool,
    pub standbys: i64,
    /// Seconds; none when no standby streams, 0 when all are caught up
    /// (PostgreSQL shows no lag for an idle, caught-up standby).
    pub replay_lag_seconds: Option<f64>,
}

pub fn role(client: &mut Client) -> anyhow::Result<Role> {
    let row = client.query_one(
        "SELECT pg_is_in_recovery(), count(r.pid),
                coalesce(max(extract(epoch FROM replay_lag))::float8, 0)
         FROM (SELECT 1) one LEFT JOIN pg_stat_replication r ON true",
        &[],
    )?;
    let standbys: i64 = row.get(1);
    Ok(Role {
        standby: row.get(0),
        standbys,
        replay_lag_seconds: (standbys > 0).then(|| row.get(2)),
    })
}
