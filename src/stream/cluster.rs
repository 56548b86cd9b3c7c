//! Redis Cluster. Every command genalytics sends touches one
//! stream key — reads, trims and their scripts, `XADD`s, `XINFO` — so it
//! speaks straight to the master that owns the key's slot, asked of the
//! seed nodes (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`). The read path and its
//! pipelining stay as on a single server. When the slot
//! moves (a reshard) or a replica is promoted, that node answers `MOVED` or
//! `ASK`, or goes away: the error is transient, and the next session asks
//! the cluster again and connects to the new owner.

use anyhow::{Context, anyhow};
use redis::Value;

use crate::config::RedisUrl;

/// A connection to the master that owns `key`'s slot; the seeds are asked
/// in turn until one answers.
pub fn connect_owner(seeds: &[RedisUrl], key: &str) -> anyhow::Result<redis::Connection> {
    let owner = owner(seeds, key)?;
    super::connect(&owner).with_context(|| {
        format!(
            "cannot connect to {}, the cluster node that holds {key}",
            owner.target()
        )
    })
}

/// The master that owns `key`'s slot, as the seeds say.
pub fn owner(seeds: &[RedisUrl], key: &str) -> anyhow::Result<RedisUrl> {
    ask_seeds(seeds, |seed, con| {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(con)
            .map_err(|err| not_a_cluster(seed, &err))?;
        let slots = cluster_slots(seed, con)?;
        let (host, port) = master_of(&slots, slot).ok_or_else(|| {
            anyhow!(
                "the Redis cluster at {} has no master for slot {slot} (key {key}); is the cluster complete?",
                seed.target()
            )
        })?;
        Ok(node(seed, &host, port))
    })
}

/// Every master of the cluster (for `SCAN`, which each node answers only
/// for its own keys).
pub fn masters(seeds: &[RedisUrl]) -> anyhow::Result<Vec<RedisUrl>> {
    ask_seeds(seeds, |seed, con| {
        let slots = cluster_slots(seed, con)?;
        let mut found: Vec<(String, u16)> = master_nodes(&slots);
        found.sort();
        found.dedup();
        Ok(found
            .into_iter()
            .map(|(host, port)| node(seed, &host, port))
            .collect())
    })
}

/// Runs `ask` on the seeds in turn until one answers it; a seed that is
/// not a cluster node is an error at once.
fn ask_seeds<T>(
    seeds: &[RedisUrl],
    mut ask: impl FnMut(&RedisUrl, &mut redis::Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut last = None;
    for seed in seeds {
        let asked = super::connect(seed).and_then(|mut con| ask(seed, &mut con));
        match asked {
            Ok(answer) => return Ok(answer),
            Err(err) if err.is::<NotACluster>() => return Err(err),
            Err(err) => {
                tracing::debug!("seed node {} did not answer: {err:#}", seed.target());
                last = Some(err);
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no Redis seed node given"))
        .context("no seed node of the Redis cluster answered (REDIS_URL / --redis-url)"))
}

/// A seed that is a Redis without cluster support.
#[derive(Debug, thiserror::Error)]
#[error(
    "Redis at {0} is not a cluster node (cluster support is disabled): drop --redis-cluster (GENALYTICS_REDIS_CLUSTER)"
)]
struct NotACluster(String);

fn cluster_slots(seed: &RedisUrl, con: &mut redis::Connection) -> anyhow::Result<Value> {
    redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(con)
        .map_err(|err| not_a_cluster(seed, &err))
}

fn not_a_cluster(seed: &RedisUrl, err: &redis::RedisError) -> anyhow::Error {
    if super::describe(err).contains("cluster support disabled") {
        return NotACluster(seed.target()).into();
    }
    anyhow::Error::new(err.clone()).context(format!(
        "cannot ask the Redis cluster at {} where keys are",
        seed.target()
    ))
}

/// A node's URL: the seed's credentials and TLS, the node's address (a
/// node that gives no address is the one asked).
fn node(seed: &RedisUrl, host: &str, port: u16) -> RedisUrl {
    if host.is_empty() || host == "?" {
        let target = seed.target();
        let seed_host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
        return seed.with_node(seed_host, port);
    }
    seed.with_node(host, port)
}

/// The master (host, port) serving `slot`, from a `CLUSTER SLOTS` reply:
/// `[[start, end, [host, port, id, …], replica…], …]`.
fn master_of(slots: &Value, slot: u16) -> Option<(String, u16)> {
    ranges(slots)
        .find(|(start, end, _)| (*start..=*end).contains(&i64::from(slot)))
        .map(|(_, _, master)| master)
}

fn master_nodes(slots: &Value) -> Vec<(String, u16)> {
    ranges(slots).map(|(_, _, master)| master).collect()
}

fn ranges(slots: &Value) -> impl Iterator<Item = (i64, i64, (String, u16))> + '_ {
    let items: &[Value] = match slots {
        Value::Array(items) => items,
        _ => &[],
    };
    items.iter().filter_map(|range| {
        let Value::Array(parts) = range else {
            return None;
        };
        let [Value::Int(start), Value::Int(end), Value::Array(master), ..] = parts.as_slice()
        else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
            Value::SimpleString(text) => text.clone(),
            Value::Nil => String::new(),
            _ => return None,
        };
        let Value::Int(port) = master.get(1)? else {
            return None;
        };
        Some((*start, *end, (host, u16::try_from(*port).ok()?)))
    })
}

/// Whether an error is a cluster's redirection (`MOVED`, `ASK`): the key's
/// slot is served elsewhere now.
pub fn is_redirect(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<redis::RedisError>()
            .is_some_and(redirects)
    })
}

/// [`is_redirect`] for one Redis error.
pub fn redirects(err: &redis::RedisError) -> bool {
    matches!(err.code(), Some("MOVED" | "ASK"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn slots() -> Value {
        Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id1")]),
                Value::Array(vec![bulk("10.0.0.4"), Value::Int(7003), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                Value::Array(vec![bulk(""), Value::Int(7001), bulk("id2")]),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                Value::Array(vec![bulk("10.0.0.3"), Value::Int(7002), bulk("id3")]),
            ]),
            // Whatever a future Redis adds is passed over.
            Value::Nil,
        ])
    }

    #[test]
    fn the_master_of_a_slot_is_found_at_every_edge() {
        let slots = slots();
        for (slot, want) in [
            (0, ("10.0.0.1", 7000)),
            (5460, ("10.0.0.1", 7000)),
            (5461, ("", 7001)),
            (10922, ("", 7001)),
            (10923, ("10.0.0.3", 7002)),
            (16383, ("10.0.0.3", 7002)),
        ] {
            assert_eq!(
                master_of(&slots, slot),
                Some((want.0.to_string(), want.1)),
                "slot {slot}"
            );
        }
        assert_eq!(master_of(&Value::Array(vec![]), 1), None);
        assert_eq!(master_of(&Value::Nil, 1), None);
    }

    #[test]
    fn masters_are_listed_once_each_replicas_not_at_all() {
        let masters = master_nodes(&slots());
        let ports: Vec<u16> = masters.iter().map(|(_, port)| *port).collect();
        assert_eq!(ports, [7000, 7001, 7002]);
    }

    #[test]
    fn a_node_without_an_address_is_the_seed_asked() {
        let seed = RedisUrl::parse("redis://:pw@seed.example:7000").unwrap();
        assert_eq!(node(&seed, "", 7001).target(), "seed.example:7001");
        assert_eq!(node(&seed, "10.0.0.3", 7002).target(), "10.0.0.3:7002");
        // The credentials go with it.
        assert_eq!(
            node(&seed, "10.0.0.3", 7002)
                .info
                .redis_settings()
                .password(),
            Some("pw")
        );
    }
}
