//! A private `redis-server` on a free port of 127.0.0.1 with a random
//! password, persisting nothing unless asked to (a restart that keeps the
//! data saves an RDB first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

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
    /// A cluster node, with its cluster bus on this port.
    cluster_bus: Option<u16>,
    /// A member of a group that Sentinel watches.
    watched: Option<Watched>,
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
        Self::launch_node(super::random_password(), detached, tls, false, None)
    }

    fn launch_node(
        password: String,
        detached: bool,
        tls: Option<(PathBuf, PathBuf)>,
        cluster: bool,
        watched: Option<Watched>,
    ) -> anyhow::Result<Redis> {
        let program = redis_program()?;
        let dir = super::private_dir("genalytics-redis-")?;
        let mut server = Redis {
            program,
            password,
            tls,
            detached,
            cluster_bus: None,
            watched,
            port: 0,
            child: None,
            dir,
        };
        let log = server.log();
        launch_on_free_port(&log, |port| {
            server.port = port;
            if cluster {
                server.cluster_bus = Some(super::free_port()?);
            }
            server.launch()
        })?;
        Ok(server)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.program);
        if let Some(Watched::Sentinel {
            master,
            master_port,
            open,
        }) = self.watched.clone()
        {
            return self.launch_sentinel(command, &master, master_port, open);
        }
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
        if let Some(bus) = self.cluster_bus {
            command
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-port")
                .arg(bus.to_string())
                .arg("--cluster-config-file")
                .arg(self.dir.path().join("nodes.conf"))
                .arg("--masterauth")
                .arg(&self.password);
        }
        if let (Some(_), Some((cert, _))) = (&self.watched, &self.tls) {
            // Replication over TLS, trusting the group's one certificate.
            command
                .args(["--tls-replication", "yes", "--tls-ca-cert-file"])
                .arg(cert);
        }
        match self.watched {
            Some(Watched::Replica { of }) => {
                command
                    .args(["--replicaof", "127.0.0.1"])
                    .arg(of.to_string())
                    .arg("--masterauth")
                    .arg(&self.password);
            }
            // A master turns replica in a failover.
            Some(Watched::Master) => {
                command.arg("--masterauth").arg(&self.password);
            }
            _ => {}
        }
        command
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--requirepass")
            .arg(&self.password)
            .arg("--dir")
            .arg(self.dir.path());
        self.spawn(command, "redis-server", false)
    }

    /// Starts the server and waits until it answers (no certificate check;
    /// no password when `open`).
    fn spawn(&mut self, mut command: Command, what: &str, open: bool) -> anyhow::Result<()> {
        let probe = self.probe_url(open);
        let child = spawn_server(
            &mut command,
            what,
            &self.log(),
            Signal::SIGTERM,
            self.detached,
            || ping(&probe),
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// A sentinel reads, and rewrites, a configuration file.
    fn launch_sentinel(
        &mut self,
        mut command: Command,
        master: &str,
        master_port: u16,
        open: bool,
    ) -> anyhow::Result<()> {
        let config = self.dir.path().join("sentinel.conf");
        // Over TLS it also speaks TLS to the nodes, trusting their certificate.
        let listen = match &self.tls {
            None => format!("port {}\n", self.port),
            Some((cert, key)) => format!(
                "port 0\ntls-port {}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients no\ntls-replication yes\n",
                self.port,
                cert.display(),
                key.display(),
                cert.display()
            ),
        };
        let mut text = format!(
            "bind 127.0.0.1\n{listen}dir {}\nsentinel monitor {master} 127.0.0.1 {master_port} 1\n\
             sentinel auth-pass {master} {}\nsentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 5000\n",
            self.dir.path().display(),
            self.password
        );
        if !open {
            text = text + "requirepass " + &self.password + "\n";
        }
        std::fs::write(&config, text).context("cannot write the sentinel's configuration")?;
        command.arg(&config).arg("--sentinel");
        self.spawn(command, "redis-server --sentinel", open)
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

    /// The URL the harness itself connects with: with the password unless
    /// `open`, not verifying the certificate over TLS.
    fn probe_url(&self, open: bool) -> String {
        let url = if open {
            self.url().replacen(&format!(":{}@", self.password), "", 1)
        } else {
            self.url()
        };
        match self.tls {
            None => url,
            Some(_) => format!("{url}/#insecure"),
        }
    }

    pub fn connection(&self) -> anyhow::Result<redis::Connection> {
        redis::Client::open(self.probe_url(false))?
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

/// A private Redis Cluster of masters on free ports of 127.0.0.1, sharing
/// one password, the slots split evenly among them.
pub struct RedisCluster {
    nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> anyhow::Result<RedisCluster> {
        Self::start_with(masters, false)
    }

    /// Like [`RedisCluster::start`], but the nodes outlive this process
    /// ([`RedisCluster::keep`]).
    pub fn start_detached(masters: usize) -> anyhow::Result<RedisCluster> {
        Self::start_with(masters, true)
    }

    fn start_with(masters: usize, detached: bool) -> anyhow::Result<RedisCluster> {
        anyhow::ensure!(masters >= 1, "a cluster needs a master");
        let password = super::random_password();
        let nodes = (0..masters)
            .map(|_| Redis::launch_node(password.clone(), detached, None, true, None))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = RedisCluster { nodes };
        let mut first = cluster.nodes[0].connection()?;
        for node in &cluster.nodes[1..] {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .arg(node.cluster_bus.expect("a cluster node"))
                .query::<()>(&mut first)
                .context("cannot introduce the cluster's nodes")?;
        }
        let per_node = 16_384 / masters;
        for (i, node) in cluster.nodes.iter().enumerate() {
            let start = i * per_node;
            let end = if i + 1 == masters {
                16_383
            } else {
                start + per_node - 1
            };
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(start)
                .arg(end)
                .query::<()>(&mut node.connection()?)
                .context("cannot give the cluster's slots to its nodes")?;
        }
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    /// Waits until every node sees every other and every slot served.
    fn wait_until_ok(&self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let want = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let ok = self.nodes.iter().all(|node| {
                node.connection()
                    .and_then(|mut con| {
                        Ok(redis::cmd("CLUSTER")
                            .arg("INFO")
                            .query::<String>(&mut con)?)
                    })
                    .is_ok_and(|info| info.contains("cluster_state:ok") && info.contains(&want))
            });
            if ok {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the throwaway Redis cluster did not come together within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The seed nodes, comma-separated, as `REDIS_URL` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }

    /// The node that holds `key`.
    pub fn owner_of(&self, key: &str) -> anyhow::Result<usize> {
        let slot = self.slot_of(key)?;
        for (i, node) in self.nodes.iter().enumerate() {
            let mut con = node.connection()?;
            let myself: String = redis::cmd("CLUSTER").arg("MYID").query(&mut con)?;
            let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con)?;
            let owns = nodes
                .lines()
                .find(|line| line.starts_with(&myself))
                .is_some_and(|line| owns_slot(line, slot));
            if owns {
                return Ok(i);
            }
        }
        anyhow::bail!("no node of the cluster owns the slot of {key}")
    }

    fn slot_of(&self, key: &str) -> anyhow::Result<u16> {
        Ok(redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.nodes[0].connection()?)?)
    }

    /// Moves `key`'s slot, and the key, from the node that owns it to the
    /// next one, as a reshard does (`MIGRATING`/`IMPORTING`, `MIGRATE`,
    /// `SETSLOT … NODE`): clients of the old owner get `ASK`, then `MOVED`.
    /// Returns the new owner.
    pub fn move_slot_of(&self, key: &str) -> anyhow::Result<usize> {
        let slot = self.slot_of(key)?;
        let from = self.owner_of(key)?;
        let to = (from + 1) % self.nodes.len();
        let id = |i: usize| -> anyhow::Result<String> {
            Ok(redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut self.nodes[i].connection()?)?)
        };
        let (from_id, to_id) = (id(from)?, id(to)?);
        let mut source = self.nodes[from].connection()?;
        let mut target = self.nodes[to].connection()?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .query::<()>(&mut target)?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .query::<()>(&mut source)?;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut source)?;
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(10_000)
                .arg("AUTH")
                .arg(&self.nodes[to].password)
                .arg("KEYS")
                .arg(&keys)
                .query::<()>(&mut source)?;
        }
        for node in &self.nodes {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query::<()>(&mut node.connection()?)?;
        }
        Ok(to)
    }

    /// Leaves the nodes running; their process IDs.
    pub fn keep(self) -> Vec<u32> {
        self.nodes.into_iter().filter_map(Redis::keep).collect()
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its slots
/// (`0-5460 7000 …`, after the eighth field).
fn owns_slot(line: &str, slot: u16) -> bool {
    line.split(' ').skip(8).any(|range| {
        let (start, end) = range.split_once('-').unwrap_or((range, range));
        match (start.parse::<u16>(), end.parse::<u16>()) {
            (Ok(start), Ok(end)) => (start..=end).contains(&slot),
            _ => false,
        }
    })
}

/// What a node of a watched group is.
#[derive(Debug, Clone)]
enum Watched {
    Master,
    Replica {
        of: u16,
    },
    /// `open`: no password of its own (the data nodes keep theirs).
    Sentinel {
        master: String,
        master_port: u16,
        open: bool,
    },
}

/// A private master, a replica of it and a sentinel watching them under
/// the name [`RedisSentinel::NAME`], on free ports of 127.0.0.1, sharing
/// one password (the sentinel none when `open`).
pub struct RedisSentinel {
    /// The master, then the replica: which is which changes in a failover.
    nodes: Vec<Redis>,
    sentinel: Redis,
}

impl RedisSentinel {
    pub const NAME: &'static str = "genmaster";

    pub fn start(open: bool) -> anyhow::Result<RedisSentinel> {
        Self::start_with(open, false, None)
    }

    /// Every server, the sentinel too, speaking only TLS with this
    /// certificate and key (`rediss://`), replication included.
    pub fn start_tls(cert: &Path, key: &Path) -> anyhow::Result<RedisSentinel> {
        Self::start_with(false, false, Some((cert.to_path_buf(), key.to_path_buf())))
    }

    /// Like [`RedisSentinel::start`], but outliving this process.
    pub fn start_detached() -> anyhow::Result<RedisSentinel> {
        Self::start_with(false, true, None)
    }

    fn start_with(
        open: bool,
        detached: bool,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> anyhow::Result<RedisSentinel> {
        let password = super::random_password();
        let master = Redis::launch_node(
            password.clone(),
            detached,
            tls.clone(),
            false,
            Some(Watched::Master),
        )?;
        let replica = Redis::launch_node(
            password.clone(),
            detached,
            tls.clone(),
            false,
            Some(Watched::Replica { of: master.port }),
        )?;
        let group = |started: Instant, what: &str| -> anyhow::Result<()> {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the throwaway Redis {what} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        };
        let started = Instant::now();
        while !info(&replica, "replication").contains("master_link_status:up") {
            group(started, "replica did not reach its master")?;
        }
        let sentinel = Redis::launch_node(
            password,
            detached,
            tls,
            false,
            Some(Watched::Sentinel {
                master: Self::NAME.to_string(),
                master_port: master.port,
                open,
            }),
        )?;
        let watched = RedisSentinel {
            nodes: vec![master, replica],
            sentinel,
        };
        // A failover needs the sentinel to know the replica.
        while watched.known_replicas()? < 1 {
            group(started, "sentinel did not find the replica")?;
        }
        Ok(watched)
    }

    /// `REDIS_URL` for genalytics: the sentinel, with the data nodes'
    /// password.
    pub fn url(&self) -> String {
        self.sentinel.url()
    }

    /// A connection to the sentinel.
    pub fn sentinel(&self) -> anyhow::Result<redis::Connection> {
        let open = matches!(
            self.sentinel.watched,
            Some(Watched::Sentinel { open: true, .. })
        );
        redis::Client::open(self.sentinel.probe_url(open))?
            .get_connection_with_timeout(Duration::from_secs(5))
            .context("cannot connect to the throwaway sentinel")
    }

    fn known_replicas(&self) -> anyhow::Result<usize> {
        let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(Self::NAME)
            .query(&mut self.sentinel()?)?;
        Ok(replicas
            .iter()
            .filter(|fields| {
                fields
                    .chunks(2)
                    .any(|pair| pair[0] == "flags" && pair.get(1).is_some_and(|f| f == "slave"))
            })
            .count())
    }

    /// The node the sentinel names as master now.
    pub fn master(&self) -> anyhow::Result<&Redis> {
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(Self::NAME)
            .query(&mut self.sentinel()?)?;
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .context("the sentinel names a master outside the group")
    }

    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }

    /// Has the sentinel promote the replica (`SENTINEL FAILOVER`) and waits
    /// until the promoted node says it is master, the sentinel names it and
    /// the old master replicates from it; returns the new master.
    pub fn fail_over(&self) -> anyhow::Result<&Redis> {
        let old = self.master()?.port;
        let started = Instant::now();
        loop {
            let asked = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(Self::NAME)
                .query::<()>(&mut self.sentinel()?);
            match asked {
                Ok(()) => break,
                // The sentinel may not yet see the replica as good.
                Err(err) if started.elapsed() < Duration::from_secs(30) => {
                    tracing::debug!("SENTINEL FAILOVER: {err}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => return Err(err).context("the sentinel refused to fail over"),
            }
        }
        loop {
            let now = self.master().ok().map(|node| node.port);
            if let Some(port) = now.filter(|&port| port != old) {
                let new = self.nodes.iter().find(|node| node.port == port);
                let old_node = self.nodes.iter().find(|node| node.port == old);
                if let (Some(new), Some(old_node)) = (new, old_node)
                    && info(new, "replication").contains("role:master")
                    && info(old_node, "replication").contains("master_link_status:up")
                {
                    return Ok(new);
                }
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the throwaway Redis group did not fail over within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the master the sentinel names now, as a crash would leave it
    /// (no failover asked for: the sentinel sees it down and fails over by
    /// itself); returns its port.
    pub fn stop_master(&mut self) -> anyhow::Result<u16> {
        let port = self.master()?.port;
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .context("the master is not in the group")?;
        node.stop();
        Ok(port)
    }

    /// Leaves the servers running; their process IDs.
    pub fn keep(self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.nodes.into_iter().filter_map(Redis::keep).collect();
        pids.extend(self.sentinel.keep());
        pids
    }

    /// Every server's directory, the sentinel's last.
    pub fn dirs(&self) -> Vec<&Path> {
        self.nodes
            .iter()
            .chain(std::iter::once(&self.sentinel))
            .map(Redis::dir)
            .collect()
    }

    /// Ports of the master, the replica and the sentinel, for messages.
    pub fn ports(&self) -> (u16, u16, u16) {
        (self.nodes[0].port, self.nodes[1].port, self.sentinel.port)
    }
}

/// One section of `INFO`, empty when the server does not answer.
fn info(node: &Redis, section: &str) -> String {
    node.connection()
        .and_then(|mut con| Ok(redis::cmd("INFO").arg(section).query::<String>(&mut con)?))
        .unwrap_or_default()
}
