//! Where capgate cuts a multi-statement query into parts it runs one after the other
//! (`Hold::Split`, `super::hold`; issue 15, decision 0031).
//!
//! Two things in one query need capgate to step in between its statements:
//!
//! - **DDL before a write to a replicated table.** DDL can create, re-create or change a
//!   table whose capture triggers capgate installs or replaces only after it (decisions 0015,
//!   0031): in `CREATE TABLE t (…); INSERT INTO t …` the INSERT ran before `t` had its
//!   triggers and was never captured, and after `ALTER TABLE t ADD COLUMN c …` the images
//!   missed `c`. The query is cut after such DDL, and the triggers are reconciled before the
//!   rest runs — for sync, async and bounded tables alike.
//! - **A write to a sync table after a statement that commits implicitly**, in autocommit
//!   mode: MariaDB runs the write on its own after the commit, uncoordinated, where capgate
//!   must run it in a transaction of its own and coordinate that: the rest of the query, from
//!   that write on, is a part capgate runs as an autocommit sync write. (Not after `BEGIN`:
//!   the write is then in the client's own transaction.)
//!
//! Nothing here does I/O: statement texts and classification in, the parts' ends out.

use super::implicit::{aligned, commits_implicitly, enables_autocommit, locked_at, sync_write};
use crate::classify::{statement_ends, Classification, Dialect, Kind, SearchPath, TxControl};
use crate::policy::{Mode, Policy};

/// One part of a query capgate runs in parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The byte offset in the query's text just past the part (after its last `;`).
    pub end: usize,
    /// The part holds DDL: the capture triggers are reconciled after it.
    pub ddl: bool,
    /// The part starts with a write to a sync table after an implicit commit: in autocommit
    /// mode, outside a transaction, capgate runs it in a transaction of its own.
    pub sync_write: bool,
    /// Every statement before that write that may commit is `SET autocommit = 1`, which
    /// commits only when autocommit was off: inside `BEGIN` with autocommit on nothing
    /// commits, and the write belongs to the client's transaction (the query runs whole).
    pub after_autocommit_on: bool,
    /// The part is one DDL statement capgate carries to the replicas (decision 0040).
    pub carry: Option<super::ddl::Target>,
}

/// The parts of the query `sql` (classified as `c`, its statements' texts `texts`, tables
/// resolving against `path`; `locked`: the session holds `LOCK TABLES`), or `None` when it
/// runs whole: one statement, texts that could not be lined up, or nothing to step in for.
/// `sql` is the text the offsets are for (`texts` may come from an earlier spelling of it
/// with the same statements: see `super::locks`).
pub fn parts(sql: &str, path: &SearchPath, c: &Classification, texts: &[&str], policy: &Policy, locked: bool) -> Option<Vec<Part>> {
    let n = c.statements.len();
    if n < 2 || !aligned(c, texts) {
        return None;
    }
    let is_ddl = |i: usize| c.statements[i].kind == Kind::Ddl && commits_implicitly(texts[i], &c.statements[i].kind, false);
    // Cut after statement i: (i, a sync write starts the next part).
    let mut cuts: Vec<(usize, bool)> = Vec::new();
    let commits = |i: usize| commits_implicitly(texts[i], &c.statements[i].kind, locked_at(texts, i, locked));
    let mut after_autocommit_on = false;
    // DDL of a sync table is no row write (it is cut apart below when capgate carries it).
    if let Some(first_write) = c.statements.iter().position(|s| s.kind != Kind::Ddl && sync_write(s, policy).is_some()) {
        let last_commit = (0..first_write).rev().find(|&i| commits(i));
        if let Some(i) = last_commit.filter(|&i| c.statements[i].kind != Kind::Transaction(TxControl::Begin)) {
            cuts.push((i, true));
            after_autocommit_on = (0..first_write).filter(|&k| commits(k)).all(|k| enables_autocommit(texts[k]));
        }
    }
    for i in (0..n - 1).filter(|&i| is_ddl(i)) {
        let next_ddl = (i + 1..n).find(|&j| is_ddl(j)).unwrap_or(n);
        let changed = &c.statements[i].writes;
        let written_after = (i + 1..next_ddl).flat_map(|j| replicated_writes(&c.statements[j], policy)).collect::<Vec<_>>();
        // DDL of other tables changes no trigger the writes need (a DDL naming no table may).
        let needs_triggers = written_after.iter().any(|t| t.is_none() || changed.is_empty() || t.is_some_and(|t| changed.contains(t)));
        if needs_triggers && !cuts.iter().any(|&(k, _)| k == i) {
            cuts.push((i, false));
        }
    }
    // Carried DDL runs as a part of its own (decision 0040).
    let carried = super::ddl::carried_at(c, texts, policy);
    for (i, _) in &carried {
        for cut in [i.checked_sub(1), Some(*i).filter(|&i| i < n - 1)].into_iter().flatten() {
            if !cuts.iter().any(|&(k, _)| k == cut) {
                cuts.push((cut, false));
            }
        }
    }
    if cuts.is_empty() {
        return None;
    }
    cuts.sort_unstable();
    let ends = statement_ends(Dialect::MySql, path, sql)?;
    if ends.len() != n {
        return None;
    }
    let mut parts = Vec::with_capacity(cuts.len() + 1);
    let (mut from, mut starts_sync) = (0, false);
    for (i, sync_next) in cuts.into_iter().chain(std::iter::once((n - 1, false))) {
        parts.push(Part {
            end: ends[i],
            ddl: (from..=i).any(is_ddl),
            sync_write: starts_sync,
            after_autocommit_on: starts_sync && after_autocommit_on,
            carry: carried.iter().find(|(k, _)| *k == i && from == i).map(|(_, t)| t.clone()),
        });
        from = i + 1;
        starts_sync = sync_next;
    }
    if let Some(last) = parts.last_mut() {
        last.end = sql.len();
    }
    Some(parts)
}

/// The tables `policy` replicates that `statement` may write (`None`: a statement capgate
/// cannot classify, which may write any).
fn replicated_writes<'c>(statement: &'c crate::classify::StatementClass, policy: &Policy) -> Vec<Option<&'c crate::classify::TableName>> {
    if matches!(statement.kind, Kind::Unknown(_)) {
        return vec![None];
    }
    statement.writes.iter().filter(|t| policy.decide_table(t).mode != Mode::Local).map(Some).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{classify, Catalog};
    use crate::frontend::mysql::implicit::statement_texts;

    /// The parts' texts, each marked `+` when it holds DDL, `*` when it is a sync write, `?`
    /// when only a `SET autocommit = 1` commits before it, `!` when it is DDL capgate carries.
    fn cut(sql: &str) -> Option<Vec<String>> {
        let text = "default = \"local\"\n[[table]]\nmatch = \"shop.orders\"\nmode = \"sync\"\n\
                    [[table]]\nmatch = \"shop.views\"\nmode = \"async\"\n[[table]]\nmatch = \"shop.new_*\"\nmode = \"bounded\"\nmax_lag = \"5s\"\n";
        let policy = Policy::parse(text, std::path::Path::new("policy.toml")).expect("policy");
        let path = SearchPath::new(["shop".to_owned()]);
        let c = classify(Dialect::MySql, sql, &path, &Catalog::new());
        let texts = statement_texts(sql, &path, &c);
        let parts = parts(sql, &path, &c, &texts, &policy, false)?;
        let mut from = 0;
        Some(
            parts
                .iter()
                .map(|p| {
                    let marks = [(p.ddl, "+"), (p.sync_write, "*"), (p.after_autocommit_on, "?"), (p.carry.is_some(), "!")];
                    let marks: String = marks.iter().filter(|(on, _)| *on).map(|(_, m)| *m).collect();
                    let text = format!("{marks}{}", sql[from..p.end].trim());
                    from = p.end;
                    text
                })
                .collect(),
        )
    }

    #[test]
    fn a_sync_write_after_an_implicit_commit_is_cut_apart() {
        let body = "CREATE PROCEDURE p() BEGIN SELECT 1; END";
        assert_eq!(
            cut(&format!("SELECT 1; {body}; UPDATE orders SET a = 1; SELECT 2")),
            Some(vec![format!("+SELECT 1; {body};"), "*UPDATE orders SET a = 1; SELECT 2".to_owned()])
        );
        assert_eq!(
            cut("CREATE TABLE x (a INT); TRUNCATE notes; INSERT INTO notes VALUES (1); DELETE FROM orders"),
            Some(vec![
                "+CREATE TABLE x (a INT); TRUNCATE notes;".to_owned(),
                "*INSERT INTO notes VALUES (1); DELETE FROM orders".to_owned()
            ])
        );
        assert_eq!(
            cut("LOCK TABLES orders WRITE; UPDATE orders SET a = 1"),
            Some(vec!["LOCK TABLES orders WRITE;".to_owned(), "*UPDATE orders SET a = 1".to_owned()])
        );
        assert_eq!(
            cut("SET autocommit = 1; UPDATE orders SET a = 1"),
            Some(vec!["SET autocommit = 1;".to_owned(), "*?UPDATE orders SET a = 1".to_owned()])
        );
        assert_eq!(
            cut("SET autocommit = 1; LOCK TABLES orders WRITE; UPDATE orders SET a = 1"),
            Some(vec!["SET autocommit = 1; LOCK TABLES orders WRITE;".to_owned(), "*UPDATE orders SET a = 1".to_owned()])
        );
        assert_eq!(cut(&format!("{body}; UPDATE notes SET a = 1")), None, "a local table");
        assert_eq!(cut("UPDATE orders SET a = 1"), None, "one statement");
        assert_eq!(cut("BEGIN; UPDATE orders SET a = 1"), None, "the write is in the client's transaction");
        assert_eq!(cut("CREATE TEMPORARY TABLE x (a INT); UPDATE orders SET a = 1"), None, "nothing commits");
    }

    #[test]
    fn writes_to_replicated_tables_after_ddl_run_after_the_triggers_are_reconciled() {
        assert_eq!(
            cut("CREATE TABLE new_t (id INT PRIMARY KEY); INSERT INTO new_t VALUES (1)"),
            Some(vec!["+CREATE TABLE new_t (id INT PRIMARY KEY);".to_owned(), "INSERT INTO new_t VALUES (1)".to_owned()])
        );
        assert_eq!(
            cut("ALTER TABLE views ADD COLUMN c INT; UPDATE views SET c = 1; SELECT 1; DROP TABLE IF EXISTS new_a; CREATE TABLE new_a (id INT PRIMARY KEY); INSERT INTO new_a VALUES (1), (2)"),
            Some(vec![
                "+!ALTER TABLE views ADD COLUMN c INT;".to_owned(),
                "+UPDATE views SET c = 1; SELECT 1; DROP TABLE IF EXISTS new_a; CREATE TABLE new_a (id INT PRIMARY KEY);".to_owned(),
                "INSERT INTO new_a VALUES (1), (2)".to_owned(),
            ])
        );
        // DDL and a sync write: one cut does both.
        assert_eq!(
            cut("CREATE TABLE new_b (id INT PRIMARY KEY); INSERT INTO new_b VALUES (1); UPDATE orders SET a = 1"),
            Some(vec![
                "+CREATE TABLE new_b (id INT PRIMARY KEY);".to_owned(),
                "*INSERT INTO new_b VALUES (1); UPDATE orders SET a = 1".to_owned()
            ])
        );
        assert_eq!(cut("CREATE TABLE x (a INT); INSERT INTO x VALUES (1)"), None, "a local table");
        // DDL capgate carries (decision 0040) runs as a part of its own, wherever it is.
        assert_eq!(
            cut("UPDATE views SET a = 1; ALTER TABLE views ADD c INT; SELECT 1"),
            Some(vec!["UPDATE views SET a = 1;".to_owned(), "+!ALTER TABLE views ADD c INT;".to_owned(), "SELECT 1".to_owned()])
        );
        assert_eq!(
            cut("CREATE INDEX i ON orders (a); UPDATE orders SET a = 1"),
            Some(vec!["+!CREATE INDEX i ON orders (a);".to_owned(), "*UPDATE orders SET a = 1".to_owned()])
        );
        assert_eq!(cut("CREATE TABLE x (a INT); INSERT INTO views VALUES (1)"), None, "DDL of another table");
        assert_eq!(cut("INSERT INTO views VALUES (1); CREATE TABLE x (a INT)"), None, "no write after the DDL");
        assert_eq!(
            cut("CREATE TEMPORARY TABLE t (a INT); INSERT INTO views SELECT * FROM t"),
            None,
            "a temporary table changes no trigger"
        );
    }
}
