//! The daily partitions of `generation_events`: created ahead of
//! need and for any day an event needs, dropped whole by prune.
//!
//! The SQL lives in `sql/0008_partitioned_events.sql` and
//! `sql/0009_partitions_within_retention.sql`:
//! `genalytics_create_event_partition(day, retention_days)` creates one
//! day's partition (unless one covers it, or the day is outside the raw
//! retention window and a week ahead, and its events belong in the default
//! partition), and the view
//! `genalytics_event_partitions` lists partitions with their ranges.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use postgres::{Client, GenericClient};

/// Days whose partition this process has already seen to, so a batch
/// costs no catalog query unless it holds an event of a new day. Forgotten
/// when the UTC date changes: the sane range moves with it.
#[derive(Debug)]
pub struct Known {
    /// Whole days of raw retention: older days get no partition.
    retention_days: i32,
    today: Option<NaiveDate>,
    days: BTreeSet<NaiveDate>,
    /// Days whose partition waited too long for its lock (a long query on
    /// the default partition, a `pg_dump`): tried again after this.
    retry: BTreeMap<NaiveDate, Instant>,
    /// Whether events outside the window were reported.
    warned_outside: bool,
    warned_cap: bool,
}

/// Most partitions one process makes in a UTC day, all its streams
/// together: a backfill of the whole window takes a few runs, no clock,
/// however hostile, makes more, and a follower still makes each new day's.
pub const MAX_PER_RUN: u64 = 40;
static MADE: std::sync::Mutex<(Option<NaiveDate>, u64)> = std::sync::Mutex::new((None, 0));

/// Counts a partition made today; false when today's are used up.
fn may_make(today: NaiveDate) -> bool {
    let mut made = MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if made.0 != Some(today) {
        *made = (Some(today), 0);
    }
    made.1 < MAX_PER_RUN
}

fn made_one() {
    let mut made = MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    made.1 += 1;
}

/// Days ahead of today that get partitions (as the SQL's sane range).
const AHEAD_DAYS: u64 = 8;

/// Whether `day` is inside the window partitions are made for.
pub fn inside_window(day: NaiveDate, today: NaiveDate, retention_days: i32) -> bool {
    let oldest = today
        .checked_sub_days(Days::new(u64::try_from(retention_days.max(0)).unwrap_or(0)))
        .unwrap_or(NaiveDate::MIN);
    let first_sane = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or(NaiveDate::MIN);
    day >= oldest
        && day >= first_sane
        && today
            .checked_add_days(Days::new(AHEAD_DAYS))
            .is_none_or(|end| day < end)
}

/// How long a day whose partition could not get its lock waits before it
/// is tried again; its events go to the default partition meanwhile.
const LOCK_RETRY: Duration = Duration::from_secs(60);

impl Known {
    pub fn new(retention_days: i32) -> Known {
        Known {
            retention_days,
            today: None,
            days: BTreeSet::new(),
            retry: BTreeMap::new(),
            warned_outside: false,
            warned_cap: false,
        }
    }

    /// Sees to the partitions of `days` inside the retention window (and of
    /// today and the next two days, ahead of need), each day in a
    /// transaction of its own; returns how many it created. Days outside
    /// the window, and days past [`MAX_PER_RUN`], keep their events in the
    /// default partition, said once per run.
    pub fn ensure(
        &mut self,
        client: &mut Client,
        days: impl IntoIterator<Item = NaiveDate>,
    ) -> anyhow::Result<u64> {
        let today = Utc::now().date_naive();
        if self.today != Some(today) {
            self.days.clear();
            self.today = Some(today);
        }
        let ahead = (0..3).filter_map(|n| today.checked_add_days(Days::new(n)));
        let now = Instant::now();
        self.retry.retain(|_, at| *at > now);
        let (inside, outside): (BTreeSet<NaiveDate>, BTreeSet<NaiveDate>) = ahead
            .chain(days)
            .filter(|day| !self.days.contains(day) && !self.retry.contains_key(day))
            .partition(|day| inside_window(*day, today, self.retention_days));
        if let (false, Some(first), Some(last)) =
            (self.warned_outside, outside.first(), outside.last())
        {
            self.warned_outside = true;
            tracing::warn!(
                "events of {} outside the raw retention window (the last {} days and a week ahead), \
                 from {first} to {last}, go to the default partition; `genalytics status` counts them and \
                 `genalytics prune` deletes them",
                crate::output::counted(outside.len() as u64, "day"),
                self.retention_days
            );
        }
        self.days.extend(&outside);
        let missing: Vec<NaiveDate> = inside.into_iter().collect();
        if missing.is_empty() {
            return Ok(0);
        }
        // A day at a time, each in its own transaction: one that fails
        // (a table by hand under its name, a lock not had in time) costs
        // only its own day, and a backfill of years holds no more than one
        // day's locks at once.
        let mut created = 0;
        for day in missing {
            if !may_make(today) {
                if !self.warned_cap {
                    self.warned_cap = true;
                    tracing::warn!(
                        "{MAX_PER_RUN} partitions were made in this run, the most one run makes; events of \
                         other days go to the default partition until a later run makes theirs"
                    );
                }
                break;
            }
            match create_one(client, day, self.retention_days) {
                Ok(made) => {
                    created += u64::from(made);
                    if made {
                        made_one();
                    }
                }
                Err(err) if lock_not_had(&err) => {
                    tracing::warn!(
                        "the partition of {day} waited too long for its lock; its events go to the \
                         default partition, and it is tried again in a minute"
                    );
                    self.retry.insert(day, now + LOCK_RETRY);
                    continue;
                }
                Err(err) if crate::error::is_transient(&err) => return Err(err),
                // Nothing in the data may stop transfer: the day's events
                // go to the default partition, stored all the same.
                Err(err) => tracing::warn!(
                    "cannot create the partition of {day}: {err:#}; its events go to the default partition"
                ),
            }
            self.days.insert(day);
        }
        Ok(created)
    }
}

fn lock_not_had(err: &anyhow::Error) -> bool {
    crate::error::pg_error(err)
        .is_some_and(|pg| pg.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE))
}

fn create_one(client: &mut Client, day: NaiveDate, retention_days: i32) -> anyhow::Result<bool> {
    let mut tx = client.transaction()?;
    let made = create(&mut tx, &[day], retention_days)? == 1;
    tx.commit()?;
    Ok(made)
}

/// Creates the partitions `days` need inside the retention window, in the
/// caller's transaction (which then holds the creation lock until it
/// ends); returns how many it made.
pub fn create(
    client: &mut impl GenericClient,
    days: &[NaiveDate],
    retention_days: i32,
) -> anyhow::Result<u64> {
    if days.is_empty() {
        return Ok(0);
    }
    let row = client.query_one(
        "SELECT count(*) FILTER (WHERE genalytics_create_event_partition(day, $2))
         FROM unnest($1::date[]) AS day",
        &[&days, &retention_days],
    )?;
    Ok(row.get::<_, i64>(0).unsigned_abs())
}

/// The UTC days of some times.
pub fn days_of<'a>(times: impl IntoIterator<Item = &'a DateTime<Utc>>) -> BTreeSet<NaiveDate> {
    times.into_iter().map(DateTime::date_naive).collect()
}

/// One partition as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// `None`: from the beginning of time (the adopted table).
    pub lo: Option<DateTime<Utc>>,
    /// `None`: to the end of time.
    pub hi: Option<DateTime<Utc>>,
    pub is_default: bool,
}

pub fn list(client: &mut impl GenericClient) -> anyhow::Result<Vec<Partition>> {
    Ok(client
        .query(
            "SELECT name, lo, hi, is_default FROM genalytics_event_partitions
             ORDER BY is_default, lo NULLS FIRST",
            &[],
        )?
        .iter()
        .map(|row| Partition {
            name: row.get(0),
            lo: row.get(1),
            hi: row.get(2),
            is_default: row.get(3),
        })
        .collect())
}

/// The partitions (not the default one) that end at or before `horizon`.
pub fn wholly_before(
    client: &mut impl GenericClient,
    horizon: DateTime<Utc>,
) -> anyhow::Result<Vec<Partition>> {
    Ok(list(client)?
        .into_iter()
        .filter(|p| !p.is_default && p.hi.is_some_and(|hi| hi <= horizon))
        .collect())
}

/// Prefix of a partition prune has detached and is about to drop; one left
/// by an interrupted prune is dropped by the next.
const DETACHED: &str = "genalytics_pruned_";

/// Detaches `partition` for dropping if every hour it holds is done (none
/// waits for its rollup or a merge); the check runs after the detach has
/// its lock, so it sees every hour a transfer queued into it. Returns
/// whether it was detached.
pub fn detach_for_drop(client: &mut Client, partition: &Partition) -> anyhow::Result<bool> {
    if partition.is_default || partition.hi.is_none() {
        return Ok(false);
    }
    let waiting = "SELECT EXISTS (SELECT 1 FROM generation_rollup_queue
                   WHERE hour >= coalesce($1, '-infinity'::timestamptz) AND hour < $2)";
    let busy: bool = client
        .query_one(waiting, &[&partition.lo, &partition.hi])?
        .get(0);
    if busy {
        return Ok(false);
    }
    let mut tx = client.transaction()?;
    // Names come from the catalog; quoted as identifiers all the same.
    let name = quote_ident(&partition.name);
    // Detaching locks the whole table for an instant; waiting long for it
    // (behind a long report) would hold every transfer behind this prune.
    // Not had in 5 s, the partition waits for the next prune.
    tx.batch_execute("SET LOCAL lock_timeout = '5s'")?;
    if let Err(err) = tx.batch_execute(&format!(
        "ALTER TABLE generation_events DETACH PARTITION {name}"
    )) {
        if err.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
            tracing::warn!(
                "{} was busy; it is dropped by a later prune and its events stay until then",
                partition.name
            );
            return Ok(false);
        }
        return Err(err.into());
    }
    let busy: bool = tx
        .query_one(waiting, &[&partition.lo, &partition.hi])?
        .get(0);
    if busy {
        tx.rollback()?;
        return Ok(false);
    }
    let detached = quote_ident(&format!("{DETACHED}{}", partition.name));
    tx.batch_execute(&format!("ALTER TABLE {name} RENAME TO {detached}"))?;
    tx.commit()?;
    Ok(true)
}

/// Drops every detached partition, counting its rows first; returns the
/// partitions dropped and their rows.
pub fn drop_detached(client: &mut Client) -> anyhow::Result<(u64, i64)> {
    let names: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c
             WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
               AND starts_with(c.relname, $1) AND NOT c.relispartition",
            &[&DETACHED],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let (mut dropped, mut rows) = (0, 0);
    for name in &names {
        let table = quote_ident(name);
        // Counted for the summary: no one writes a detached table.
        let gone = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .and_then(|row| {
                client.batch_execute(&format!("DROP TABLE {table}"))?;
                Ok(row.get::<_, i64>(0))
            })
            .map_err(anyhow::Error::from);
        match gone {
            Ok(count) => {
                dropped += 1;
                rows += count;
            }
            Err(err) if crate::error::is_transient(&err) => return Err(err),
            // Something of the operator's depends on it (a view): prune
            // goes on, and says so until it can drop it.
            Err(err) => tracing::warn!("cannot drop {name}, a pruned partition: {err:#}"),
        }
    }
    Ok((dropped, rows))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_whatever_they_hold() {
        assert_eq!(
            quote_ident("generation_events_p20261128"),
            "\"generation_events_p20261128\""
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn days_of_hours_are_utc_days() {
        let hours: Vec<DateTime<Utc>> = [
            "2026-03-29T00:00:00Z",
            "2026-03-29T23:00:00Z",
            "2026-03-30T00:00:00Z",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let days: Vec<String> = days_of(&hours).iter().map(ToString::to_string).collect();
        assert_eq!(days, ["2026-03-29", "2026-03-30"]);
    }
}
