//! What differs between the databases capgate replicates: how row changes are captured on a
//! primary, read back, applied on a replica, prepared and committed in two phases, recovered.
//! The replication logic written once (`crate::replicate`) reaches a database only through
//! these modules.
//!
//! - [`postgres`]: PostgreSQL (capture triggers writing row images as JSON, PREPARE TRANSACTION);
//! - [`mysql`]: MySQL and MariaDB (capture triggers generated per table, XA).

pub mod mysql;
pub mod postgres;

use std::collections::BTreeMap;

use crate::classify::TableName;
use crate::policy::{Mode, OnConflict};

/// What a capture trigger records a table's changes as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CaptureMode {
    /// Read at COMMIT by the session's coordinator and two-phase committed.
    Sync,
    /// Shipped later by the shipper (async and bounded tables).
    Async,
    /// Async with `on_conflict = "latest"`: also records when and where each row was last
    /// written here (`capgate.latest`), so a change arriving from another site that takes
    /// writes wins only if it is later (every site decides the same; decision 0019).
    Latest,
}

impl CaptureMode {
    pub fn of(mode: &Mode) -> Option<CaptureMode> {
        match mode {
            Mode::Local => None,
            Mode::Sync { .. } => Some(CaptureMode::Sync),
            Mode::Async { on_conflict: OnConflict::Latest } | Mode::Bounded { on_conflict: OnConflict::Latest, .. } => {
                Some(CaptureMode::Latest)
            }
            Mode::Async { .. } | Mode::Bounded { .. } => Some(CaptureMode::Async),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Sync => "sync",
            CaptureMode::Async => "async",
            CaptureMode::Latest => "latest",
        }
    }

    pub fn parse(s: &str) -> Option<CaptureMode> {
        match s {
            "sync" => Some(CaptureMode::Sync),
            "async" => Some(CaptureMode::Async),
            "latest" => Some(CaptureMode::Latest),
            _ => None,
        }
    }
}

/// What one round of reconciling capture triggers with the policy changed, and what it
/// could not (the same for every database).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Tables whose trigger was created or changed, with the mode they now capture as.
    pub installed: Vec<(TableName, CaptureMode)>,
    /// Tables whose triggers were removed (their rule became local, or was removed).
    pub removed: Vec<TableName>,
    /// Tables that should be captured (or not) but could not be changed, with the reason a
    /// DBA can act on.
    pub failed: Vec<(TableName, String)>,
    /// Every table captured after the round, with its mode.
    pub captured: BTreeMap<TableName, CaptureMode>,
}
