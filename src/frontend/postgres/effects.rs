//! What a routed statement may change, as far as where the coordinator takes over depends on
//! it: a commit point, rows of a sync or bounded table, replicated DDL. Pure functions of the
//! classification and the policy; the session's bookkeeping is in [`super::statements`].

use crate::classify::{Classification, Kind, TxControl};
use crate::policy::{Mode, Policy};
use crate::replicate::Route;

/// The statement's only statement's transaction control, if it is one.
pub fn single_control(c: &Classification) -> Option<TxControl> {
    match c.statements.as_slice() {
        [one] => match &one.kind {
            Kind::Transaction(t) => Some(t.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// COMMIT (END, COMMIT AND CHAIN) or PREPARE TRANSACTION alone: where a transaction commits.
pub fn is_commit(c: &Classification) -> bool {
    matches!(single_control(c), Some(TxControl::Commit) | Some(TxControl::PrepareTransaction(_)))
}

/// `COPY … FROM STDIN` (the only statement that makes the primary wait for client data).
pub fn is_copy_from_stdin(sql: &str) -> bool {
    let upper = sql.trim_start().to_ascii_uppercase();
    upper.starts_with("COPY") && upper.contains("FROM STDIN")
}

/// Whether the statement changes rows (as opposed to definitions only): what needs the
/// table's capture trigger.
pub fn writes_rows(c: &Classification) -> bool {
    !c.statements.iter().any(|s| matches!(s.kind, Kind::Ddl))
}

/// Some statement of the string is transaction control (capgate does not wrap those).
pub fn has_transaction_control(c: &Classification) -> bool {
    c.statements.iter().any(|s| matches!(s.kind, Kind::Transaction(_)))
}

/// Whether running `route`'s statement may change rows of a sync table: it writes one by
/// name, or its effect cannot be told (a function, a DO block) while the policy has sync
/// tables. A write to a local table whose trigger changes a sync table is not foreseen: the
/// deferred check at COMMIT refuses it rather than let it commit on one site.
pub fn may_change_sync(route: &Route, policy: &Policy) -> bool {
    if !policy.has_sync() {
        return false;
    }
    (writes_rows(&route.classification) && route.decisions.iter().any(|d| matches!(d.mode, Mode::Sync { .. })))
        || route.classification.statements.iter().any(|s| matches!(s.kind, Kind::Unknown(_)))
}

/// Whether running `route`'s statement may change rows of a bounded table while the policy
/// has bounded tables: it writes rows of any table (the table itself may be bounded, and a
/// trigger or a foreign-key action on any table may write a bounded one), or its effect
/// cannot be told (a volatile function, a DO block, which classify as `unknown`). A read
/// that calls only built-in or non-volatile functions cannot, and neither can DDL,
/// transaction control or session statements. Admission by name (at the statement) sees only
/// the tables a statement names; this is what makes its COMMIT worth checking against the
/// tables its captured changes touch (decision 0024).
pub fn may_change_bounded(route: &Route, policy: &Policy) -> bool {
    policy.has_bounded() && route.classification.statements.iter().any(|s| matches!(s.kind, Kind::Write | Kind::Unknown(_)))
}

/// DDL on a table a non-local rule matches (or creating one), that can run inside a
/// transaction (so it can be captured in one). `CREATE INDEX CONCURRENTLY` and the like run on
/// the primary as they came: they change no rows, and each site may build its own.
pub fn replicated_ddl(route: &Route, sql: &str) -> bool {
    route.classification.statements.iter().any(|s| matches!(s.kind, Kind::Ddl))
        && route.decisions.iter().any(|d| d.mode != Mode::Local)
        && !sql.to_ascii_uppercase().contains("CONCURRENTLY")
}
