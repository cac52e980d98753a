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

/// `COPY … FROM STDIN` (the only statement that makes the primary wait for client data). Asked
/// of every Parse: only a text that starts with COPY is looked at further.
pub fn is_copy_from_stdin(sql: &str) -> bool {
    let sql = sql.trim_start();
    sql.get(..4).is_some_and(|w| w.eq_ignore_ascii_case("copy")) && sql.to_ascii_uppercase().contains("FROM STDIN")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Catalog, Dialect, SearchPath};
    use crate::policy::PolicyHandle;
    use std::sync::Arc;

    fn route(policy: &str, sql: &str) -> (Route, Policy) {
        let policy = Policy::parse(policy, std::path::Path::new("p.toml")).unwrap_or_else(|e| panic!("{e}"));
        let router = crate::replicate::Router::new(Dialect::Postgres, Arc::new(PolicyHandle::fixed(policy.clone())), Catalog::new());
        (router.route(sql, &SearchPath::default(), &policy), policy)
    }

    /// What makes a commit worth checking for bounded tables written without being named.
    #[test]
    fn writes_and_unknown_statements_may_change_a_bounded_table() {
        let bounded = "default = \"local\"\n[[table]]\nmatch = \"public.cart\"\nmode = \"bounded\"\n";
        for (sql, may) in [
            ("SELECT f()", true),
            ("INSERT INTO local_audit VALUES (1)", true),
            ("DELETE FROM cart WHERE id = 1", true),
            ("DO $$ BEGIN PERFORM 1; END $$", true),
            ("SELECT count(*) FROM cart", false),
            ("SELECT now(), lower('A')", false),
            ("BEGIN", false),
            ("SET search_path = app", false),
        ] {
            let (r, p) = route(bounded, sql);
            assert_eq!(may_change_bounded(&r, &p), may, "{sql}");
        }
        let (r, p) = route("default = \"local\"\n[[table]]\nmatch = \"public.cart\"\nmode = \"async\"\n", "SELECT f()");
        assert!(!may_change_bounded(&r, &p), "no bounded table in the policy");
    }

    #[test]
    fn copy_from_stdin_is_told_by_its_text() {
        assert!(is_copy_from_stdin("  copy t (a) FROM STDIN (FORMAT csv)"));
        assert!(!is_copy_from_stdin("COPY t TO STDOUT"));
        assert!(!is_copy_from_stdin("SELECT 'COPY x FROM STDIN'"));
        assert!(!is_copy_from_stdin("cop"));
    }
}
