//! What the benchmarks share: medians and GNU time's peak-RSS report.
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
