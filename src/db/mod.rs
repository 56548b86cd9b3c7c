//! PostgreSQL: connecting with errors an operator can act on, and (in
//! submodules) every SQL statement the tool runs.

pub mod events;
pub mod health;
pub mod migrations;
pub mod partitions;
pub mod rejected;
pub mod replication;
pub mod reports;
pub mod retention;
pub mod rollup;
pub mod streams;

use std::collections::BTreeSet;
use std::error::Error as _;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use postgres::{Client, NoTls};

use crate::config::{DatabaseUrl, PgTls, SessionAttrs, SslMode};
use crate::error::{ConnectError, Server};
use crate::event::RawFields;

/// The raw fields flattened (name, value, name, value, …) for `BYTEA[]`.
pub fn flat_raw(raw: &RawFields) -> Vec<&[u8]> {
    raw.iter()
        .flat_map(|(name, value)| [name.as_slice(), value.as_slice()])
        .collect()
}

/// Opens one connection, over TLS as `sslmode` asks, to a listed server
/// that `target_session_attrs` accepts; the error says where it tried and
/// what to do.
pub fn connect(url: &DatabaseUrl) -> anyhow::Result<Client> {
    connect_to(url).map(|(client, _)| client)
}

/// [`connect`], and the `host:port` of the server it reached, for messages
/// that name the server read (several may be listed). The servers are
/// tried in order (shuffled with `load_balance_hosts=random`), as libpq
/// tries them.
pub fn connect_to(url: &DatabaseUrl) -> anyhow::Result<(Client, String)> {
    if url.session == SessionAttrs::Any && url.config.get_hosts().len() <= 1 {
        return Ok((connect_first(url)?, url.target()));
    }
    let hosts = url.each_host();
    let mut seen = Vec::new();
    // A wrong password everywhere is not worth a retry; a server down is.
    let (mut transient, mut answered) = (true, false);
    // prefer-standby: the first server that answered, if none is a standby.
    let mut fallback = None;
    for host in &hosts {
        let mut client = match connect_first(host) {
            Ok(client) => client,
            Err(err) if hosts.len() == 1 => return Err(err),
            Err(err) => {
                transient &= crate::error::is_transient(&err);
                seen.push(format!("{err:#}"));
                continue;
            }
        };
        if url.session == SessionAttrs::Any {
            return Ok((client, host.target()));
        }
        // A server shutting down in a failover may take the connection and
        // fail the question: as libpq, go on to the next.
        let asked = client.query_one(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
            &[],
        );
        let row = match asked {
            Ok(row) => row,
            Err(err) => {
                let said = err
                    .as_db_error()
                    .map_or_else(|| err.to_string(), |db| db.message().to_string());
                seen.push(format!("{}: {said}", host.target()));
                continue;
            }
        };
        let (in_recovery, read_only): (bool, bool) = (row.get(0), row.get(1));
        if url.session.accepts(in_recovery, read_only) {
            return Ok((client, host.target()));
        }
        answered = true;
        seen.push(format!(
            "{} is {}",
            host.target(),
            match (in_recovery, read_only) {
                (true, _) => "a standby",
                (false, true) => "a primary that is read-only by default",
                (false, false) => "a primary",
            }
        ));
        if url.session == SessionAttrs::PreferStandby && fallback.is_none() {
            fallback = Some((client, host.target()));
        }
    }
    if let Some(first) = fallback {
        return Ok(first);
    }
    let message = if url.session == SessionAttrs::Any || !answered {
        format!(
            "cannot connect to any server in DATABASE_URL / --database-url: {}",
            seen.join("; ")
        )
    } else {
        format!(
            "no server in DATABASE_URL / --database-url will do for target_session_attrs={}: {}",
            url.session.keyword(),
            seen.join("; ")
        )
    };
    // During a failover there may be no primary for a moment: worth a retry.
    Err(anyhow::Error::new(ConnectError {
        message,
        transient: transient || answered,
        server: Server::Postgres,
    }))
}

/// Servers (`host:port`) with an attempt that outlived its time limit and
/// has not ended yet.
static ABANDONED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// One connection attempt on its thread. Ending and giving up are decided
/// under [`ABANDONED`]'s lock, so a server is listed exactly while an
/// attempt given up on still runs.
#[derive(Default)]
struct Attempt {
    ended: AtomicBool,
    abandoned: AtomicBool,
}

impl Attempt {
    fn end(&self, target: &str) {
        if let Ok(mut listed) = ABANDONED.lock() {
            self.ended.store(true, Ordering::Relaxed);
            if self.abandoned.load(Ordering::Relaxed) {
                listed.remove(target);
            }
        }
    }

    fn abandon(&self, target: &str) {
        if let Ok(mut listed) = ABANDONED.lock()
            && !self.ended.load(Ordering::Relaxed)
        {
            self.abandoned.store(true, Ordering::Relaxed);
            listed.insert(target.to_string());
        }
    }
}

/// The first listed server that answers, as the driver picks it, within
/// `connect_timeout` for the whole of it as libpq means it: the driver
/// bounds only the socket's connect, and a server that accepts and then
/// says nothing (stopped, partitioned) would hold the run, and the
/// servers listed after it, for ever.
fn connect_first(url: &DatabaseUrl) -> anyhow::Result<Client> {
    let limit = url
        .config
        .get_connect_timeout()
        .copied()
        .unwrap_or(crate::config::DEFAULT_CONNECT_TIMEOUT);
    let config = url.config.clone();
    let connector = match url.tls.mode {
        SslMode::Off => None,
        _ => Some(tls_connector(&url.tls)?),
    };
    // An attempt the server never answered is left behind (a connection
    // cannot be abandoned from outside): one per server at most, so that a
    // follower retrying a stopped server does not pile them up.
    let target = url.target();
    if ABANDONED
        .lock()
        .is_ok_and(|abandoned| abandoned.contains(&target))
    {
        return Err(anyhow::Error::new(ConnectError {
            message: format!(
                "cannot connect to PostgreSQL at {target}: an earlier attempt is still waiting \
                 for its answer — is the server up and responsive?"
            ),
            transient: true,
            server: Server::Postgres,
        }));
    }
    let attempt = Arc::new(Attempt::default());
    let (sender, receiver) = std::sync::mpsc::channel();
    {
        let (attempt, target) = (Arc::clone(&attempt), target.clone());
        std::thread::spawn(move || {
            let connected = match connector {
                None => config.connect(NoTls),
                Some(connector) => config.connect(connector),
            };
            attempt.end(&target);
            let _ = sender.send(connected);
        });
    }
    match receiver.recv_timeout(limit + std::time::Duration::from_secs(1)) {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err(anyhow::Error::new(ConnectError {
            message: describe_connect_error(url, &err),
            transient: crate::error::pg_transient(&err),
            server: Server::Postgres,
        })),
        Err(_) => {
            attempt.abandon(&target);
            Err(anyhow::Error::new(ConnectError {
                message: format!(
                    "cannot connect to PostgreSQL at {target}: no answer within {} s \
                     (connect_timeout) — is the server up and responsive?",
                    limit.as_secs()
                ),
                transient: true,
                server: Server::Postgres,
            }))
        }
    }
}

/// Opens a connection and checks the schema is the one this binary knows.
pub fn connect_current(url: &DatabaseUrl) -> anyhow::Result<Client> {
    let mut client = connect(url)?;
    migrations::ensure_current(&mut client)?;
    Ok(client)
}

/// [`connect_current`] for a command that writes: it stops at once, with
/// nothing to do or not, when the server is a read-only standby — a cron
/// job aimed at the wrong host must not sit idle for ever.
pub fn connect_writer(url: &DatabaseUrl) -> anyhow::Result<Client> {
    let (mut client, server) = connect_to(url)?;
    ensure_primary(&mut client, &server)?;
    migrations::ensure_current(&mut client)?;
    Ok(client)
}

/// Refuses a server in recovery (a hot standby): it takes no writes.
pub fn ensure_primary(client: &mut Client, server: &str) -> anyhow::Result<()> {
    let standby: bool = client.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
    if standby {
        anyhow::bail!(
            "PostgreSQL at {server} is a read-only standby (in recovery) and this command writes: \
             point DATABASE_URL / --database-url at the primary, or list every host with \
             target_session_attrs=read-write"
        );
    }
    Ok(())
}

/// Where the trusted roots come from, as libpq finds them: `sslrootcert`,
/// else `~/.postgresql/root.crt` when it exists; `sslrootcert=system` for
/// the system's store.
enum Roots {
    None,
    File(std::path::PathBuf),
    System,
}

fn roots(tls: &PgTls) -> Roots {
    match &tls.root {
        Some(path) if path.as_os_str() == "system" => Roots::System,
        Some(path) => Roots::File(path.clone()),
        None => default_root().map_or(Roots::None, Roots::File),
    }
}

/// libpq's default root certificate, if there is one.
fn default_root() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|user| user.dir)
        })?;
    let path = home.join(".postgresql").join("root.crt");
    path.is_file().then_some(path)
}

/// libpq's semantics: prefer, allow and require encrypt, and verify the
/// chain when a root certificate is given or `~/.postgresql/root.crt`
/// exists (require then is verify-ca); verify-ca needs a root and checks
/// the chain; verify-full also checks the host name.
fn tls_connector(tls: &PgTls) -> anyhow::Result<postgres_native_tls::MakeTlsConnector> {
    let mut builder = native_tls::TlsConnector::builder();
    let roots = roots(tls);
    if matches!(roots, Roots::System) && tls.mode != SslMode::VerifyFull {
        anyhow::bail!(
            "sslrootcert=system needs sslmode=verify-full (as libpq): the system's roots vouch for \
             names, not for one server"
        );
    }
    match (&roots, tls.mode) {
        (Roots::None, SslMode::VerifyCa | SslMode::VerifyFull) => {
            anyhow::bail!(
                "sslmode={} needs a root certificate to verify the server with, and there is none: give \
                 sslrootcert=FILE (~/.postgresql/root.crt is used when it exists), sslrootcert=system \
                 for the system's trusted roots, or a weaker sslmode",
                if tls.mode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            );
        }
        (Roots::None, _) => {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true)
                // Nothing is verified, so the system's roots are not needed.
                .disable_built_in_roots(true);
        }
        (_, SslMode::VerifyFull) => {}
        (_, _) => {
            builder.danger_accept_invalid_hostnames(true);
        }
    }
    if let Roots::File(path) = &roots {
        // As libpq: with a root file, trust that root only.
        builder.disable_built_in_roots(true);
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read sslrootcert {}", path.display()))?;
        let certificate = native_tls::Certificate::from_pem(&pem)
            .with_context(|| format!("sslrootcert {} is not a PEM certificate", path.display()))?;
        builder.add_root_certificate(certificate);
    }
    if let Some((cert, key)) = &tls.client {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
        };
        let identity =
            native_tls::Identity::from_pkcs8(&read(cert, "sslcert")?, &read(key, "sslkey")?)
                .context("sslcert and sslkey are not a PEM certificate and its PKCS#8 key")?;
        builder.identity(identity);
    }
    let connector = builder.build().context("cannot set up TLS")?;
    Ok(postgres_native_tls::MakeTlsConnector::new(connector))
}

/// One sentence for a failed connection, naming the server and never the
/// password (the driver's messages do not contain it, and neither does ours).
fn describe_connect_error(url: &DatabaseUrl, err: &postgres::Error) -> String {
    let target = url.target();
    if let Some(db) = err.as_db_error() {
        let hint = match db.code().code() {
            "3D000" => "create the database or fix DATABASE_URL / --database-url",
            "28P01" | "28000" => "check the user and password in DATABASE_URL / --database-url",
            // Starting up, shutting down, recovering from a crash: it
            // will accept connections once it is done.
            "57P03" | "57P01" | "57P02" => "it is starting, stopping or recovering: wait for it",
            "53300" => "it has no connection slot free: wait, or raise max_connections",
            _ => "check DATABASE_URL / --database-url",
        };
        return format!(
            "PostgreSQL at {target} refused the connection: {} — {hint}",
            db.message()
        );
    }
    let mut cause = err.source();
    let mut io_kind = None;
    while let Some(inner) = cause {
        if let Some(io) = inner.downcast_ref::<io::Error>() {
            io_kind = Some(io.kind());
            break;
        }
        cause = inner.source();
    }
    let text = crate::tls::chain_text(err);
    if let Some(tls) = crate::tls::cause(&text).filter(|_| url.tls.mode != SslMode::Off) {
        let host = target
            .rsplit_once(':')
            .map_or(target.as_str(), |(host, _)| host);
        let names = (tls == crate::tls::Cause::HostMismatch)
            .then(|| {
                let port = url.config.get_ports().first().copied().unwrap_or(5432);
                crate::tls::peer_names(host, port, true)
            })
            .flatten();
        return format!(
            "cannot connect to PostgreSQL at {target} over TLS: {} — check sslmode, sslrootcert and the host \
             in DATABASE_URL / --database-url",
            crate::tls::explain(tls, host, names.as_deref())
        );
    }
    let reason = match io_kind {
        Some(io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
        Some(io::ErrorKind::TimedOut) => "timed out".to_string(),
        Some(io::ErrorKind::NotFound) => "no such host or socket".to_string(),
        _ if text.contains("password missing") => {
            return format!(
                "PostgreSQL at {target} asks for a password and none was given — add it to DATABASE_URL / \
                 --database-url, or set PGPASSWORD, or put it in the password file (PGPASSFILE, ~/.pgpass)"
            );
        }
        _ if text.contains("timeout") => "timed out".to_string(),
        _ if text.contains("TLS") => {
            return format!(
                "cannot connect to PostgreSQL at {target}: {text} — check sslmode and sslrootcert in DATABASE_URL / --database-url"
            );
        }
        _ => text,
    };
    format!(
        "cannot connect to PostgreSQL at {target}: {reason} — is the server running, and is it the one DATABASE_URL / --database-url names?"
    )
}
