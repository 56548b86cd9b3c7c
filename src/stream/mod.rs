//! Redis: connecting with errors an operator can act on, and (in
//! submodules) every stream command the tool sends.

use std::time::Duration;

use anyhow::anyhow;

use crate::config::RedisUrl;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that could not be opened: where, why, what to do, and
/// whether trying again later may work.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    pub message: String,
    pub transient: bool,
}

/// Opens one connection and checks it answers; the error says where it tried.
pub fn connect(url: &RedisUrl) -> anyhow::Result<redis::Connection> {
    let target = url.target();
    let failed = |err: &redis::RedisError| ConnectError {
        message: describe_connect_error(&target, err),
        transient: is_transient_redis(err),
    };
    let client = redis::Client::open(url.info.clone())
        .map_err(|err| anyhow!("cannot use the Redis URL for {target}: {}", describe(&err)))?;
    let mut con = client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map_err(|err| failed(&err))?;
    redis::cmd("PING")
        .query::<()>(&mut con)
        .map_err(|err| failed(&err))?;
    Ok(con)
}

/// Whether an error from Redis may go away by itself: the connection was
/// lost, refused or timed out, the server is loading its data or a failover
/// is under way. A wrong password is not.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(connect) = cause.downcast_ref::<ConnectError>() {
            return connect.transient;
        }
        if let Some(redis) = cause.downcast_ref::<redis::RedisError>() {
            return is_transient_redis(redis);
        }
        cause.downcast_ref::<std::io::Error>().is_some()
    })
}

fn is_transient_redis(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || matches!(
            err.code(),
            Some("LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "BUSY")
        )
}

fn describe_connect_error(target: &str, err: &redis::RedisError) -> String {
    if err.is_connection_refusal() {
        return format!(
            "cannot connect to Redis at {target}: connection refused — is the server running? Set REDIS_URL or --redis-url"
        );
    }
    if err.is_timeout() {
        return format!(
            "cannot connect to Redis at {target}: timed out — is the address right? Set REDIS_URL or --redis-url"
        );
    }
    match err.kind() {
        redis::ErrorKind::AuthenticationFailed => format!(
            "Redis at {target} refused the login: {} — check the password in REDIS_URL / --redis-url",
            describe(err)
        ),
        _ => format!(
            "cannot connect to Redis at {target}: {} — Set REDIS_URL or --redis-url",
            describe(err)
        ),
    }
}

/// The server's or driver's words, without anything from the URL.
pub fn describe(err: &redis::RedisError) -> String {
    match err.detail() {
        Some(detail) => detail.to_string(),
        None => err.to_string(),
    }
}

pub mod id;
pub mod identity;
pub mod producer;
pub mod reader;

pub use id::EntryId;
