//! The integration tests, one binary (one link step): a module per area, the shared clients
//! and launchers in `support`. Run one area with a filter, e.g. `cargo test --test it cluster::`.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

mod cli;
mod cluster;
mod delivery;
mod engineio;
mod gateway;
mod grpc_errors;
mod hardening;
mod hostile;
mod mailbox;
mod metrics;
mod order;
mod page;
mod presence_api;
mod properties;
mod security;
mod shutdown;
mod timeouts;
mod watchlist;
