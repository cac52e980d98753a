//! `LOCK TABLES` of a sync table while sync tables are replicated (decision 0031).
//!
//! Under `LOCK TABLES` a session may use only the tables it locked, and those their triggers
//! use, which MariaDB locks along with them. A write to a locked sync table is captured
//! through its triggers into `capgate.sync_changes` (locked that way), but capgate's
//! coordinated commit also records its decision in `capgate.decisions`, on the client's own
//! connection and inside its transaction; under the client's lock that failed with error 1100
//! ("Table 'decisions' was not locked with LOCK TABLES") and the commit was refused. So a
//! `LOCK TABLES` that write-locks a sync table reaches the primary with
//! `capgate.decisions WRITE CONCURRENT` added to its list: the lock an INSERT takes
//! (`MDL_SHARED_WRITE`), which no other session waits for (with autocommit off, InnoDB adds a
//! table lock on it, as it does on capgate's change tables that the triggers use).
//!
//! `capgate.changes WRITE CONCURRENT` is added too. With `capgate.decisions` first in the
//! list, a write to a locked *async* table next to the sync one (its trigger calls
//! `capgate.capture`, the sync table's calls `capgate.capture_sync`, both insert into
//! `capgate.changes`) failed with error 1442 ("Can't update table 'changes' in stored
//! function/trigger because it is already used by statement…") once any other session had
//! opened `capgate.changes` — a shipper always has. Measured on MariaDB 10.11.19: the failure
//! depends on the order of the list (gone with `capgate.decisions` last, back with other
//! orders); with `capgate.changes` locked explicitly every order and statement went through,
//! and other sessions' reads and inserts of `capgate.changes` did not wait (autocommit on).
//!
//! `WRITE CONCURRENT` is MariaDB's: in front of MySQL the statement goes as it came, and a
//! sync commit under such a lock is refused with the server's error, nothing committed. The
//! client's account needs `LOCK TABLES` on `capgate` (it already writes `capgate.decisions`
//! at each sync commit). Nothing here does I/O.

use crate::classify::Classification;
use crate::policy::{Mode, Policy};

/// What capgate adds to the list of a `LOCK TABLES` that write-locks a sync table.
pub const ADDED: &str = "capgate.decisions WRITE CONCURRENT, capgate.changes WRITE CONCURRENT,";

/// `sql` with [`ADDED`] put first in the list of each `LOCK TABLE[S]` statement that
/// write-locks a sync table under `policy`; `None` when there is none. `texts`, as
/// `super::implicit::statement_texts` gives them, are slices of `sql` lined up with `c`'s
/// statements (otherwise nothing is changed).
pub fn with_capgate_tables(sql: &str, c: &Classification, texts: &[&str], policy: &Policy) -> Option<String> {
    if texts.len() != c.statements.len() {
        return None;
    }
    let mut at = Vec::new();
    for (statement, text) in c.statements.iter().zip(texts) {
        let words = super::implicit::words_at(text, 2);
        let [(lock, _), (tables, after)] = words.as_slice() else { continue };
        if lock != "lock" || !(tables == "table" || tables == "tables") {
            continue;
        }
        let sync = statement.locks.iter().any(|t| matches!(policy.decide_table(t).mode, Mode::Sync { .. }));
        if sync && write_locks(text) {
            at.push(offset_in(sql, text)? + after);
        }
    }
    if at.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(sql.len() + at.len() * (ADDED.len() + 1));
    let mut from = 0;
    for k in at {
        out.push_str(&sql[from..k]);
        out.push(' ');
        out.push_str(ADDED);
        from = k;
    }
    out.push_str(&sql[from..]);
    Some(out)
}

/// Whether a `LOCK TABLES` statement takes a write lock (`WRITE`, `LOW_PRIORITY WRITE`,
/// `WRITE CONCURRENT`) on any of its tables.
fn write_locks(text: &str) -> bool {
    text.split(|ch: char| !(ch.is_alphanumeric() || ch == '_')).any(|w| w.eq_ignore_ascii_case("write"))
}

/// Where `part`, a slice of `whole`, starts in it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{classify, Catalog, Dialect, SearchPath};

    fn rewritten(sql: &str) -> Option<String> {
        let text = "default = \"local\"\n[[table]]\nmatch = \"shop.orders\"\nmode = \"sync\"\n[[table]]\nmatch = \"shop.views\"\nmode = \"async\"\n";
        let policy = Policy::parse(text, std::path::Path::new("policy.toml")).expect("policy");
        let path = SearchPath::new(["shop".to_owned()]);
        let c = classify(Dialect::MySql, sql, &path, &Catalog::new());
        let texts = super::super::implicit::statement_texts(sql, &path, &c);
        with_capgate_tables(sql, &c, &texts, &policy)
    }

    #[test]
    fn a_write_lock_on_a_sync_table_also_locks_capgates_decisions_and_changes() {
        assert_eq!(
            rewritten("LOCK TABLES `orders` WRITE").as_deref(),
            Some("LOCK TABLES capgate.decisions WRITE CONCURRENT, capgate.changes WRITE CONCURRENT, `orders` WRITE")
        );
        assert_eq!(
            rewritten("/* why */ lock table views READ, shop.orders AS o LOW_PRIORITY WRITE WAIT 5; SELECT 1").as_deref(),
            Some(
                "/* why */ lock table capgate.decisions WRITE CONCURRENT, capgate.changes WRITE CONCURRENT, views READ, shop.orders AS o LOW_PRIORITY WRITE WAIT 5; SELECT 1"
            )
        );
        assert_eq!(
            rewritten("LOCK TABLES orders WRITE; UPDATE orders SET a = 1").as_deref(),
            Some("LOCK TABLES capgate.decisions WRITE CONCURRENT, capgate.changes WRITE CONCURRENT, orders WRITE; UPDATE orders SET a = 1")
        );
        assert_eq!(rewritten("LOCK TABLES orders READ"), None, "nothing is written under a read lock");
        assert_eq!(rewritten("LOCK TABLES views WRITE, notes WRITE"), None, "no sync table");
        assert_eq!(rewritten("UNLOCK TABLES"), None);
        assert_eq!(rewritten("SELECT 'LOCK TABLES orders WRITE'"), None);
    }
}
