//! `redis-server` children on free loopback ports, no persistence, for cluster mode: one
//! server, or a three-master Redis Cluster. Without `redis-server` (and `redis-cli` for the
//! Redis Cluster) installed, the test fails and says what to install.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{require, WAIT};

const INSTALL: &str = "apt-get install -y redis-server (scripts/test installs it)";

/// A `redis-server` child on a loopback port, no persistence; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
    args: Vec<String>,
}

impl Redis {
    /// A fresh, empty Redis on a free port.
    pub async fn start() -> Self {
        Self::start_with(free_port(), &[]).await
    }

    /// A fresh, empty Redis on a free port, with `extra` server arguments.
    pub async fn start_args(extra: &[&str]) -> Self {
        Self::start_with(free_port(), extra).await
    }

    async fn start_with(port: u16, extra: &[&str]) -> Self {
        require("redis-server", INSTALL);
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = spawn(&args);
        let redis = Self { port, child, args };
        redis.wait_ready().await;
        redis
    }

    async fn wait_ready(&self) {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
                    let mut buf = [0; 7];
                    if tcp.write_all(b"PING\r\n").await.is_ok()
                        && tcp.read_exact(&mut buf).await.is_ok()
                        && &buf == b"+PONG\r\n"
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("redis-server answers PING");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One `redis-cli` command's output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        require("redis-cli", INSTALL);
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the server keeps its connections but answers nothing, and runs what it was
    /// sent when [`Redis::resume`]d (a paused Redis is not a dead one).
    pub fn pause(&self) {
        super::signal(self.child.id(), "STOP");
    }

    /// SIGCONT after [`Redis::pause`].
    pub fn resume(&self) {
        super::signal(self.child.id(), "CONT");
    }

    /// Starts again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.args);
        self.wait_ready().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

/// A local three-master Redis Cluster (no replicas), on free loopback ports.
pub struct RedisCluster {
    masters: Vec<Redis>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> Self {
        require("redis-cli", INSTALL);
        let dir = tempfile::tempdir().unwrap();
        let mut masters = Vec::new();
        for _ in 0..3 {
            let port = free_bus_port();
            let conf = format!("nodes-{port}.conf");
            let path = dir.path().to_str().unwrap().to_owned();
            masters.push(
                Redis::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--dir",
                        &path,
                    ],
                )
                .await,
            );
        }
        let addrs: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create");
        tokio::time::timeout(WAIT, async {
            loop {
                let ok = masters.iter().all(|m| {
                    Command::new("redis-cli")
                        .args(["-p", &m.port.to_string(), "cluster", "info"])
                        .output()
                        .is_ok_and(|o| {
                            String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok")
                        })
                });
                if ok {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the Redis Cluster reaches cluster_state:ok");
        Self { masters, _dir: dir }
    }

    /// Its masters: each holds the keys of its slots.
    pub fn masters(&self) -> &[Redis] {
        &self.masters
    }

    /// The masters' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.masters.iter().map(|m| m.port).collect()
    }

    /// The masters' URLs, comma-separated, as `--redis-url` takes them.
    pub fn urls(&self) -> String {
        self.masters
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port P below the ephemeral range whose P + 10000 is free too: a Redis Cluster node
/// also listens on its bus port P + 10000, which must exist (an ephemeral port above 55535
/// has none, and the node exits).
fn free_bus_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new();
    for attempt in 0u32.. {
        let port = 20_000 + (random.hash_one(attempt) % 10_000) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    unreachable!("the loop only ends by returning")
}
