//! Reading the stream (XRANGE to drain, XREAD BLOCK to follow), looking at
//! it (XINFO), and trimming what is safely stored (XTRIM MINID).

use std::fmt;
use std::str::FromStr;

use anyhow::Context;
use redis::Value;

/// A stream entry ID, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };
}

impl FromStr for EntryId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Ok(EntryId { ms, seq }),
            _ => Err(format!("'{text}' is not a stream entry ID")),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry as Redis returned it: values are bytes, the producer's are
/// UTF-8 but nothing guarantees it.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What XINFO STREAM says, as far as transfer and status care.
#[derive(Debug, Clone, Default)]
pub struct StreamInfo {
    pub length: u64,
    pub first_id: Option<EntryId>,
    pub last_id: Option<EntryId>,
    /// Highest ID ever removed (XTRIM, XDEL, MAXLEN); Redis ≥ 7.
    pub max_deleted_id: Option<EntryId>,
}

/// Looks at the stream; a missing key is an empty stream.
pub fn info(con: &mut redis::Connection, key: &str) -> anyhow::Result<StreamInfo> {
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query(con)
        .with_context(|| format!("cannot inspect the key {key}"))?;
    match kind.as_str() {
        "none" => return Ok(StreamInfo::default()),
        "stream" => {}
        other => anyhow::bail!(
            "the key {key} holds a {other}, not a stream; check --redis-ns or --stream"
        ),
    }
    let reply: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query(con)
        .with_context(|| format!("cannot read the stream {key}"))?;
    let mut info = StreamInfo::default();
    for (name, value) in pairs(reply) {
        match name.as_str() {
            "length" => info.length = redis::from_redis_value(value).unwrap_or(0),
            "first-entry" => info.first_id = entry_id_of(value),
            "last-entry" => info.last_id = entry_id_of(value),
            "max-deleted-entry-id" => {
                info.max_deleted_id = redis::from_redis_value::<String>(value)
                    .ok()
                    .and_then(|id| id.parse().ok())
                    .filter(|id| *id != EntryId::ZERO);
            }
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

/// Up to `count` entries after `after` (exclusive), up to `until` (inclusive).
pub fn range_after(
    con: &mut redis::Connection,
    key: &str,
    after: EntryId,
    until: Option<EntryId>,
    count: usize,
) -> redis::RedisResult<Vec<RawEntry>> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(key)
        .arg(format!("({after}"))
        .arg(until.map_or_else(|| "+".to_string(), |id| id.to_string()))
        .arg("COUNT")
        .arg(count)
        .query(con)?;
    entries(reply)
}

/// Waits up to `block_ms` for entries after `after`.
pub fn read_after(
    con: &mut redis::Connection,
    key: &str,
    after: EntryId,
    count: usize,
    block_ms: u64,
) -> redis::RedisResult<Vec<RawEntry>> {
    let reply: Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(key)
        .arg(after.to_string())
        .query(con)?;
    // One stream asked for: [[key, entries]] (RESP2) or {key: entries} (RESP3).
    let per_stream = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).next(),
        Value::Array(streams) => streams.into_iter().next().and_then(|stream| match stream {
            Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
            _ => None,
        }),
        other => return Err(malformed(&other)),
    };
    per_stream.map_or(Ok(Vec::new()), entries)
}

/// Takes an XRANGE-shaped reply apart without copying its strings.
fn entries(reply: Value) -> redis::RedisResult<Vec<RawEntry>> {
    let Value::Array(items) = reply else {
        return Err(malformed(&reply));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(parts) = item else {
            return Err(malformed(&item));
        };
        let mut parts = parts.into_iter();
        let (Some(Value::BulkString(id)), Some(Value::Array(flat))) = (parts.next(), parts.next())
        else {
            return Err(malformed(&Value::Nil));
        };
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
            fields.push((bytes(name), bytes(value)));
        }
        let id = String::from_utf8(id).map_err(|_| malformed(&Value::Nil))?;
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(text) => text.into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

fn malformed(value: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply to a stream read",
        format!("{value:?}"),
    ))
}

/// Removes entries older than `min_id` (exclusive); returns how many.
pub fn trim_before(
    con: &mut redis::Connection,
    key: &str,
    min_id: EntryId,
) -> redis::RedisResult<u64> {
    redis::cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg(min_id.to_string())
        .query(con)
}

/// The first entry after `after`: the oldest not yet transferred.
pub fn first_after(
    con: &mut redis::Connection,
    key: &str,
    after: EntryId,
) -> anyhow::Result<Option<EntryId>> {
    let entries = range_after(con, key, after, None, 1)
        .with_context(|| format!("cannot read the stream {key}"))?;
    Ok(entries.first().and_then(|entry| entry.id.parse().ok()))
}

/// Entries after `after`: exact when at most `exact_up_to` lie on either
/// side of it (the stream's length minus what is before), otherwise
/// estimated from the rate seen in a sample of what follows it.
pub fn count_after(
    con: &mut redis::Connection,
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
    let before: Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg(after.to_string())
        .arg("-")
        .arg("COUNT")
        .arg(exact_up_to + 1)
        .query(con)
        .with_context(context)?;
    let before = match before {
        Value::Array(items) => items.len(),
        _ => exact_up_to + 1,
    };
    if before <= exact_up_to {
        return Ok(Backlog::exact(info.length.saturating_sub(before as u64)));
    }
    let sample = range_after(con, key, after, None, exact_up_to + 1).with_context(context)?;
    if sample.len() <= exact_up_to {
        return Ok(Backlog::exact(sample.len() as u64));
    }
    // The sample's rate of entries per millisecond, carried to the end.
    let sampled_to: EntryId = sample
        .last()
        .and_then(|e| e.id.parse().ok())
        .unwrap_or(last);
    let sampled_ms = sampled_to.ms.saturating_sub(after.ms).max(1) as f64;
    let rest_ms = last.ms.saturating_sub(sampled_to.ms) as f64;
    let estimate = sample.len() as f64 * (1.0 + rest_ms / sampled_ms);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_numerically_not_textually() {
        let a: EntryId = "999-5".parse().unwrap();
        let b: EntryId = "1000-0".parse().unwrap();
        assert!(a < b);
        assert!("1000-0".parse::<EntryId>().unwrap() < "1000-1".parse().unwrap());
        assert_eq!(
            "1000".parse::<EntryId>().unwrap(),
            EntryId { ms: 1000, seq: 0 }
        );
        assert_eq!(b.to_string(), "1000-0");
        assert!("x-1".parse::<EntryId>().is_err());
    }
}
