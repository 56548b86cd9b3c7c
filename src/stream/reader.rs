//! Reading the stream (XRANGE to drain, XREAD BLOCK to follow) in reads
//! bounded by bytes as well as entries, each reply checked to be what was
//! asked; looking at it is `info`, trimming it `trim`.

use anyhow::Context;
use redis::Value;

use super::wire::Wire;
use crate::event::{EntryId, Fingerprint, RawEntry};

/// Most entries one read asks for. Redis cannot cap a reply by bytes: a
/// run of giant entries right after small ones has Redis hold at most this
/// many of them for a moment, while the reader reads past what its budget
/// cannot take (see [`super::wire`]); after that each read is sized by the
/// largest entry seen.
pub const READ_MAX_ENTRIES: usize = 64;

/// Chooses how many entries a read asks for: starts at one (nothing is
/// known of their size yet), grows fourfold while entries are small, and
/// never asks for more than the bytes left in the batch would hold at the
/// size of the largest entry seen lately.
#[derive(Debug, Clone)]
pub struct ReadSize {
    next: usize,
    largest: usize,
}

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize {
            next: 1,
            largest: 0,
        }
    }
}

impl ReadSize {
    /// Entries to ask for, given how many the batch still takes and how
    /// many bytes it has left; at least one, so a giant entry comes alone.
    pub fn count(&self, entries_left: usize, bytes_left: usize) -> usize {
        let by_bytes = bytes_left / self.largest.max(1);
        self.next.min(entries_left).min(by_bytes).max(1)
    }

    /// Learns from what a read returned.
    pub fn observe(&mut self, largest: usize) {
        // Halve the memory of old giants so that reads grow again after them.
        self.largest = largest.max(self.largest / 2);
        self.next = (self.next * 4).min(READ_MAX_ENTRIES);
    }
}

/// Up to `count` entries after `after` (exclusive), up to `until`
/// (inclusive): the first, and then entries while fewer than `budget`
/// bytes are held.
pub fn range_after(
    con: &mut Wire,
    key: &str,
    after: EntryId,
    until: Option<EntryId>,
    count: usize,
    budget: usize,
) -> redis::RedisResult<super::wire::Taken> {
    if after == EntryId::MAX {
        return Ok(super::wire::Taken::default());
    }
    let read = con.range(&range_cmd(key, after, until, count), budget)?;
    checked_range(&read.entries, read.total, after, until, count)?;
    Ok(read)
}

/// A reply that is not what was asked: an I/O fault of the connection
/// (transient, the connection given up), told apart by its type.
#[derive(Debug, thiserror::Error)]
#[error("{0}; nothing of it was stored")]
pub struct RefusedReply(String);

/// The refusal inside `err`, if [`checked_range`] refused the reply.
pub fn refused_reply_in(err: &redis::RedisError) -> Option<&RefusedReply> {
    use std::error::Error as _;
    err.source()?
        .downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()?
        .downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<RefusedReply>()
}

/// The error of a reply that is not what was asked.
fn refused_reply(what: &str) -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        RefusedReply(format!(
            "Redis answered a stream read with what was not asked: {what}"
        )),
    )
    .into()
}

/// A reply to a read of at most one entry, at or before `at` (exactly `at`
/// when `exact`).
fn checked_one(read: &super::wire::Taken, at: EntryId, exact: bool) -> redis::RedisResult<()> {
    if read.total > 1 {
        return Err(refused_reply(&format!(
            "{} entries where one was asked",
            read.total
        )));
    }
    match read.entries.first() {
        Some(entry) if entry.id > at || (exact && entry.id != at) => Err(refused_reply(&format!(
            "entry {} where {}{at} was asked",
            entry.id,
            if exact { "" } else { "one at or before " }
        ))),
        _ => Ok(()),
    }
}

/// A reply to a range read must be what was asked: IDs rising strictly,
/// all after `after` and at most `until`, no more than `count` of them
/// (`total`, read past or kept). Anything else — a proxy, a buggy or
/// hostile server — would move the position back or skip entries, so the
/// read fails as a fault of the connection and nothing of it is stored.
pub fn checked_range(
    kept: &[RawEntry],
    total: usize,
    after: EntryId,
    until: Option<EntryId>,
    count: usize,
) -> redis::RedisResult<()> {
    let refuse = |what: String| Err(refused_reply(&what));
    if total > count {
        return refuse(format!("{total} entries where at most {count} were asked"));
    }
    let mut previous = after;
    for entry in kept {
        if entry.id <= previous {
            return refuse(format!(
                "entry {} after {previous}: IDs must rise after {after}",
                entry.id
            ));
        }
        if until.is_some_and(|until| entry.id > until) {
            return refuse(format!(
                "entry {} past the end of the range asked, {}",
                entry.id,
                until.unwrap_or_default()
            ));
        }
        previous = entry.id;
    }
    Ok(())
}

fn range_cmd(key: &str, after: EntryId, until: Option<EntryId>, count: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(key)
        .arg(format!("({after}"))
        .arg(until.map_or_else(|| "+".to_string(), |id| id.to_string()))
        .arg("COUNT")
        .arg(count);
    cmd
}

/// What [`BoundedReader::read`] read.
#[derive(Debug)]
pub struct Anchored {
    /// The entry `after` was in the stream when the entries were read: they
    /// are the ones that followed it in its stream.
    pub anchor_held: bool,
    pub entries: Vec<RawEntry>,
    /// No entry of the range was left unread.
    pub drained: bool,
}

/// One read: up to `count` entries after `after` (exclusive), up to `until`
/// (inclusive), and no more than `budget` bytes beyond the first entry (no
/// more than `giant_budget` once it holds a giant entry);
/// with `anchor` (the [`Fingerprint`](crate::event::Fingerprint) of the entry `after` as it was read),
/// also whether that very entry is still there.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    pub after: EntryId,
    pub until: Option<EntryId>,
    pub count: usize,
    pub budget: usize,
    pub giant_budget: usize,
    pub anchor: Option<Fingerprint>,
}

/// Reads entries after a point, bounded by bytes as well as entries: reads
/// sized by [`ReadSize`], the anchor looked at in the same `MULTI`, and
/// what a reply holds beyond the budget read past (see [`super::wire`]).
/// A read can be sent ahead ([`BoundedReader::send`]) so that Redis works
/// on it while the caller parses the previous one.
#[derive(Debug, Default)]
pub struct BoundedReader {
    size: ReadSize,
    in_flight: Option<(ReadRequest, usize)>,
}

impl BoundedReader {
    pub fn read(
        &mut self,
        con: &mut Wire,
        key: &str,
        request: &ReadRequest,
    ) -> redis::RedisResult<Anchored> {
        if request.after == EntryId::MAX {
            return Ok(Anchored {
                anchor_held: true,
                entries: Vec::new(),
                drained: true,
            });
        }
        debug_assert!(self.in_flight.is_none(), "a read is already under way");
        self.send(con, key, request.clone())?;
        self.receive(con)
    }

    /// Sends a read without waiting for it; false when one is already
    /// under way or there is nothing to read (then [`BoundedReader::read`]).
    pub fn send(
        &mut self,
        con: &mut Wire,
        key: &str,
        request: ReadRequest,
    ) -> redis::RedisResult<bool> {
        if self.in_flight.is_some() || request.after == EntryId::MAX {
            return Ok(false);
        }
        let count = self.size.count(request.count.max(1), request.budget);
        let range = range_cmd(key, request.after, request.until, count);
        let packed = if request.anchor.is_some() {
            let at = request.after.to_string();
            redis::pipe()
                .atomic()
                .cmd("XRANGE")
                .arg(key)
                .arg(&at)
                .arg(&at)
                .arg("COUNT")
                .arg(1)
                .add_command(range)
                .get_packed_pipeline()
        } else {
            range.get_packed_command()
        };
        con.send(&packed)?;
        self.in_flight = Some((request, count));
        Ok(true)
    }

    /// The read sent ahead, if any.
    pub fn in_flight(&self) -> Option<&ReadRequest> {
        self.in_flight.as_ref().map(|(request, _)| request)
    }

    pub fn has_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The replies to one read: the anchor's and the range's.
    fn take_replies(
        con: &mut Wire,
        request: &ReadRequest,
    ) -> redis::RedisResult<(bool, super::wire::Taken)> {
        let mut anchor_held = true;
        if let Some(anchor) = &request.anchor {
            // MULTI, and each command QUEUED: all read, to stay in step.
            let mut refused = None;
            for _ in 0..3 {
                if let Value::ServerError(err) = con.value()? {
                    refused.get_or_insert(redis::RedisError::from(err));
                }
            }
            let exec = con.exec_header(2);
            if let Some(err) = refused {
                return Err(err);
            }
            exec?;
            let there = con.entries(usize::MAX, usize::MAX)?;
            anchor_held = there
                .entries
                .first()
                .is_some_and(|entry| entry.fingerprint() == *anchor);
        }
        let taken = con.entries(request.budget, request.giant_budget)?;
        Ok((anchor_held, taken))
    }

    /// Receives the read sent ahead.
    pub fn receive(&mut self, con: &mut Wire) -> redis::RedisResult<Anchored> {
        let (request, count) = self
            .in_flight
            .take()
            .expect("receive follows a send that returned true");
        let read = Self::take_replies(con, &request);
        if read.is_err() {
            // Whatever failed, a reply may be left partly read.
            con.abandon();
        }
        let (anchor_held, taken) = read?;
        checked_range(
            &taken.entries,
            taken.total,
            request.after,
            request.until,
            count,
        )?;
        let largest = taken
            .entries
            .iter()
            .map(RawEntry::size_in_redis)
            .max()
            .unwrap_or(0);
        self.size.observe(largest);
        Ok(Anchored {
            anchor_held,
            drained: taken.total < count && !taken.cut(),
            entries: taken.entries,
        })
    }
}

/// Waits up to `block_ms` for entries after `after`.
pub fn read_after(
    con: &mut Wire,
    key: &str,
    after: EntryId,
    count: usize,
    block_ms: u64,
) -> redis::RedisResult<Vec<RawEntry>> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(key)
        .arg(after.to_string());
    let read = con.read_one_stream(&cmd, 0)?;
    checked_range(&read.entries, read.total, after, None, count)?;
    Ok(read.entries)
}

/// The entry `id`, if it is in the stream.
pub fn entry_at(con: &mut Wire, key: &str, id: EntryId) -> redis::RedisResult<Option<RawEntry>> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(key)
        .arg(id.to_string())
        .arg(id.to_string())
        .arg("COUNT")
        .arg(1);
    let read = con.range(&cmd, 0)?;
    checked_one(&read, id, true)?;
    Ok(read.entries.into_iter().next())
}

/// The newest entry at or before `id`.
pub fn newest_at_or_before(
    con: &mut Wire,
    key: &str,
    id: EntryId,
) -> redis::RedisResult<Option<RawEntry>> {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(key)
        .arg(id.to_string())
        .arg("-")
        .arg("COUNT")
        .arg(1);
    let read = con.range(&cmd, 0)?;
    checked_one(&read, id, false)?;
    Ok(read.entries.into_iter().next())
}

/// The first entry after `after`: the oldest not yet transferred.
pub fn first_after(con: &mut Wire, key: &str, after: EntryId) -> anyhow::Result<Option<EntryId>> {
    let read = range_after(con, key, after, None, 1, 0)
        .with_context(|| format!("cannot read the stream {key}"))?;
    Ok(read.entries.first().map(|entry| entry.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an entry of one field of `bytes` costs to hold.
    fn held(bytes: usize) -> usize {
        RawEntry::new(EntryId::ZERO, vec![(b"f".to_vec(), vec![b'x'; bytes])]).size()
    }

    #[test]
    fn reads_grow_while_entries_are_small_and_shrink_for_giants() {
        let mut size = ReadSize::default();
        let budget = 8 << 20;
        assert_eq!(size.count(5_000, budget), 1);
        for _ in 0..10 {
            size.observe(held(500));
        }
        assert_eq!(size.count(5_000, budget), READ_MAX_ENTRIES);
        assert_eq!(size.count(7, budget), 7);
        size.observe(held(2 << 20));
        assert_eq!(size.count(5_000, budget), 3);
        // A giant alone, whatever is left.
        assert_eq!(size.count(5_000, 10), 1);
        // Giants fade from memory once reads hold small entries again.
        for _ in 0..16 {
            size.observe(held(500));
        }
        assert_eq!(size.count(5_000, budget), READ_MAX_ENTRIES);
    }

    #[test]
    fn a_range_reply_must_rise_inside_the_range_and_within_count() {
        let at = |ms: u64, seq: u64| EntryId { ms, seq };
        let entries = |ids: &[EntryId]| -> Vec<RawEntry> {
            ids.iter()
                .map(|&id| RawEntry::new(id, Vec::new()))
                .collect()
        };
        let after = at(5, 0);
        let ok = entries(&[at(5, 1), at(6, 0), at(9, 9)]);
        assert!(checked_range(&ok, 3, after, None, 3).is_ok());
        assert!(checked_range(&ok, 3, after, Some(at(9, 9)), 3).is_ok());
        assert!(checked_range(&[], 0, after, None, 1).is_ok());
        for (kept, total, until, count) in [
            (entries(&[at(6, 0), at(5, 9)]), 2, None, 10),
            (entries(&[at(6, 0), at(6, 0)]), 2, None, 10),
            (entries(&[at(5, 0)]), 1, None, 10),
            (entries(&[at(4, 0)]), 1, None, 10),
            (entries(&[at(6, 0), at(9, 1)]), 2, Some(at(9, 0)), 10),
            (entries(&[at(6, 0)]), 3, None, 2),
        ] {
            let err = checked_range(&kept, total, after, until, count).unwrap_err();
            assert!(err.is_io_error(), "a transient fault: {err}");
            assert!(refused_reply_in(&err).is_some(), "{err}");
        }
    }
}
