//! A private PostgreSQL: `initdb` into a temporary directory, `postgres` on
//! a free port of 127.0.0.1 and a socket in that (0700) directory, a random
//! password for the superuser (SCRAM: no other local user gets in), and
//! durability off (it is thrown away anyway).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};
use tempfile::TempDir;

use super::{launch_on_free_port, log_tail, postgres_program, spawn_server, stop_child};

/// The unprivileged account PostgreSQL runs under when we are root.
const SERVICE_USER: &str = "postgres";
/// The superuser `initdb` creates; test and demo URLs log in as it.
pub const SUPERUSER: &str = "postgres";

pub struct Postgres {
    program: PathBuf,
    /// The superuser's password, random per server.
    password: String,
    /// Outlives this process (`demo --keep`) instead of dying with it.
    detached: bool,
    owner: Option<(Uid, Gid)>,
    port: u16,
    child: Option<Child>,
    // Declared last: dropped after the server has stopped.
    dir: TempDir,
}

impl Postgres {
    /// Initialises a cluster and starts it.
    pub fn start() -> anyhow::Result<Postgres> {
        Self::start_with(&[])
    }

    /// Like [`Postgres::start`], but the server does not die with this
    /// process; [`Postgres::keep`] then leaves it running.
    pub fn start_detached() -> anyhow::Result<Postgres> {
        Self::launch_new(&[], true)
    }

    /// Like [`Postgres::start`], with extra `postgresql.conf` settings
    /// (e.g. `("ssl", "on")`).
    pub fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Postgres> {
        Self::launch_new(settings, false)
    }

    fn launch_new(settings: &[(&str, &str)], detached: bool) -> anyhow::Result<Postgres> {
        let initdb = postgres_program("initdb")?;
        let postgres = postgres_program("postgres")?;
        let owner = service_owner()?;
        let dir = super::private_dir("genalytics-pg-")?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(dir.path(), Some(uid), Some(gid))
                .context("cannot hand the temporary directory to the postgres user")?;
        }

        let password = super::random_password();
        let pwfile = dir.path().join("pwfile");
        fs::write(&pwfile, format!("{password}\n"))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let log = dir.path().join("initdb.log");
        let log_file = super::private_file(&log)?;
        let mut command = Command::new(&initdb);
        command
            .args([
                "-D",
                "data",
                "-U",
                SUPERUSER,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
            ])
            .args([
                "--pwfile=pwfile",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        as_owner(&mut command, owner);
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", initdb.display()))?;
        let _ = fs::remove_file(&pwfile);
        if !status.success() {
            bail!("initdb failed ({status}); its log:\n{}", log_tail(&log));
        }
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\nunix_socket_permissions = 0700\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n\
             shared_buffers = 64MB\n",
        );
        for (key, value) in settings {
            let _ = writeln!(conf, "{key} = '{value}'");
        }
        fs::write(dir.path().join("data/postgresql.auto.conf"), conf)?;

        Postgres {
            program: postgres,
            password,
            detached,
            owner,
            port: 0,
            child: None,
            dir,
        }
        .started()
    }

    /// Starts the server of a data directory made ready, on a free port.
    fn started(mut self) -> anyhow::Result<Postgres> {
        let log = self.log();
        launch_on_free_port(&log, |port| {
            self.port = port;
            self.launch()
        })?;
        Ok(self)
    }

    /// A hot standby of this server, streaming from it on a port of its
    /// own (`pg_basebackup -R`): for what must work, or refuse, on one.
    pub fn standby(&self) -> anyhow::Result<Postgres> {
        self.standby_at(None)
    }

    /// [`Postgres::standby`] on a given port: a crashed primary's, so that
    /// a URL listing both servers names the new standby too.
    pub fn standby_on_port(&self, port: u16) -> anyhow::Result<Postgres> {
        self.standby_at(Some(port))
    }

    fn standby_at(&self, port: Option<u16>) -> anyhow::Result<Postgres> {
        let basebackup = postgres_program("pg_basebackup")?;
        let dir = super::private_dir("genalytics-pg-")?;
        if let Some((uid, gid)) = self.owner {
            nix::unistd::chown(dir.path(), Some(uid), Some(gid))
                .context("cannot hand the temporary directory to the postgres user")?;
        }
        let log = dir.path().join("basebackup.log");
        let log_file = super::private_file(&log)?;
        let mut command = Command::new(&basebackup);
        command
            .args(["-D", "data", "-h", "127.0.0.1", "-U", SUPERUSER])
            .args(["-p", &self.port.to_string()])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .env("PGPASSWORD", &self.password)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        as_owner(&mut command, self.owner);
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", basebackup.display()))?;
        if !status.success() {
            bail!(
                "pg_basebackup failed ({status}); its log:\n{}",
                log_tail(&log)
            );
        }
        let mut standby = Postgres {
            program: self.program.clone(),
            password: self.password.clone(),
            detached: false,
            owner: self.owner,
            port: port.unwrap_or(0),
            child: None,
            dir,
        };
        if port.is_some() {
            standby.launch()?;
        } else {
            standby = standby.started()?;
        }
        // Ready once it streams: before, this server does not list it, and
        // a trim would not wait for it (pg_basebackup's own WAL stream,
        // which may linger a moment, is not the standby).
        let mut admin = self.admin()?;
        let started = std::time::Instant::now();
        while admin
            .query_one(
                "SELECT count(*) FROM pg_stat_replication
                 WHERE state = 'streaming' AND application_name <> 'pg_basebackup'
                   AND replay_lsn IS NOT NULL",
                &[],
            )?
            .get::<_, i64>(0)
            == 0
        {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the standby did not start streaming within a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(standby)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.program);
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .current_dir(self.dir.path());
        as_owner(&mut command, self.owner);
        let probe = self.url("postgres");
        // SIGQUIT, immediate shutdown, if we vanish: no stray postmaster.
        let child = spawn_server(
            &mut command,
            "PostgreSQL",
            &self.log(),
            Signal::SIGQUIT,
            self.detached,
            || {
                let mut config: postgres::Config = probe.parse().expect("own URL");
                config.connect_timeout(Duration::from_secs(2));
                config.connect(postgres::NoTls).is_ok()
            },
        )?;
        self.child = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of one database on this server, with the superuser's
    /// password.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The URL of one database for another role.
    pub fn url_as(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A superuser connection to the `postgres` database.
    pub fn admin(&self) -> anyhow::Result<postgres::Client> {
        self.admin_of("postgres")
    }

    /// A superuser connection to one database.
    pub fn admin_of(&self, database: &str) -> anyhow::Result<postgres::Client> {
        postgres::Client::connect(&self.url(database), postgres::NoTls)
            .context("cannot connect to the throwaway PostgreSQL")
    }

    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let mut admin = self.admin()?;
        // Identifiers cannot be bound parameters; quote it instead.
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\"",
                name.replace('"', "\"\"")
            ))
            .with_context(|| format!("cannot create database {name}"))
    }

    /// Fast shutdown: open connections are cut, the data is kept.
    pub fn stop(&mut self) {
        self.end(Signal::SIGINT);
    }

    fn end(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, signal);
        }
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`), as a crash: no
    /// checkpoint, connections cut; the data is kept.
    pub fn crash(&mut self) {
        self.end(Signal::SIGQUIT);
    }

    /// Promotes a standby to a primary (`pg_ctl promote`), waiting until it
    /// takes writes.
    pub fn promote(&self) -> anyhow::Result<()> {
        let pg_ctl = postgres_program("pg_ctl")?;
        let mut command = Command::new(&pg_ctl);
        command
            .args(["promote", "-w", "-t", "60", "-D"])
            .arg(self.dir.path().join("data"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_owner(&mut command, self.owner);
        let out = command
            .output()
            .with_context(|| format!("cannot run {}", pg_ctl.display()))?;
        if !out.status.success() {
            bail!(
                "pg_ctl promote failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port, with its data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    /// Leaves the server running and its directory in place; returns the
    /// server's process ID.
    pub fn keep(mut self) -> Option<u32> {
        self.dir.disable_cleanup(true);
        self.child.take().map(|child| child.id())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The postgres user's IDs when we are root (PostgreSQL refuses root).
fn service_owner() -> anyhow::Result<Option<(Uid, Gid)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name(SERVICE_USER)
        .context("cannot look up the postgres system user")?
        .with_context(|| {
            format!(
                "running as root, PostgreSQL needs an unprivileged `{SERVICE_USER}` system user; \
                 installing the postgresql package creates it"
            )
        })?;
    Ok(Some((user.uid, user.gid)))
}

fn as_owner(command: &mut Command, owner: Option<(Uid, Gid)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid.as_raw()).gid(gid.as_raw());
    }
}
