//! Exit codes, and the few error types the rest of the crate decides by:
//! a usage mistake (exit 2), a connection that could not be opened, and
//! whether a failure may go away by itself (a follower waits for it, a
//! run that ends reports it). Everything else travels as `anyhow` with
//! context saying what was being done.

use std::error::Error as _;
use std::io;
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

/// A connection to PostgreSQL or Redis that could not be opened: one
/// sentence saying where and what to do, and whether trying again later
/// may work (a server down or starting) or not (a wrong password, a
/// missing database).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    pub message: String,
    pub transient: bool,
    pub server: Server,
}

/// Which server a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Redis,
}

/// A failure of Redis already said in words (the reader's), kept apart
/// from PostgreSQL's by its type.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedisFailure(pub String);

/// Whether a failure came from Redis — a connection, a reply or the
/// reader's socket — and not from PostgreSQL.
pub fn from_redis(err: &anyhow::Error) -> bool {
    for cause in err.chain() {
        if cause.is::<postgres::Error>() {
            return false;
        }
        if let Some(connect) = cause.downcast_ref::<ConnectError>() {
            return connect.server == Server::Redis;
        }
        if cause.is::<redis::RedisError>() || cause.is::<RedisFailure>() {
            return true;
        }
    }
    false
}

/// Whether a failure may go away by itself: a connection lost, refused or
/// timed out, a server starting, shutting down, overloaded, out of disk
/// or failing over, a serialization conflict. Wrong credentials, a missing
/// database, a schema this binary does not know or a refused entry are not.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(connect) = cause.downcast_ref::<ConnectError>() {
            return connect.transient;
        }
        if let Some(pg) = cause.downcast_ref::<postgres::Error>() {
            return pg_transient(pg);
        }
        if let Some(redis) = cause.downcast_ref::<redis::RedisError>() {
            return redis_transient(redis);
        }
        cause.downcast_ref::<io::Error>().is_some()
    })
}

/// [`is_transient`] for one PostgreSQL error, by its SQLSTATE class.
pub fn pg_transient(err: &postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(code) = err.code() {
        let code = code.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03"
            );
    }
    // No SQLSTATE: the driver's own trouble, which is I/O or a closed
    // socket, or a TLS handshake (a certificate problem is not mended by
    // waiting, but a server restarting mid-handshake is).
    let mut cause = err.source();
    while let Some(inner) = cause {
        if inner.downcast_ref::<io::Error>().is_some() {
            return true;
        }
        cause = inner.source();
    }
    !err.to_string().contains("TLS")
}

/// [`is_transient`] for one Redis error: I/O, or a server loading, failing
/// over or moving the key's slot.
pub fn redis_transient(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || matches!(
            err.code(),
            Some(
                "LOADING"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "MASTERDOWN"
                    | "READONLY"
                    | "BUSY"
                    | "MOVED"
                    | "ASK"
            )
        )
}

/// Refusals caused by what a row holds: data exceptions (22…), integrity
/// constraints (23…) and program limits (54…, e.g. an index row too large).
pub fn is_data_error(err: &anyhow::Error) -> bool {
    pg_error(err)
        .and_then(postgres::Error::code)
        .is_some_and(|code| matches!(&code.code()[..2], "22" | "23" | "54"))
}

/// The PostgreSQL error in a cause chain, if any.
pub fn pg_error(err: &anyhow::Error) -> Option<&postgres::Error> {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<postgres::Error>())
}

/// PostgreSQL's words for a refused row, safe to store and to show.
pub fn pg_refusal(err: &anyhow::Error) -> String {
    match pg_error(err).and_then(postgres::Error::as_db_error) {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            crate::text::escape_controls(&crate::text::truncate(&text, 2_000)).into_owned()
        }
        None => crate::text::escape_controls(&format!("{err:#}")).into_owned(),
    }
}

/// Whether a system call was interrupted by a signal (`EINTR`), also
/// inside a Redis error (which keeps the I/O error it was made from).
pub fn interrupted(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        io_kind(cause) == Some(io::ErrorKind::Interrupted)
            || cause
                .downcast_ref::<redis::RedisError>()
                .and_then(|redis| redis.source())
                .and_then(io_kind)
                == Some(io::ErrorKind::Interrupted)
    })
}

/// The kind of an I/O error, also one a Redis error holds behind an `Arc`.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    if let Some(io) = err.downcast_ref::<io::Error>() {
        return Some(io.kind());
    }
    err.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
        .and_then(|inner| inner.downcast_ref::<io::Error>())
        .map(io::Error::kind)
}

/// Prints an error the way every command reports failure and picks its exit
/// code: usage mistakes exit 2, a closed stdout (`… | head`) is success, all
/// else exits 1. The whole cause chain goes to stderr on one line, control
/// characters escaped.
pub fn report_error(err: &anyhow::Error) -> Exit {
    if is_broken_pipe(err) {
        return Exit::Success;
    }
    // Data (a stream key, a server's message) may hold control characters:
    // escaped, the error stays one line and cannot move a terminal's cursor.
    let line = crate::text::escape_controls(&one_line(err)).into_owned();
    if LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("{line}");
    } else {
        eprintln!("genalytics: {line}");
    }
    if err.downcast_ref::<UsageError>().is_some() {
        Exit::Usage
    } else {
        Exit::Failure
    }
}

/// Whether the command line asks for the Monitoring Plugins protocol, in
/// which whatever stops the run (a wrong flag included) is UNKNOWN, exit 3.
pub fn plugin_mode(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--nagios")
}

/// Reports what stopped a plugin run as the Monitoring Plugins expect: one
/// status line on stdout, exit 3.
pub fn report_plugin_error(message: &str) -> Exit {
    println!("{}", crate::monitoring::unknown_line(message));
    Exit::Plugin(3)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let io_kind = cause
            .downcast_ref::<io::Error>()
            .map(io::Error::kind)
            // serde_json keeps the io::Error to itself, but tells its kind.
            .or_else(|| {
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        io_kind == Some(io::ErrorKind::BrokenPipe)
    })
}

/// Whether stderr carries JSON lines (`--log-format json`): the final error
/// is one of them then.
static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says whether logs go out as JSON lines, for [`report_error`].
pub fn log_as_json(json: bool) {
    LOG_JSON.store(json, std::sync::atomic::Ordering::Relaxed);
}

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
    fn a_failure_is_told_from_redis_or_postgresql() {
        let redis_io = anyhow::Error::new(redis::RedisError::from(io::Error::from(
            io::ErrorKind::ConnectionReset,
        )))
        .context("cannot XADD");
        assert!(from_redis(&redis_io));
        // The reader's failure, as it says it.
        let read = anyhow::Error::new(RedisFailure(
            "cannot read the stream s from Redis at h:1: the connection was lost".into(),
        ));
        assert!(from_redis(&read));
        // A local file's failure is not Redis's.
        assert!(!from_redis(&anyhow::Error::new(io::Error::from(
            io::ErrorKind::PermissionDenied
        ))));
        let connect = |server| {
            anyhow::Error::new(ConnectError {
                message: "cannot connect".into(),
                transient: true,
                server,
            })
            .context("while storing")
        };
        assert!(from_redis(&connect(Server::Redis)));
        assert!(!from_redis(&connect(Server::Postgres)));
        // Nothing from either: not Redis.
        assert!(!from_redis(&anyhow::anyhow!("the state changed")));
    }

    #[test]
    fn an_interrupted_call_is_found_inside_a_redis_error() {
        let eintr = redis::RedisError::from(io::Error::from(io::ErrorKind::Interrupted));
        assert!(interrupted(&anyhow::Error::new(eintr).context("trim")));
        let reset = redis::RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(!interrupted(&anyhow::Error::new(reset)));
        assert!(interrupted(&anyhow::Error::new(io::Error::from(
            io::ErrorKind::Interrupted
        ))));
    }

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
