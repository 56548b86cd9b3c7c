//! Redis: connecting with errors an operator can act on, and (in
//! submodules) every stream command the tool sends.

use std::time::Duration;

use anyhow::anyhow;

use crate::config::{RedisNodes, RedisUrl, Settings};
use crate::error::{ConnectError, Server};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one reply; blocking reads ask for far less.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to the server that holds `key`: Redis, the cluster master
/// that owns the key's slot, or the master the sentinels name.
pub fn connect_key(settings: &Settings, key: &str) -> anyhow::Result<redis::Connection> {
    match &settings.redis_nodes {
        RedisNodes::Cluster(seeds) => cluster::connect_owner(seeds, key),
        RedisNodes::Sentinel { .. } => connect(&server_for(settings, key)?),
        RedisNodes::Server => connect(&settings.redis),
    }
}

/// The server that holds `key`, asked of the cluster or the sentinels.
pub fn server_for(settings: &Settings, key: &str) -> anyhow::Result<RedisUrl> {
    match &settings.redis_nodes {
        RedisNodes::Cluster(seeds) => cluster::owner(seeds, key),
        RedisNodes::Sentinel {
            master,
            sentinels,
            answered,
        } => sentinel::master(master, sentinels, answered),
        RedisNodes::Server => Ok(settings.redis.clone()),
    }
}

/// Every server that holds keys (a cluster's masters each list only their
/// own in `SCAN`).
pub fn servers(settings: &Settings) -> anyhow::Result<Vec<RedisUrl>> {
    match &settings.redis_nodes {
        RedisNodes::Cluster(seeds) => cluster::masters(seeds),
        RedisNodes::Sentinel {
            master,
            sentinels,
            answered,
        } => Ok(vec![sentinel::master(master, sentinels, answered)?]),
        RedisNodes::Server => Ok(vec![settings.redis.clone()]),
    }
}

/// Where `settings` point, for messages.
pub fn described(settings: &Settings) -> String {
    match &settings.redis_nodes {
        RedisNodes::Cluster(_) => format!("the cluster of {}", settings.redis.target()),
        RedisNodes::Sentinel { master, .. } => format!(
            "the master {} of the sentinels at {}",
            crate::text::escape_controls(master),
            settings.redis.target()
        ),
        RedisNodes::Server => settings.redis.target(),
    }
}

/// The reader's connection (see [`wire`]) to the server that holds `key`.
pub fn connect_reader(settings: &Settings, key: &str) -> anyhow::Result<wire::Wire> {
    let url = server_for(settings, key)?;
    no_plain_server_behind_tls(&url, &url.target())?;
    wire::Wire::open(&url, CONNECT_TIMEOUT, IO_TIMEOUT).map_err(|err| connect_error(&url, &err))
}

/// Refuses a `rediss://` URL whose server speaks no TLS: a client would
/// wait for a handshake a plain server never sends.
fn no_plain_server_behind_tls(url: &RedisUrl, target: &str) -> anyhow::Result<()> {
    if let redis::ConnectionAddr::TcpTls { host, port, .. } = url.info.addr()
        && let crate::tls::Probe::NoTls = crate::tls::probe(host, *port, false)
    {
        return Err(ConnectError {
            message: format!(
                "cannot connect to Redis at {target} over TLS: {} — use redis:// for a server without TLS",
                crate::tls::explain(crate::tls::Cause::NoTls, host, None)
            ),
            transient: false,
            server: Server::Redis,
        }
        .into());
    }
    Ok(())
}

/// Opens one connection and checks it answers; the error says where it tried.
pub fn connect(url: &RedisUrl) -> anyhow::Result<redis::Connection> {
    try_connect(url, CONNECT_TIMEOUT, IO_TIMEOUT)?.map_err(|err| connect_error(url, &err))
}

/// A connection with its own time limits: the outer error for a URL that
/// cannot be used, the inner one the server's or the network's, for the
/// caller to judge (a sentinel tries again without a password).
fn try_connect(
    url: &RedisUrl,
    connect_timeout: std::time::Duration,
    io_timeout: std::time::Duration,
) -> anyhow::Result<Result<redis::Connection, redis::RedisError>> {
    let target = url.target();
    let client = redis::Client::open(url.info.clone())
        .map_err(|err| anyhow!("cannot use the Redis URL for {target}: {}", describe(&err)))?;
    no_plain_server_behind_tls(url, &target)?;
    Ok((|| {
        let mut con = client.get_connection_with_timeout(connect_timeout)?;
        // A server that stops answering without closing the connection (a
        // network partition) must not hold a run, or a follower, forever.
        con.set_read_timeout(Some(io_timeout))?;
        con.set_write_timeout(Some(io_timeout))?;
        redis::cmd("PING").query::<()>(&mut con)?;
        Ok(con)
    })())
}

/// A failed connection to `url`, said for an operator.
fn connect_error(url: &RedisUrl, err: &redis::RedisError) -> anyhow::Error {
    let tls = matches!(url.info.addr(), redis::ConnectionAddr::TcpTls { .. });
    ConnectError {
        message: describe_connect_error(&url.target(), tls, err),
        transient: transient(err, tls),
        server: Server::Redis,
    }
    .into()
}

/// Whether a failed connection is worth trying again: a certificate that
/// does not verify (or a server without TLS) stays so, though the driver
/// reports it as an I/O error.
fn transient(err: &redis::RedisError, tls: bool) -> bool {
    crate::error::redis_transient(err)
        && !(tls && crate::tls::cause(&crate::tls::chain_text(err)).is_some())
}

fn describe_connect_error(target: &str, tls: bool, err: &redis::RedisError) -> String {
    if err.is_connection_refusal() {
        return format!(
            "cannot connect to Redis at {target}: connection refused — is the server running, and is it the one REDIS_URL / --redis-url names?"
        );
    }
    if err.is_timeout() {
        return format!(
            "cannot connect to Redis at {target}: timed out — is the address in REDIS_URL / --redis-url right, and the host up?"
        );
    }
    let text = crate::tls::chain_text(err);
    if let Some(tls) = crate::tls::cause(&text).filter(|_| tls) {
        let (host, port) = target.rsplit_once(':').unwrap_or((target, "6379"));
        let names = (tls == crate::tls::Cause::HostMismatch)
            .then(|| crate::tls::peer_names(host, port.parse().ok()?, false))
            .flatten();
        return format!(
            "cannot connect to Redis at {target} over TLS: {} — check the host in REDIS_URL / --redis-url, \
             or give the authority with SSL_CERT_FILE",
            crate::tls::explain(tls, host, names.as_deref())
        );
    }
    match err.kind() {
        redis::ErrorKind::AuthenticationFailed => format!(
            "Redis at {target} refused the login: {} — check the password in REDIS_URL / --redis-url",
            describe(err)
        ),
        _ if err.code() == Some("NOAUTH") => format!(
            "Redis at {target} asks for a password and REDIS_URL / --redis-url has none — add it"
        ),
        _ if err.code() == Some("LOADING") => {
            format!("Redis at {target} is loading its data set into memory — wait for it")
        }
        _ => format!(
            "cannot connect to Redis at {target}: {} — check REDIS_URL / --redis-url",
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

pub mod cluster;
pub mod drain;
pub mod identity;
pub mod info;
pub mod producer;
pub mod reader;
pub mod sentinel;
pub mod trim;
pub mod verdict;
pub mod wire;
