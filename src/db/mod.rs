//! PostgreSQL: connecting with errors an operator can act on, and (in
//! submodules) every SQL statement the tool runs.

pub mod events;
pub mod health;
pub mod migrations;
pub mod reports;
pub mod retention;
pub mod rollup;

use std::error::Error as _;
use std::io;

use anyhow::anyhow;
use postgres::{Client, NoTls};

use crate::config::DatabaseUrl;

/// Opens one connection; the error says where it tried and what to do.
pub fn connect(url: &DatabaseUrl) -> anyhow::Result<Client> {
    url.config
        .connect(NoTls)
        .map_err(|err| anyhow!(describe_connect_error(url, &err)))
}

/// One sentence for a failed connection, naming the server and never the
/// password (the driver's messages do not contain it, and neither does ours).
fn describe_connect_error(url: &DatabaseUrl, err: &postgres::Error) -> String {
    let target = url.target();
    if let Some(db) = err.as_db_error() {
        let hint = match db.code().code() {
            "3D000" => "create the database or fix DATABASE_URL / --database-url",
            "28P01" | "28000" => "check the user and password in DATABASE_URL / --database-url",
            _ => "check DATABASE_URL / --database-url",
        };
        return format!(
            "PostgreSQL at {target} refused the connection: {} — {hint}",
            db.message()
        );
    }
    let mut cause = err.source();
    let mut io_kind = None;
    while let Some(inner) = cause {
        if let Some(io) = inner.downcast_ref::<io::Error>() {
            io_kind = Some(io.kind());
            break;
        }
        cause = inner.source();
    }
    let reason = match io_kind {
        Some(io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
        Some(io::ErrorKind::TimedOut) => "timed out".to_string(),
        Some(io::ErrorKind::NotFound) => "no such host or socket".to_string(),
        _ if err.to_string().contains("timeout") => "timed out".to_string(),
        _ => err.to_string(),
    };
    format!(
        "cannot connect to PostgreSQL at {target}: {reason} — is the server running? Set DATABASE_URL or --database-url"
    )
}
