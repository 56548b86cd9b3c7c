//! `genalytics demo`: the whole pipeline on throwaway servers, with no
//! configuration — the first thing a newcomer runs.
//!
//! It starts a private PostgreSQL and Redis (the code the tests use),
//! simulates a day of traffic, runs migrate, transfer and aggregate exactly
//! as an operator would, prints the overview and the hourly trends, and
//! removes everything it started — also on Ctrl-C. `--keep` leaves the
//! servers running and prints the settings to try every other command.

use std::io::Write;

use anyhow::bail;
use clap::Parser;

use super::{Cli, Command, GlobalArgs};
use crate::config::{RedisNodes, Settings};
use crate::error::Exit;
use crate::throwaway::{Postgres, Redis, RedisCluster, RedisSentinel};

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Leave the servers running and print the settings to try other commands on them
    #[arg(long)]
    pub keep: bool,

    /// Stream entries to simulate over the last 24 hours
    #[arg(long, default_value_t = 20_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=5_000_000))]
    pub events: u64,
}

const EXAMPLES: &str = "Examples:
  genalytics demo
  genalytics demo --events 100000 --keep";

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    crate::interrupt::install()?;
    let say = |line: &str| -> anyhow::Result<()> {
        if !settings.quiet {
            writeln!(std::io::stdout().lock(), "{line}")?;
        }
        Ok(())
    };
    let interrupted = || -> anyhow::Result<()> {
        if crate::interrupt::requested() {
            bail!("interrupted; the throwaway servers are stopped and removed");
        }
        Ok(())
    };

    let kind = match settings.redis_nodes {
        RedisNodes::Server => Kind::One,
        RedisNodes::Cluster(_) => Kind::Cluster,
        RedisNodes::Sentinel { .. } => Kind::Sentinel,
    };
    say(&format!(
        "demo: starting a throwaway PostgreSQL and {} on private ports…",
        match kind {
            Kind::One => "Redis",
            Kind::Cluster => "Redis cluster",
            Kind::Sentinel => "Redis master, replica and sentinel",
        }
    ))?;
    let pg = if args.keep {
        Postgres::start_detached()?
    } else {
        Postgres::start()?
    };
    let redis = DemoRedis::start(kind, args.keep)?;
    pg.create_database("genalytics")?;
    let demo = demo_settings(&pg.url("genalytics"), &redis.url(), kind, settings.quiet)?;
    say(&format!(
        "demo: PostgreSQL on 127.0.0.1:{}, {} — yours are not touched\n",
        pg.port(),
        redis.described()
    ))?;

    for (what, command) in steps(args.events)? {
        interrupted()?;
        say(&format!("$ {what}"))?;
        if let Err(err) =
            super::dispatch(command, &demo, &crate::commands::config::Sources::default())
        {
            interrupted()?;
            return Err(err);
        }
        say("")?;
    }
    interrupted()?;

    if args.keep {
        print_kept(pg, redis, kind)?;
    } else {
        drop((pg, redis));
        say(
            "demo: stopped and removed the throwaway servers. Run `genalytics demo --keep` to keep them.",
        )?;
    }
    Ok(Exit::Success)
}

/// How to use the servers `--keep` leaves running, and how to remove
/// them: printed even with -q, since it is what `--keep` is for.
fn print_kept(pg: Postgres, redis: DemoRedis, kind: Kind) -> anyhow::Result<()> {
    let database_url = pg.url("genalytics");
    let redis_url = redis.url();
    let dirs = std::iter::once(pg.dir().display().to_string())
        .chain(redis.dirs())
        .collect::<Vec<_>>()
        .join(" ");
    let pids: Vec<String> = pg
        .keep()
        .into_iter()
        .chain(redis.keep())
        .map(|p| p.to_string())
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "demo: the servers keep running. Try any command against them:"
    )?;
    writeln!(out, "  export DATABASE_URL={database_url}")?;
    writeln!(out, "  export REDIS_URL={redis_url}")?;
    match kind {
        Kind::One => {}
        Kind::Cluster => writeln!(out, "  export GENALYTICS_REDIS_CLUSTER=1")?,
        Kind::Sentinel => writeln!(
            out,
            "  export GENALYTICS_REDIS_SENTINEL={}",
            RedisSentinel::NAME
        )?,
    }
    writeln!(
        out,
        "  genalytics report models; genalytics status; genalytics simulate --events 5000 --hours 1"
    )?;
    writeln!(
        out,
        "demo: when done: kill {}; rm -rf {dirs}",
        pids.join(" ")
    )?;
    Ok(())
}

/// The pipeline, as an operator would run it: each step is parsed from
/// its command line, so it runs with exactly the defaults an operator gets.
fn steps(events: u64) -> anyhow::Result<Vec<(String, Command)>> {
    let events = events.to_string();
    let lines: [&[&str]; 6] = [
        &["migrate"],
        &[
            "simulate", "--hours", "24", "--seed", "42", "--maxlen", "0", "--events", &events,
        ],
        &["transfer"],
        &["aggregate", "--include-current"],
        &["report", "overview", "--days", "1"],
        &["report", "trends", "--days", "1"],
    ];
    lines
        .iter()
        .map(|line| {
            let cli =
                Cli::try_parse_from(std::iter::once("genalytics").chain(line.iter().copied()))
                    .map_err(|err| anyhow::anyhow!("demo step {line:?}: {err}"))?;
            let shown = match line[0] {
                "simulate" => "genalytics simulate --hours 24".to_string(),
                _ => format!("genalytics {}", line.join(" ")),
            };
            Ok((shown, cli.command))
        })
        .collect()
}

/// Which Redis the demo starts, as the options ask.
#[derive(Debug, Clone, Copy)]
enum Kind {
    One,
    Cluster,
    Sentinel,
}

/// The demo's Redis: one server, with `--redis-cluster` a cluster of three
/// masters, with `--redis-sentinel` a master, a replica and a sentinel.
enum DemoRedis {
    One(Redis),
    Cluster(RedisCluster),
    Sentinel(RedisSentinel),
}

impl DemoRedis {
    fn start(kind: Kind, keep: bool) -> anyhow::Result<DemoRedis> {
        Ok(match (kind, keep) {
            (Kind::One, false) => DemoRedis::One(Redis::start()?),
            (Kind::One, true) => DemoRedis::One(Redis::start_detached()?),
            (Kind::Cluster, false) => DemoRedis::Cluster(RedisCluster::start(3)?),
            (Kind::Cluster, true) => DemoRedis::Cluster(RedisCluster::start_detached(3)?),
            (Kind::Sentinel, false) => DemoRedis::Sentinel(RedisSentinel::start(false)?),
            (Kind::Sentinel, true) => DemoRedis::Sentinel(RedisSentinel::start_detached()?),
        })
    }

    /// `REDIS_URL`: the server, the cluster's nodes as seeds, or the
    /// sentinel.
    fn url(&self) -> String {
        match self {
            DemoRedis::One(redis) => redis.url(),
            DemoRedis::Cluster(cluster) => cluster.urls(),
            DemoRedis::Sentinel(group) => group.url(),
        }
    }

    fn described(&self) -> String {
        match self {
            DemoRedis::One(redis) => format!("Redis on 127.0.0.1:{}", redis.port()),
            DemoRedis::Cluster(cluster) => format!(
                "a Redis cluster of {} masters on 127.0.0.1:{}",
                cluster.nodes().len(),
                cluster
                    .nodes()
                    .iter()
                    .map(|node| node.port().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DemoRedis::Sentinel(group) => {
                let (master, replica, sentinel) = group.ports();
                format!(
                    "a Redis master on 127.0.0.1:{master}, its replica on {replica} and a sentinel \
                     on {sentinel}"
                )
            }
        }
    }

    fn dirs(&self) -> Vec<String> {
        let dirs: Vec<&std::path::Path> = match self {
            DemoRedis::One(redis) => vec![redis.dir()],
            DemoRedis::Cluster(cluster) => cluster.nodes().iter().map(Redis::dir).collect(),
            DemoRedis::Sentinel(group) => group.dirs(),
        };
        dirs.iter().map(|dir| dir.display().to_string()).collect()
    }

    fn keep(self) -> Vec<u32> {
        match self {
            DemoRedis::One(redis) => redis.keep().into_iter().collect(),
            DemoRedis::Cluster(cluster) => cluster.keep(),
            DemoRedis::Sentinel(group) => group.keep(),
        }
    }
}

fn demo_settings(
    database_url: &str,
    redis_url: &str,
    kind: Kind,
    quiet: bool,
) -> anyhow::Result<Settings> {
    Ok(super::settings(&GlobalArgs {
        config: None,
        database_url: Some(database_url.to_string()),
        redis_url: redis_url.to_string(),
        redis_cluster: matches!(kind, Kind::Cluster),
        redis_sentinel: matches!(kind, Kind::Sentinel).then(|| RedisSentinel::NAME.to_string()),
        redis_ns: "genonaut".to_string(),
        stream: Vec::new(),
        stream_pattern: Vec::new(),
        raw_retention: chrono::TimeDelta::days(90),
        verbose: 0,
        quiet,
        color: crate::config::Color::Auto,
        log_format: super::LogFormat::Text,
    })?)
}
