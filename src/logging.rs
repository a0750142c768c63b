//! Which log lines are written. Dependencies log whole packets at `debug` (handshake tokens,
//! message bodies), so a bare level in `RUST_LOG` such as `debug` applies to this crate only,
//! whose per-message lines carry ids and sizes; other crates stay at `info` unless
//! `RUST_LOG` names them (`RUST_LOG=debug,socketioxide=debug`).

use tracing_subscriber::{filter::LevelFilter, EnvFilter};

/// This crate's log target.
const OWN_TARGET: &str = env!("CARGO_CRATE_NAME");

/// The filter for a `RUST_LOG` value (`None` or empty: `info`). An invalid value is an error
/// naming the directive.
pub fn env_filter(rust_log: Option<&str>) -> Result<EnvFilter, String> {
    let mut directives = vec![LevelFilter::INFO.to_string()];
    for directive in rust_log.unwrap_or_default().split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        match directive.parse::<LevelFilter>() {
            Ok(level) => {
                // Quieter than info applies everywhere; louder only here.
                directives[0] = level.min(LevelFilter::INFO).to_string();
                directives.push(format!("{OWN_TARGET}={level}"));
            }
            Err(_) => directives.push(directive.to_owned()),
        }
    }
    EnvFilter::builder()
        .parse(directives.join(","))
        .map_err(|e| format!("invalid RUST_LOG {:?}: {e}", rust_log.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(rust_log: &str) -> String {
        env_filter(Some(rust_log)).unwrap().to_string()
    }

    #[test]
    fn a_bare_level_is_ours_and_named_crates_are_theirs() {
        assert_eq!(shown(""), "info");
        assert_eq!(shown("debug"), "messaging_gateway=debug,info");
        assert_eq!(shown("warn"), "messaging_gateway=warn,warn");
        assert_eq!(
            shown("trace,socketioxide=debug"),
            "messaging_gateway=trace,socketioxide=debug,info"
        );
        assert!(env_filter(Some("socketioxide=loud")).is_err());
    }
}
