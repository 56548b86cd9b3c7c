//! Exit codes and the one error type that changes them.

use std::process::ExitCode;

/// How a run ended, as the shell sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// Something could not be done (a server unreachable, a query failed).
    Failure,
    /// The command line was wrong: clap's convention, exit code 2.
    Usage,
    /// `check` found a threshold breached.
    Breach,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(match exit {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Breach => 3,
        })
    }
}

/// A mistake in what the user asked for, found after clap parsed the line
/// (a missing `DATABASE_URL`, a `--from` after `--to`). Exits 2 like clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
