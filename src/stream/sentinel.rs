//! Redis Sentinel. The master is asked of the sentinels in turn
//! (`SENTINEL GET-MASTER-ADDR-BY-NAME`) and checked with `ROLE` before it is
//! used: during a failover a sentinel may still name the old master, a
//! replica by then. Every session asks again, so a lost connection or a
//! `READONLY` or `LOADING` reply, which end a session, lead to the master of
//! the moment. Discovery lives here, as the cluster's does, and not in the
//! redis crate's sentinel client: the reader speaks on its own connection
//! ([`super::wire`]), so what is needed is the master's address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::anyhow;
use redis::Value;

use crate::config::RedisUrl;
use crate::error::{ConnectError, Server};
use crate::text::escape_controls;

/// How long a sentinel, or a master it names, may take to connect and to
/// answer: one that is stopped must not hold up asking the next.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The master the sentinels monitor as `name`, reached with the first
/// URL's credentials, database and TLS whichever sentinel answers.
/// `answered` remembers the sentinel that answered last, asked first the
/// next time: one that is down costs a lookup its time limit only until
/// another has answered.
pub fn master(
    name: &str,
    sentinels: &[RedisUrl],
    answered: &Mutex<Option<usize>>,
) -> anyhow::Result<RedisUrl> {
    let first = sentinels
        .first()
        .ok_or_else(|| anyhow!("no sentinel given in REDIS_URL / --redis-url"))?;
    let mut last: Option<anyhow::Error> = None;
    let mut named_unknown = 0;
    let preferred = answered.lock().ok().and_then(|index| *index);
    let mut order: Vec<usize> = (0..sentinels.len()).collect();
    order.sort_by_key(|&i| Some(i) != preferred);
    // A master named by several sentinels is asked its role once.
    let mut roles: HashMap<String, String> = HashMap::new();
    for i in order {
        let sentinel = &sentinels[i];
        let (host, port) = match ask(name, sentinel) {
            Ok(Some(address)) => address,
            Ok(None) => {
                named_unknown += 1;
                continue;
            }
            Err(err) if err.is::<NotASentinel>() => return Err(err),
            Err(err) => {
                tracing::debug!("sentinel {} did not answer: {err:#}", sentinel.target());
                last = Some(err);
                continue;
            }
        };
        let master = first.with_node(&host, port);
        let role = match roles.get(&master.target()) {
            Some(role) => role.clone(),
            None => match role(&master) {
                Ok(role) => {
                    roles.insert(master.target(), role.clone());
                    role
                }
                Err(err) => {
                    last = Some(err);
                    continue;
                }
            },
        };
        if role == "master" {
            if let Ok(mut index) = answered.lock() {
                *index = Some(i);
            }
            return Ok(master);
        }
        last = Some(
            ConnectError {
                message: format!(
                    "the sentinel at {} names {} as the master of {}, but it is a {role}: a \
                     failover is under way",
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
        .unwrap_or_else(|| anyhow!("no sentinel answered"))
        .context(format!(
            "cannot find the Redis master {} through the sentinels",
            escape_controls(name)
        )))
}

/// The master's address as one sentinel knows it (None: it monitors no
/// master by that name).
fn ask(name: &str, sentinel: &RedisUrl) -> anyhow::Result<Option<(String, u16)>> {
    let mut con = connect(sentinel)?;
    let asked = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query(&mut con);
    match asked {
        Ok(address) => Ok(address),
        // A server that refuses the command and is no sentinel: the
        // list names data nodes.
        Err(err) if role_of(&mut con).is_ok_and(|role| role != "sentinel") => {
            tracing::debug!("{}: {}", sentinel.target(), super::describe(&err));
            Err(NotASentinel(sentinel.target()).into())
        }
        Err(err) => Err(anyhow::Error::new(err).context(format!(
            "cannot ask the sentinel at {} for the master",
            sentinel.target()
        ))),
    }
}

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
    match super::try_connect(&with_credentials, TIMEOUT, TIMEOUT)? {
        Ok(con) => Ok(con),
        Err(refused) if settings.password().is_some() && refused_login(&refused) => {
            let open = RedisUrl {
                info: sentinel
                    .info
                    .clone()
                    .set_redis_settings(redis::RedisConnectionInfo::default()),
            };
            match super::try_connect(&open, TIMEOUT, TIMEOUT)? {
                Ok(con) => Ok(con),
                // It wants a password, and not that one.
                Err(err) if refused_login(&err) => {
                    Err(super::connect_error(&with_credentials, &refused))
                }
                Err(err) => Err(super::connect_error(&open, &err)),
            }
        }
        Err(err) => Err(super::connect_error(&with_credentials, &err)),
    }
}

fn refused_login(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed || err.code() == Some("NOAUTH")
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
    let mut con = super::try_connect(server, TIMEOUT, TIMEOUT)?
        .map_err(|err| super::connect_error(server, &err))?;
    role_of(&mut con)
        .map_err(|err| err.context(format!("cannot ask {} for its role", server.target())))
}

fn role_of(con: &mut redis::Connection) -> anyhow::Result<String> {
    match redis::cmd("ROLE").query::<Value>(con)? {
        Value::Array(items) => match items.first() {
            Some(Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
            Some(Value::SimpleString(text)) => Ok(text.clone()),
            _ => Err(anyhow!("an unexpected ROLE reply")),
        },
        _ => Err(anyhow!("an unexpected ROLE reply")),
    }
}

/// A server in `REDIS_URL` that is not a sentinel.
#[derive(Debug, thiserror::Error)]
#[error(
    "Redis at {0} is not a sentinel (it knows no SENTINEL command): with --redis-sentinel, \
     REDIS_URL / --redis-url names the sentinels (port 26379 by default), comma-separated"
)]
struct NotASentinel(String);
