//! ringsocks: a SOCKS4/4a/5 proxy server for Linux, one pinned thread per core.
//!
//! ```text
//!            +-------------------- worker thread (pinned to core N) ---------------------+
//! client --> | SO_REUSEPORT listener -> session: handshake (proto) -> connect -> relay     | --> target
//!            |                          runtime: tokio-uring (io_uring) or tokio (epoll)  |
//!            +----------------------------------------------------------------------------+
//! ```
//!
//! - [`proto`]: the SOCKS codecs and the server handshake state machine; pure, no I/O.
//! - [`config`]: settings from the command line and the TOML file.
//! - [`auth`]: the user table and constant-time password checks.
//! - [`server`]: workers, listeners, sessions, outbound connects (Happy Eyeballs), the relay,
//!   and the two runtimes behind one small [`server::net`] interface.
//!
//! The kernel balances new connections across the workers' listeners (SO_REUSEPORT); from
//! then on a connection never leaves its worker, so the hot path takes no locks.

pub mod auth;
pub mod config;
pub mod doctor;
pub mod passwd;
pub mod proto;
pub mod route;
pub mod rules;
pub mod server;
pub mod tls;
