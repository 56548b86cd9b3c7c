//! `genalytics config`: every setting, its value (passwords masked) and
//! where it came from — a flag, a variable, a config file and line, or the
//! built-in default — so "why does cron connect there?" has an answer.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::Settings;
use crate::error::Exit;
use crate::output::SummaryFormat;
use crate::text::escape_controls;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Output format
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

const EXAMPLES: &str = "Examples:
  genalytics config
  genalytics --config ./genalytics.toml config --format json";

/// The settings as the command line, the environment and the files made
/// them (built by the command line's parser).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Sources {
    pub settings: Vec<Shown>,
    /// The config files read, in order (a later one wins).
    pub files: Vec<PathBuf>,
    /// What reading the files found to warn about.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// One setting: `database_url`, `transfer.keep`.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub name: String,
    /// None: not set.
    pub value: Option<String>,
    pub from: String,
}

pub fn run(args: &Args, sources: &Sources, settings: &Settings) -> anyhow::Result<Exit> {
    let mut shown: Vec<Shown> = sources
        .settings
        .iter()
        .map(|setting| Shown {
            value: setting.value.as_deref().map(masked),
            ..setting.clone()
        })
        .collect();
    // No URL: libpq's variables may still name a server.
    if let Some(database) = shown
        .iter_mut()
        .find(|s| s.name == "database_url" && s.value.is_none())
        && let Ok(url) = settings.database()
    {
        database.value = Some(format!(
            "{}/{} as {}",
            url.target(),
            url.dbname().unwrap_or("?"),
            url.user().unwrap_or("?")
        ));
        database.from = "libpq variables (PGHOST, PGPORT, PGDATABASE, PGUSER, …)".into();
    }
    let report = Sources {
        settings: shown,
        files: sources.files.clone(),
        warnings: Vec::new(),
    };
    args.format.print(&report, || text(&report))?;
    std::io::stdout().flush()?;
    Ok(Exit::Success)
}

/// Three aligned columns, then the files read.
fn text(report: &Sources) -> String {
    let rows: Vec<[String; 3]> = report
        .settings
        .iter()
        .map(|s| {
            [
                escape_controls(&s.name).into_owned(),
                s.value.as_deref().map_or_else(
                    || "(not set)".to_string(),
                    |value| escape_controls(value).into_owned(),
                ),
                escape_controls(&s.from).into_owned(),
            ]
        })
        .collect();
    let width = |i: usize| {
        rows.iter()
            .map(|row| row[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (name_width, value_width) = (width(0).max(7), width(1).max(5));
    let mut out = format!(
        "{:<name_width$}  {:<value_width$}  from\n",
        "setting", "value"
    );
    for [name, value, from] in &rows {
        let line = format!("{name:<name_width$}  {value:<value_width$}  {from}");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if report.files.is_empty() {
        out.push_str("config files: none found (--config, GENALYTICS_CONFIG, /etc/genalytics/genalytics.toml, ~/.config/genalytics/genalytics.toml)");
    } else {
        let files: Vec<String> = report
            .files
            .iter()
            .map(|file| escape_controls(&file.display().to_string()).into_owned())
            .collect();
        let _ = write!(out, "config files read: {}", files.join(", "));
    }
    out
}

/// The value with every password replaced by `****`: a URL's between the
/// user and the last `@` (more is hidden rather than less), and any
/// `password=` parameter up to the next `&` or space.
pub fn masked(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(scheme) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme + 3);
        out.push_str(head);
        let segment_end = tail.find("://").unwrap_or(tail.len());
        let segment = &tail[..segment_end];
        match (segment.rfind('@'), segment.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&segment[..=colon]);
                out.push_str("****");
                out.push_str(&segment[at..]);
            }
            _ => out.push_str(segment),
        }
        rest = &tail[segment_end..];
    }
    out.push_str(rest);
    mask_parameters(&out)
}

/// `password=…` (also `sslpassword=`) up to the next `&` or space.
fn mask_parameters(value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    let mut out = String::with_capacity(value.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find("password=") {
        let start = from + found + "password=".len();
        out.push_str(&value[from..start]);
        let end = value[start..]
            .find(['&', ' '])
            .map_or(value.len(), |i| start + i);
        if end > start {
            out.push_str("****");
        }
        from = end;
    }
    out.push_str(&value[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn passwords_are_masked_wherever_they_are() {
        for (value, want) in [
            (
                "postgres://u:secret@db:5432/a?sslmode=require",
                "postgres://u:****@db:5432/a?sslmode=require",
            ),
            ("redis://:pa,ss@h:6379", "redis://:****@h:6379"),
            (
                "redis://:a@h1:1,redis://:b@h2:2",
                "redis://:****@h1:1,redis://:****@h2:2",
            ),
            ("postgres://u@db/a", "postgres://u@db/a"),
            ("postgres://u:p@ss@db/a", "postgres://u:****@db/a"),
            (
                "postgres://db/a?user=u&password=s3&sslmode=require",
                "postgres://db/a?user=u&password=****&sslmode=require",
            ),
            ("host=db PASSWORD=s3 user=u", "host=db PASSWORD=**** user=u"),
            ("genonaut", "genonaut"),
        ] {
            assert_eq!(masked(value), want, "{value}");
        }
    }

    #[test]
    fn no_secret_survives_masking() {
        for secret in ["s3cr3t", "p@ss", "a:b", "x,y", "%40"] {
            for url in [
                format!("postgres://user:{secret}@host/db"),
                format!("redis://:{secret}@host:6379"),
                format!("postgres://host/db?password={secret}"),
            ] {
                assert!(!masked(&url).contains(secret), "{url} -> {}", masked(&url));
            }
        }
    }
}
