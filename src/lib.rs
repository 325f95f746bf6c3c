//! pgshift: a transparent PostgreSQL wire-protocol proxy for zero-downtime schema changes.
//!
//! Data flows through these modules, outermost first:
//!
//! - [`server`]: listeners, the accept loop, connection limit, graceful shutdown;
//! - [`session`]: one client connection: startup and TLS ([`session`]'s `handshake`), upstream
//!   connection and relayed authentication (`upstream`), then the relay pumps (`relay`);
//! - [`wire`]: the wire format without I/O: frame headers, startup packets, the messages
//!   pgshift writes itself;
//! - [`net`], [`tls`]: plain or TLS byte streams;
//! - [`cancel`]: pgshift-issued cancel keys mapped to upstream backends;
//! - [`metrics`]: metric names and the `/metrics`, `/healthz`, `/readyz` endpoint;
//! - [`control`]: phases stored in Postgres, transitions and their gates, several instances
//!   in agreement, config reload; [`sessions`]: what each session runs under (acknowledgments);
//! - [`admin`], [`ctl`]: the admin socket and its client `pgshift ctl`;
//! - [`config`]: the TOML configuration;
//! - [`ephemeral`]: a throw-away PostgreSQL for tests and demos.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cancel;
pub mod catalog;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod ephemeral;
pub mod metrics;
pub mod migration;
pub mod net;
pub mod rewrite;
pub mod server;
pub mod session;
pub mod sessions;
pub mod snapshot;
pub mod tls;
pub mod wire;
pub mod workers;
