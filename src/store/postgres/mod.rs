//! PostgreSQL as a capgate store (decision 0009).
//!
//! - [`primary`]: the primary's `capgate` schema and its capture functions;
//! - [`capture`]: the capture triggers kept in step with the policy.

pub mod capture;
pub mod primary;
