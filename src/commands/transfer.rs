//! `genalytics transfer`: drain the stream into `generation_events`
//! exactly once. The engine is `ingest`; this maps the flags to its
//! options and prints each stream's summary.

use std::fmt::Write as _;

use chrono::TimeDelta;

use crate::config::Settings;
use crate::error::Exit;
use crate::ingest::{self, Ended, Options, Summary};
use crate::output::{SummaryFormat, counted, thousands};
use crate::stream::verdict;
use crate::timearg::parse_span;

#[allow(
    clippy::struct_excessive_bools,
    reason = "independent switches, each a flag"
)]
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Entries per transaction (and at most per read from Redis)
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,

    /// Stop after this many entries
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_events: Option<u64>,

    /// Keep reading new entries until SIGINT/SIGTERM, committing at least every second; survives server restarts
    #[arg(long)]
    pub follow: bool,

    /// Stored entries younger than this stay in the stream for live monitoring
    #[arg(long, default_value = "2h", value_name = "DURATION", value_parser = parse_span)]
    pub keep: TimeDelta,

    /// Wait for a transfer already running instead of exiting
    #[arg(long)]
    pub wait: bool,

    /// The key holds a new stream (recreated below the stored position): store all its entries, from its first
    #[arg(long)]
    pub new_stream: bool,

    /// With several streams (--stream more than once, or a pattern): how many to transfer at once; following, each stream has its own
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,

    /// Also roll up hours that have ended: following, each hour as it ends and hours late events
    /// queued again at most once a minute (no aggregate timer needed); otherwise once, after
    #[arg(long)]
    pub aggregate: bool,

    /// Summary format
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

const EXAMPLES: &str = "Examples:
  genalytics transfer
  genalytics transfer --follow --aggregate
  genalytics transfer --keep 6h --format json
  genalytics transfer --new-stream
  genalytics transfer --stream 'genonaut:generation_events:stream:*' --parallel 2";

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let options = Options {
        batch_size: args.batch_size,
        max_events: args.max_events,
        follow: args.follow,
        keep: args.keep,
        wait: args.wait,
        new_stream: args.new_stream,
        parallel: args.parallel,
        aggregate: args.aggregate,
    };
    let format = args.format;
    let quiet = settings.quiet;
    ingest::run(&options, settings, &|ended: &Ended| {
        if quiet {
            return Ok(());
        }
        match ended {
            Ended::Done(summary) => print_summary(format, summary),
            Ended::Skipped { stream } => say_skipped(format, stream),
        }
    })
}

fn say_skipped(format: SummaryFormat, key: &str) -> anyhow::Result<()> {
    let skipped = serde_json::json!({"stream": key, "skipped": "another transfer is running"});
    format.print(&skipped, || {
        format!("another transfer of {key} is running; nothing to do (pass --wait to wait for it)")
    })?;
    Ok(())
}

fn print_summary(format: SummaryFormat, summary: &Summary) -> anyhow::Result<()> {
    format.print(summary, || {
        let mut line = format!(
            "transferred {} and {} from {} in {:.1} s ({} entries/s); {}",
            counted(summary.events, "event"),
            counted(summary.rejected, "rejected entry"),
            crate::text::escape_controls(&summary.stream),
            summary.seconds,
            thousands(summary.events_per_second.round() as u64),
            match summary.behind {
                Some(behind) => format!(
                    "{}{} behind",
                    if summary.behind_exact { "" } else { "about " },
                    counted(behind, "entry")
                ),
                None => "entries behind unknown (Redis did not answer)".to_string(),
            }
        );
        if summary.skipped > 0 {
            let _ = write!(
                line,
                "; skipped {} that {} already stored",
                counted(summary.skipped, "entry"),
                if summary.skipped == 1 { "was" } else { "were" }
            );
        }
        if let Some(reset) = &summary.reset {
            let _ = write!(
                line,
                "; {}",
                verdict::replaced_on(reset.at, reset.lost_at_least)
            );
        }
        line
    })?;
    Ok(())
}
