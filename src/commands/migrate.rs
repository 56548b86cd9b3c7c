//! `genalytics migrate [--status]`: create or upgrade the schema.

use std::io::Write;

use anyhow::Context;
use comfy_table::{Table, presets::NOTHING};

use crate::config::Settings;
use crate::db::{self, migrations};
use crate::error::Exit;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// List applied and pending migrations instead of applying them
    #[arg(long)]
    pub status: bool,
}

const EXAMPLES: &str = "Examples:
  genalytics migrate
  genalytics migrate --status";

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let database = settings.database()?;
    let (mut client, server) = db::connect_to(database)?;
    if !args.status {
        db::ensure_primary(&mut client, &server)?;
    }
    let mut out = std::io::stdout().lock();
    if args.status {
        let statuses = migrations::status(&mut client)?;
        let mut table = Table::new();
        table.load_style(NOTHING);
        table.set_header(["version", "name", "state"]);
        for m in &statuses {
            let state = match m.state {
                migrations::State::Applied(at) => {
                    format!("applied {}", at.format("%Y-%m-%d %H:%M:%S UTC"))
                }
                migrations::State::Pending => "pending".to_string(),
                migrations::State::Changed(at) => format!(
                    "CHANGED since applied {} — restore the original file",
                    at.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                migrations::State::Unknown(at) => format!(
                    "applied {} by a newer genalytics",
                    at.format("%Y-%m-%d %H:%M:%S UTC")
                ),
            };
            table.add_row([format!("{:04}", m.version), m.name.clone(), state]);
        }
        writeln!(out, "{table}")?;
        return Ok(Exit::Success);
    }

    let applied = migrations::apply(&mut client)
        .with_context(|| format!("cannot migrate the database at {}", database.target()))?;
    if !settings.quiet {
        if applied.is_empty() {
            writeln!(out, "schema is up to date; nothing to apply")?;
        }
        for m in &applied {
            writeln!(out, "applied {} ({} ms)", m.label, m.took.as_millis())?;
        }
    }
    Ok(Exit::Success)
}
