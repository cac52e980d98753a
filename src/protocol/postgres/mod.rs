//! The PostgreSQL frontend/backend protocol (version 3.0), as far as a relaying proxy needs it.
//!
//! The proxy forwards frames as their original bytes. This module only finds frame boundaries
//! ([`frame`]), decodes the few frames routing must look inside, builds the messages the proxy
//! itself sends ([`message`]), and implements the server side of SCRAM-SHA-256 for the optional
//! proxy-side authentication ([`scram`]). Encoding of client-side messages and the SCRAM client
//! come from the `postgres-protocol` crate.

pub mod frame;
pub mod message;
pub mod scram;
pub mod startup;

pub use frame::{FrameError, Header};
