//! The config file: its settings apply below flags and variables, an
//! unknown key or a refused value names the file and line, `config` shows
//! every setting masked with where it came from, a password others can
//! read draws a warning, and the usual places are read unasked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{Cmd, migrated};

/// Writes `text` to `dir/name` with `mode`.
pub(crate) fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// The line of `config`'s table for `setting`.
fn row<'a>(out: &'a str, setting: &str) -> &'a str {
    out.lines()
        .find(|line| line.split_whitespace().next() == Some(setting))
        .unwrap_or_else(|| panic!("no {setting} in:\n{out}"))
}

#[test]
fn a_flag_beats_a_variable_which_beats_the_file_which_beats_the_default() {
    let env = migrated();
    let dir = tempfile::tempdir().unwrap();
    // The file's URL names no server (and holds a password); its [status]
    // table asks for JSON.
    let config = file(
        dir.path(),
        "genalytics.toml",
        "database_url = \"postgres://genalytics:file-secret@127.0.0.1:1/nothing\"\n\
         \n[status]\nformat = \"json\"\n",
        0o600,
    );
    // The environment's URL beats the file's; the file's format applies.
    let ran = env
        .genalytics()
        .env("GENALYTICS_CONFIG", &config)
        .arg("status")
        .ok();
    let status: Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|err| panic!("{err}: not JSON:\n{}", ran.stdout));
    assert!(status.is_object());
    // A flag beats the file.
    let ran = env
        .genalytics()
        .arg("--config")
        .arg(&config)
        .args(["status", "--format", "text"])
        .ok();
    assert!(
        serde_json::from_str::<Value>(&ran.stdout).is_err(),
        "{}",
        ran.stdout
    );
    // Without the variable, the file's URL: refused, its password unsaid.
    let ran = env
        .genalytics()
        .env("GENALYTICS_CONFIG", &config)
        .env_remove("DATABASE_URL")
        .arg("status")
        .run();
    assert_ne!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stderr.contains("127.0.0.1:1"), "{}", ran.stderr);
    assert!(!ran.stderr.contains("file-secret") && !ran.stdout.contains("file-secret"));
}

#[test]
fn config_shows_every_setting_masked_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = file(
        dir.path(),
        "genalytics.toml",
        "database_url = \"postgres://u:file-secret@db.example:5432/a\"\n\
         raw_retention = \"30d\"\n\
         \n[transfer]\nkeep = \"2h\"\n\
         \n[report]\ntz = \"Europe/Berlin\"\n",
        0o600,
    );
    let place = |line: usize| format!("{}:{line}", config.display());
    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", &config)
        .env("REDIS_URL", "redis://:env-secret@cache.example:6380")
        .args(["config", "--redis-ns", "flagged"])
        .ok();
    let out = &ran.stdout;
    assert!(
        !out.contains("file-secret") && !out.contains("env-secret"),
        "{out}"
    );
    assert!(ran.stderr.is_empty(), "{}", ran.stderr);
    let database = row(out, "database_url");
    assert!(
        database.contains("postgres://u:****@db.example:5432/a"),
        "{database}"
    );
    assert!(database.ends_with(&place(1)), "{database}");
    assert!(row(out, "raw_retention").contains("30d"));
    assert!(row(out, "raw_retention").ends_with(&place(2)));
    assert!(row(out, "redis_url").contains("redis://:****@cache.example:6380"));
    assert!(row(out, "redis_url").ends_with("variable REDIS_URL"));
    assert!(row(out, "redis_ns").contains("flagged"));
    assert!(row(out, "redis_ns").ends_with("flag --redis-ns"));
    assert!(row(out, "log_format").ends_with("default"));
    assert!(row(out, "config").ends_with("variable GENALYTICS_CONFIG"));
    assert!(row(out, "transfer.keep").contains("2h"));
    assert!(row(out, "transfer.keep").ends_with(&place(5)));
    assert!(row(out, "report.tz").ends_with(&place(8)));
    assert!(out.contains(&format!("config files read: {}", config.display())));

    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", &config)
        .args(["config", "--format", "json"])
        .ok();
    let json: Value = serde_json::from_str(&ran.stdout).unwrap();
    let setting = |name: &str| {
        json["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {json}"))
            .clone()
    };
    assert_eq!(
        setting("database_url")["value"],
        "postgres://u:****@db.example:5432/a"
    );
    assert_eq!(setting("transfer.keep")["from"], place(5));
    assert_eq!(setting("redis_ns")["from"], "default");
}

#[test]
fn an_unknown_key_or_a_refused_value_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for (n, (text, said)) in [
        (
            "[transfer]\nkep = \"2h\"\n",
            "2: unknown setting transfer.kep",
        ),
        (
            "\n[transfer]\nkeep = \"soon\"\n",
            "3: transfer.keep = 'soon' is refused: invalid value 'soon' for --keep <DURATION>",
        ),
        (
            "[trasnfer]\nkeep = \"2h\"\n",
            "2: [trasnfer] is not a command's table",
        ),
        (
            "keep = \"2h\"\n",
            "1: unknown setting keep (a command's option goes in its table",
        ),
        (
            "[transfer]\nredis_url = \"redis://h\"\n",
            "2: unknown setting transfer.redis_url (a global option goes at the top",
        ),
        (
            "[status]\nformat = [\"json\", \"table\"]\n",
            "2: status.format takes one value",
        ),
        (
            "[aggregate]\ninclude_current = \"yes\"\n",
            "aggregate.include_current is a switch",
        ),
        ("[report]\ndays = 0\n", "2: report.days = '0' is refused"),
        (
            "[transfer]\nkeep = \"\\u001b[2J\"\n",
            "2: transfer.keep = '\\x1b[2J' is refused",
        ),
        (
            "[check]\nhours = 6\n",
            "2: check.hours excludes other options",
        ),
        (
            "stream_pattern = \"x:*\"\n",
            "1: stream_pattern names streams for transfer alone",
        ),
        (
            "config = \"other.toml\"\n",
            "1: a config file cannot name another",
        ),
        ("database_url = = 1\n", "is not valid TOML"),
        ("redis_ns = \"\u{1b}[2J\"\n[x\u{1b}]\n", "is not valid TOML"),
    ]
    .iter()
    .enumerate()
    {
        let config = file(dir.path(), &format!("c{n}.toml"), text, 0o600);
        let ran = Cmd::new()
            .env("GENALYTICS_CONFIG", &config)
            .arg("status")
            .code(2);
        assert!(
            ran.stderr.contains(&config.display().to_string()) && ran.stderr.contains(said),
            "{text:?}: {}",
            ran.stderr
        );
        assert!(!ran.stderr.contains('\u{1b}'), "{}", ran.stderr);
        assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    }
    // A file named but missing, and a file that is not text.
    let ran = Cmd::new()
        .args(["--config", "/nonexistent/genalytics.toml", "status"])
        .code(2);
    assert!(
        ran.stderr
            .contains("cannot read the config file /nonexistent/genalytics.toml"),
        "{}",
        ran.stderr
    );
    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, b"redis_ns = \"\xff\xfe\"\n").unwrap();
    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", &binary)
        .arg("status")
        .code(2);
    assert!(ran.stderr.contains("is not UTF-8 text"), "{}", ran.stderr);
    // Too big to be settings, or a pipe: refused, never read whole or
    // waited on.
    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", "/dev/zero")
        .arg("status")
        .code(2);
    assert!(ran.stderr.contains("larger than 1 MiB"), "{}", ran.stderr);
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", &fifo)
        .arg("status")
        .code(2);
    assert!(ran.stderr.contains("not a regular file"), "{}", ran.stderr);
    // A value that starts with a dash is a value; a key may have dashes.
    let dashed = file(dir.path(), "dashed.toml", "redis-ns = \"-x\"\n", 0o600);
    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", &dashed)
        .arg("config")
        .ok();
    assert!(
        row(&ran.stdout, "redis_ns").contains("-x"),
        "{}",
        ran.stdout
    );
    assert!(
        row(&ran.stdout, "redis_ns").ends_with(":1"),
        "{}",
        ran.stdout
    );
}

#[test]
fn a_file_holding_a_password_others_can_read_draws_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let text = "database_url = \"postgres://u:pw@db.example/a\"\n";
    let open = file(dir.path(), "open.toml", text, 0o644);
    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", &open)
        .arg("config")
        .ok();
    assert!(
        ran.stderr
            .contains("holds a password and others can read it")
            && ran
                .stderr
                .contains(&format!("chmod 600 {}", open.display())),
        "{}",
        ran.stderr
    );
    let private = file(dir.path(), "private.toml", text, 0o600);
    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", &private)
        .arg("config")
        .ok();
    assert!(ran.stderr.is_empty(), "{}", ran.stderr);
    let no_password = file(dir.path(), "plain.toml", "redis_ns = \"x\"\n", 0o644);
    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", &no_password)
        .arg("config")
        .ok();
    assert!(ran.stderr.is_empty(), "{}", ran.stderr);
}

#[test]
fn the_users_file_is_read_unasked_from_xdg_config_home_or_home() {
    let dir = tempfile::tempdir().unwrap();
    let xdg = file(
        dir.path(),
        "xdg/genalytics/genalytics.toml",
        "redis_ns = \"from-xdg\"\n",
        0o600,
    );
    let ran = Cmd::new()
        .env_remove("GENALYTICS_CONFIG")
        .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
        .arg("config")
        .ok();
    assert!(
        row(&ran.stdout, "redis_ns").contains("from-xdg"),
        "{}",
        ran.stdout
    );
    assert!(row(&ran.stdout, "redis_ns").ends_with(&format!("{}:1", xdg.display())));
    let home = file(
        dir.path(),
        "home/.config/genalytics/genalytics.toml",
        "redis_ns = \"from-home\"\n",
        0o600,
    );
    let ran = Cmd::new()
        .env_remove("GENALYTICS_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", dir.path().join("home"))
        .arg("config")
        .ok();
    assert!(
        row(&ran.stdout, "redis_ns").ends_with(&format!("{}:1", home.display())),
        "{}",
        ran.stdout
    );
}

#[test]
fn a_default_file_this_user_may_not_read_is_skipped_with_a_warning() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let locked = file(
        dir.path(),
        "xdg/genalytics/genalytics.toml",
        "redis_ns = \"secret\"\n",
        0o600,
    );
    for open in [
        dir.path().to_path_buf(),
        dir.path().join("xdg"),
        dir.path().join("xdg/genalytics"),
    ] {
        std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // As another user, as the package's root-owned file is to other
    // users' cron jobs (the harness runs as root, who reads anything).
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let mut command = Cmd::new()
        .env_remove("GENALYTICS_CONFIG")
        .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
        .env("HOME", dir.path())
        .arg("config")
        .command();
    command.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
    let out = command.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("cannot read the config file {}", locked.display()))
            && stderr.contains("going on without it"),
        "{stderr}"
    );
    assert!(row(&stdout, "redis_ns").ends_with("default"), "{stdout}");
}

#[test]
fn the_packaged_example_is_a_valid_config_once_filled_in() {
    // contrib/genalytics.toml with every setting uncommented.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/genalytics.toml"),
    )
    .unwrap();
    let filled: String = example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
            _ => line,
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    assert!(filled.contains("\n[transfer]\nkeep = \"2h\"\n"), "{filled}");
    let dir = tempfile::tempdir().unwrap();
    let config = file(dir.path(), "genalytics.toml", &filled, 0o600);
    let ran = Cmd::new()
        .env("GENALYTICS_CONFIG", &config)
        .arg("config")
        .ok();
    assert!(
        row(&ran.stdout, "transfer.keep").contains("2h"),
        "{}",
        ran.stdout
    );
    assert!(!ran.stdout.contains("secret"), "{}", ran.stdout);
}
