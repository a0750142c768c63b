//! A real-time messaging gateway: backend services call gRPC, browsers receive Socket.IO
//! events. One process replaces a hand-written Node.js Socket.IO server with a
//! `userId -> socketId` map.
//!
//! Modules, one concern each: [`config`] (flags), [`auth`] (who may connect), [`proto`] (generated API), [`wire`]
//! (protobuf `Value` to JSON), [`validation`] (ids and event names), [`presence`] (who is
//! online), [`cursor`] (page tokens), [`gateway`] (the shared state and its API),
//! [`socket`] (Socket.IO handlers), [`grpc`] (the gRPC service), [`codec`] (request decoding), [`error`] (typed errors and
//! their gRPC status), [`server`] (wiring and shutdown), [`http_port`] (the HTTP server and its checks), [`coalesce`] (batched gRPC writes), [`idle`] (closing
//! connections that do no work), [`order`] (delivery in arrival order per gRPC connection),
//! [`metrics`] (Prometheus counters), [`logging`] (what is logged), [`pending`] (bounds on sessions not yet
//! authenticated), [`cluster`] (how nodes reach each other: memory or Redis), [`readiness`]
//! (`/healthz`, `/readyz`), [`page`] (the live page at `/`), [`watch`] (presence watchers),
//! [`tls`] (TLS configurations from PEM files).

#![forbid(unsafe_code)]

pub mod auth;
pub mod caller;
pub mod cluster;
pub mod coalesce;
pub mod codec;
pub mod config;
pub mod cursor;
pub mod emit;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod http_port;
pub mod idle;
pub mod lifetime;
pub mod logging;
pub mod mailbox;
pub mod metrics;
pub mod order;
pub mod outcome;
pub mod page;
pub mod pending;
pub mod presence;
pub mod proto;
pub mod readiness;
pub mod recovery;
pub mod send_stream;
pub mod server;
pub mod socket;
pub mod sync;
pub mod tls;
pub mod validation;
pub mod watch;
pub mod wire;

pub use config::Config;
pub use gateway::Gateway;
pub use server::{start, Running, ServerError};
