//! What status, check and transfer say of a verdict on the stream under
//! the key (see [`super::identity`]): one sentence each, said the same way
//! by every command.

use super::identity::Identity;
use crate::event::EntryId;

impl Identity {
    /// The verdict as a JSON value and metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Identity::Same => "same",
            Identity::Missing => "missing",
            Identity::Gap => "gap",
            Identity::Rewound { .. } => "rewound",
            Identity::ResetAbove => "replaced",
            Identity::ResetBelow { .. } => "replaced_below_position",
        }
    }
}

/// A key that holds no stream.
pub fn missing(key: &str) -> String {
    format!(
        "the stream {key} does not exist (a wrong --stream or --redis-ns, Redis restarted empty, or no \
         producer yet)"
    )
}

/// A stream back at an older state of itself: what it lost had been stored.
pub fn rewound(key: &str, last: EntryId, position: EntryId) -> String {
    format!(
        "the stream {key} went back to an older state of itself (Redis restarted from a snapshot, or failed \
         over to a replica that lagged): its entries after {last} up to {position} were stored before Redis \
         lost them"
    )
}

/// A stream replaced under the key, above the position.
pub fn replaced(key: &str) -> String {
    format!("the stream {key} was replaced (Redis restarted empty, flushed, or failed over)")
}

/// When a replacement was recorded and what it cost (see [`loss`]).
pub fn replaced_on(at: chrono::DateTime<chrono::Utc>, lost: Option<u64>) -> String {
    format!(
        "the stream was replaced on {}{}",
        at.format("%Y-%m-%d %H:%M:%S UTC"),
        loss(lost)
    )
}

/// Entries deleted from the stream (`max-deleted-entry-id` past the
/// position) before genalytics stored them.
pub fn removed_unstored(key: &str, lost: EntryId) -> String {
    format!(
        "entries of {key} up to {lost} were removed from the stream (the producer's MAXLEN cap?) before \
         genalytics stored them; transfer more often to keep up"
    )
}

/// What an operator should know about the verdict, if anything: the
/// warning status and check show.
pub fn warning(key: &str, position: EntryId, verdict: &Identity) -> Option<String> {
    match verdict {
        Identity::Same => None,
        Identity::Missing => Some(missing(key)),
        Identity::Gap => Some(gap_warning(key, position, None)),
        Identity::Rewound { last } => Some(format!(
            "{}; transfer reads on",
            rewound(key, *last, position)
        )),
        Identity::ResetAbove => Some(format!(
            "{}; the next transfer reads on and records it",
            replaced(key)
        )),
        Identity::ResetBelow { .. } => Some(below_position(key, position, verdict)),
    }
}

/// The sentence for [`Identity::ResetBelow`]: what the key holds, and what
/// the operator can do.
pub fn below_position(key: &str, position: EntryId, verdict: &Identity) -> String {
    let Identity::ResetBelow {
        first,
        last,
        length,
        certain,
        position_stored,
    } = verdict
    else {
        return String::new();
    };
    let held = format!(
        "the stream {key} holds {} entries, {first} to {last}, starting at or below the stored position \
         {position}, which transfer will not read",
        crate::output::thousands(*length)
    );
    if !position_stored {
        return format!(
            "{held}; that position is no entry transfer stored — was genalytics_transfer_state.last_id set by \
             hand? Set it back to the last entry stored (or to '0-0' to read the stream from its start), or, if \
             the key holds a new stream, run `genalytics transfer --new-stream`"
        );
    }
    format!(
        "{held}: it was replaced{} — if it is a new stream, run `genalytics transfer --new-stream` to store \
         all its entries once",
        if *certain {
            ""
        } else {
            " (Redis < 7 cannot tell a replaced stream from one whose entry at the position was deleted)"
        }
    )
}

/// The Gap warning: the position's entry gone with everything before it.
pub fn gap_warning(key: &str, position: EntryId, lost: Option<u64>) -> String {
    let lost = match lost {
        Some(0) => "no entry after it was lost".to_string(),
        Some(n) => format!(
            "{} entries after it went before they were stored",
            crate::output::thousands(n)
        ),
        None => "entries after it may have gone before they were stored".to_string(),
    };
    format!(
        "the entry {position} of {key} is gone with everything before it — the producer's cap trimmed the \
         stream past it, or the stream was replaced (Redis cannot tell which): {lost}; transfer more often to \
         keep up"
    )
}

/// What a replacement cost, for a sentence: `lost` is how many entries
/// the old stream had received that were never stored (at least).
pub fn loss(lost: Option<u64>) -> String {
    match lost {
        Some(0) => {
            "; as far as genalytics saw, every entry of the old one had been stored".to_string()
        }
        Some(n) => format!(
            "; the old one had received at least {} entries that were never stored",
            crate::output::thousands(n)
        ),
        None => String::new(),
    }
}
