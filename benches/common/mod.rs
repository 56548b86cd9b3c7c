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
