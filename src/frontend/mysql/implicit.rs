//! Statements that commit an open transaction implicitly on MySQL / MariaDB, and the
//! multi-statement queries in which capgate cannot coordinate that commit (decision 0027).
//!
//! A sync table's changes must commit on the primary only through capgate's coordinated
//! commit (decision 0016). MariaDB commits an open transaction, without a COMMIT, before it
//! runs DDL (but not `CREATE` / `DROP TEMPORARY TABLE`), `BEGIN` / `START TRANSACTION`,
//! `TRUNCATE`, `LOCK TABLES`, `UNLOCK TABLES` while tables are locked, `ANALYZE`, `CHECK`,
//! `OPTIMIZE` and `REPAIR TABLE`, `FLUSH`, `RESET`, `SET PASSWORD`, and `SET autocommit = 1`
//! (verified on MariaDB 10.11: `@@in_transaction` and the row after a later ROLLBACK; `CACHE
//! INDEX`, `LOAD INDEX INTO CACHE`, `CHECKSUM TABLE`, `SAVEPOINT` and `SET GLOBAL` do not). Sent
//! as a query of its own, such a statement is held and the open transaction coordinated first
//! (`super::hold`). Inside a multi-statement query, after a statement that may write a sync
//! table, capgate cannot step in between the two: such a query is refused before any of it
//! runs, naming both statements, the table and the remedy.
//!
//! `TRUNCATE` of a replicated table is refused outright: it fires no trigger, so the replica
//! would keep the rows.
//!
//! Nothing here does I/O: statement text and classification in, a verdict out.

use crate::classify::{statement_ends, Classification, Dialect, Kind, SearchPath, StatementClass, TxControl};
use crate::policy::{Mode, Policy};

/// The text of each statement of `sql`, aligned with `c.statements` (one element holding the
/// whole text when the two cannot be aligned: then only the classification decides).
pub fn statement_texts<'a>(sql: &'a str, path: &SearchPath, c: &Classification) -> Vec<&'a str> {
    // One statement (nearly every query): no second pass of the tokenizer.
    if c.statements.len() < 2 {
        return vec![sql.trim()];
    }
    let Some(ends) = statement_ends(Dialect::MySql, path, sql) else { return vec![sql] };
    if ends.len() != c.statements.len() {
        return vec![sql];
    }
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let text = sql.get(start..end).unwrap_or("").trim().trim_end_matches(';').trim();
            start = end;
            text
        })
        .collect()
}

/// Whether any statement of `c` commits implicitly; `texts` as [`statement_texts`] gives
/// them (when they could not be aligned, each statement is judged with the whole text).
pub fn any_commits(c: &Classification, texts: &[&str], locked: bool) -> bool {
    let text = |i: usize| if texts.len() == c.statements.len() { texts[i] } else { texts.first().copied().unwrap_or("") };
    c.statements.iter().enumerate().any(|(i, s)| commits_implicitly(text(i), &s.kind, locked))
}

/// Whether the session holds `LOCK TABLES` locks after `texts` ran, given `locked` before.
pub fn locks_tables(texts: &[&str], mut locked: bool) -> bool {
    for text in texts {
        let w = words(text, 2);
        match (w.first().map(String::as_str), w.get(1).map(String::as_str)) {
            (Some("lock"), Some("table" | "tables")) => locked = true,
            (Some("unlock"), Some("table" | "tables")) => locked = false,
            _ => {}
        }
    }
    locked
}

/// The statement's words, lower case, comments and extra spaces left out, at most `n`.
fn words(text: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while out.len() < n {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("/*") {
            // A `/*! … */` or `/*M! … */` comment runs on MySQL; its words count.
            let executable = after.starts_with('!') || after.starts_with("M!");
            match after.find("*/") {
                Some(end) if !executable => rest = &after[end + 2..],
                Some(_) => rest = after.trim_start_matches("M!").trim_start_matches('!').trim_start_matches(char::is_numeric),
                None => break,
            }
            continue;
        }
        if rest.starts_with("--") || rest.starts_with('#') {
            rest = rest.split_once('\n').map_or("", |(_, r)| r);
            continue;
        }
        let end = rest.find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '@' || ch == '.')).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(rest[..end].to_ascii_lowercase());
        rest = &rest[end..];
    }
    out
}

/// Whether the statement `text` (classified as `kind`) commits an open transaction before it
/// runs. `locked`: the session holds tables locked by `LOCK TABLES` (only then does `UNLOCK
/// TABLES` commit).
pub fn commits_implicitly(text: &str, kind: &Kind, locked: bool) -> bool {
    let w = words(text, 3);
    let word = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    match kind {
        Kind::Ddl => !(matches!(word(0), "create" | "drop") && word(1) == "temporary"),
        Kind::Transaction(TxControl::Begin) => true,
        _ => match word(0) {
            "truncate" | "analyze" | "optimize" | "repair" | "flush" | "reset" | "lock" => true,
            "check" => word(1) == "table" || word(1) == "tables",
            "unlock" => locked,
            "set" => word(1) == "password" || enables_autocommit(text),
            _ => false,
        },
    }
}

/// Whether a `SET` statement turns autocommit on (`SET autocommit = 1`, `ON`, `TRUE`, with
/// `@@`, `@@session.` or `SESSION`). It commits only when autocommit was off: inside `BEGIN`
/// with autocommit on it commits nothing (`super::hold` looks at the session's flags).
pub fn enables_autocommit(text: &str) -> bool {
    let text: String = text.to_ascii_lowercase().chars().filter(|c| !c.is_whitespace()).collect();
    ["1", "on", "true"].iter().any(|v| {
        ["autocommit=", "@@autocommit=", "@@session.autocommit=", "sessionautocommit="]
            .iter()
            .any(|k| text.strip_prefix("set").is_some_and(|rest| rest.contains(&format!("{k}{v}"))))
    })
}

/// The sync table `statement` may write under `policy` (`None`: it writes none that the
/// policy replicates synchronously); an `unknown` statement may write any, so it answers
/// with its reason.
fn sync_write(statement: &StatementClass, policy: &Policy) -> Option<String> {
    if let Kind::Unknown(why) = &statement.kind {
        return Some(format!("a sync table (capgate cannot tell which tables it writes: {why})"));
    }
    statement
        .writes
        .iter()
        .map(|t| policy.decide_table(t))
        .find_map(|d| matches!(d.mode, Mode::Sync { .. }).then(|| format!("sync table {} (rule {})", d.table, d.rule)))
}

/// The refusal message of a `TRUNCATE` of a table the policy replicates (None: there is
/// none in `c`). TRUNCATE fires no trigger on MySQL, so capture never sees the rows go and
/// the replica would keep them: capgate refuses it rather than let the sites differ.
pub fn truncates_replicated(c: &Classification, texts: &[&str], policy: &Policy) -> Option<String> {
    let text = |i: usize| if texts.len() == c.statements.len() { texts[i] } else { texts.first().copied().unwrap_or("") };
    c.statements.iter().enumerate().find_map(|(i, statement)| {
        if words(text(i), 1).first().map(String::as_str) != Some("truncate") {
            return None;
        }
        let d = statement.writes.iter().map(|t| policy.decide_table(t)).find(|d| d.mode != Mode::Local)?;
        Some(format!(
            "capgate refused `{}`: {} is replicated (mode {}, rule {}) and TRUNCATE fires no trigger on MySQL, so the \
             replica would keep its rows; nothing was run. Use DELETE FROM {} (captured row by row), or make the table local \
             in the policy",
            shown(text(i)),
            d.table,
            d.mode.name(),
            d.rule,
            d.table
        ))
    })
}

/// At most 60 characters of a statement, for messages.
fn shown(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// The refusal message of a multi-statement query in which a statement that commits
/// implicitly follows one that may write a sync table (None: capgate can coordinate every
/// commit of the query). `texts` as [`statement_texts`] gives them.
pub fn commit_mid_query(c: &Classification, texts: &[&str], policy: &Policy, locked: bool) -> Option<String> {
    if c.statements.len() < 2 || texts.len() != c.statements.len() {
        return None;
    }
    let mut writer: Option<(usize, String)> = None;
    for (i, (statement, text)) in c.statements.iter().zip(texts).enumerate() {
        if let Some((j, table)) = &writer {
            if commits_implicitly(text, &statement.kind, locked) {
                return Some(format!(
                    "capgate refused this query: `{}` (statement {} of {}) commits the open transaction implicitly, after `{}` \
                     (statement {}) wrote {table}, and capgate must coordinate that commit with the replicas but cannot in the \
                     middle of a query; nothing was run. Send `{}` as a query of its own (COMMIT first, if the transaction \
                     should end there)",
                    shown(text),
                    i + 1,
                    c.statements.len(),
                    shown(texts[*j]),
                    j + 1,
                    shown(text),
                ));
            }
        }
        if writer.is_none() {
            writer = sync_write(statement, policy).map(|table| (i, table));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_commit_implicitly() {
        let other = Kind::Utility;
        let set = Kind::Session(crate::classify::SessionChange::Other);
        assert!(commits_implicitly("SET autocommit = 1", &set, false));
        assert!(commits_implicitly("set @@session.autocommit=ON", &set, false));
        assert!(commits_implicitly("SET SESSION autocommit = true", &set, false));
        assert!(!commits_implicitly("SET autocommit = 0", &set, false));
        assert!(commits_implicitly("SET PASSWORD = PASSWORD('x')", &set, false));
        assert!(commits_implicitly("LOCK TABLES t WRITE", &other, false));
        assert!(!commits_implicitly("UNLOCK TABLES", &other, false));
        assert!(commits_implicitly("UNLOCK TABLES", &other, true));
        assert!(commits_implicitly("/* why */ TRUNCATE TABLE t", &Kind::Write, false));
        assert!(commits_implicitly("ANALYZE TABLE t", &other, false));
        assert!(commits_implicitly("check table t", &other, false));
        assert!(!commits_implicitly("CHECKSUM TABLE t", &other, false));
        assert!(!commits_implicitly("CACHE INDEX t IN c", &other, false));
        assert!(commits_implicitly("CREATE TABLE t (a INT)", &Kind::Ddl, false));
        assert!(!commits_implicitly("CREATE TEMPORARY TABLE t (a INT)", &Kind::Ddl, false));
        assert!(!commits_implicitly("drop  temporary table t", &Kind::Ddl, false));
        assert!(commits_implicitly("START TRANSACTION", &Kind::Transaction(TxControl::Begin), false));
        assert!(!commits_implicitly("SELECT 'set autocommit=1'", &Kind::Read, false));
        assert!(commits_implicitly("/*!40101 FLUSH TABLES */", &other, false));
    }

    #[test]
    fn texts_and_messages() {
        let policy = Policy::parse(
            "default = \"local\"\n[[table]]\nmatch = \"shop.orders\"\nmode = \"sync\"\n",
            std::path::Path::new("policy.toml"),
        )
        .expect("policy");
        let path = SearchPath::new(["shop".to_owned()]);
        let catalog = crate::classify::Catalog::new();
        let refused = |sql: &str| {
            let c = crate::classify::classify(Dialect::MySql, sql, &path, &catalog);
            let texts = statement_texts(sql, &path, &c);
            commit_mid_query(&c, &texts, &policy, false)
        };
        let message = refused("INSERT INTO orders VALUES (1); CREATE TABLE x (a INT)").expect("refused");
        for words in ["`CREATE TABLE x (a INT)` (statement 2 of 2)", "`INSERT INTO orders VALUES (1)` (statement 1)", "shop.orders"] {
            assert!(message.contains(words), "{words:?} missing from {message}");
        }
        assert!(refused("BEGIN; UPDATE orders SET a = 1; START TRANSACTION").is_some());
        assert!(refused("UPDATE orders SET a = 1; TRUNCATE notes").is_some());
        assert!(refused("CREATE TABLE x (a INT); INSERT INTO orders VALUES (1)").is_none(), "the commit comes first");
        assert!(refused("INSERT INTO notes VALUES (1); CREATE TABLE x (a INT)").is_none(), "a local table");
        assert!(refused("INSERT INTO orders VALUES (1); CREATE TEMPORARY TABLE x (a INT)").is_none());
        assert!(refused("INSERT INTO orders VALUES (1); SELECT 'CREATE TABLE'").is_none());
        let truncates = |sql: &str| {
            let c = crate::classify::classify(Dialect::MySql, sql, &path, &catalog);
            truncates_replicated(&c, &statement_texts(sql, &path, &c), &policy)
        };
        let message = truncates("TRUNCATE TABLE orders").expect("refused");
        assert!(message.contains("shop.orders is replicated (mode sync") && message.contains("DELETE FROM shop.orders"), "{message}");
        assert!(truncates("SELECT 1; truncate orders").is_some());
        assert!(truncates("TRUNCATE notes").is_none(), "a local table");
    }
}
