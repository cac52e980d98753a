//! Async replication (AP): the durable, commit-ordered outbox on the primary and the shipper
//! that applies it to each replica exactly once.
//!
//! - [`schema`]: the `capgate` tables and functions on the primary and on the replica, and
//!   their idempotent installation;
//! - [`capture`]: what the relay runs inside a client's transaction (one outbox row per
//!   replicated statement, then the ordering step just before COMMIT);
//! - [`literal`]: turns a captured statement and its bound parameters into plain SQL text
//!   (parameters inlined as literals), so a whole batch travels in one simple query;
//! - [`shipper`]: one task per (origin, replica): advisory lock on the primary, batches in
//!   commit order, watermark in the same replica transaction, conflicts, retries, pruning;
//! - [`lag`]: per replica and per table lag, published through a watch channel.
//!
//! What this module must never do: ship a row whose transaction has not committed, or
//! advance the replica's watermark outside the transaction that applied the rows.
//! See docs/decisions/0007-outbox-commit-order.md for why commit order is a counter row.

mod apply;
pub mod capture;
pub mod lag;
pub mod literal;
pub mod schema;
pub mod shipper;

pub use capture::{Capture, Param, ParamFormat};
pub use lag::{Lag, TableLag};
pub use shipper::{ConflictPolicy, Phase, Shipper, ShipperConfig, ShipperStats};
