//! The transfer engine: drains a stream into `generation_events` exactly
//! once, on options free of the command line.
//!
//! A reader thread (`stream::drain`) pulls batches from Redis — bounded by entries and by
//! bytes — and parses them while the main thread commits the previous batch
//! to PostgreSQL: rows by binary COPY, dead letters, the hours to roll up
//! and the new stream position in one transaction. At most three batches
//! are in memory, whatever the backlog. Only after a commit is the stream
//! trimmed, never past what is stored, and never once the key holds
//! another stream.
//!
//! Before reading, transfer checks that the stream under the key is the
//! one its position belongs to (`stream::identity`). With `--follow` it
//! runs as a service: a server that goes away is waited for with backoff,
//! what was read is committed before reconnecting, and only what no retry
//! can mend ends the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::config::{RedisNodes, Settings};
use crate::db::partitions;
use crate::db::streams::TransferState;
use crate::error::Exit;
use crate::event::EntryId;
use crate::retry::Backoff;
use crate::stream::cluster;
use crate::stream::wire::Wire;

mod commit;
mod fault;
mod rollups;
mod session;
mod several;

use fault::Fault;

/// What a transfer is asked to do (the command's flags, minus printing).
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent switches, each a flag"
)]
#[derive(Debug, Clone)]
pub struct Options {
    /// Entries per transaction, and at most per read from Redis.
    pub batch_size: u32,
    /// Stop after this many entries.
    pub max_events: Option<u64>,
    /// Keep reading new entries until a stop, surviving server restarts.
    pub follow: bool,
    /// Stored entries younger than this stay in the stream.
    pub keep: TimeDelta,
    /// Wait for a transfer already running instead of stepping aside.
    pub wait: bool,
    /// Store a stream recreated below the stored position from its first entry.
    pub new_stream: bool,
    /// Streams transferred at once, when there are several.
    pub parallel: u16,
    /// Keep the hourly rollups current too (see `rollups`).
    pub aggregate: bool,
}

/// How one stream's transfer ended.
#[derive(Debug)]
pub enum Ended {
    Done(Summary),
    /// Another transfer of the stream holds its lock: nothing was done.
    Skipped {
        stream: String,
    },
}

/// Told of each stream's end, as it ends (streams side by side end in any
/// order).
pub type Report<'a> = dyn Fn(&Ended) -> anyhow::Result<()> + Sync + 'a;

/// What one stream's transfer did, for its summary line or JSON.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub stream: String,
    pub events: u64,
    pub rejected: u64,
    /// Entries read again that were already stored: not transferred.
    pub skipped: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// Entries in the stream not yet transferred when the run ended (null
    /// when Redis could not say).
    pub behind: Option<u64>,
    pub behind_exact: bool,
    /// The last entry stored (the position), once known.
    #[serde(serialize_with = "id_or_empty")]
    pub last_id: Option<EntryId>,
    pub trimmed: u64,
    /// Set when the key turned out to hold a new stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<Reset>,
    /// Times a server went away and came back (follow mode).
    pub reconnects: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reset {
    pub at: DateTime<Utc>,
    /// Entries the replaced stream had received that were never stored, at
    /// least (unknown without Redis 7's `entries-added`).
    pub lost_at_least: Option<u64>,
}

/// Everything a run keeps across sessions.
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent once-a-run flags"
)]
struct Run<'a> {
    options: &'a Options,
    settings: &'a Settings,
    key: &'a str,
    stop: Arc<AtomicBool>,
    pg: Option<postgres::Client>,
    redis: Option<Wire>,
    state: Option<TransferState>,
    summary: Summary,
    progress: ProgressBar,
    trim_warned: bool,
    /// Said once a run: the trim waits for a standby, or cannot see them.
    replay_said: bool,
    ready: bool,
    /// `--new-stream`, until it has been used once.
    new_stream: bool,
    /// Bytes of prepared batches not yet committed (bounded as `stream::drain` says).
    in_flight: Arc<AtomicUsize>,
    /// Days whose partition was seen to.
    partitions: partitions::Known,
    /// A follower's wait for a server that went away, across sessions.
    outage: Backoff,
}

impl<'a> Run<'a> {
    fn new(
        options: &'a Options,
        settings: &'a Settings,
        key: &'a str,
        stop: &Arc<AtomicBool>,
    ) -> Run<'a> {
        Run {
            options,
            settings,
            key,
            stop: Arc::clone(stop),
            pg: None,
            redis: None,
            state: None,
            summary: Summary {
                stream: key.to_string(),
                ..Summary::default()
            },
            progress: ProgressBar::hidden(),
            trim_warned: false,
            replay_said: false,
            ready: false,
            new_stream: options.new_stream,
            in_flight: Arc::new(AtomicUsize::new(0)),
            partitions: partitions::Known::new(settings.raw_retention_days),
            outage: Backoff::new("the follower waits for a server", stop),
        }
    }
}

/// Sets its flag when dropped: on return and on unwinding alike.
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Transfers every stream the settings name, each as it would be alone.
/// With `aggregate`, a follower keeps the rollups current beside the
/// streams, and a run that ends rolls up once after them.
pub fn run(options: &Options, settings: &Settings, report: &Report) -> anyhow::Result<Exit> {
    let stop = crate::interrupt::install()?;
    let transfer = || {
        if !settings.several_streams() {
            transfer_stream(options, settings, &settings.stream_key, &stop, report)?;
            return Ok(Exit::Success);
        }
        several::run(options, settings, &stop, report)
    };
    if !options.aggregate {
        return transfer();
    }
    if !options.follow {
        let exit = transfer()?;
        rollups::once(settings)?;
        return Ok(exit);
    }
    // The rollups stop with the streams, whichever way those end (a stop
    // ends them first, a panic too); a rollup thread that fails leaves the
    // streams running, and says so.
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rollups::keep_current(settings, &done);
            }));
            if kept.is_err() {
                tracing::error!("the rollups stopped; the streams go on (run aggregate from cron)");
            }
        });
        let _done = Done(&done);
        transfer()
    })
}

/// Transfers one stream until it is drained (or, following, until a stop)
/// and reports how it ended.
fn transfer_stream(
    options: &Options,
    settings: &Settings,
    key: &str,
    stop: &Arc<AtomicBool>,
    report: &Report,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut run = Run::new(options, settings, key, stop);
    if !options.follow && !run.take_turn()? {
        return report(&Ended::Skipped {
            stream: key.to_string(),
        });
    }
    let (mut restarts, mut redirects, mut failovers) = (0, 0, 0);
    let outcome = loop {
        let before = run.summary.entries();
        match run.session() {
            Ok(()) => break Ok(()),
            Err(Fault::Transient(err))
                if !matches!(settings.redis_nodes, RedisNodes::Cluster(_))
                    && cluster::is_redirect(&err) =>
            {
                break Err(err.context(
                    "Redis answered with a redirection: it is a cluster node — pass --redis-cluster \
                     (GENALYTICS_REDIS_CLUSTER=1)",
                ));
            }
            Err(Fault::Transient(err)) if options.follow => {
                // A connection a fault left behind may be dead: the next
                // session makes a new one.
                run.redis = None;
                if !run.outage.wait(&err) {
                    break Ok(());
                }
                run.summary.reconnects += 1;
            }
            Err(Fault::Transient(err)) if fault::starts_over(&err) && restarts < 3 => {
                tracing::info!("{err:#}; judging the stream again");
                run.redis = None;
                restarts += 1;
            }
            // The key's slot is moving to another node (a reshard, a
            // failover): the next session asks the cluster where it is,
            // after a pause that lets a migration finish.
            Err(Fault::Transient(err)) if cluster::is_redirect(&err) && redirects < 10 => {
                // Counted since the last session that got work done.
                if run.summary.entries() > before {
                    redirects = 0;
                }
                redirects += 1;
                tracing::warn!("{err}; asking the cluster where {key} is now");
                run.redis = None;
                std::thread::sleep(Duration::from_millis(100 * redirects));
            }
            // The master went away or turned replica: a failover takes
            // the sentinels seconds, so a cron run asks them again for
            // about half a minute before it gives up.
            Err(Fault::Transient(err))
                if matches!(settings.redis_nodes, RedisNodes::Sentinel { .. })
                    && crate::error::from_redis(&err)
                    && failovers < 20 =>
            {
                if run.summary.entries() > before {
                    failovers = 0;
                }
                failovers += 1;
                tracing::warn!("{err:#}; asking the sentinels for the master again");
                run.redis = None;
                std::thread::sleep(Duration::from_millis(250 * failovers.min(8)));
            }
            Err(Fault::Transient(err) | Fault::Fatal(err)) => break Err(err),
        }
    };
    run.progress.finish_and_clear();
    crate::service::stopping();
    outcome?;
    report(&Ended::Done(run.finish(started)))
}

impl Summary {
    /// Entries dealt with so far.
    fn entries(&self) -> u64 {
        self.events + self.rejected + self.skipped
    }
}

/// Serializes a position not yet known as `""`.
#[allow(
    clippy::ref_option,
    reason = "serde's serialize_with hands over the field"
)]
fn id_or_empty<S: serde::Serializer>(id: &Option<EntryId>, out: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => out.collect_str(id),
        None => out.serialize_str(""),
    }
}
