//! What the tests drive the gateway with, each in one place: the gateway in-process
//! ([`Gateway`]) or as a child process ([`process::Process`]), real clients for both sides
//! (Socket.IO [`Tab`]s, raw Engine.IO WebSockets, HTTP/1.1, gRPC), a Redis launcher and JWTs.

pub mod grpc;
pub mod http;
pub mod jwt;
pub mod process;
pub mod redis;
pub mod ws;

mod gateway;
mod tab;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

pub use gateway::{config, Gateway};
pub use grpc::direct;
pub use tab::{urlencode, Seen, Tab};

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

/// `--recovery-window-ms` for the gateways these tests start, unless a test sets it: off.
/// Their clients (`rust_socketio`, raw WebSockets) do not implement connection state
/// recovery, so with it on every event carries one more argument (its offset) and a dropped
/// tab keeps its user online for the window. The end-to-end suite runs the default (on) with
/// socket.io-client, which recovers (`tests/e2e/recovery.test.mjs`).
pub const RECOVERY_OFF: &str = "0";

/// Fails the test, in one line that says what to install, unless `program` runs: a test whose
/// dependency is missing must fail, never pass without having run.
pub fn require(program: &str, install: &str) {
    let runs = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        runs,
        "`{program}` is not installed and this test needs it: {install}"
    );
}

/// Sends signal `name` (`TERM`, `STOP`, `CONT`) to process `pid` with `kill`.
pub fn signal(pid: u32, name: &str) {
    require("kill", "apt-get install -y procps");
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "SIG{name} delivered to {pid}");
}
