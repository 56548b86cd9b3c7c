//! Several streams in one run (`--stream` more than once, or
//! `--stream-pattern 'genonaut:generation_events:stream:*'`). Each stream is transferred as
//! it would be alone — its own connections, lock and position, its own
//! summary line — so running them side by side changes nothing about
//! exactly-once. A run that ends shares `--parallel` workers among the
//! streams; `--follow` gives every stream a worker of its own (up to
//! [`FOLLOW_MAX`]), picks up streams a pattern comes to match, and when one
//! stream fails for good it says so and tries that one again a minute
//! later, while the others go on: one shard needing an operator does not
//! halt the rest.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use super::{Options, Report, transfer_stream};
use crate::config::Settings;
use crate::error::{Exit, UsageError};
use crate::stream;

/// Longest stream key a pattern picks up: keys are recorded in an indexed
/// column (a btree entry holds about 2.7 kB).
const KEY_MAX: usize = 1_000;
/// How often `--follow` looks for new streams matching a pattern.
const RESCAN: Duration = Duration::from_secs(5);
/// How long a followed stream that failed waits before it is tried again.
const RETRY: Duration = Duration::from_secs(60);
/// Most streams one process follows: each holds a thread and a connection
/// to each server.
const FOLLOW_MAX: usize = 64;

pub(super) fn run(
    options: &Options,
    settings: &Settings,
    stop: &Arc<AtomicBool>,
    report: &Report,
) -> anyhow::Result<Exit> {
    if options.new_stream {
        return Err(UsageError(
            "--new-stream accepts a replaced stream below its position: give the one stream it is for".into(),
        )
        .into());
    }
    let mut unreadable = BTreeSet::new();
    let keys = resolve(settings, &mut unreadable)?;
    if keys.is_empty() && !options.follow {
        tracing::warn!(
            "no stream matches {}; nothing to transfer",
            settings.patterns.join(", ")
        );
        return Ok(Exit::Success);
    }
    let failed: Mutex<Vec<(String, anyhow::Error)>> = Mutex::new(Vec::new());
    let transfer = |key: &str| {
        while let Err(err) = transfer_stream(options, settings, key, stop, report) {
            if !options.follow {
                tracing::error!("transfer of {key} failed: {err:#}");
                failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((key.to_string(), err));
                return;
            }
            tracing::error!("transfer of {key} failed: {err:#}; trying it again in a minute");
            if !crate::retry::pause(RETRY, stop) {
                return;
            }
        }
    };
    if options.follow {
        follow(settings, stop, keys, &mut unreadable, &transfer);
    } else {
        let queue = Mutex::new(keys.iter().cloned().collect::<VecDeque<String>>());
        let next = || {
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front()
        };
        let workers = usize::from(options.parallel).min(keys.len());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while let Some(key) = next() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        transfer(&key);
                    }
                });
            }
        });
    }
    let failed = failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match failed.len() {
        0 => Ok(Exit::Success),
        n => {
            let names = failed
                .iter()
                .map(|(key, _)| key.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let (_, first) = failed.into_iter().next().expect("one failed");
            Err(first.context(format!(
                "{n} of the streams failed ({names}); the others were transferred"
            )))
        }
    }
}

/// Every stream its own worker until a stop; streams that come to match a
/// pattern get theirs at the next look.
fn follow(
    settings: &Settings,
    stop: &AtomicBool,
    mut keys: BTreeSet<String>,
    unreadable: &mut BTreeSet<Vec<u8>>,
    transfer: &(dyn Fn(&str) + Sync),
) {
    let patterns = !settings.patterns.is_empty();
    std::thread::scope(|scope| {
        let (mut started, mut refused) = (BTreeSet::new(), BTreeSet::new());
        loop {
            let new: Vec<String> = keys.difference(&started).cloned().collect();
            for key in new {
                if started.len() == FOLLOW_MAX {
                    if refused.insert(key.clone()) {
                        tracing::warn!(
                            "{key} is not followed: one process follows at most {FOLLOW_MAX} streams; \
                             run another with a narrower --stream"
                        );
                    }
                    continue;
                }
                let worker = key.clone();
                tracing::info!("following {key}");
                let spawned = std::thread::Builder::new()
                    .name(format!("follow {key}"))
                    .spawn_scoped(scope, move || transfer(&worker));
                match spawned {
                    Ok(_) => {
                        started.insert(key);
                    }
                    Err(err) => tracing::warn!("cannot start a worker for {key}: {err}"),
                }
            }
            // Without a pattern there is nothing new to look for: the
            // workers run until the stop.
            let look = if patterns { RESCAN } else { Duration::MAX };
            if !crate::retry::pause(look, stop) {
                return;
            }
            keys = match resolve(settings, unreadable) {
                Ok(keys) => keys,
                Err(err) => {
                    tracing::warn!("cannot look for new streams: {err:#}");
                    BTreeSet::new()
                }
            };
        }
    });
}

/// The streams to transfer: the `--stream` keys as given, and the stream
/// keys Redis holds that match a `--stream-pattern` (`SCAN … TYPE stream`).
/// Keys come from Redis as bytes: one the database cannot record (not
/// UTF-8, a NUL, over [`KEY_MAX`] bytes) is skipped with one warning (per
/// run) showing it escaped, and the others are transferred.
fn resolve(
    settings: &Settings,
    unreadable: &mut BTreeSet<Vec<u8>>,
) -> anyhow::Result<BTreeSet<String>> {
    let mut keys: BTreeSet<String> = settings.streams.iter().cloned().collect();
    let patterns = &settings.patterns;
    if patterns.is_empty() {
        return Ok(keys);
    }
    let nodes = stream::servers(settings)?;
    for node in &nodes {
        let mut con = stream::connect(node)?;
        for pattern in patterns {
            let found: Vec<Vec<u8>> = redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("stream")
                .clone()
                .iter(&mut con)
                .with_context(|| format!("cannot list the streams matching {pattern}"))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("cannot list the streams matching {pattern}"))?;
            for key in found {
                let why = match std::str::from_utf8(&key) {
                    Err(_) => "is not UTF-8",
                    Ok(text) if text.contains('\0') => "holds a NUL character",
                    Ok(text) if text.len() > KEY_MAX => "is longer than 1,000 bytes",
                    Ok(text) => {
                        keys.insert(text.to_string());
                        continue;
                    }
                };
                if unreadable.insert(key.clone()) {
                    tracing::warn!(
                        "skipping the stream {}: its key {why}, which genalytics cannot record; \
                         rename it (RENAME) to transfer it",
                        crate::text::quoted_bytes(&key)
                    );
                }
            }
        }
    }
    Ok(keys)
}
