//! The global flags turned into [`Settings`]: the one place that knows
//! both the command line and the settings, so `config` needs no clap.

use super::GlobalArgs;
use crate::config::{DatabaseUrl, RedisNodes, RedisUrl, Settings, stream_key_for};
use crate::error::UsageError;

/// Validates the global flags (and the environment clap read for them).
pub fn settings(args: &GlobalArgs) -> Result<Settings, UsageError> {
    // As libpq: the URL, else its PG* variables; what either leaves out
    // (user, database, port, password) from a service (PGSERVICE or the
    // URL's service=), then the variables and the password file.
    let (url, named) = args
        .database_url
        .as_deref()
        .map(crate::pg_service::take_service_param)
        .unwrap_or_default();
    let process_env = |name: &str| std::env::var(name).ok();
    let service = named
        .or_else(|| process_env("PGSERVICE").filter(|name| !name.is_empty()))
        .map(|name| {
            crate::pg_service::lookup(&name, &process_env, crate::config::home(&process_env))
        })
        .transpose()?
        .unwrap_or_default();
    let env = |name: &str| service.variable(name).or_else(|| process_env(name));
    let database = match Some(url.as_str()).filter(|url| !url.trim().is_empty()) {
        Some(url) => Some(DatabaseUrl::parse(&DatabaseUrl::with_tls_env(url, &env))?),
        None => DatabaseUrl::from_libpq_env(&env).transpose()?,
    }
    .map(|url| url.completed(&env, &mut |warning| tracing::warn!("{warning}")));
    let (redis, redis_nodes) = redis(args)?;
    if args.stream.iter().any(String::is_empty) {
        return Err(UsageError("--stream must not be empty".into()));
    }
    if args.stream_pattern.iter().any(String::is_empty) {
        return Err(UsageError("--stream-pattern must not be empty".into()));
    }
    let streams = if !args.stream.is_empty() || !args.stream_pattern.is_empty() {
        args.stream.clone()
    } else if args.redis_ns.is_empty() {
        return Err(UsageError(
            "the stream namespace (--redis-ns / GENALYTICS_REDIS_NS) must not be empty".into(),
        ));
    } else {
        vec![stream_key_for(&args.redis_ns)]
    };
    Ok(Settings {
        database,
        redis,
        redis_nodes,
        stream_key: streams
            .first()
            .cloned()
            .unwrap_or_else(|| stream_key_for(&args.redis_ns)),
        streams,
        patterns: args.stream_pattern.clone(),
        raw_retention_days: i32::try_from(args.raw_retention.num_days()).unwrap_or(i32::MAX),
        quiet: args.quiet,
        color: args.color,
    })
}

/// Redis as the flags say: one server, a cluster's seeds, or sentinels;
/// the first URL names it in messages.
fn redis(args: &GlobalArgs) -> Result<(RedisUrl, RedisNodes), UsageError> {
    // Only a cluster's or the sentinels' URL is a list: a single server's
    // password may hold a comma.
    let list = || -> Result<(RedisUrl, Vec<RedisUrl>), UsageError> {
        let urls = args
            .redis_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(RedisUrl::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let first = urls
            .first()
            .cloned()
            .ok_or_else(|| UsageError("the Redis URL (REDIS_URL / --redis-url) is empty".into()))?;
        Ok((first, urls))
    };
    match &args.redis_sentinel {
        Some(master) if master.trim().is_empty() => Err(UsageError(
            "--redis-sentinel (GENALYTICS_REDIS_SENTINEL) needs the name the sentinels monitor \
                 the master under"
                .into(),
        )),
        // Checked here, not by clap: either may come from a config file.
        Some(_) if args.redis_cluster => Err(UsageError(
            "--redis-cluster and --redis-sentinel exclude each other: Redis is a cluster, or \
                 a master the sentinels watch"
                .into(),
        )),
        Some(master) => {
            let (first, sentinels) = list()?;
            Ok((
                first,
                RedisNodes::Sentinel {
                    master: master.clone(),
                    sentinels,
                    answered: std::sync::Arc::default(),
                },
            ))
        }
        None if args.redis_cluster => {
            let (first, seeds) = list()?;
            Ok((first, RedisNodes::Cluster(seeds)))
        }
        None => match RedisUrl::parse(&args.redis_url) {
            Ok(url) => Ok((url, RedisNodes::Server)),
            Err(_) if args.redis_url.contains(",redis") => Err(UsageError(
                "REDIS_URL names several servers, which only a cluster or sentinels have: pass \
                     --redis-cluster (GENALYTICS_REDIS_CLUSTER=1), --redis-sentinel NAME, or give \
                     one URL"
                    .into(),
            )),
            Err(err) => Err(err),
        },
    }
}
