//! Authentication and limits through real clients: JWT handshakes, API keys, TLS and mTLS,
//! sessions before authentication, and the per-user, per-connection and per-message limits.

mod access;
mod callers;
mod jwt;
mod limits;
mod sessions;
mod shares;
