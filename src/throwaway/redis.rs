//! A private `redis-server` on a free port of 127.0.0.1, persisting nothing
//! unless asked to (a restart that keeps the data saves an RDB first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::{launch_on_free_port, redis_program, spawn_server, stop_child};

pub struct Redis {
    program: PathBuf,
    /// Outlives this process (`demo --keep`) instead of dying with it.
    detached: bool,
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    pub fn start() -> anyhow::Result<Redis> {
        Self::launch_new(false)
    }

    /// Like [`Redis::start`], but the server does not die with this
    /// process; [`Redis::keep`] then leaves it running.
    pub fn start_detached() -> anyhow::Result<Redis> {
        Self::launch_new(true)
    }

    fn launch_new(detached: bool) -> anyhow::Result<Redis> {
        let program = redis_program()?;
        let dir = tempfile::Builder::new()
            .prefix("genalytics-redis-")
            .tempdir()
            .context("cannot create a temporary directory for Redis")?;
        let mut server = Redis {
            program,
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
        command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--dir"])
            .arg(self.dir.path());
        let url = self.url();
        let child = spawn_server(
            &mut command,
            "redis-server",
            &self.log(),
            Signal::SIGTERM,
            self.detached,
            || ping(&url),
        )?;
        self.child = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
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

    /// Saves the data, stops, and starts again on the same port with it.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let saved = self
                .connection()
                .and_then(|mut con| Ok(redis::cmd("SAVE").query::<()>(&mut con)?));
            stop_child(&mut child, Signal::SIGTERM);
            saved.context("cannot save the Redis data before restarting")?;
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
