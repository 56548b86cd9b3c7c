//! The config file: TOML whose keys are the long options with underscores,
//! the global ones at the top and each command's in a table named after it
//! (`[transfer]`, `[report]`, `[rejected.list]`). Its values become the
//! defaults clap falls back on, so a flag beats a variable, which beats the
//! file, which beats the built-in default — one rule, clap's own.
//!
//! Which file: `--config FILE`, else `GENALYTICS_CONFIG`, else
//! `/etc/genalytics/genalytics.toml` and then
//! `$XDG_CONFIG_HOME/genalytics/genalytics.toml` (`~/.config` without it),
//! each when it exists, the second over the first.

use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use toml_edit::{Document, Item, Table, Value};

use crate::error::UsageError;

/// The system-wide file, read when it exists.
const SYSTEM_FILE: &str = "/etc/genalytics/genalytics.toml";

/// One setting read from a file.
#[derive(Clone)]
pub struct Entry {
    /// The command path of its table: empty at the top of the file.
    pub command: Vec<String>,
    /// The key as written (`keep`, `database_url`).
    pub key: String,
    /// The value as the command line would take it (an array: one each).
    pub values: Vec<String>,
    pub file: PathBuf,
    pub line: usize,
}

/// Masked: a file's values may be passwords.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values: Vec<String> = self
            .values
            .iter()
            .map(|value| crate::commands::config::masked(value))
            .collect();
        f.debug_struct("Entry")
            .field("command", &self.command)
            .field("key", &self.key)
            .field("values", &values)
            .field("file", &self.file)
            .field("line", &self.line)
            .finish()
    }
}

impl Entry {
    /// `/etc/genalytics/genalytics.toml:4`.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    /// `transfer.keep`, `database_url`.
    pub fn name(&self) -> String {
        let mut path = self.command.clone();
        path.push(self.key.clone());
        path.join(".")
    }
}

/// The files to read: the one named on the command line (before any
/// `--`) or by `GENALYTICS_CONFIG`, which must exist; else those of the
/// usual places that exist.
pub fn files(args: &[OsString], env: &dyn Fn(&str) -> Option<OsString>) -> Vec<(PathBuf, bool)> {
    let mut named = None;
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            named = iter.next().cloned();
        } else if let Some(path) = arg.as_bytes().strip_prefix(b"--config=") {
            // Bytes, not text: a path need not be UTF-8.
            named = Some(OsStr::from_bytes(path).to_os_string());
        }
    }
    if let Some(path) = named.or_else(|| env("GENALYTICS_CONFIG").filter(|p| !p.is_empty())) {
        return vec![(PathBuf::from(path), true)];
    }
    let user_dir = env("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")));
    std::iter::once(PathBuf::from(SYSTEM_FILE))
        .chain(user_dir.map(|dir| dir.join("genalytics").join("genalytics.toml")))
        .map(|path| (path, false))
        .collect()
}

/// Reads a file's settings; `None` for a usual place with no file. A
/// file that holds a password others may read draws a warning (pushed to
/// `warnings`, said once logging is up).
pub fn read(
    path: &Path,
    required: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<Entry>>, UsageError> {
    let shown = path.display();
    let bytes = match read_bounded(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        // The system's file is root's (mode 0600): another user's run goes
        // on without it, as if it were not there, and says so.
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied && !required => {
            warnings.push(format!(
                "cannot read the config file {shown} ({err}): going on without it"
            ));
            return Ok(None);
        }
        Err(err) => {
            return Err(UsageError(format!(
                "cannot read the config file {shown}: {err}"
            )));
        }
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| UsageError(format!("the config file {shown} is not UTF-8 text")))?;
    let document = Document::parse(text.as_str()).map_err(|err| {
        UsageError(format!(
            "the config file {shown} is not valid TOML: {}",
            crate::text::escape_controls(&one_line(&err.to_string()))
        ))
    })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut entries = Vec::new();
    collect(document.as_table(), &[], path, &line_of, &mut entries)?;
    if entries.iter().any(holds_password) && readable_by_others(path) {
        warnings.push(format!(
            "the config file {shown} holds a password and others can read it: chmod 600 {shown}"
        ));
    }
    Ok(Some(entries))
}

/// Most bytes a config file may hold: settings, not data.
const FILE_MAX: u64 = 1 << 20;

/// A file's bytes, at most [`FILE_MAX`]: `/dev/zero` or a FIFO named as
/// the file must not hang or fill memory (`/dev/null` is an empty file).
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileTypeExt as _;
    // Opening a FIFO would wait for a writer.
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_dir() || kind.is_fifo() || kind.is_socket() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(FILE_MAX + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > FILE_MAX {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(bytes)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The table's settings, its tables' settings under their names.
fn collect(
    table: &Table,
    command: &[String],
    path: &Path,
    line_of: &dyn Fn(usize) -> usize,
    entries: &mut Vec<Entry>,
) -> Result<(), UsageError> {
    for (key, item) in table {
        let line = item
            .span()
            .or_else(|| table.key(key).and_then(toml_edit::Key::span))
            .map_or(0, |span| line_of(span.start));
        let place = format!("{}:{line}", path.display());
        let key_shown = crate::text::escape_controls(key);
        let mut inner = command.to_vec();
        inner.push(key.to_string());
        match item {
            Item::Table(sub) => collect(sub, &inner, path, line_of, entries)?,
            Item::Value(Value::InlineTable(sub)) => {
                collect(&sub.clone().into_table(), &inner, path, line_of, entries)?;
            }
            Item::Value(_) if command.is_empty() && key.replace('-', "_") == "config" => {
                return Err(UsageError(format!(
                    "{place}: a config file cannot name another (use --config or GENALYTICS_CONFIG)"
                )));
            }
            Item::Value(_)
                if command.is_empty() && matches!(key.replace('-', "_").as_str(), "stream" | "stream_pattern") =>
            {
                return Err(UsageError(format!(
                    "{place}: {key_shown} names streams for transfer alone: give it on transfer's command line"
                )));
            }
            Item::Value(value) => entries.push(Entry {
                command: command.to_vec(),
                key: key.replace('-', "_"),
                values: scalars(value).ok_or_else(|| {
                    UsageError(format!(
                        "{place}: {key_shown} takes a string, a number, true or false, or an array of them"
                    ))
                })?,
                file: path.to_path_buf(),
                line,
            }),
            Item::ArrayOfTables(_) | Item::None => {
                return Err(UsageError(format!(
                    "{place}: {key_shown} is not a setting (an array of tables)"
                )));
            }
        }
    }
    Ok(())
}

/// A value as command-line words.
fn scalars(value: &Value) -> Option<Vec<String>> {
    let one = |value: &Value| match value {
        Value::String(s) => Some(s.value().clone()),
        Value::Integer(n) => Some(n.value().to_string()),
        Value::Float(x) => Some(x.value().to_string()),
        Value::Boolean(b) => Some(b.value().to_string()),
        Value::Datetime(d) => Some(d.value().to_string()),
        Value::Array(_) | Value::InlineTable(_) => None,
    };
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        scalar => one(scalar).map(|value| vec![value]),
    }
}

/// A value with a password in it: what `genalytics config` would mask.
fn holds_password(entry: &Entry) -> bool {
    entry
        .values
        .iter()
        .any(|value| crate::commands::config::masked(value) != *value)
}

fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0)
}

/// Makes each entry the default of its option, validated by the option's
/// own parser: an unknown table or key, or a value the option refuses, is
/// an error naming the file and line.
pub fn apply(mut command: clap::Command, entries: &[Entry]) -> Result<clap::Command, UsageError> {
    for entry in entries {
        command = apply_one(command, entry, 0)?;
    }
    Ok(command)
}

fn apply_one(
    command: clap::Command,
    entry: &Entry,
    depth: usize,
) -> Result<clap::Command, UsageError> {
    let place = entry.place();
    let name = crate::text::escape_controls(&entry.name()).into_owned();
    if let Some(sub) = entry.command.get(depth) {
        if command.find_subcommand(sub).is_none() {
            return Err(UsageError(format!(
                "{place}: [{}] is not a command's table (the file has one per command: [transfer], [report], …)",
                crate::text::escape_controls(&entry.command[..=depth].join("."))
            )));
        }
        return in_subcommand(command, sub, |inner| apply_one(inner, entry, depth + 1));
    }
    let long = entry.key.replace('_', "-");
    if let Some(id) = option_id(&command, &long) {
        return set_default(command, &id, entry);
    }
    // A table for a command of commands (`[report]`) sets the option in
    // each of them that has it.
    let holders: Vec<String> = command
        .get_subcommands()
        .filter(|_| !entry.command.is_empty())
        .filter(|sub| option_id(sub, &long).is_some())
        .map(|sub| sub.get_name().to_string())
        .collect();
    if holders.is_empty() {
        let top = if entry.command.is_empty() {
            " (a command's option goes in its table, e.g. [transfer] keep = \"2h\")"
        } else if command_has_global(&long) {
            " (a global option goes at the top of the file, before any table)"
        } else {
            ""
        };
        return Err(UsageError(format!("{place}: unknown setting {name}{top}")));
    }
    holders.iter().try_fold(command, |command, holder| {
        in_subcommand(command, holder, |sub| {
            let id = option_id(&sub, &long).expect("a holder has the option");
            set_default(sub, &id, entry)
        })
    })
}

/// The ID of `command`'s option `--long`.
fn option_id(command: &clap::Command, long: &str) -> Option<clap::Id> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .map(|arg| arg.get_id().clone())
}

/// `command` with its subcommand `name` changed by `change`, which may
/// refuse (clap's `mut_subcommand` takes no fallible change).
fn in_subcommand(
    command: clap::Command,
    name: &str,
    change: impl FnOnce(clap::Command) -> Result<clap::Command, UsageError>,
) -> Result<clap::Command, UsageError> {
    let mut failure = None;
    let command = command.mut_subcommand(name, |sub| match change(sub.clone()) {
        Ok(changed) => changed,
        Err(err) => {
            failure = Some(err);
            sub
        }
    });
    failure.map_or(Ok(command), Err)
}

/// Whether the top-level command has a global option `--long`.
fn command_has_global(long: &str) -> bool {
    use clap::CommandFactory;
    super::Cli::command()
        .get_arguments()
        .any(|arg| arg.is_global_set() && arg.get_long() == Some(long))
}

fn set_default(
    command: clap::Command,
    id: &clap::Id,
    entry: &Entry,
) -> Result<clap::Command, UsageError> {
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_id() == id)
        .expect("the option was just found")
        .clone();
    let place = entry.place();
    let name = crate::text::escape_controls(&entry.name()).into_owned();
    let action = arg.get_action();
    if entry.values.len() != 1 && !matches!(action, clap::ArgAction::Append) {
        return Err(UsageError(format!(
            "{place}: {name} takes one value, not an array"
        )));
    }
    // A file's value is a default, which clap does not hold against an
    // option it conflicts with: such options are for the command line.
    if arg.get_long().is_some()
        && command
            .get_arguments()
            .any(|other| other.get_id() != id && conflicts(&command, &arg, other))
    {
        return Err(UsageError(format!(
            "{place}: {name} excludes other options, so it is given on the command line, not in a file"
        )));
    }
    if matches!(action, clap::ArgAction::SetTrue) {
        if !matches!(entry.values[0].as_str(), "true" | "false") {
            return Err(UsageError(format!(
                "{place}: {name} is a switch: true or false"
            )));
        }
    } else {
        // The option's own parser, on a command of its own (clap would
        // assert, not answer, on a default it refuses).
        for value in &entry.values {
            clap::Command::new("genalytics")
                .arg(
                    clap::Arg::new("probe")
                        .long("probe")
                        .action(clap::ArgAction::Set)
                        .value_parser(arg.get_value_parser().clone()),
                )
                .try_get_matches_from([
                    OsString::from("genalytics"),
                    OsString::from(format!("--probe={value}")),
                ])
                .map_err(|err| {
                    let option = format!(
                        "--{} <{}>",
                        arg.get_long().unwrap_or_default(),
                        arg.get_value_names()
                            .and_then(|names| names.first())
                            .map_or_else(|| "VALUE".to_string(), ToString::to_string)
                    );
                    UsageError(format!(
                        "{place}: {name} = {} is refused: {}",
                        crate::text::quoted(value),
                        crate::text::escape_controls(
                            &clap_reason(&err).replace("'--probe <probe>'", &option)
                        )
                    ))
                })?;
        }
    }
    let values: Vec<clap::builder::OsStr> = entry
        .values
        .iter()
        .map(|value| clap::builder::OsStr::from(value.clone()))
        .collect();
    // `--help` shows the file's value as the default, but never a password.
    let secret = holds_password(entry);
    Ok(command.mut_arg(id.clone(), |arg| {
        arg.default_values(values).hide_default_value(secret)
    }))
}

/// Whether `arg` and `other` exclude each other in `command`.
fn conflicts(command: &clap::Command, arg: &clap::Arg, other: &clap::Arg) -> bool {
    command
        .get_arg_conflicts_with(arg)
        .iter()
        .any(|c| c.get_id() == other.get_id())
        || command
            .get_arg_conflicts_with(other)
            .iter()
            .any(|c| c.get_id() == arg.get_id())
}

/// clap's message without its `error:` prefix and its hints.
fn clap_reason(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}
