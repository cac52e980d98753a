//! Partition maintenance that changes a replicated table's rows behind capture's back
//! (issue 15): refused before it reaches the primary.
//!
//! MariaDB's `ALTER TABLE t TRUNCATE PARTITION p`, `DROP PARTITION p` (of a RANGE or LIST
//! table), `EXCHANGE PARTITION p WITH TABLE t2`, `CONVERT PARTITION p TO TABLE t2`, `CONVERT
//! TABLE t2 TO PARTITION p` and `IMPORT` / `DISCARD PARTITION … TABLESPACE` remove or bring in
//! rows without firing a trigger, so the capture triggers never see them: the primary's table
//! changes and no replica ever does, silently. Refused with ERR 1235 when the table — or, for
//! an exchange or a conversion, the other table — is replicated (sync, async or bounded),
//! naming the table, its mode and rule, and the remedy: `DELETE FROM t PARTITION (p)` through
//! capgate, which fires the capture triggers. The partition operations that keep every row
//! (`ADD`, `REORGANIZE`, `COALESCE`, `REBUILD`, `OPTIMIZE`, `ANALYZE`, `CHECK`, `REPAIR
//! PARTITION`, `REMOVE PARTITIONING`, `PARTITION BY`) go on as DDL does.
//!
//! Also looked at: the text of an SQL-level `PREPARE s FROM '<text>'` (its EXECUTE names no
//! table), where a `TRUNCATE` of a replicated table is refused too (capgate carries a
//! TRUNCATE only when it sees it: decision 0029); a text built at run time (`PREPARE s FROM
//! @v`) is not seen. Nothing here does I/O.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};
use sqlparser::dialect::MySqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::classify::{resolve, Catalog, Dialect, SearchPath, TableName};
use crate::policy::{Mode, Policy};

/// A partition operation that changes rows, as found in a statement's text.
#[derive(Debug, PartialEq, Eq)]
struct RowChange {
    /// The operation's words, for messages (`TRUNCATE PARTITION` …).
    op: &'static str,
    /// The altered table.
    table: TableName,
    /// The table whose rows are exchanged with, or converted from or to, the partition's.
    other: Option<TableName>,
    /// The partition names as written (`p0, p1`, `ALL`), for the remedy.
    partitions: String,
}

/// The refusal message of the first statement of `texts` (or of a text an SQL `PREPARE`
/// holds) whose partition operation changes the rows of a table `policy` replicates;
/// `None` when there is none. Tables resolve against `path`.
pub fn refusal(texts: &[&str], path: &SearchPath, policy: &Policy) -> Option<String> {
    texts.iter().find_map(|text| match text.contains(';') {
        // Texts that could not be lined up with the classification: cut as the server would.
        true => {
            let ends = crate::classify::statement_ends(Dialect::MySql, path, text).unwrap_or_else(|| vec![text.len()]);
            let mut from = 0;
            ends.into_iter().find_map(|end| {
                let piece = text.get(from..end).unwrap_or("");
                from = end;
                refusal_of(piece.trim().trim_end_matches(';'), path, policy, true)
            })
        }
        false => refusal_of(text, path, policy, true),
    })
}

fn refusal_of(text: &str, path: &SearchPath, policy: &Policy, follow_prepare: bool) -> Option<String> {
    let head = text.trim_start();
    let starts = |w: &str| head.get(..w.len()).is_some_and(|h| h.eq_ignore_ascii_case(w));
    if !(starts("alter") || starts("prepare") || starts("/*") || starts("--") || starts("#")) {
        return None;
    }
    if follow_prepare {
        if let Some(inner) = super::sql_prepare::prepared_text(text) {
            return refusal_of(&inner, path, policy, false)
                .or_else(|| prepared_truncate(&inner, path, policy))
                .or_else(|| prepared_ddl(&inner, path, policy))
                .map(|m| format!("{m} (the statement is the text of an SQL PREPARE)"));
        }
    }
    let tokens = tokens(text)?;
    let change = row_change(&tokens, path)?;
    let d = std::iter::once(&change.table).chain(change.other.as_ref()).map(|t| policy.decide_table(t)).find(|d| d.mode != Mode::Local)?;
    let remedy = match change.op {
        "TRUNCATE PARTITION" => {
            format!("use DELETE FROM {} PARTITION ({}), which the capture triggers carry", change.table, change.partitions)
        }
        "DROP PARTITION" => format!(
            "empty the partition first with DELETE FROM {} PARTITION ({}) through capgate (the capture triggers carry it), \
             then drop it on the primary directly (capgate does not carry partition maintenance to MySQL \
             replicas)",
            change.table, change.partitions
        ),
        _ => format!(
            "move the rows with INSERT … SELECT and DELETE FROM {} PARTITION ({}) through capgate (the capture triggers \
             carry them), or make the tables local in the policy first",
            change.table, change.partitions
        ),
    };
    Some(format!(
        "capgate refused `ALTER TABLE {} {} …`: {} is replicated (mode {}, rule {}), and {} changes its rows on the primary \
         without firing a trigger, so no replica would ever see the change; nothing was run. To change the rows, {remedy}",
        change.table,
        change.op,
        d.table,
        d.mode.name(),
        d.rule,
        change.op
    ))
}

/// The refusal of `TRUNCATE t` of a replicated table as the text of an SQL `PREPARE`: its
/// `EXECUTE` names no table, so capgate could not carry it (decision 0029), and it would
/// empty the primary's table alone.
fn prepared_truncate(text: &str, path: &SearchPath, policy: &Policy) -> Option<String> {
    let c = crate::classify::classify(Dialect::MySql, text, path, &Catalog::new());
    let table = super::implicit::truncate_alone(&c, &[text.trim()])?;
    let d = policy.decide_table(table);
    (d.mode != Mode::Local).then(|| {
        format!(
            "capgate refused `{}`: {} is replicated (mode {}, rule {}), and TRUNCATE fires no trigger; capgate carries a \
             TRUNCATE sent as a query of its own (or prepared with the binary protocol), but cannot see one run by EXECUTE; \
             nothing was run. Send the TRUNCATE as a query of its own (or use DELETE FROM {})",
            text.trim(),
            d.table,
            d.mode.name(),
            d.rule,
            d.table
        )
    })
}

/// DDL capgate carries (decision 0040), as the text of an SQL PREPARE: its EXECUTE names no
/// table, so capgate could not carry it.
fn prepared_ddl(text: &str, path: &SearchPath, policy: &Policy) -> Option<String> {
    let c = crate::classify::classify(Dialect::MySql, text, path, &Catalog::new());
    match super::ddl::judge(&c, &[text.trim()], policy, false, true)? {
        super::ddl::Judged::Refuse(message) => Some(message),
        _ => None,
    }
}

/// `text`'s tokens without white space and comments (None: it cannot be tokenized).
fn tokens(text: &str) -> Option<Vec<Token>> {
    let all = Tokenizer::new(&MySqlDialect {}, text).tokenize().ok()?;
    Some(all.into_iter().filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF)).collect())
}

/// Whether token `i` is the unquoted word `w` (any case).
fn keyword(tokens: &[Token], i: usize, w: &str) -> bool {
    matches!(tokens.get(i), Some(Token::Word(word)) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w))
}

/// The row-changing partition operation of an `ALTER [ONLINE] [IGNORE] TABLE [IF EXISTS] t …`
/// statement's tokens, if it has one (at the top level: not inside a partition definition).
fn row_change(tokens: &[Token], path: &SearchPath) -> Option<RowChange> {
    if !keyword(tokens, 0, "ALTER") {
        return None;
    }
    let mut i = 1;
    while keyword(tokens, i, "ONLINE") || keyword(tokens, i, "IGNORE") {
        i += 1;
    }
    if !keyword(tokens, i, "TABLE") {
        return None;
    }
    i += 1;
    if keyword(tokens, i, "IF") && keyword(tokens, i + 1, "EXISTS") {
        i += 2;
    }
    let (table, mut i) = name(tokens, i, path)?;
    let mut depth = 0usize;
    while i < tokens.len() {
        match &tokens[i] {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            _ => {
                let op = ["TRUNCATE", "DROP", "EXCHANGE", "CONVERT", "IMPORT", "DISCARD"].into_iter().find(|w| keyword(tokens, i, w));
                if let Some(op) = op {
                    if let Some(change) = operation(tokens, i, op, &table, path) {
                        return Some(change);
                    }
                }
            }
        }
        i += 1;
    }
    None
}

/// The operation starting with `op` at token `i`, if it changes rows.
fn operation(tokens: &[Token], i: usize, op: &str, table: &TableName, path: &SearchPath) -> Option<RowChange> {
    let change =
        |op: &'static str, other: Option<TableName>, partitions: String| Some(RowChange { op, table: table.clone(), other, partitions });
    if op == "CONVERT" && keyword(tokens, i + 1, "TABLE") {
        // CONVERT TABLE t2 TO PARTITION p …: t2's rows come into the table.
        let (other, at) = name(tokens, i + 2, path)?;
        let partition = keyword(tokens, at, "TO") && keyword(tokens, at + 1, "PARTITION");
        return partition
            .then(|| partition_names(tokens, at + 2, None))
            .and_then(|p| change("CONVERT TABLE … TO PARTITION", Some(other), p));
    }
    if !keyword(tokens, i + 1, "PARTITION") {
        return None;
    }
    let mut at = i + 2;
    if op == "DROP" && keyword(tokens, at, "IF") && keyword(tokens, at + 1, "EXISTS") {
        at += 2;
    }
    match op {
        "TRUNCATE" => change("TRUNCATE PARTITION", None, partition_names(tokens, at, None)),
        "DROP" => change("DROP PARTITION", None, partition_names(tokens, at, None)),
        "IMPORT" => change("IMPORT PARTITION", None, partition_names(tokens, at, Some("TABLESPACE"))),
        "DISCARD" => change("DISCARD PARTITION", None, partition_names(tokens, at, Some("TABLESPACE"))),
        "EXCHANGE" => {
            // EXCHANGE PARTITION p WITH TABLE t2
            let with = (at..tokens.len()).find(|&k| keyword(tokens, k, "WITH") && keyword(tokens, k + 1, "TABLE"))?;
            let (other, _) = name(tokens, with + 2, path)?;
            change("EXCHANGE PARTITION", Some(other), partition_names(tokens, at, Some("WITH")))
        }
        "CONVERT" => {
            // CONVERT PARTITION p TO TABLE t2: the partition's rows leave the table.
            let to = (at..tokens.len()).find(|&k| keyword(tokens, k, "TO") && keyword(tokens, k + 1, "TABLE"))?;
            let (other, _) = name(tokens, to + 2, path)?;
            change("CONVERT PARTITION", Some(other), partition_names(tokens, at, Some("TO")))
        }
        _ => None,
    }
}

/// The partition names from token `at` (comma-separated), up to `until` or the end of the
/// operation, as written.
fn partition_names(tokens: &[Token], at: usize, until: Option<&str>) -> String {
    let mut names = Vec::new();
    let mut k = at;
    while let Some(Token::Word(w)) = tokens.get(k) {
        if until.is_some_and(|u| keyword(tokens, k, u)) {
            break;
        }
        names.push(w.to_string());
        if tokens.get(k + 1) != Some(&Token::Comma) {
            break;
        }
        k += 2;
    }
    names.join(", ")
}

/// The table name at token `i` (`t`, `db.t`, quoted or not) and the token after it.
fn name(tokens: &[Token], i: usize, path: &SearchPath) -> Option<(TableName, usize)> {
    let mut parts = Vec::new();
    let mut k = i;
    while let Some(Token::Word(w)) = tokens.get(k) {
        parts.push(ObjectNamePart::Identifier(match w.quote_style {
            Some(q) => Ident::with_quote(q, w.value.clone()),
            None => Ident::new(w.value.clone()),
        }));
        k += 1;
        if tokens.get(k) != Some(&Token::Period) {
            break;
        }
        k += 1;
    }
    let table = resolve(Dialect::MySql, &ObjectName(parts), path, &Catalog::new())?;
    Some((table, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> Option<String> {
        let text = "default = \"local\"\n[[table]]\nmatch = \"shop.orders\"\nmode = \"async\"\n[[table]]\nmatch = \"shop.acct\"\nmode = \"sync\"\n";
        let policy = Policy::parse(text, std::path::Path::new("policy.toml")).expect("policy");
        refusal(&[sql], &SearchPath::new(["shop".to_owned()]), &policy)
    }

    #[test]
    fn partition_operations_that_change_rows_of_a_replicated_table_are_refused() {
        for sql in [
            "ALTER TABLE orders TRUNCATE PARTITION p0",
            "alter table shop.orders truncate partition p0, p1",
            "ALTER TABLE `orders` TRUNCATE PARTITION ALL",
            "ALTER ONLINE IGNORE TABLE IF EXISTS orders DROP PARTITION IF EXISTS p1",
            "/* x */ ALTER TABLE orders DROP PARTITION p1",
            "ALTER TABLE orders EXCHANGE PARTITION p0 WITH TABLE scratch WITHOUT VALIDATION",
            "ALTER TABLE scratch EXCHANGE PARTITION p0 WITH TABLE shop.orders",
            "ALTER TABLE orders CONVERT PARTITION p0 TO TABLE old_orders",
            "ALTER TABLE orders CONVERT TABLE old_orders TO PARTITION p0 VALUES LESS THAN (10)",
            "ALTER TABLE acct IMPORT PARTITION p0 TABLESPACE",
            "ALTER TABLE acct DISCARD PARTITION p0 TABLESPACE",
            "ALTER TABLE acct ADD COLUMN c INT, TRUNCATE PARTITION p2",
            "PREPARE s FROM 'ALTER TABLE orders TRUNCATE PARTITION p0'",
            "prepare s from \"alter table acct drop partition p0\"",
            "PREPARE s FROM 'TRUNCATE TABLE orders'",
        ] {
            let message = refused(sql).unwrap_or_else(|| panic!("not refused: {sql}"));
            assert!(message.contains("is replicated (mode "), "{message}");
            assert!(message.contains("DELETE FROM shop."), "{message}");
        }
        let m = refused("ALTER TABLE orders TRUNCATE PARTITION p0, p1").expect("refused");
        assert!(m.contains("shop.orders is replicated (mode async, rule shop.orders)"), "{m}");
        assert!(m.contains("use DELETE FROM shop.orders PARTITION (p0, p1)"), "{m}");
        // DDL capgate carries (decision 0040) cannot be carried from an EXECUTE.
        for sql in ["PREPARE s FROM 'ALTER TABLE orders ADD COLUMN c INT'", "prepare s from \"CREATE INDEX i ON acct (a)\""] {
            let m = refused(sql).unwrap_or_else(|| panic!("not refused: {sql}"));
            assert!(m.contains("is replicated") && m.contains("(not prepared)"), "{m}");
        }
        assert_eq!(refused("PREPARE s FROM 'ALTER TABLE scratch ADD COLUMN c INT'"), None, "a local table");
        let m = refused("SELECT 1; ALTER TABLE acct DROP PARTITION p3").expect("refused in a multi-statement query");
        assert!(m.contains("(mode sync, rule shop.acct)") && m.contains("DELETE FROM shop.acct PARTITION (p3)"), "{m}");
    }

    #[test]
    fn operations_that_keep_rows_or_tables_not_replicated_go_on() {
        for sql in [
            "ALTER TABLE orders ADD PARTITION (PARTITION p9 VALUES LESS THAN MAXVALUE)",
            "ALTER TABLE orders REORGANIZE PARTITION p0 INTO (PARTITION a VALUES LESS THAN (5), PARTITION b VALUES LESS THAN (10))",
            "ALTER TABLE orders COALESCE PARTITION 2",
            "ALTER TABLE orders REMOVE PARTITIONING",
            "ALTER TABLE orders REBUILD PARTITION p0",
            "ALTER TABLE orders OPTIMIZE PARTITION p0",
            "ALTER TABLE orders PARTITION BY HASH (id) PARTITIONS 4",
            "ALTER TABLE orders DROP COLUMN `partition`",
            "ALTER TABLE orders DROP COLUMN c, ADD COLUMN d INT",
            "ALTER TABLE scratch TRUNCATE PARTITION p0",
            "ALTER TABLE scratch EXCHANGE PARTITION p0 WITH TABLE other",
            "DELETE FROM orders PARTITION (p0)",
            "SELECT 'ALTER TABLE orders TRUNCATE PARTITION p0'",
            "PREPARE s FROM @text",
            "PREPARE s FROM 'TRUNCATE scratch'",
        ] {
            assert_eq!(refused(sql), None, "{sql}");
        }
    }
}
