//! How a session ends when it does not simply finish, and which ends a
//! new session mends.

use crate::error::is_transient;
use crate::stream::drain::ReadError;

/// How a session ended when it did not simply finish.
pub(super) enum Fault {
    /// A server went away or the stream changed under the reader: in
    /// follow mode, wait and start a new session.
    Transient(anyhow::Error),
    /// What no retry mends.
    Fatal(anyhow::Error),
}

impl Fault {
    /// By what the error is (see [`is_transient`]).
    pub(super) fn of(err: anyhow::Error) -> Fault {
        if is_transient(&err) {
            Fault::Transient(err)
        } else {
            Fault::Fatal(err)
        }
    }
}

impl From<ReadError> for Fault {
    fn from(err: ReadError) -> Fault {
        match err {
            ReadError::Failed { error, transient } if !transient => Fault::Fatal(error),
            ReadError::Failed { error, .. } => Fault::Transient(error),
            changed @ ReadError::StreamChanged(_) => Fault::Transient(changed.into()),
        }
    }
}

/// Another run recorded a new stream under the key while this one was cut
/// off from PostgreSQL: a new session judges the stream again.
#[derive(Debug, thiserror::Error)]
#[error("another transfer recorded a new stream under {0} while this one ran; run transfer again")]
pub(super) struct StateChanged(pub(super) String);

/// The stored position is older than the one this run committed: commits
/// were lost — a failover to a standby that had not replayed them. A new
/// session reads the stream again from the stored position (the trim
/// waited for the standbys, so those entries are still there).
#[derive(Debug, thiserror::Error)]
#[error(
    "the stored position of {key} went back from {from} to {to} (commits lost in a failover?); \
     reading the stream again from {to}"
)]
pub(super) struct PositionWentBack {
    pub(super) key: String,
    pub(super) from: crate::event::EntryId,
    pub(super) to: crate::event::EntryId,
}

/// Whether a new session mends the fault in a run that does not follow:
/// the stream (or its recorded state) changed under the run.
pub(super) fn starts_over(err: &anyhow::Error) -> bool {
    err.is::<StateChanged>()
        || err.is::<PositionWentBack>()
        || err
            .downcast_ref::<ReadError>()
            .is_some_and(|read| matches!(read, ReadError::StreamChanged(_)))
}
