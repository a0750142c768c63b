//! `messaging-gateway`: parses the configuration, sets up logging, serves until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::error::ErrorKind;
use messaging_gateway::{config::LogFormat, logging, Config};

/// jemalloc fragments less than glibc's malloc under connection churn and, with background
/// purging, hands memory back to the OS within about a second of a burst ending.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(not(feature = "system-allocator"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let config = match Config::try_parse_args(std::env::args_os()) {
        Ok(config) => config,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(config.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    // Whatever outlived the bounded drain (a client that stopped reading) is dropped here,
    // which closes its connection.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// clap's error as one readable line: its message and details (a missing argument's name is
/// on the next line), without the usage block.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    if parts.is_empty() {
        return "error: invalid arguments".into();
    }
    parts.join(" ")
}

async fn run(config: Config) -> Result<(), messaging_gateway::ServerError> {
    // Registered before the ports open: a signal that arrives while the gateway is still
    // starting (a supervisor that stops it at once) drains it instead of killing it.
    let signal = signal();
    let running = messaging_gateway::start(config).await?;
    let stop = running.shutdown_token();
    tokio::spawn(async move {
        signal.await;
        stop.cancel();
    });
    running.wait().await
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed on the call, not on the first
/// poll, so no signal between the two is lost.
fn signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        async fn recv(signal: Option<Signal>) {
            match signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let int = signal(SignalKind::interrupt()).ok();
        let term = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                () = recv(int) => {}
                () = recv(term) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Logging at `RUST_LOG`'s level, which reaches dependencies only when it names them.
fn init_logging(format: LogFormat) -> Result<(), String> {
    let filter = logging::env_filter(std::env::var("RUST_LOG").ok().as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
