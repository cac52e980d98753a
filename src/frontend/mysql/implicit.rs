//! Statements that commit an open transaction implicitly on MySQL / MariaDB, and the
//! multi-statement queries in which capgate cannot coordinate that commit (decision 0027).
//!
//! A sync table's changes must commit on the primary only through capgate's coordinated
//! commit (decision 0016). MariaDB commits an open transaction, without a COMMIT, before it
//! runs DDL (but not `CREATE` / `DROP TEMPORARY TABLE`), `BEGIN` / `START TRANSACTION`,
//! `TRUNCATE`, `LOCK TABLES`, `UNLOCK TABLES` while tables are locked, `ANALYZE`, `CHECK`,
//! `OPTIMIZE` and `REPAIR TABLE`, `FLUSH`, `RESET`, `SET PASSWORD`, and `SET autocommit = 1`
//! in any spelling (`:=`, `'ON'`, `DEFAULT`, `@@session.` …) when autocommit was off
//! (verified on MariaDB 10.11: `@@in_transaction` and the row after a later ROLLBACK; `CACHE
//! INDEX`, `LOAD INDEX INTO CACHE`, `CHECKSUM TABLE`, `SAVEPOINT` and `SET GLOBAL` do not).
//! Sent as a query of its own, such a statement is held and the open transaction coordinated first
//! (`super::hold`). Inside a multi-statement query, after a statement that may write a sync
//! table, capgate cannot step in between the two: such a query is refused before any of it
//! runs, naming both statements, the table and the remedy.
//!
//! `TRUNCATE` of a replicated table fires no trigger, so capture would not see the rows go:
//! sent as a query of its own (or prepared alone), capgate carries it ([`truncate_alone`],
//! `super::truncate`, decision 0029); inside a multi-statement query it is refused.
//!
//! Statements are judged by their text where it can be lined up with the classification's
//! statements (the tokenizer cuts a stored program's definition where MariaDB does, at the
//! `END` of its body: `crate::classify::statement_ends`). Where it cannot (the parser, reading
//! the whole text, counted its statements otherwise), a multi-statement query is judged by the
//! statements' kinds, conservatively: refused when a statement whose kind may commit follows one that
//! may write a sync table, or when a piece of the text is a TRUNCATE of a replicated table.
//!
//! Nothing here does I/O: statement text and classification in, a verdict out.

use crate::classify::{classify, statement_ends, Catalog, Classification, Dialect, Kind, SearchPath, StatementClass, TableName, TxControl};
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
/// them. When they could not be aligned, a statement commits when its kind may
/// ([`may_commit_by_kind`] without `Utility` and session changes, which most often commit
/// nothing) or when a piece of the text, cut at each `;`, says it does.
pub fn any_commits(c: &Classification, texts: &[&str], locked: bool) -> bool {
    if aligned(c, texts) {
        return c
            .statements
            .iter()
            .zip(texts)
            .enumerate()
            .any(|(i, (s, text))| commits_implicitly(text, &s.kind, locked_at(texts, i, locked)));
    }
    // Unaligned: an UNLOCK TABLES anywhere is taken to commit (the query may lock first).
    let whole = texts.first().copied().unwrap_or("");
    c.statements.iter().any(|s| matches!(s.kind, Kind::Ddl | Kind::Transaction(TxControl::Begin)))
        || rough_pieces(whole).any(|piece| commits_implicitly(piece, &Kind::Utility, true))
}

/// Whether `texts` holds one text per statement of `c` ([`statement_texts`] could align them).
pub(super) fn aligned(c: &Classification, texts: &[&str]) -> bool {
    texts.len() == c.statements.len()
}

/// The pieces of `sql` between semicolons, quotes and comments not considered: only for
/// conservative checks when the tokenizer's statements could not be aligned with the
/// parser's (a piece may then start inside a string or a stored program's body, and a
/// statement after a definition may be in none of the classification's statements).
fn rough_pieces(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(';').map(str::trim).filter(|p| !p.is_empty())
}

/// Whether a statement of this kind may commit an open transaction implicitly, judged
/// without its text: DDL (a temporary table's does not, but the kind does not say), BEGIN,
/// the utility statements (ANALYZE, LOCK, FLUSH …), session statements (`SET autocommit`,
/// `SET PASSWORD`), a write (it may be a TRUNCATE) and a statement capgate cannot classify.
fn may_commit_by_kind(kind: &Kind) -> bool {
    matches!(kind, Kind::Ddl | Kind::Transaction(TxControl::Begin) | Kind::Utility | Kind::Session(_) | Kind::Write | Kind::Unknown(_))
}

/// Whether the session holds `LOCK TABLES` locks after `texts` ran, given `locked` before.
pub fn locks_tables(texts: &[&str], locked: bool) -> bool {
    lock_change(texts).unwrap_or(locked)
}

/// Whether tables are locked when statement `i` of `texts` runs, given `locked` before the
/// query: a `LOCK TABLES` earlier in the same query makes its `UNLOCK TABLES` a commit.
pub(super) fn locked_at(texts: &[&str], i: usize, locked: bool) -> bool {
    locks_tables(&texts[..i.min(texts.len())], locked)
}

/// What `texts` leave of the session's table locks: held after a last `LOCK TABLES`
/// (`Some(true)`), none after a last `UNLOCK TABLES`, `BEGIN` or `START TRANSACTION` (which
/// release them, as MariaDB's implicit `UNLOCK TABLES`: `Some(false)`), unchanged without any.
pub fn lock_change(texts: &[&str]) -> Option<bool> {
    let mut change = None;
    for text in texts {
        let w = words(text, 2);
        match (w.first().map(String::as_str), w.get(1).map(String::as_str)) {
            (Some("lock"), Some("table" | "tables")) => change = Some(true),
            (Some("unlock"), Some("table" | "tables")) => change = Some(false),
            // Not `BEGIN NOT ATOMIC … END`, a compound statement (and `BEGIN WORK` is BEGIN).
            (Some("begin"), None | Some("work")) | (Some("start"), Some("transaction")) => change = Some(false),
            _ => {}
        }
    }
    change
}

/// The statement's words, lower case, comments and extra spaces left out, at most `n`.
fn words(text: &str, n: usize) -> Vec<String> {
    words_at(text, n).into_iter().map(|(w, _)| w).collect()
}

/// [`words`], each with the byte offset in `text` just past it.
pub(super) fn words_at(text: &str, n: usize) -> Vec<(String, usize)> {
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
        let offset = text.len() - rest.len() + end;
        out.push((rest[..end].to_ascii_lowercase(), offset));
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

/// Whether a `SET` statement turns autocommit on. Every assignment of the statement is
/// looked at: the name with `@@`, `@@session.`, `@@local.`, `SESSION` or `LOCAL` (not
/// `GLOBAL`: that one commits nothing), `=` or `:=`, and any value but a clear `0`, `off` or
/// `false` (quoted or not, any case) counts as on — `DEFAULT` is on, and an expression
/// capgate does not evaluate may be. It commits only when autocommit was off: inside `BEGIN`
/// with autocommit on it commits nothing (`super::hold` looks at the session's flags).
pub fn enables_autocommit(text: &str) -> bool {
    let mut text = text.trim().trim_end_matches(';');
    while let Some(after) = text.strip_prefix("/*") {
        text = after.split_once("*/").map_or("", |(_, rest)| rest).trim_start();
    }
    let Some(rest) = text.get(..3).filter(|w| w.eq_ignore_ascii_case("set")).map(|_| &text[3..]) else { return false };
    if !rest.starts_with(|c: char| c.is_whitespace() || c == '@' || c == '/') {
        return false;
    }
    assignments(rest).into_iter().any(|a| {
        let Some((name, value)) = a.split_once('=') else { return false };
        let name = name.trim_end().trim_end_matches(':').to_ascii_lowercase();
        let mut words = name.split_whitespace();
        let Some(variable) = words.next_back() else { return false };
        if words.any(|w| w == "global") {
            return false;
        }
        let variable = variable.strip_prefix("@@").unwrap_or(variable);
        let variable = variable.strip_prefix("session.").or_else(|| variable.strip_prefix("local.")).unwrap_or(variable);
        if variable.trim_matches('`') != "autocommit" {
            return false;
        }
        let value = value.trim().to_ascii_lowercase();
        let unquoted = ['\'', '"'].iter().find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q))).unwrap_or(&value);
        !matches!(unquoted.trim(), "0" | "off" | "false")
    })
}

/// The assignments of a `SET` statement's text after `SET`: cut at the commas outside
/// parentheses and quotes.
fn assignments(rest: &str) -> Vec<&str> {
    let (mut out, mut start, mut depth, mut quote) = (Vec::new(), 0, 0usize, None);
    for (i, ch) in rest.char_indices() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(ch),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, ',') if depth == 0 => {
                out.push(&rest[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&rest[start..]);
    out
}

/// The sync table `statement` may write under `policy` (`None`: it writes none that the
/// policy replicates synchronously); an `unknown` statement may write any, so it answers
/// with its reason.
pub(super) fn sync_write(statement: &StatementClass, policy: &Policy) -> Option<String> {
    if let Kind::Unknown(why) = &statement.kind {
        return Some(format!("a sync table (capgate cannot tell which tables it writes: {why})"));
    }
    statement
        .writes
        .iter()
        .map(|t| policy.decide_table(t))
        .find_map(|d| matches!(d.mode, Mode::Sync { .. }).then(|| format!("sync table {} (rule {})", d.table, d.rule)))
}

/// The table of `c` when it is one `TRUNCATE [TABLE] t` statement alone (`texts` as
/// [`statement_texts`] gives them): capgate can carry it (decision 0029) whatever the table.
pub fn truncate_alone<'c>(c: &'c Classification, texts: &[&str]) -> Option<&'c TableName> {
    match (c.statements.as_slice(), texts) {
        ([one], [text]) if words(text, 1).first().map(String::as_str) == Some("truncate") && one.writes.len() == 1 => one.writes.first(),
        _ => None,
    }
}

/// The refusal message of a `TRUNCATE` of a table the policy replicates that capgate cannot
/// carry (None: there is none in `c`, or it is a statement alone, which
/// [`truncate_alone`] gives the caller to carry). TRUNCATE fires no trigger on MySQL, so
/// capture never sees the rows go; capgate carries it only when it runs alone, as a query of
/// its own, not in the middle of a multi-statement query.
pub fn truncates_replicated(c: &Classification, texts: &[&str], path: &SearchPath, policy: &Policy) -> Option<String> {
    if !aligned(c, texts) {
        return truncates_unaligned(texts.first().copied().unwrap_or(""), path, policy);
    }
    if truncate_alone(c, texts).is_some() {
        return None;
    }
    let text = |i: usize| texts[i];
    c.statements.iter().enumerate().find_map(|(i, statement)| {
        if words(text(i), 1).first().map(String::as_str) != Some("truncate") {
            return None;
        }
        let d = statement.writes.iter().map(|t| policy.decide_table(t)).find(|d| d.mode != Mode::Local)?;
        Some(format!(
            "capgate refused this query: it holds `{}` (statement {} of {}), and {} is replicated (mode {}, rule {}); \
             TRUNCATE fires no trigger on MySQL, and capgate carries it to the replicas only when it is sent as a query of \
             its own; nothing was run. Send the TRUNCATE as a query of its own (or use DELETE FROM {})",
            shown(text(i)),
            i + 1,
            c.statements.len(),
            d.table,
            d.mode.name(),
            d.rule,
            d.table
        ))
    })
}

/// [`truncates_replicated`] when the statements' texts could not be aligned with `c`: each
/// piece of `sql` (cut at each `;`) that starts with `TRUNCATE` is classified alone (tables
/// resolve against `path`), as `c` may not hold it at all.
fn truncates_unaligned(sql: &str, path: &SearchPath, policy: &Policy) -> Option<String> {
    let catalog = Catalog::new();
    rough_pieces(sql).filter(|p| words(p, 1).first().map(String::as_str) == Some("truncate")).find_map(|piece| {
        let c = classify(Dialect::MySql, piece, path, &catalog);
        let d = c.writes().into_iter().map(|t| policy.decide_table(t)).find(|d| d.mode != Mode::Local)?;
        Some(format!(
            "capgate refused this query: it holds `{}`, and {} is replicated (mode {}, rule {}); TRUNCATE fires no trigger \
             on MySQL, and capgate carries it to the replicas only when it is sent as a query of its own (capgate could not \
             tell this query's statements apart: its tokenizer and parser count them differently); nothing was run. Send the \
             TRUNCATE as a query of its own (or use DELETE FROM {})",
            shown(piece),
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
    if c.statements.len() < 2 {
        return None;
    }
    if !aligned(c, texts) {
        return commit_mid_unaligned(c, policy);
    }
    let mut writer: Option<(usize, String)> = None;
    for (i, (statement, text)) in c.statements.iter().zip(texts).enumerate() {
        if let Some((j, table)) = &writer {
            if commits_implicitly(text, &statement.kind, locked_at(texts, i, locked)) {
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

/// [`commit_mid_query`] when the statements' texts could not be aligned with `c` (the
/// tokenizer and the parser count them differently):
/// without the texts, a statement after one that may write a sync table is taken to commit
/// whenever its kind may ([`may_commit_by_kind`]).
fn commit_mid_unaligned(c: &Classification, policy: &Policy) -> Option<String> {
    let n = c.statements.len();
    let (j, table) = c.statements.iter().enumerate().find_map(|(j, s)| sync_write(s, policy).map(|t| (j, t)))?;
    // The statement most likely to commit is named: DDL or BEGIN before any other kind.
    let after = || c.statements.iter().enumerate().skip(j + 1);
    let (i, committer) = after()
        .find(|(_, s)| matches!(s.kind, Kind::Ddl | Kind::Transaction(TxControl::Begin)))
        .or_else(|| after().find(|(_, s)| may_commit_by_kind(&s.kind)))?;
    Some(format!(
        "capgate refused this query: statement {} of {n} (a {} statement) may commit the open transaction implicitly, after \
         statement {} wrote {table}, and capgate must coordinate that commit with the replicas but cannot in the middle of a \
         query; capgate could not tell the query's statements apart (its tokenizer and parser count them differently), so \
         it could not rule the commit out; nothing was run. Send the statements as queries of their own (COMMIT first, if \
         the transaction should end there)",
        i + 1,
        committer.kind.name(),
        j + 1,
    ))
}

#[cfg(test)]
#[path = "implicit_tests.rs"]
mod tests;
