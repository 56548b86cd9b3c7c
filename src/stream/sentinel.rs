//! Redis Sentinel. The master is asked of the sentinels in turn
//! (`SENTINEL GET-MASTER-ADDR-BY-NAME`) and checked with `ROLE` before it is
//! used: during a failover a sentinel may still name the old master, a
//! replica by then. Every session asks again, so a lost connection or a
//! `READONLY` or `LOADING` reply, which end a session, lead to the master of
//! the moment. Discovery lives here, as the cluster's does, and not in the
//! redis crate's sentinel client: the reader speaks on its own connection
//! ([`super::wire`]), so what is needed is the master's address.

use std::time::Duration;

use anyhow::anyhow;
use redis::Value;

use crate::config::RedisUrl;
use crate::error::{ConnectError, Server};
use crate::text::escape_controls;

/// The sentinel (`host:port`) that last named a master that was one.
static ANSWERED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The master the sentinels monitor as `name`, with the sentinel URL's
/// credentials and TLS.
pub fn master(name: &str, sentinels: &[RedisUrl]) -> anyhow::Result<RedisUrl> {
    let mut last: Option<anyhow::Error> = None;
    let mut named_unknown = 0;
    // The sentinel that answered last is asked first: one that is down
    // costs each lookup its time limit only until another answers.
    let answered = ANSWERED.lock().ok().and_then(|target| target.clone());
    let mut order: Vec<&RedisUrl> = sentinels.iter().collect();
    order.sort_by_key(|sentinel| Some(sentinel.target()) != answered);
    for sentinel in order {
        match ask(name, sentinel) {
            Ok(Some(master)) => match role(&master) {
                Ok(role) if role == "master" => {
                    if let Ok(mut target) = ANSWERED.lock() {
                        *target = Some(sentinel.target());
                    }
                    return Ok(master);
                }
                Ok(role) => {
                    last = Some(
                        ConnectError {
                            message: format!(
                                "the sentinel at {} names {} as the master of {}, but it is a {role}: \
                                 a failover is under way",
                                sentinel.target(),
                                master.target(),
                                escape_controls(name)
                            ),
                            transient: true,
                            server: Server::Redis,
                        }
                        .into(),
                    );
                }
                Err(err) => last = Some(err),
            },
            Ok(None) => named_unknown += 1,
            Err(err) if err.is::<NotASentinel>() => return Err(err),
            Err(err) => {
                tracing::debug!("sentinel {} did not answer: {err:#}", sentinel.target());
                last = Some(err);
            }
        }
    }
    if named_unknown == sentinels.len() {
        return Err(ConnectError {
            message: format!(
                "no sentinel in REDIS_URL / --redis-url monitors a master named {}: check \
                 --redis-sentinel (GENALYTICS_REDIS_SENTINEL)",
                escape_controls(name)
            ),
            transient: false,
            server: Server::Redis,
        }
        .into());
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no sentinel given in REDIS_URL / --redis-url"))
        .context(format!(
            "cannot find the Redis master {} through the sentinels",
            escape_controls(name)
        )))
}

/// The master's address as one sentinel knows it (None: it monitors no
/// master by that name).
fn ask(name: &str, sentinel: &RedisUrl) -> anyhow::Result<Option<RedisUrl>> {
    let mut con = connect(sentinel)?;
    let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query(&mut con)
        .map_err(|err| {
            if super::describe(&err).contains("unknown command") {
                NotASentinel(sentinel.target()).into()
            } else {
                anyhow::Error::new(err).context(format!(
                    "cannot ask the sentinel at {} for the master",
                    sentinel.target()
                ))
            }
        })?;
    Ok(reply.map(|(host, port)| sentinel.with_node(&host, port)))
}

/// How long a sentinel may take to connect and to answer: a sentinel only
/// points elsewhere, and one that is stopped must not hold up asking the
/// next.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to a sentinel: with the URL's credentials, or without them
/// when the sentinel has no password (it refuses the login then), as
/// sentinels are often left open where the data nodes are not. A sentinel
/// has no databases: the URL's number is for the master.
fn connect(sentinel: &RedisUrl) -> anyhow::Result<redis::Connection> {
    let settings = sentinel.info.redis_settings();
    let with_credentials = RedisUrl {
        info: sentinel
            .info
            .clone()
            .set_redis_settings(sentinel_settings(settings)),
    };
    let has_password = settings.password().is_some();
    let refused_login = |err: &redis::RedisError| {
        has_password && err.kind() == redis::ErrorKind::AuthenticationFailed
    };
    match super::connect_within(
        &with_credentials,
        SENTINEL_TIMEOUT,
        SENTINEL_TIMEOUT,
        refused_login,
    ) {
        Err(refused) => match refused.downcast::<redis::RedisError>() {
            Ok(refused) => {
                let open = RedisUrl {
                    info: sentinel
                        .info
                        .clone()
                        .set_redis_settings(redis::RedisConnectionInfo::default()),
                };
                // Refused both ways: the password is wrong.
                super::connect_within(&open, SENTINEL_TIMEOUT, SENTINEL_TIMEOUT, |_| false)
                    .map_err(|_| super::connect_error(&with_credentials, &refused))
            }
            Err(other) => Err(other),
        },
        connected => connected,
    }
}

fn sentinel_settings(node: &redis::RedisConnectionInfo) -> redis::RedisConnectionInfo {
    let mut settings = redis::RedisConnectionInfo::default();
    if let Some(user) = node.username() {
        settings = settings.set_username(user);
    }
    if let Some(password) = node.password() {
        settings = settings.set_password(password);
    }
    settings
}

/// `master`, `slave` or `sentinel`, as the server says of itself.
fn role(server: &RedisUrl) -> anyhow::Result<String> {
    let mut con = super::connect(server)?;
    let reply: Value = redis::cmd("ROLE").query(&mut con).map_err(|err| {
        anyhow::Error::new(err).context(format!("cannot ask {} for its role", server.target()))
    })?;
    match reply {
        Value::Array(items) => match items.first() {
            Some(Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
            Some(Value::SimpleString(text)) => Ok(text.clone()),
            _ => Err(anyhow!("{} gave an unexpected ROLE reply", server.target())),
        },
        _ => Err(anyhow!("{} gave an unexpected ROLE reply", server.target())),
    }
}

/// A server in `REDIS_URL` that is not a sentinel.
#[derive(Debug, thiserror::Error)]
#[error(
    "Redis at {0} is not a sentinel (it knows no SENTINEL command): with --redis-sentinel, \
     REDIS_URL / --redis-url names the sentinels (port 26379 by default), comma-separated"
)]
struct NotASentinel(String);
