//! What the benchmarks share: medians, GNU time's reports (peak RSS, CPU),
//! the CPU Redis and PostgreSQL used, running genalytics, and the
//! single-COPY limit.
#![allow(dead_code)] // each benchmark uses its own share of these

use std::path::Path;

/// Median of measurements (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// "Maximum resident set size (kbytes)" from a `/usr/bin/time -v -o` report.
pub fn peak_rss_kib(report: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(report)?;
    text.lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|kib| kib.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no peak RSS in GNU time's report:\n{text}"))
}

/// "User time" plus "System time" from a `/usr/bin/time -v -o` report.
pub fn cpu_seconds(report: &Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(report)?;
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(name))
            .and_then(|value| value.trim().parse().ok())
    };
    match (
        field("User time (seconds):"),
        field("System time (seconds):"),
    ) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => anyhow::bail!("no CPU times in GNU time's report:\n{text}"),
    }
}

/// CPU seconds Redis has used so far, as it reports them (`INFO cpu`).
pub fn redis_cpu_seconds(redis: &genalytics::throwaway::Redis) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query(&mut redis.connection()?)?;
    Ok(info
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| matches!(*name, "used_cpu_user" | "used_cpu_sys"))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum())
}

/// CPU seconds a process and its descendants have used so far, from
/// `/proc` (children that ended count once their parent reaped them).
pub fn tree_cpu_seconds(root: u32) -> anyhow::Result<f64> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut parents: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    let mut times: std::collections::HashMap<u32, (f64, f64)> = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        let number = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let parent = number(1) as u32;
        // utime, stime, cutime, cstime are fields 14–17 of stat: 11–14 here.
        times.insert(pid, (number(11) + number(12), number(13) + number(14)));
        parents.entry(parent).or_default().push(pid);
    }
    let mut total = 0.0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        let (own, reaped) = times.get(&pid).copied().unwrap_or_default();
        total += own + reaped;
        stack.extend(parents.get(&pid).into_iter().flatten());
    }
    Ok(total / ticks)
}

/// The genalytics binary as a benchmark runs it: against these servers,
/// and under GNU time when `time_log` is given (which then holds the run's
/// peak RSS and CPU times, see [`peak_rss_kib`] and [`cpu_seconds`]).
pub struct Genalytics<'a> {
    pub database_url: &'a str,
    pub redis_url: &'a str,
    /// `GENALYTICS_REDIS_NS`; unset for the default namespace.
    pub namespace: Option<&'a str>,
    pub time_log: Option<&'a Path>,
}

impl Genalytics<'_> {
    /// Runs it to success; the seconds it took (whole process) and what it
    /// printed.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<(f64, String)> {
        let mut command = match self.time_log {
            Some(log) => {
                let mut time = std::process::Command::new("/usr/bin/time");
                time.arg("-v")
                    .arg("-o")
                    .arg(log)
                    .arg(env!("CARGO_BIN_EXE_genalytics"));
                time
            }
            None => std::process::Command::new(env!("CARGO_BIN_EXE_genalytics")),
        };
        command
            .args(args)
            .env("DATABASE_URL", self.database_url)
            .env("REDIS_URL", self.redis_url);
        match self.namespace {
            Some(namespace) => command.env("GENALYTICS_REDIS_NS", namespace),
            None => command.env_remove("GENALYTICS_REDIS_NS"),
        };
        let started = std::time::Instant::now();
        let out = command.output()?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            out.status.success(),
            "genalytics {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((seconds, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Runs it to success; the seconds it took.
    pub fn time(&self, args: &[&str]) -> anyhow::Result<f64> {
        Ok(self.run(args)?.0)
    }
}

/// A number from the environment (a benchmark's size), or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// PostgreSQL's own binary `COPY FROM STDIN` of pre-rendered rows into
/// `generation_events` (`columns` in the rows' order), in one transaction:
/// the limit transfer is measured against.
pub fn copy_in(db: &mut postgres::Client, columns: &str, rows: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut tx = db.transaction()?;
    let mut writer = tx.copy_in(&format!(
        "COPY generation_events ({columns}) FROM STDIN (FORMAT binary)"
    ))?;
    writer.write_all(rows)?;
    writer.finish()?;
    tx.commit()?;
    Ok(())
}

/// Empties what a transfer fills, so the next round starts alike.
pub fn reset_transfer(db: &mut postgres::Client) -> anyhow::Result<()> {
    db.batch_execute(
        "TRUNCATE generation_events, generation_events_rejected, generation_rollup_queue;
         DELETE FROM genalytics_transfer_state;",
    )?;
    // Its own statement: VACUUM cannot run inside the implicit transaction
    // of a multi-statement batch.
    db.batch_execute("VACUUM ANALYZE generation_events")?;
    Ok(())
}
