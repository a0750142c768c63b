//! The command line as an operator meets it: every configuration error exits 2 with one
//! complete line on stderr, and the API keys file format is what `--help` says.

use std::io::Write;

use messaging_gateway::proto::{messaging_client::MessagingClient, ListOnlineRequest};
use tonic::Code;

use crate::support::{
    grpc::{self, authorized},
    process::{run_to_exit, Process},
};

#[test]
fn every_configuration_error_exits_2_with_one_complete_line() {
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "this is not a key\n").unwrap();
    let not_pem = not_pem.path().to_str().unwrap().to_owned();
    let jwt = ["--auth", "jwt", "--cors-origins", "http://localhost:3000"];
    let secret = ["--jwt-secret", "a-secret-of-at-least-32-bytes-long!"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&jwt[..], &["--jwt-secret", "short"]].concat(),
            "at least 16 bytes",
        ),
        (
            [&jwt[..], &["--jwt-secret-file", "/nonexistent"]].concat(),
            "--jwt-secret-file /nonexistent",
        ),
        (
            vec!["--api-keys-file", "/nonexistent"],
            "--api-keys-file /nonexistent",
        ),
        (
            [&["--auth", "jwt", "--cors-origins", "*"], &secret[..]].concat(),
            "--cors-origins *",
        ),
        (
            [&jwt[..], &["--jwt-public-key-file", &not_pem]].concat(),
            "not a PEM",
        ),
        (
            [
                &jwt[..],
                &secret[..],
                &["--demo", "--http-addr", "0.0.0.0:0"],
            ]
            .concat(),
            "--demo",
        ),
        (vec!["--grpc-tls-cert", "X"], "--grpc-tls-key"),
        (
            vec!["--grpc-tls-cert", &not_pem, "--grpc-tls-key", &not_pem],
            "--grpc-tls-cert / --grpc-tls-key",
        ),
        (
            vec![
                "--shutdown-grace-ms",
                "5000",
                "--shutdown-timeout-ms",
                "1000",
            ],
            "--shutdown-grace-ms",
        ),
        (vec!["--ping-interval-ms", "soon"], "--ping-interval-ms"),
        (
            [&jwt[..], &["--jwt-secret", "                "]].concat(),
            "--jwt-secret",
        ),
        (vec!["--jwt-leeway-secs", "4000000000"], "--jwt-leeway-secs"),
        (
            vec!["--max-pending-sessions-per-ip", "0"],
            "--max-pending-sessions-per-ip",
        ),
        (vec!["--mailbox-max-bytes", "2048"], "--mailbox-max-bytes"),
        (vec!["--no-such-flag"], "--no-such-flag"),
    ];
    for (args, names) in cases {
        let (code, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(lines[0].starts_with("error: "), "{args:?}: {stderr:?}");
        assert!(
            lines[0].contains(names),
            "{args:?} names {names:?}: {stderr:?}"
        );
    }
}

/// `#` starts a comment anywhere on a line: `filekey2-0123456789 # trailing` is the key `filekey2-0123456789`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_file_trailing_comments() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "# keys for the test\nfilekey1-0123456789\nfilekey2-0123456789 # trailing\n"
    )
    .unwrap();
    let gw = Process::start(&["--api-keys-file", file.path().to_str().unwrap()]);
    let channel = grpc::channel(gw.grpc).await.unwrap();
    let call = |key: &'static str| {
        let mut client = MessagingClient::new(channel.clone());
        async move {
            client
                .list_online(authorized(ListOnlineRequest::default(), key))
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    assert_eq!(call("filekey1-0123456789").await, Ok(()));
    assert_eq!(call("filekey2-0123456789").await, Ok(()));
    assert_eq!(
        call("filekey2-0123456789 # trailing").await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(call("# trailing").await, Err(Code::Unauthenticated));
}
