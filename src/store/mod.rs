//! What differs between the databases capgate replicates: how row changes are captured on a
//! primary, read back, applied on a replica, prepared and committed in two phases, recovered.
//! The replication logic written once (`crate::replicate`) reaches a database only through
//! these modules.
//!
//! - [`postgres`]: PostgreSQL (capture triggers writing row images as JSON, PREPARE TRANSACTION).

pub mod postgres;
