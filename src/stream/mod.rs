//! Redis: connecting with errors an operator can act on, and (in
//! submodules) every stream command the tool sends.

use std::time::Duration;

use anyhow::anyhow;

use crate::config::RedisUrl;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens one connection and checks it answers; the error says where it tried.
pub fn connect(url: &RedisUrl) -> anyhow::Result<redis::Connection> {
    let target = url.target();
    let client = redis::Client::open(url.info.clone())
        .map_err(|err| anyhow!("cannot use the Redis URL for {target}: {}", describe(&err)))?;
    let mut con = client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map_err(|err| anyhow!(describe_connect_error(&target, &err)))?;
    redis::cmd("PING")
        .query::<()>(&mut con)
        .map_err(|err| anyhow!(describe_connect_error(&target, &err)))?;
    Ok(con)
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

pub mod producer;
pub mod reader;
