//! `genalytics simulate`: realistic synthetic traffic, written to the
//! stream in the producer's exact wire format (see `traffic`).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Settings;
use crate::error::{Exit, UsageError};
use crate::output::thousands;
use crate::stream::{self, producer};
use crate::timearg::parse_instant;
use crate::traffic::{Traffic, TrafficSpec};

/// Entries per pipelined round trip.
const PIPELINE: usize = 5_000;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Stream entries to write (requests, completions and cancellations together)
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub events: u64,

    /// Length of the simulated window, ending at --end
    #[arg(long, default_value_t = 24, value_name = "H", value_parser = clap::value_parser!(u32).range(1..=87_600))]
    pub hours: u32,

    /// Distinct users generating traffic
    #[arg(long, default_value_t = 200, value_name = "U", value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,

    /// Seed for reproducible traffic (random when omitted; the summary prints it)
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// End of the window (exclusive); default now
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub end: Option<DateTime<Utc>>,

    /// Stream length cap as the producer applies it (XADD MAXLEN ~); 0 keeps everything
    #[arg(long, default_value_t = producer::PRODUCER_MAXLEN, value_name = "N")]
    pub maxlen: u64,
}

const EXAMPLES: &str = "Examples:
  genalytics simulate --events 10000 --hours 24
  genalytics simulate --events 100000 --seed 7 --end 2026-11-28T00 --maxlen 0";

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let end = args.end.unwrap_or_else(Utc::now);
    let start = end
        .checked_sub_signed(Duration::hours(i64::from(args.hours)))
        .filter(|start| start.timestamp() > 0)
        .ok_or_else(|| {
            UsageError(format!(
                "--end {end} minus --hours {} is before 1970",
                args.hours
            ))
        })?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let spec = TrafficSpec {
        events: args.events,
        start,
        end,
        users: args.users,
        seed,
    };

    let mut con = stream::connect_key(settings, &settings.stream_key)?;
    let maxlen = (args.maxlen > 0).then_some(args.maxlen);
    let mut writer = producer::StreamWriter::open(&mut con, &settings.stream_key, maxlen)?;

    let progress = if std::io::stderr().is_terminal() && !settings.quiet {
        ProgressBar::new(args.events).with_style(
            ProgressStyle::with_template(
                "{bar:40} {human_pos}/{human_len} entries  {elapsed_precise}  eta {eta}",
            )
            .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };

    let started = Instant::now();
    let counts = write_traffic(&mut writer, spec, &progress)?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    if !settings.quiet {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "simulated {} entries ({} requests, {} completions of which {} failed, {} cancellations) \
             from {} to {} into {} in {:.1} s ({} entries/s), seed {seed}",
            thousands(args.events),
            thousands(counts.requests),
            thousands(counts.completions),
            thousands(counts.failures),
            thousands(counts.cancellations),
            start.format("%Y-%m-%dT%H:%M:%SZ"),
            end.format("%Y-%m-%dT%H:%M:%SZ"),
            settings.stream_key,
            seconds,
            thousands((args.events as f64 / seconds.max(1e-9)) as u64),
        )?;
        if let Some(cap) = maxlen.filter(|&cap| args.events > cap) {
            writeln!(
                out,
                "note: like the real producer, XADD capped the stream at about {} entries, so older ones were trimmed; pass --maxlen 0 to keep them all",
                thousands(cap)
            )?;
        }
    }
    Ok(Exit::Success)
}

/// Writes the traffic in pipelines of [`PIPELINE`] entries, counting it.
fn write_traffic(
    writer: &mut producer::StreamWriter<'_>,
    spec: TrafficSpec,
    progress: &ProgressBar,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let mut batch = Vec::with_capacity(PIPELINE);
    for entry in Traffic::new(spec) {
        counts.add(entry.field("event_type"), entry.field("success"));
        batch.push(entry);
        if batch.len() == PIPELINE {
            if crate::interrupt::requested() {
                let written = counts.total() - batch.len() as u64;
                anyhow::bail!("interrupted after writing {} entries", thousands(written));
            }
            writer.write(&batch)?;
            progress.inc(batch.len() as u64);
            batch.clear();
        }
    }
    if !batch.is_empty() {
        writer.write(&batch)?;
        progress.inc(batch.len() as u64);
    }
    Ok(counts)
}

#[derive(Default)]
struct Counts {
    requests: u64,
    completions: u64,
    failures: u64,
    cancellations: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.requests + self.completions + self.cancellations
    }

    fn add(&mut self, event_type: Option<&str>, success: Option<&str>) {
        match event_type {
            Some("request") => self.requests += 1,
            Some("completion") => {
                self.completions += 1;
                if success == Some("False") {
                    self.failures += 1;
                }
            }
            Some("cancellation") => self.cancellations += 1,
            _ => {}
        }
    }
}
