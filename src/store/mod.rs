//! What differs between the databases capgate replicates: how row changes are captured on a
//! primary, read back, applied on a replica, prepared and committed in two phases, recovered.
//! The replication logic written once (`crate::replicate`) reaches a database only through
//! these modules.
//!
//! - [`postgres`]: PostgreSQL (capture triggers writing row images as JSON, PREPARE TRANSACTION);
//! - [`mysql`]: MySQL and MariaDB (capture triggers generated per table, XA).

pub mod mysql;
pub mod postgres;

use crate::policy::Mode;

/// What a capture trigger records a table's changes as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CaptureMode {
    /// Read at COMMIT by the session's coordinator and two-phase committed.
    Sync,
    /// Shipped later by the shipper (async and bounded tables).
    Async,
}

impl CaptureMode {
    pub fn of(mode: &Mode) -> Option<CaptureMode> {
        match mode {
            Mode::Local => None,
            Mode::Sync { .. } => Some(CaptureMode::Sync),
            Mode::Async { .. } | Mode::Bounded { .. } => Some(CaptureMode::Async),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Sync => "sync",
            CaptureMode::Async => "async",
        }
    }

    pub fn parse(s: &str) -> Option<CaptureMode> {
        match s {
            "sync" => Some(CaptureMode::Sync),
            "async" => Some(CaptureMode::Async),
            _ => None,
        }
    }
}
