//! A private `redis-server` on a free port of 127.0.0.1 with a random
//! password, persisting nothing unless asked to (a restart that keeps the
//! data saves an RDB first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::{launch_on_free_port, redis_program, spawn_server, stop_child};

pub struct Redis {
    program: PathBuf,
    password: String,
    /// Certificate and key: serve TLS only (`rediss://`).
    tls: Option<(PathBuf, PathBuf)>,
    /// Outlives this process (`demo --keep`) instead of dying with it.
    detached: bool,
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    pub fn start() -> anyhow::Result<Redis> {
        Self::launch_new(false, None)
    }

    /// A server that speaks only TLS, with this certificate and key.
    pub fn start_tls(cert: &Path, key: &Path) -> anyhow::Result<Redis> {
        Self::launch_new(false, Some((cert.to_path_buf(), key.to_path_buf())))
    }

    /// Like [`Redis::start`], but the server does not die with this
    /// process; [`Redis::keep`] then leaves it running.
    pub fn start_detached() -> anyhow::Result<Redis> {
        Self::launch_new(true, None)
    }

    fn launch_new(detached: bool, tls: Option<(PathBuf, PathBuf)>) -> anyhow::Result<Redis> {
        let program = redis_program()?;
        let dir = super::private_dir("genalytics-redis-")?;
        let mut server = Redis {
            program,
            password: super::random_password(),
            tls,
            detached,
            port: 0,
            child: None,
            dir,
        };
        let log = server.log();
        launch_on_free_port(&log, |port| {
            server.port = port;
            server.launch()
        })?;
        Ok(server)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.program);
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => {
                command.arg("--port").arg(self.port.to_string());
            }
            Some((cert, key)) => {
                command
                    .args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        command
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--requirepass")
            .arg(&self.password)
            .arg("--dir")
            .arg(self.dir.path());
        // Readiness needs no certificate check.
        let probe = match self.tls {
            None => self.url(),
            Some(_) => format!("{}/#insecure", self.url()),
        };
        let child = spawn_server(
            &mut command,
            "redis-server",
            &self.log(),
            Signal::SIGTERM,
            self.detached,
            || ping(&probe),
        )?;
        self.child = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://:password@127.0.0.1:port`, or `rediss://…@localhost:port`
    /// with TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://:{}@127.0.0.1:{}", self.password, self.port),
            Some(_) => format!("rediss://:{}@localhost:{}", self.password, self.port),
        }
    }

    /// The same URL without the password, which the server refuses.
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn connection(&self) -> anyhow::Result<redis::Connection> {
        redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_secs(5))
            .context("cannot connect to the throwaway Redis")
    }

    /// Stops the server; its data is lost.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Signal::SIGTERM);
        }
    }

    /// Starts a stopped server again on the same port, empty (it persists
    /// nothing): Redis restarted without persistence.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop();
        let _ = std::fs::remove_file(self.dir.path().join("dump.rdb"));
        self.launch()
    }

    /// Stops without saving and starts again with the last snapshot taken
    /// (`SAVE`): Redis restarted from an older state of its data.
    pub fn restart_from_last_save(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    /// Saves the data, stops, and starts again on the same port with it.
    /// `SHUTDOWN SAVE` saves and exits in one step: no write acknowledged
    /// before it is lost.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let shutdown = self
                .connection()
                .map(|mut con| redis::cmd("SHUTDOWN").arg("SAVE").query::<()>(&mut con));
            let exited = child.wait();
            // The server closes the connection as it goes: that is the answer.
            let _ = shutdown.context("cannot ask Redis to save and shut down")?;
            exited.context("cannot wait for Redis to shut down")?;
        }
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
        self.dir.path().join("redis.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ping(url: &str) -> bool {
    redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
        .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con))
        .is_ok()
}
