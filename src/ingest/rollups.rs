//! `transfer --aggregate`: the transfer keeps the hourly rollups current
//! too, so one service replaces the transfer and aggregate timers. A
//! follower rolls each hour up as soon as it has ended and the hours late
//! events queued again at most once a minute, on a connection of its own,
//! beside the streams it follows; a run that ends rolls up once, after.
//! Once a minute it also rolls up the current hour so far (a part, see
//! `db::rollup::partial`), so that reports read only its newest events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

use crate::config::Settings;
use crate::db::{self, rollup};
use crate::hour;

/// Least time between two rollups of hours late events queued again.
const EVERY: Duration = Duration::from_secs(60);
/// How long after an hour ends the follower waits before rolling it up:
/// entries of the hour's last seconds still on their way are stored first,
/// rather than queueing the hour again at once.
const GRACE: TimeDelta = TimeDelta::seconds(30);
/// How often the follower looks at the queue (one small query).
const LOOK: Duration = Duration::from_secs(1);
/// Hours per transaction: each transaction holds its hours' queue rows,
/// which a commit queueing one of them waits for, so a follower keeps them
/// short, and looks for a stop between them.
const FOLLOW_CHUNK: usize = 2;

/// Rolls up the queued hours that have ended, once; what could not be
/// rolled up stays queued (and is said in the log).
pub(super) fn once(settings: &Settings) -> anyhow::Result<()> {
    let mut client = db::connect_writer(settings.database()?)?;
    let tally = rollup::roll_up_queued_before(&mut client, hour::floor(Utc::now()))?;
    say(&tally);
    Ok(())
}

/// Keeps the rollups current until `stop` (the streams are done): each
/// queued hour that has ended is rolled up at the first look [`GRACE`]
/// after it ends, then at most once every [`EVERY`]. A server that went
/// away is tried again a minute later. It does not feed systemd's
/// watchdog: the streams do.
pub(super) fn keep_current(settings: &Settings, stop: &AtomicBool) {
    let mut client: Option<postgres::Client> = None;
    // When the last rollup ran, and up to which hour.
    let mut last: Option<(Instant, DateTime<Utc>)> = None;
    let mut failing = false;
    // When the current hour's part was last brought up to date.
    let mut part_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let before = hour::floor(Utc::now() - GRACE);
        let due = last.is_none_or(|(at, hour)| at.elapsed() >= EVERY || hour != before);
        if due {
            match look_and_roll_up(&mut client, settings, before, stop) {
                Ok(false) => {}
                Ok(true) => {
                    last = Some((Instant::now(), before));
                    if failing {
                        tracing::info!("rolling up hours works again");
                        failing = false;
                    }
                }
                Err(err) => {
                    client = None;
                    last = Some((Instant::now(), before));
                    part_at = Some(Instant::now());
                    if !failing {
                        tracing::warn!(
                            "cannot roll up hours now: {err:#}; the follower tries again in a minute"
                        );
                        failing = true;
                    }
                }
            }
        }
        if part_at.is_none_or(|at| at.elapsed() >= EVERY) && !stop.load(Ordering::Relaxed) {
            part_at = Some(Instant::now());
            if let Err(err) = refresh_part(&mut client, settings) {
                client = None;
                tracing::debug!("cannot roll up the current hour so far: {err:#}");
            }
        }
        if !crate::retry::pause(LOOK, stop) {
            return;
        }
    }
}

/// Rolls up the current hour so far (see [`rollup::refresh_current`]).
fn refresh_part(client: &mut Option<postgres::Client>, settings: &Settings) -> anyhow::Result<()> {
    if rollup::refresh_current(writer(client, settings)?)? {
        tracing::debug!("rolled up the current hour so far");
    }
    Ok(())
}

/// Rolls up the queued hours before `before`, a few at a time, if any;
/// whether there were any.
fn look_and_roll_up(
    client: &mut Option<postgres::Client>,
    settings: &Settings,
    before: DateTime<Utc>,
    stop: &AtomicBool,
) -> anyhow::Result<bool> {
    let client = writer(client, settings)?;
    let hours: Vec<DateTime<Utc>> = rollup::queued_hours(client, false)?
        .into_iter()
        .filter(|hour| *hour < before)
        .collect();
    if hours.is_empty() {
        return Ok(false);
    }
    let mut tally = rollup::Tally::default();
    for chunk in hours.chunks(FOLLOW_CHUNK) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        rollup::roll_up_chunk(client, chunk, &mut tally)?;
    }
    say(&tally);
    Ok(true)
}

/// The follower's rollup connection, made again after a failure.
fn writer<'a>(
    client: &'a mut Option<postgres::Client>,
    settings: &Settings,
) -> anyhow::Result<&'a mut postgres::Client> {
    Ok(match client {
        Some(client) => client,
        None => client.insert(db::connect_writer(settings.database()?)?),
    })
}

fn say(tally: &rollup::Tally) {
    tracing::info!(
        "rolled up {} ({} merged with late events)",
        crate::output::counted(tally.rolled_up + tally.merged + tally.kept, "hour"),
        tally.merged
    );
}
