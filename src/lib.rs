//! capgate: a wire-protocol proxy that lets an unchanged application run across several
//! data centres with a per-table choice between consistency and availability.
//!
//! The folder names are the architecture:
//! - [`protocol`]: wire formats without I/O (framing, message views and builders, SCRAM),
//!   testable on byte slices;
//! - [`frontend`]: accepting application connections and relaying them to the site's primary;
//! - [`backend`]: capgate's own connections to database servers (primary, replicas);
//! - [`verify`]: comparing a primary with its replicas, chunk by chunk;
//! - [`config`]: the main TOML configuration, validated into an immutable snapshot;
//! - [`net`]: sockets and TLS shared by every front end and by replica links;
//! - [`cli`]: the `capgate` command;
//! - [`demo`]: `capgate demo`, two throwaway sites and the narrated story;
//! - [`store`]: what differs per database for replication (capture, apply, two-phase commit);
//! - [`testbed`]: throwaway real database servers for tests, benchmarks and scripts.
//!
//! Replication (`classify`, `policy`, `replicate`, `sites`, `verify`, `admin`) is added on top
//! of these and must stay free of PostgreSQL types so the MySQL front end can plug into it.

pub mod admin;
pub mod backend;
pub mod classify;
pub mod cli;
pub mod config;
pub mod demo;
pub mod frontend;
pub mod net;
pub mod policy;
pub mod protocol;
pub mod replicate;
pub mod sites;
pub mod store;
pub mod testbed;
pub mod verify;
