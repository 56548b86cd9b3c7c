//! Rolling many hours up: in chunks of one transaction each, on several
//! connections at once, an hour PostgreSQL refuses named and left queued
//! while every other is rolled up. Aggregate and prune both roll up so.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Outcome;

/// Most hours per transaction: a day. Each hour is aggregated on its own,
/// so a chunk bounds the transaction, not the memory; chunks this small
/// keep each connection of a parallel backfill busy until the end.
pub const CHUNK_HOURS: usize = 24;

/// What rolling up a set of hours did.
#[derive(Debug, Default, Serialize)]
pub struct Tally {
    /// Hours with events: each has an up-to-date row now.
    pub rolled_up: u64,
    /// Hours before the raw horizon that late events were merged into.
    pub merged: u64,
    /// Hours before the raw horizon kept as they were: their raw events
    /// were pruned, so they are not rolled up again.
    pub kept: u64,
    /// Hours whose rollup PostgreSQL refused: they stay queued.
    pub failed: Vec<FailedHour>,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        self.rolled_up += outcome.rolled_up;
        self.merged += outcome.merged;
        self.kept += outcome.kept;
    }
}

#[derive(Debug, Serialize)]
pub struct FailedHour {
    pub hour: DateTime<Utc>,
    pub error: String,
}

/// Rolls up the queued complete hours before `before` on `client`, chunk
/// by chunk as aggregate does (an hour PostgreSQL refuses stays queued with
/// its error, in `failed`: prune must not hold its horizon back for hours
/// no one rolled up yet).
pub fn roll_up_queued_before(
    client: &mut postgres::Client,
    before: DateTime<Utc>,
) -> anyhow::Result<Tally> {
    let hours: Vec<DateTime<Utc>> = super::queued_hours(client, false)?
        .into_iter()
        .filter(|hour| *hour < before)
        .collect();
    let mut tally = Tally::default();
    for chunk in hours.chunks(CHUNK_HOURS) {
        roll_up_chunk(client, chunk, &mut tally)?;
    }
    Ok(tally)
}

/// Rolls up `hours` on up to `jobs` connections (`client` and more), each
/// taking the next chunk: PostgreSQL then works on every core, and each
/// hour stays atomic in its own transaction.
pub fn roll_up_all(
    database: &crate::config::DatabaseUrl,
    client: &mut postgres::Client,
    hours: Box<dyn Iterator<Item = DateTime<Utc>> + Send>,
    count: u64,
    jobs: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Tally> {
    // Chunks small enough that every connection gets some: ten busy hours
    // go to two connections as chunks of three.
    let size = count.div_ceil(2 * jobs as u64).clamp(1, CHUNK_HOURS as u64) as usize;
    let chunks = Mutex::new(Chunks {
        hours: hours.peekable(),
        size,
    });
    let parallel = jobs.min(count.div_ceil(size as u64).max(1) as usize);
    let outcomes = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..parallel)
            .map(|_| {
                scope.spawn(|| {
                    let mut client = crate::db::connect_writer(database)?;
                    roll_up_chunks(&mut client, &chunks, progress)
                })
            })
            .collect();
        let mut outcomes = vec![roll_up_chunks(client, &chunks, progress)];
        outcomes.extend(workers.into_iter().map(|worker| {
            worker
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a rollup worker failed")))
        }));
        outcomes
    });
    let mut tally = Tally::default();
    for outcome in outcomes {
        let part = outcome?;
        tally.rolled_up += part.rolled_up;
        tally.merged += part.merged;
        tally.kept += part.kept;
        tally.failed.extend(part.failed);
    }
    tally.failed.sort_by_key(|failed| failed.hour);
    Ok(tally)
}

/// The hours left to roll up, handed out a chunk at a time.
struct Chunks<I: Iterator<Item = DateTime<Utc>>> {
    hours: std::iter::Peekable<I>,
    size: usize,
}

impl<I: Iterator<Item = DateTime<Utc>>> Chunks<I> {
    fn next_chunk(&mut self) -> Option<Vec<DateTime<Utc>>> {
        self.hours.peek()?;
        Some(self.hours.by_ref().take(self.size).collect())
    }
}

/// Takes chunks until none are left; stops at a server that went away.
fn roll_up_chunks<I: Iterator<Item = DateTime<Utc>>>(
    client: &mut postgres::Client,
    chunks: &Mutex<Chunks<I>>,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    loop {
        let chunk = chunks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next_chunk();
        let Some(chunk) = chunk else {
            return Ok(tally);
        };
        roll_up_chunk(client, &chunk, &mut tally)?;
        progress(chunk.len() as u64);
    }
}

/// Rolls up a chunk in one transaction; should PostgreSQL refuse it for
/// something in the data, each hour on its own, so one bad hour is named,
/// stays queued, and holds up no other. A server that went away stops the
/// run: the next one picks up.
pub fn roll_up_chunk(
    client: &mut postgres::Client,
    chunk: &[DateTime<Utc>],
    tally: &mut Tally,
) -> anyhow::Result<()> {
    match super::roll_up(client, chunk) {
        Ok(outcome) => {
            tally.add(outcome);
            return Ok(());
        }
        Err(err) if crate::error::is_transient(&err) => return Err(err),
        Err(_) if chunk.len() > 1 => {}
        Err(err) => {
            fail(client, chunk[0], &err, tally)?;
            return Ok(());
        }
    }
    for &hour in chunk {
        match super::roll_up(client, &[hour]) {
            Ok(outcome) => tally.add(outcome),
            Err(err) if crate::error::is_transient(&err) => return Err(err),
            Err(err) => fail(client, hour, &err, tally)?,
        }
    }
    Ok(())
}

fn fail(
    client: &mut postgres::Client,
    hour: DateTime<Utc>,
    err: &anyhow::Error,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let error = crate::text::escape_controls(&format!("{err:#}")).into_owned();
    tracing::error!(
        "cannot roll up the hour {}: {error}; it stays queued",
        hour.format("%Y-%m-%d %H:00 UTC")
    );
    super::record_failure(client, hour, &error)?;
    tally.failed.push(FailedHour { hour, error });
    Ok(())
}
