//! What waits in the stream for transfer, as status shows it and check
//! judges it: whether the key still holds the stream the position belongs
//! to, how many entries are not yet stored, and when the oldest of them was
//! added. One evaluation, so `status` and `check --max-lag` never disagree.

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::db::streams::{self, TransferState};
use crate::event::Position;
use crate::stream::identity::{self, Identity};
use crate::stream::info::{self, Backlog, StreamInfo};
use crate::stream::reader;

pub struct Waiting {
    pub info: StreamInfo,
    pub verdict: Identity,
    /// The stored position, as it was judged.
    pub position: Position,
    pub backlog: Backlog,
    /// When the oldest entry not yet stored was added (its ID's time).
    pub oldest_at: Option<DateTime<Utc>>,
}

/// Asks Redis (and PostgreSQL, for the entries the verdict compares) what
/// waits after the position in `state` (none: nothing transferred yet).
pub fn waiting(
    settings: &Settings,
    client: &mut postgres::Client,
    state: Option<&TransferState>,
) -> anyhow::Result<Waiting> {
    let key = settings.stream_key.as_str();
    let mut con = crate::stream::connect_reader(settings, key)?;
    let position = state.map_or_else(Position::default, TransferState::position);
    let mut store = streams::Stored {
        client,
        stream_key: key,
        stream_ref: state.map_or(0, |state| state.stream_ref),
    };
    let identity::Inspected { info, verdict, .. } =
        identity::inspect(&mut con, key, position, &mut store)?;
    // Entries of a stream replaced below the position all wait, and
    // transfer will not read them on its own.
    let after = match verdict {
        Identity::ResetBelow { .. } => Position::default(),
        Identity::Same => position,
        _ => Position {
            id: position.id,
            index: None,
        },
    };
    let backlog = info::behind(&mut con, key, &info, after)?;
    let oldest_at =
        reader::first_after(&mut con, key, after.id)?.and_then(crate::event::EntryId::time);
    Ok(Waiting {
        info,
        verdict,
        position,
        backlog,
        oldest_at,
    })
}
