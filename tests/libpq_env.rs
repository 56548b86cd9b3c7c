//! libpq's environment, as psql reads it: the `PG*` variables alone
//! connect; a URL without a password takes it from `PGPASSWORD` or the
//! password file (`PGPASSFILE`, `~/.pgpass`), which is ignored with a
//! warning when others may read it; and no password ever shows in output.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{TestEnv, migrated};

/// (port, superuser password) of the test's server, from its URL.
fn server(env: &TestEnv) -> (String, String) {
    let url = env.database_url();
    let rest = url.strip_prefix("postgres://postgres:").unwrap();
    let (password, rest) = rest.split_once("@127.0.0.1:").unwrap();
    let (port, _) = rest.split_once('/').unwrap();
    (port.to_string(), password.to_string())
}

/// A password file holding `lines`, with mode `mode`.
fn password_file(dir: &std::path::Path, name: &str, lines: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn pg_variables_alone_connect() {
    let env = migrated();
    let (port, password) = server(&env);
    let ran = env
        .genalytics()
        .env_remove("DATABASE_URL")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &port)
        .env("PGUSER", "postgres")
        .env("PGDATABASE", &env.database)
        .env("PGPASSWORD", &password)
        .args(["status", "--format", "json"])
        .ok();
    let status: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(status["events_transferred"], 0, "{status}");
    assert!(!ran.stdout.contains(&password) && !ran.stderr.contains(&password));

    // Nothing given at all: one sentence naming every way to give it.
    let ran = env
        .genalytics()
        .env_remove("DATABASE_URL")
        .args(["status"])
        .code(2);
    assert!(
        ran.stderr.contains("DATABASE_URL") && ran.stderr.contains("PGHOST"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_url_without_a_password_takes_it_from_pgpassword_or_the_password_file() {
    let env = migrated();
    let secret = "s3cret:with\\colon";
    env.url_with_password(&env.database, secret);
    let (port, _) = server(&env);
    let url = format!("postgres://alice@127.0.0.1:{port}/{}", env.database);
    let dir = tempfile::tempdir().unwrap();
    let escaped = secret.replace('\\', "\\\\").replace(':', "\\:");
    let line = format!("# psql's format\n127.0.0.1:{port}:*:alice:{escaped}\n");
    let status = |cmd: crate::harness::Cmd| cmd.env("DATABASE_URL", &url).arg("status");

    // PGPASSWORD.
    status(env.genalytics()).env("PGPASSWORD", secret).ok();
    // A wrong one: refused, and the message does not show it.
    let ran = status(env.genalytics())
        .env("PGPASSWORD", "wrong-one")
        .code(1);
    assert!(ran.stderr.contains("password"), "{}", ran.stderr);
    assert!(!ran.stderr.contains("wrong-one"), "{}", ran.stderr);

    // PGPASSFILE, readable by its owner only.
    let file = password_file(dir.path(), "pgpass", &line, 0o600);
    status(env.genalytics())
        .env("PGPASSFILE", file.as_os_str())
        .ok();
    // Readable by others: ignored with a warning, as libpq ignores it.
    let open = password_file(dir.path(), "open", &line, 0o644);
    let ran = status(env.genalytics())
        .env("PGPASSFILE", open.as_os_str())
        .code(1);
    assert!(
        ran.stderr.contains("group or world access"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("asks for a password") && ran.stderr.contains("PGPASSWORD"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("s3cret"), "{}", ran.stderr);

    // ~/.pgpass.
    let home = tempfile::tempdir().unwrap();
    password_file(home.path(), ".pgpass", &line, 0o600);
    status(env.genalytics())
        .env("HOME", home.path().as_os_str())
        .ok();
    // A line for another port does not match.
    let other = tempfile::tempdir().unwrap();
    password_file(
        other.path(),
        ".pgpass",
        &format!("127.0.0.1:1:*:alice:{escaped}\n"),
        0o600,
    );
    status(env.genalytics())
        .env("HOME", other.path().as_os_str())
        .code(1);
}

#[test]
fn a_service_file_describes_the_connection_as_libpq_reads_it() {
    let env = migrated();
    let (port, password) = server(&env);
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(
        dir.path(),
        "pg_service.conf",
        &format!(
            "# ours\n[elsewhere]\nhost=192.0.2.1\n\n[analytics]\nhost=127.0.0.1\nport={port}\n\
             dbname={}\nuser=postgres\npassword={password}\n",
            env.database
        ),
        0o600,
    );
    let status = |ran: crate::harness::Ran| -> serde_json::Value {
        assert!(!ran.stdout.contains(&password) && !ran.stderr.contains(&password));
        serde_json::from_str(&ran.stdout).unwrap()
    };
    // PGSERVICE alone, and service= as the whole connection string.
    for (url, service) in [(None, Some("analytics")), (Some("service=analytics"), None)] {
        let mut cmd = env
            .genalytics()
            .env_remove("DATABASE_URL")
            .env("PGSERVICEFILE", &file)
            .env("PGSYSCONFDIR", dir.path().join("none"));
        if let Some(url) = url {
            cmd = cmd.env("DATABASE_URL", url);
        }
        if let Some(service) = service {
            cmd = cmd.env("PGSERVICE", service);
        }
        let json = status(cmd.args(["status", "--format", "json"]).ok());
        assert_eq!(json["events_transferred"], 0, "{json}");
        assert_eq!(json["database"], format!("127.0.0.1:{port}"));
    }
    // The service wins over the variables, as in libpq.
    let json = status(
        env.genalytics()
            .env_remove("DATABASE_URL")
            .env("PGSERVICEFILE", &file)
            .env("PGSERVICE", "analytics")
            .env("PGPORT", "1")
            .args(["status", "--format", "json"])
            .ok(),
    );
    assert_eq!(json["database"], format!("127.0.0.1:{port}"));
    // A service no file defines: one sentence naming the files searched.
    let ran = env
        .genalytics()
        .env_remove("DATABASE_URL")
        .env("PGSERVICEFILE", &file)
        .env("PGSYSCONFDIR", dir.path().join("none"))
        .env("PGSERVICE", "nowhere\u{1b}[2J")
        .args(["status"])
        .code(2);
    assert!(
        ran.stderr.contains("is defined in no service file")
            && ran.stderr.contains("pg_service.conf"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains('\u{1b}'), "{}", ran.stderr);
}

#[test]
fn a_url_without_host_or_port_takes_them_from_pghost_and_pgport() {
    let env = migrated();
    let (port, password) = server(&env);
    let ran = env
        .genalytics()
        .env(
            "DATABASE_URL",
            format!("postgres://postgres:{password}@/{}", env.database),
        )
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &port)
        .args(["status", "--format", "json"])
        .ok();
    let status: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(status["database"], format!("127.0.0.1:{port}"), "{status}");
    // A URL's own port stands.
    let ran = env
        .genalytics()
        .env("PGPORT", "1")
        .args(["status", "--format", "json"])
        .ok();
    let status: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(status["database"], format!("127.0.0.1:{port}"), "{status}");
}
