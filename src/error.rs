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
    /// `check --nagios`: the Monitoring Plugins' 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN.
    Plugin(u8),
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Breach => 3,
            Exit::Plugin(code) => code,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// A mistake in what the user asked for, found after clap parsed the line
/// (a missing `DATABASE_URL`, a `--from` after `--to`). Exits 2 like clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The error and its causes as one line, `: `-joined like anyhow's `{:#}`,
/// without a cause that only repeats what the line already ends with (a
/// Redis or I/O error often shows its source's text as its own).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_that_repeats_the_line_is_left_out() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "Broken pipe (os error 32)");
        let err = anyhow::Error::new(io)
            .context("Broken pipe (os error 32)")
            .context("cannot read the stream s");
        assert_eq!(
            one_line(&err),
            "cannot read the stream s: Broken pipe (os error 32)"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&plain), format!("{plain:#}"));
    }
}
