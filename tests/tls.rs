//! TLS to PostgreSQL: a throwaway server with a self-signed certificate,
//! reached with sslmode=require and verify-full.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use genalytics::testing::DatabaseUrl;
use genalytics::throwaway::{Postgres, Redis};

use crate::harness::{Cmd, TestEnv};

const PASSWORD: &str = "tls-Pw-0193";

/// A self-signed certificate for localhost and 127.0.0.1, readable by the
/// server (which runs as `postgres` when we are root).
pub(crate) fn certificate(dir: &Path) -> (String, String) {
    certificate_for(dir, "localhost", "DNS:localhost,IP:127.0.0.1")
}

fn certificate_for(dir: &Path, cn: &str, names: &str) -> (String, String) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    self_signed(
        dir,
        cn,
        &["-addext", &format!("subjectAltName={names}")],
        "server",
    );
    readable_by_the_server(dir, &cert, &key);
    (cert.display().to_string(), key.display().to_string())
}

/// A server certificate and key the throwaway PostgreSQL (the `postgres`
/// user, when we are root) can read, the key private as it demands.
fn readable_by_the_server(dir: &Path, cert: &Path, key: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        for file in [cert, key] {
            nix::unistd::chown(file, Some(user.uid), Some(user.gid)).unwrap();
        }
    }
}

fn uses_tls(url: &str) -> bool {
    let mut client = genalytics::testing::connect(&DatabaseUrl::parse(url).unwrap()).unwrap();
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn postgres_over_tls_with_require_and_verify_full() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let pg = Postgres::start_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", &cert),
        ("ssl_key_file", &key),
    ])
    .unwrap();
    pg.create_database("tls").unwrap();
    pg.admin()
        .unwrap()
        .batch_execute(&format!(
            "CREATE ROLE alice LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
        ))
        .unwrap();
    let base = format!("postgres://alice:{PASSWORD}@localhost:{}/tls", pg.port());

    let require = format!("{base}?sslmode=require");
    Cmd::new()
        .args(["migrate", "-q", "--database-url", &require])
        .ok();
    assert!(uses_tls(&require));

    let verify = format!("{base}?sslmode=verify-full&sslrootcert={cert}");
    let ran = Cmd::new()
        .args(["migrate", "--status", "--database-url", &verify])
        .ok();
    assert!(ran.stdout.contains("applied"), "{}", ran.stdout);
    assert!(uses_tls(&verify));

    // Not trusted without its root certificate: one clear error, exit 1.
    let untrusted = format!("{base}?sslmode=verify-full");
    let ran = Cmd::new()
        .args(["migrate", "--database-url", &untrusted])
        .code(1);
    assert!(ran.stderr.contains("sslmode"), "{}", ran.stderr);
    assert!(!ran.stderr.contains(PASSWORD), "{}", ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);

    // A server without TLS and sslmode=require: refused, clearly.
    let plain = TestEnv::new();
    let url = format!("{}?sslmode=require", plain.database_url());
    let ran = Cmd::new().args(["migrate", "--database-url", &url]).code(1);
    assert!(ran.stderr.contains("TLS"), "{}", ran.stderr);
}

#[test]
fn redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let redis = Redis::start_tls(Path::new(&cert), Path::new(&key)).unwrap();
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    // Verified against the certificate as a trusted root (OpenSSL's
    // SSL_CERT_FILE), or not verified with #insecure.
    let ran = Cmd::new()
        .args(["simulate", "--events", "20", "--redis-url", &url])
        .env("SSL_CERT_FILE", &cert)
        .ok();
    assert!(
        ran.stdout.starts_with("simulated 20 entries"),
        "{}",
        ran.stdout
    );
    Cmd::new()
        .args([
            "simulate",
            "--events",
            "20",
            "--redis-url",
            &format!("{url}/#insecure"),
        ])
        .ok();
    // Not trusted: one clear error.
    let ran = Cmd::new()
        .args(["simulate", "--events", "20", "--redis-url", &url])
        .code(1);
    assert!(ran.stderr.contains("certificate"), "{}", ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
}

#[test]
fn tls_failures_name_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate_for(dir.path(), "wrong.example", "DNS:wrong.example");
    let pg = Postgres::start_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", &cert),
        ("ssl_key_file", &key),
    ])
    .unwrap();
    let url = |mode: &str| {
        let plain = pg.url("postgres");
        format!("{plain}?sslmode={mode}&sslrootcert={cert}")
    };
    // The certificate is trusted, but for another host: both names said.
    let ran = Cmd::new()
        .args(["migrate", "--status", "--database-url", &url("verify-full")])
        .code(1);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("certificate is for wrong.example, not for 127.0.0.1 (host name mismatch)"),
        "{}",
        ran.stderr
    );
    // verify-ca does not check the name: it connects.
    Cmd::new()
        .args(["migrate", "--status", "--database-url", &url("verify-ca")])
        .ok();
    // The system's roots do not hold it: an unknown issuer.
    let ran = Cmd::new()
        .args(["migrate", "--status", "--database-url"])
        .arg(url("verify-full").replace(&cert, "system"))
        .env("SSL_CERT_FILE", "/nonexistent")
        .code(1);
    assert!(ran.stderr.contains("unknown issuer"), "{}", ran.stderr);
    // A server without TLS.
    let plain = TestEnv::new();
    let ran = Cmd::new()
        .args(["migrate", "--database-url"])
        .arg(format!("{}?sslmode=require", plain.database_url()))
        .code(1);
    assert!(ran.stderr.contains("does not speak TLS"), "{}", ran.stderr);
    // Redis: TLS asked of a server that speaks none.
    let ran = Cmd::new()
        .args(["simulate", "--events", "1", "--redis-url"])
        .arg(plain.redis.url().replace("redis://", "rediss://"))
        .code(1);
    assert!(ran.stderr.contains("does not speak TLS"), "{}", ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    // Redis with a certificate for another host.
    let redis = Redis::start_tls(Path::new(&cert), Path::new(&key)).unwrap();
    let ran = Cmd::new()
        .args(["simulate", "--events", "1", "--redis-url", &redis.url()])
        .env("SSL_CERT_FILE", &cert)
        .code(1);
    assert!(
        ran.stderr
            .contains("certificate is for wrong.example, not for localhost"),
        "{}",
        ran.stderr
    );
}

/// Runs openssl with `args` in `dir`, asserting it worked.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for `cn` (`name`.crt, `name`.key in `dir`),
/// with `extra` arguments for `openssl req`.
fn self_signed(dir: &Path, cn: &str, extra: &[&str], name: &str) {
    let subject = format!("/CN={cn}");
    let (key, cert) = (format!("{name}.key"), format!("{name}.crt"));
    let mut args = vec![
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-keyout", &key, "-out", &cert]);
    openssl(dir, &args);
}

/// A certificate authority `name` (name.crt, name.key) in `dir`.
fn authority(dir: &Path, name: &str) -> String {
    self_signed(dir, name, &[], name);
    dir.join(format!("{name}.crt")).display().to_string()
}

#[test]
fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = authority(dir.path(), "ca1");
    let ca2 = authority(dir.path(), "ca2");
    // The server's certificate, signed by CA1.
    std::fs::write(
        dir.path().join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir.path(),
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir.path(),
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca1.crt",
            "-CAkey",
            "ca1.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    readable_by_the_server(dir.path(), &cert, &key);
    let pg = Postgres::start_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", &cert.display().to_string()),
        ("ssl_key_file", &key.display().to_string()),
    ])
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let base = pg.url("postgres");
    let status = |url: String| {
        Cmd::new()
            .args(["migrate", "--status", "--database-url", &url])
            .env("HOME", home.path())
    };
    // Another authority's root: refused, the cause named — for require,
    // prefer and allow alike, as libpq (which verifies whenever it has a root).
    for mode in ["require", "prefer", "allow", "verify-ca"] {
        let ran = status(format!("{base}?sslmode={mode}&sslrootcert={ca2}")).code(1);
        assert!(
            ran.stderr.contains("unknown issuer"),
            "{mode}: {}",
            ran.stderr
        );
        assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    }
    // The right root: accepted, over TLS.
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = format!("{base}?sslmode={mode}&sslrootcert={ca1}");
        status(url.clone()).ok();
        assert!(uses_tls(&url), "{mode}");
    }
    // No root at all: require encrypts without verifying; verify-ca says
    // what it needs.
    status(format!("{base}?sslmode=require")).ok();
    let ran = status(format!("{base}?sslmode=verify-ca")).code(1);
    assert!(ran.stderr.contains("sslrootcert"), "{}", ran.stderr);
    // ~/.postgresql/root.crt is the root when none is named.
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(&ca2, home.path().join(".postgresql/root.crt")).unwrap();
    let ran = status(format!("{base}?sslmode=require")).code(1);
    assert!(ran.stderr.contains("unknown issuer"), "{}", ran.stderr);
    std::fs::copy(&ca1, home.path().join(".postgresql/root.crt")).unwrap();
    status(format!("{base}?sslmode=require")).ok();
    status(format!("{base}?sslmode=verify-full")).ok();
    // The system's roots are for verify-full only.
    let ran = status(format!("{base}?sslmode=require&sslrootcert=system")).code(1);
    assert!(ran.stderr.contains("verify-full"), "{}", ran.stderr);
}
