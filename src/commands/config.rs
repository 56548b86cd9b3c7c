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
#[derive(Clone, Serialize)]
pub struct Shown {
    pub name: String,
    /// None: not set.
    pub value: Option<String>,
    pub from: String,
}

/// Masked, as everything that shows a setting.
impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shown")
            .field("name", &self.name)
            .field("value", &self.value.as_deref().map(masked))
            .field("from", &self.from)
            .finish()
    }
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
/// user and the last `@` before the next URL (more is hidden rather than
/// less), and any `password` keyword's value (`password=x`,
/// `password = 'two words'`, `sslpassword=`).
pub fn masked(value: &str) -> String {
    // URLs start at a scheme genalytics speaks: a `://` inside a password
    // starts none.
    const SCHEMES: [&str; 4] = ["postgresql://", "postgres://", "rediss://", "redis://"];
    let lower = value.to_ascii_lowercase();
    let mut starts: Vec<usize> = SCHEMES
        .iter()
        .flat_map(|scheme| lower.match_indices(scheme).map(|(at, _)| at))
        .collect();
    starts.sort_unstable();
    let mut out = String::with_capacity(value.len());
    out.push_str(&value[..starts.first().copied().unwrap_or(value.len())]);
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(value.len());
        let url = &value[start..end];
        let body = url.find("://").map_or(0, |at| at + 3);
        match (url.rfind('@'), url[body..].find(':').map(|at| body + at)) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&url[..=colon]);
                out.push_str("****");
                out.push_str(&url[at..]);
            }
            _ => out.push_str(url),
        }
    }
    mask_parameters(&out)
}

/// Every `password` keyword's value (`sslpassword` too), spaces around
/// `=` and quotes allowed as in a conninfo string.
fn mask_parameters(value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    let mut out = String::with_capacity(value.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let after_word = from + found + "password".len();
        let rest = &value[after_word..];
        let spaces = rest.len() - rest.trim_start().len();
        if !rest.trim_start().starts_with('=') {
            out.push_str(&value[from..after_word]);
            from = after_word;
            continue;
        }
        let after_eq = after_word + spaces + 1;
        let value_start =
            after_eq + (value[after_eq..].len() - value[after_eq..].trim_start().len());
        let end = if value[value_start..].starts_with('\'') {
            // Up to the closing quote (a backslash escapes one).
            let mut escaped = false;
            value[value_start + 1..]
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(value.len(), |(i, _)| value_start + 1 + i + 1)
        } else {
            value[value_start..]
                .find(['&', ' ', '\t'])
                .map_or(value.len(), |i| value_start + i)
        };
        out.push_str(&value[from..value_start]);
        if end > value_start {
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
    fn debug_output_masks_a_settings_password() {
        let shown = super::Shown {
            name: "database_url".into(),
            value: Some("postgres://u:s3cr3t@db/a".into()),
            from: "flag --database-url".into(),
        };
        let debug = format!("{shown:?}");
        assert!(
            !debug.contains("s3cr3t") && debug.contains("****"),
            "{debug}"
        );
    }

    #[test]
    fn no_secret_survives_masking() {
        for secret in ["s3cr3t", "p@ss", "a:b", "x,y", "%40", "pa://ss", "PaSs"] {
            for url in [
                format!("postgres://user:{secret}@host/db"),
                format!("redis://:{secret}@host:6379"),
                format!("redis://:a@h1,redis://:{secret}@h2"),
                format!("postgres://host/db?password={secret}"),
                format!("host=db password = {secret} user=u"),
                format!("host=db password='{secret} two' user=u"),
                format!("host=db PASSWORD\t=\t{secret}"),
            ] {
                assert!(!masked(&url).contains(secret), "{url} -> {}", masked(&url));
            }
        }
    }
}
