//! `transfer --aggregate`: the transfer keeps the hourly rollups current
//! too, so one service replaces the transfer and aggregate timers. A
//! follower rolls each hour up as soon as it has ended and the hours late
//! events queued again at most once a minute, on a connection of its own,
//! beside the streams it follows; a run that ends rolls up once, after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::db::{self, rollup};
use crate::hour;

/// Least time between two rollups of hours late events queued again.
const EVERY: Duration = Duration::from_secs(60);
/// How often the follower looks at the queue (one small query).
const LOOK: Duration = Duration::from_secs(1);

/// Rolls up the queued hours that have ended, once; what could not be
/// rolled up stays queued (and is said in the log).
pub(super) fn once(settings: &Settings) -> anyhow::Result<()> {
    let mut client = db::connect_current(settings.database()?)?;
    roll_up(&mut client, hour::floor(Utc::now()))
}

/// Keeps the rollups current until `stop` (the streams are done): each queued hour that has ended
/// is rolled up at the first look after it ends, then at most once every
/// [`EVERY`]. A server that went away is tried again at the next look.
pub(super) fn keep_current(settings: &Settings, stop: &AtomicBool) {
    let mut client: Option<postgres::Client> = None;
    // When the last rollup ran, and in which hour.
    let mut last: Option<(Instant, DateTime<Utc>)> = None;
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let current = hour::floor(Utc::now());
        let due = last.is_none_or(|(at, hour)| at.elapsed() >= EVERY || hour != current);
        if due {
            match look_and_roll_up(&mut client, settings, current) {
                Ok(false) => {}
                Ok(true) => {
                    last = Some((Instant::now(), current));
                    if failing {
                        tracing::info!("rolling up hours works again");
                        failing = false;
                    }
                }
                Err(err) => {
                    client = None;
                    last = Some((Instant::now(), current));
                    if !failing {
                        tracing::warn!(
                            "cannot roll up hours now: {err:#}; the follower tries again in a minute"
                        );
                        failing = true;
                    }
                }
            }
        }
        if !crate::retry::sleep_unless_stopped(LOOK, stop) {
            return;
        }
    }
}

/// Rolls up the hours before `current` if any are queued; whether it did.
fn look_and_roll_up(
    client: &mut Option<postgres::Client>,
    settings: &Settings,
    current: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let client = match client {
        Some(client) => client,
        None => client.insert(db::connect_current(settings.database()?)?),
    };
    let waiting: i64 = client
        .query_one(
            "SELECT count(*) FROM generation_rollup_queue WHERE hour < $1",
            &[&current],
        )?
        .get(0);
    if waiting == 0 {
        return Ok(false);
    }
    roll_up(client, current)?;
    Ok(true)
}

fn roll_up(client: &mut postgres::Client, current: DateTime<Utc>) -> anyhow::Result<()> {
    let tally = rollup::roll_up_queued_before(client, current)?;
    tracing::info!(
        "rolled up {} ({} merged with late events)",
        crate::output::counted(tally.rolled_up + tally.merged + tally.kept, "hour"),
        tally.merged
    );
    Ok(())
}
