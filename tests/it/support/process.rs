//! The gateway binary as a child process, for what only a real process shows: signals,
//! exit codes, logs, memory, connections closed at exit, a node killed without cleanup.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_messaging-gateway");
/// Every run listens on ephemeral loopback ports unless its own flags say otherwise.
const EPHEMERAL: [&str; 4] = ["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"];

/// Runs the binary with `args` to its exit: (exit code, stderr).
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(EPHEMERAL)
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running gateway binary on ephemeral ports, killed on drop.
pub struct Process {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts the binary with `args` and waits until both listeners are up.
    pub fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    /// Like [`Process::start`], with extra environment variables (`RUST_LOG` is `info`
    /// unless given).
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(EPHEMERAL)
            .args(args)
            .env("RUST_LOG", "info")
            // Off unless `args` or `env` turn it on (see `RECOVERY_OFF`).
            .env("GATEWAY_RECOVERY_WINDOW_MS", super::RECOVERY_OFF)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gateway binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut http, mut grpc) = (None, None);
        let mut startup = String::new();
        while http.is_none() || grpc.is_none() {
            let line = lines.next().expect("startup lines").unwrap();
            startup.push_str(&line);
            startup.push('\n');
            if let Some(rest) = line.split("Socket.IO listening on http://").nth(1) {
                http = rest.split('/').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split("gRPC listening on ").nth(1) {
                grpc = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
        // Keep reading the logs so the child never blocks on a full pipe.
        let logs = Arc::new(Mutex::new(startup));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Self {
            child,
            http: http.unwrap(),
            grpc: grpc.unwrap(),
            logs,
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The first log line containing `needle`, waiting for it as long as [`super::WAIT`]
    /// (logs are read from the pipe by a thread, a little after they were written).
    pub async fn log_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + super::WAIT;
        loop {
            if let Some(line) = self.logs().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: the process ends without any cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    pub fn sigterm(&self) {
        super::signal(self.child.id(), "TERM");
    }

    /// SIGSTOP: the node freezes (its lease, its sockets, its answers) until [`Process::thaw`].
    pub fn freeze(&self) {
        super::signal(self.child.id(), "STOP");
    }

    /// SIGCONT after [`Process::freeze`].
    pub fn thaw(&self) {
        super::signal(self.child.id(), "CONT");
    }

    /// Waits up to `limit` for the process to exit; its status and when it exited.
    pub async fn exited(&mut self, limit: Duration) -> Option<(ExitStatus, Instant)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}
