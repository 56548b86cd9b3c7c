//! What Redis says of a stream (`XINFO STREAM`) and how many of its
//! entries lie after a position: what identity checks, status and the
//! transfer summary read.

use anyhow::Context;
use redis::Value;

use super::reader::range_after;
use super::wire::Wire;
use crate::event::EntryId;

/// What XINFO STREAM says, as far as transfer and status care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// The key exists (a missing key reads as an empty stream).
    pub exists: bool,
    pub length: u64,
    pub first_id: Option<EntryId>,
    pub last_id: Option<EntryId>,
    /// Highest ID the stream ever handed out, trimmed or not.
    pub last_generated_id: EntryId,
    /// Highest ID ever removed (XTRIM, XDEL, MAXLEN); `None` before Redis 7.
    pub max_deleted_id: Option<EntryId>,
    /// Entries ever added to this stream; `None` before Redis 7.
    pub entries_added: Option<u64>,
}

/// Looks at the stream; a missing key is an empty stream that does not
/// exist.
pub fn info(con: &mut impl redis::ConnectionLike, key: &str) -> anyhow::Result<StreamInfo> {
    let reply: Value = match redis::cmd("XINFO").arg("STREAM").arg(key).query(con) {
        Ok(reply) => reply,
        Err(err) if err.detail().is_some_and(|d| d.contains("no such key")) => {
            return Ok(StreamInfo::default());
        }
        Err(err) if err.code() == Some("WRONGTYPE") => anyhow::bail!(
            "the key {key} holds something other than a stream; check --redis-ns or --stream"
        ),
        Err(err) => {
            return Err(err).with_context(|| format!("cannot read the stream {key}"));
        }
    };
    let mut info = StreamInfo {
        exists: true,
        ..StreamInfo::default()
    };
    let id = |value: Value| {
        redis::from_redis_value::<String>(value)
            .ok()
            .and_then(|id| id.parse().ok())
    };
    for (name, value) in pairs(reply) {
        match name.as_str() {
            "length" => info.length = redis::from_redis_value(value).unwrap_or(0),
            "first-entry" => info.first_id = entry_id_of(value),
            "last-entry" => info.last_id = entry_id_of(value),
            "last-generated-id" => info.last_generated_id = id(value).unwrap_or_default(),
            "max-deleted-entry-id" => info.max_deleted_id = id(value),
            "entries-added" => info.entries_added = redis::from_redis_value(value).ok(),
            _ => {}
        }
    }
    Ok(info)
}

/// A map reply (RESP3) or a flat name/value array (RESP2) as pairs.
fn pairs(reply: Value) -> Vec<(String, Value)> {
    match reply {
        Value::Map(map) => map
            .into_iter()
            .filter_map(|(k, v)| Some((redis::from_redis_value(k).ok()?, v)))
            .collect(),
        Value::Array(items) => {
            let mut out = Vec::new();
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if let Ok(name) = redis::from_redis_value(k) {
                    out.push((name, v));
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

fn entry_id_of(entry: Value) -> Option<EntryId> {
    match entry {
        Value::Array(mut parts) if !parts.is_empty() => {
            redis::from_redis_value::<String>(parts.swap_remove(0))
                .ok()?
                .parse()
                .ok()
        }
        _ => None,
    }
}

/// Entries after the position. Exact from Redis 7's counters when the
/// position's index is known and nothing after it was deleted (one XINFO,
/// whatever the backlog); otherwise counted or estimated by [`count_after`].
pub fn behind(
    con: &mut Wire,
    key: &str,
    info: &StreamInfo,
    position: crate::event::Position,
) -> anyhow::Result<Backlog> {
    if let (Some(added), Some(index), Some(deleted)) =
        (info.entries_added, position.index, info.max_deleted_id)
        && deleted <= position.id
        && added >= index
    {
        return Ok(Backlog::exact(added - index));
    }
    count_after(con, key, info, position.id, 10_000)
}

/// Entries after `after`: exact when at most `exact_up_to` lie on either
/// side of it (the stream's length minus what is before), otherwise
/// estimated from the rate seen in a sample of what follows it.
pub fn count_after(
    con: &mut Wire,
    key: &str,
    info: &StreamInfo,
    after: EntryId,
    exact_up_to: usize,
) -> anyhow::Result<Backlog> {
    let (Some(first), Some(last)) = (info.first_id, info.last_id) else {
        return Ok(Backlog::exact(0));
    };
    if last <= after {
        return Ok(Backlog::exact(0));
    }
    if first > after {
        return Ok(Backlog::exact(info.length));
    }
    let context = || format!("cannot read the stream {key}");
    // Usually only the few entries kept for monitoring precede the position.
    // Counted, not held: only IDs are kept of what is read past.
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(key)
        .arg(after.to_string())
        .arg("-")
        .arg("COUNT")
        .arg(exact_up_to + 1);
    let before = con.range(&cmd, 0).with_context(context)?.total;
    if before <= exact_up_to {
        return Ok(Backlog::exact(info.length.saturating_sub(before as u64)));
    }
    let sample = range_after(con, key, after, None, exact_up_to + 1, 0).with_context(context)?;
    if sample.total <= exact_up_to {
        return Ok(Backlog::exact(sample.total as u64));
    }
    // The sample's rate of entries per millisecond, carried to the end.
    let sampled_to = sample.last_id.unwrap_or(last);
    let sampled_ms = sampled_to.ms.saturating_sub(after.ms).max(1) as f64;
    let rest_ms = last.ms.saturating_sub(sampled_to.ms) as f64;
    let estimate = sample.total as f64 * (1.0 + rest_ms / sampled_ms);
    Ok(Backlog {
        entries: (estimate.round() as u64).min(info.length),
        exact: false,
    })
}

/// How far behind transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub entries: u64,
    pub exact: bool,
}

impl Backlog {
    pub fn exact(entries: u64) -> Backlog {
        Backlog {
            entries,
            exact: true,
        }
    }
}
