//! Is the stream under the key still the one the stored position belongs
//! to? A stream deleted and recreated, flushed, or failed over to a replica
//! can come back with the same key and entry IDs at, below or above the
//! position; transfer, status and check all ask this one pure question.
//!
//! Within one stream, `entries-added` (Redis 7) only grows, and entries
//! leave in ID order unless deleted one by one (XDEL, which Redis records in
//! `max-deleted-entry-id`; trims are not recorded before Redis 7.2). So:
//! fewer entries ever added than the position's index, IDs gone backwards,
//! or entries at or below the position while the position's own entry is
//! gone and not recorded as deleted, mean another stream — unless the
//! newest of those entries is one transfer stored, content and all, which
//! is this stream restored from an older state of itself. With everything
//! up to the position gone, a stream from which nothing was ever removed
//! is another one; otherwise the producer's cap may have trimmed it, and
//! the verdict says that it cannot tell.

use super::info::StreamInfo;
use crate::event::{EntryId, Position, RawEntry};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The stream the position belongs to (or nothing was transferred yet).
    Same,
    /// No stream under the key: nothing to read, nothing to trim.
    Missing,
    /// The position's entry and everything before it are gone: the
    /// producer's cap trimmed them (and perhaps entries after them, before
    /// they were stored), or the stream was replaced and then trimmed —
    /// Redis cannot tell which. Reading on is right either way.
    Gap,
    /// The same stream gone back to an older state of itself — Redis
    /// restarted from a snapshot, or failed over to a replica that lagged:
    /// its newest entry at or below the position, `last`, is one transfer
    /// stored. Entries after `last` up to the position were stored before
    /// Redis lost them; reading on after the position loses nothing.
    Rewound { last: EntryId },
    /// Another stream whose entries all come after the position: read on,
    /// and record the reset.
    ResetAbove,
    /// Another stream holding entries at or below the position, which
    /// transfer would never read: an operator must decide
    /// (`transfer --new-stream`). `certain` is false on Redis < 7.
    ResetBelow {
        first: EntryId,
        last: EntryId,
        length: u64,
        certain: bool,
        /// The position is an entry transfer stored; false when it was set
        /// by hand to one it never stored (then the hand is the likelier
        /// cause).
        position_stored: bool,
    },
}

/// What the database holds under an entry's ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// This very entry: the same ID and content.
    Same,
    /// Another entry with the same ID.
    Different,
    /// Nothing under the ID in the position's stream.
    Absent,
}

/// The database's side of the comparison.
pub trait Store {
    /// What the position's stream holds under `entry`'s ID.
    fn compare(&mut self, entry: &RawEntry) -> anyhow::Result<Match>;
    /// Whether `id` is an entry transfer stored from the key, in any of its
    /// streams.
    fn holds_id(&mut self, id: EntryId) -> anyhow::Result<bool>;
}

/// In a [`Identity::Gap`], what went: the entries added after the
/// position that the stream no longer holds (everything it holds comes
/// after the position), when Redis 7's count and the position's index are
/// known.
pub fn gap_lost(info: &StreamInfo, index: Option<u64>) -> Option<u64> {
    Some(
        info.entries_added?
            .checked_sub(index?)?
            .saturating_sub(info.length),
    )
}

/// What is known of the stream's entries at or below the position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Below {
    /// The position's own entry is in the stream: the one stored, or any
    /// entry under that ID if transfer never stored one (a position set by
    /// hand).
    pub position_exists: bool,
    /// The position is an entry transfer stored.
    pub position_stored: bool,
    /// The newest entry at or below the position, if transfer stored that
    /// very entry — the same ID and the same content — from the stream the
    /// position belongs to.
    pub newest_stored: Option<EntryId>,
}

/// Judges `info` against the position.
pub fn judge(position: Position, info: &StreamInfo, below: Below) -> Identity {
    // Missing first: a key that never held a stream (a mistyped --stream or
    // --redis-ns) must not read as a healthy one.
    if !info.exists {
        return Identity::Missing;
    }
    if position.id == EntryId::ZERO {
        return Identity::Same;
    }
    let holds_below = info.first_id.is_some_and(|first| first <= position.id);
    let replaced = |certain: bool| match (info.first_id, info.last_id) {
        _ if !holds_below => Identity::ResetAbove,
        // An older state of the stream: its newest entry below the
        // position is one stored, and so is the position itself (a
        // position set by hand past the stream's end is no sign of it).
        _ if let Some(last) = below.newest_stored
            && below.position_stored =>
        {
            Identity::Rewound { last }
        }
        (Some(first), Some(last)) => Identity::ResetBelow {
            first,
            last,
            length: info.length,
            certain,
            position_stored: below.position_stored,
        },
        _ => Identity::ResetAbove,
    };
    // IDs went backwards: only another stream, or an older state of this
    // one, does that.
    if info.last_generated_id < position.id {
        return replaced(true);
    }
    match (info.entries_added, info.max_deleted_id) {
        (Some(added), Some(deleted)) => {
            if position.index.is_some_and(|index| added < index) {
                return replaced(true);
            }
            if below.position_exists || deleted >= position.id {
                return Identity::Same;
            }
            if holds_below {
                // Trims take the oldest entries first: what is left below
                // the position would have gone before it.
                return replaced(true);
            }
            if added == info.length {
                // Nothing was ever removed from this stream, yet the
                // position's entry is not in it.
                return Identity::ResetAbove;
            }
            Identity::Gap
        }
        // Redis < 7.
        _ if below.position_exists => Identity::Same,
        _ if holds_below => replaced(false),
        _ => Identity::Gap,
    }
}

/// Gathers what [`judge`] needs — XINFO, whether the position's entry is
/// there as it was stored, whether the newest entry below it is one
/// transfer stored (`store` compares them with the database) — and judges.
/// Also returns the [`Fingerprint`] of the position's entry when it is
/// there, for the reader to check its first read by.
///
/// [`Fingerprint`]: crate::event::Fingerprint
pub fn inspect(
    con: &mut super::wire::Wire,
    key: &str,
    position: Position,
    store: &mut dyn Store,
) -> anyhow::Result<Inspected> {
    use anyhow::Context;
    let info = super::info::info(con, key)?;
    let mut below = Below::default();
    let mut anchor = None;
    if position.id != EntryId::ZERO && info.exists {
        let context = || format!("cannot read the stream {key}");
        below.position_stored = store.holds_id(position.id)?;
        if let Some(entry) = super::reader::entry_at(con, key, position.id).with_context(context)? {
            // Another entry under the position's ID is another stream's.
            below.position_exists = store.compare(&entry)? != Match::Different;
            if below.position_exists {
                anchor = Some(entry.fingerprint());
            }
        }
        let suspicious = info.last_generated_id < position.id
            || !below.position_exists
            || matches!((info.entries_added, position.index), (Some(added), Some(index)) if added < index);
        if suspicious
            && let Some(newest) =
                super::reader::newest_at_or_before(con, key, position.id).with_context(context)?
            && store.compare(&newest)? == Match::Same
        {
            below.newest_stored = Some(newest.id);
        }
    }
    let verdict = judge(position, &info, below);
    Ok(Inspected {
        info,
        verdict,
        anchor,
    })
}

/// What [`inspect`] found.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub info: StreamInfo,
    pub verdict: Identity,
    /// The fingerprint of the position's entry, when it is there.
    pub anchor: Option<crate::event::Fingerprint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EntryId {
        EntryId::at_ms(ms)
    }

    fn redis7(first: u64, last: u64, length: u64, added: u64, deleted: u64) -> StreamInfo {
        StreamInfo {
            exists: true,
            length,
            first_id: (length > 0).then(|| id(first)),
            last_id: (length > 0).then(|| id(last)),
            last_generated_id: id(last),
            max_deleted_id: Some(id(deleted)),
            entries_added: Some(added),
        }
    }

    fn at(ms: u64, index: Option<u64>) -> Position {
        Position { id: id(ms), index }
    }

    fn there(position_exists: bool) -> Below {
        Below {
            position_exists,
            position_stored: true,
            newest_stored: None,
        }
    }

    #[test]
    fn the_same_stream_moving_on_is_the_same() {
        // Trimmed up to the position, entries added after it.
        let info = redis7(1_000, 2_000, 50, 120, 999);
        assert_eq!(
            judge(at(1_500, Some(100)), &info, there(true)),
            Identity::Same
        );
        // The producer's cap took the position's entry: recorded as deleted.
        let info = redis7(1_800, 2_000, 20, 120, 1_799);
        assert_eq!(
            judge(at(1_500, Some(100)), &info, there(false)),
            Identity::Same
        );
        // The cap took it, and Redis 7.0 did not record the trim: entries
        // were removed from this stream, so it may be the same one.
        let info = redis7(1_800, 2_000, 20, 120, 0);
        assert_eq!(
            judge(at(1_500, Some(100)), &info, there(false)),
            Identity::Gap
        );
        // XDEL of the position itself, entries below still there.
        let info = redis7(1_000, 2_000, 49, 120, 1_500);
        assert_eq!(
            judge(at(1_500, Some(100)), &info, there(false)),
            Identity::Same
        );
        // Nothing transferred yet: nothing to compare.
        assert_eq!(judge(at(0, None), &info, there(false)), Identity::Same);
    }

    #[test]
    fn a_stream_recreated_below_the_position_needs_an_operator() {
        let info = redis7(500, 600, 10, 10, 0);
        assert_eq!(
            judge(at(1_500, Some(100)), &info, there(false)),
            Identity::ResetBelow {
                first: id(500),
                last: id(600),
                length: 10,
                certain: true,
                position_stored: true,
            }
        );
        // Recreated with entries on both sides of the position.
        let info = redis7(500, 3_000, 10, 10, 0);
        assert!(matches!(
            judge(at(1_500, None), &info, there(false)),
            Identity::ResetBelow { .. }
        ));
    }

    #[test]
    fn a_stream_that_came_back_empty_or_above_is_read_on() {
        // Redis restarted without persistence, then the producer went on.
        let info = redis7(5_000, 6_000, 30, 30, 0);
        assert_eq!(
            judge(at(1_500, Some(100)), &info, there(false)),
            Identity::ResetAbove
        );
        // More entries than the position's index, but the position's entry
        // is not there and nothing was ever removed from this stream.
        let info = redis7(5_000, 6_000, 300, 300, 0);
        assert_eq!(
            judge(at(1_500, Some(100)), &info, there(false)),
            Identity::ResetAbove
        );
        // Empty stream created anew.
        let mut empty = redis7(0, 0, 0, 0, 0);
        empty.last_generated_id = id(0);
        assert_eq!(
            judge(at(1_500, Some(100)), &empty, there(false)),
            Identity::ResetAbove
        );
        assert_eq!(
            judge(at(1_500, Some(100)), &StreamInfo::default(), there(false)),
            Identity::Missing
        );
    }

    #[test]
    fn a_stream_restored_from_an_older_state_of_itself_is_read_on() {
        // Restarted from a snapshot: its newest entry below the position is
        // one transfer stored; the position's entry is gone.
        let info = redis7(1_000, 1_400, 40, 80, 0);
        let stored = Below {
            position_exists: false,
            position_stored: true,
            newest_stored: Some(id(1_400)),
        };
        assert_eq!(
            judge(at(1_500, Some(100)), &info, stored),
            Identity::Rewound { last: id(1_400) }
        );
        // A position set by hand past the stream's end looks the same,
        // but it is no entry transfer stored: not an older state.
        let by_hand = Below {
            position_stored: false,
            ..stored
        };
        assert!(matches!(
            judge(at(1_500, Some(100)), &info, by_hand),
            Identity::ResetBelow {
                position_stored: false,
                ..
            }
        ));
        // The same shape, but the entry below is not one transfer stored.
        assert!(matches!(
            judge(at(1_500, Some(100)), &info, there(false)),
            Identity::ResetBelow { .. }
        ));
    }

    #[test]
    fn redis_6_can_tell_less_and_says_so() {
        let old = |first: u64, last: u64, length: u64| StreamInfo {
            max_deleted_id: None,
            entries_added: None,
            ..redis7(first, last, length, 0, 0)
        };
        assert_eq!(
            judge(at(1_500, Some(100)), &old(1_000, 2_000, 9), there(true)),
            Identity::Same
        );
        assert_eq!(
            judge(at(1_500, Some(100)), &old(1_800, 2_000, 9), there(false)),
            Identity::Gap
        );
        assert_eq!(
            judge(at(1_500, Some(100)), &old(1_000, 2_000, 9), there(false)),
            Identity::ResetBelow {
                first: id(1_000),
                last: id(2_000),
                length: 9,
                certain: false,
                position_stored: true,
            }
        );
        // IDs that went backwards are certain on any version.
        // (below)
        assert!(matches!(
            judge(at(1_500, Some(100)), &old(100, 200, 9), there(false)),
            Identity::ResetBelow { certain: true, .. }
        ));
    }
}
