//! MySQL statements sqlparser rejects: first rewritten, token by token, into an equivalent
//! it parses (`UPDATE a, b SET …` → `UPDATE a CROSS JOIN b SET …`, `LOCK IN SHARE MODE` →
//! `FOR SHARE`, `DO expr` → `SELECT expr` …); else known by their first words (XA, LOAD DATA,
//! OPTIMIZE TABLE, DDL sqlparser does not know …); else `unknown` with the parser's reason.
//! The rewrites only ever serve classification: the server gets the client's own text.

use sqlparser::ast::{ObjectName, ObjectNamePart, Statement, TableFactor};
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

use crate::classify::fallback::{names_after, parse_one, unknown, word};
use crate::classify::walk::Ctx;
use crate::classify::{statement, Kind, SessionChange, StatementClass, TxControl};

/// A MySQL statement the parser rejected with `err`; `tokens` without white space.
pub(in crate::classify) fn by_keywords(ctx: &Ctx, tokens: &[Token], err: &str) -> StatementClass {
    if let Some(rewritten) = rewrite(tokens) {
        if let Ok(stmt) = parse_one(ctx, rewritten) {
            return statement::classify(ctx, &stmt);
        }
    }
    let w = |i: usize| word(tokens.get(i)).unwrap_or_default();
    let tx = |t: TxControl| StatementClass::of_kind(Kind::Transaction(t));
    match (w(0).as_str(), w(1).as_str()) {
        ("XA", _) => xa(tokens).unwrap_or_else(|| unknown(format!("cannot parse: {err}"))),
        // START TRANSACTION WITH CONSISTENT SNAPSHOT, … READ WRITE
        ("START", "TRANSACTION") => tx(TxControl::Begin),
        // COMMIT/ROLLBACK [WORK] [AND [NO] CHAIN] [[NO] RELEASE]
        ("COMMIT", _) if ends_a_transaction(&tokens[1..]) => tx(TxControl::Commit),
        ("ROLLBACK", _) if ends_a_transaction(&tokens[1..]) => tx(TxControl::Rollback),
        // PREPARE stmt FROM '…' / @var: its writes happen at EXECUTE (which is `unknown`).
        ("PREPARE", _) => StatementClass::of_kind(Kind::Utility),
        ("LOAD", "DATA" | "XML") => load_data(ctx, tokens, err),
        // MariaDB's ANALYZE [FORMAT=JSON] statement runs the statement.
        ("ANALYZE", "SELECT" | "WITH" | "INSERT" | "REPLACE" | "UPDATE" | "DELETE" | "FORMAT") => {
            let at = if w(1) == "FORMAT" { 4 } else { 1 };
            let statement = tokens.get(at..).unwrap_or(&[]);
            match parse_one(ctx, statement.to_vec()) {
                Ok(stmt) if !misparsed(&stmt) => statement::classify(ctx, &stmt),
                _ => by_keywords(ctx, statement, err),
            }
        }
        ("OPTIMIZE" | "CHECK" | "REPAIR" | "CHECKSUM" | "ANALYZE", _) => table_maintenance(ctx, &tokens[1..]),
        ("HANDLER", _) => names_after(ctx, &tokens[1..], false),
        // LOCK TABLES db.t WRITE (sqlparser takes only unqualified names).
        ("LOCK", "TABLE" | "TABLES") => lock_tables(ctx, &tokens[2..]),
        ("CREATE" | "ALTER" | "DROP" | "RENAME" | "GRANT" | "REVOKE", _) => ddl(ctx, tokens),
        ("SET", _) => StatementClass::of_kind(Kind::Session(SessionChange::Other)),
        (
            "SHOW" | "DESCRIBE" | "DESC" | "EXPLAIN" | "HELP" | "FLUSH" | "KILL" | "PURGE" | "RESET" | "CHANGE" | "STOP" | "INSTALL"
            | "UNINSTALL" | "CACHE" | "DEALLOCATE" | "GET" | "SHUTDOWN",
            _,
        ) => StatementClass::of_kind(Kind::Utility),
        ("START", "SLAVE" | "REPLICA" | "GROUP_REPLICATION") => StatementClass::of_kind(Kind::Utility),
        ("BEGIN", "NOT") => unknown(
            "BEGIN NOT ATOMIC … END: an anonymous compound statement may write any table (use a stored procedure named in the policy's [[function]])"
                .to_owned(),
        ),
        ("BINLOG", _) => unknown("BINLOG replays binary-log row events, which may write any table".to_owned()),
        _ => unknown(format!("cannot parse: {err}")),
    }
}

/// Whether sqlparser accepted `stmt` but misread it: `UPDATE IGNORE t SET …` parses as an
/// update of a table `IGNORE` aliased `t`, `DELETE QUICK FROM t` as a multi-table delete of
/// a table `QUICK` (unquoted, these are reserved words in MySQL, never table names). Such
/// statements take the rewriting path.
pub(in crate::classify) fn misparsed(stmt: &Statement) -> bool {
    let modifier = |name: &ObjectName| match name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => {
            i.quote_style.is_none() && ["IGNORE", "QUICK", "LOW_PRIORITY"].iter().any(|m| i.value.eq_ignore_ascii_case(m))
        }
        _ => false,
    };
    match stmt {
        Statement::Update(update) => matches!(&update.table.relation, TableFactor::Table { name, .. } if modifier(name)),
        Statement::Delete(delete) => delete.tables.iter().any(modifier),
        _ => false,
    }
}

/// In `CREATE`/`ALTER`/`DROP …`, the index of the word naming the kind of object (TABLE,
/// TRIGGER, PROCEDURE …), past `OR REPLACE`, `DEFINER = user`, `ALGORITHM = …`, `SQL SECURITY
/// …` and modifiers such as TEMPORARY, ONLINE, UNIQUE, AGGREGATE.
pub(super) fn object_position(tokens: &[Token]) -> usize {
    let mut i = 1;
    loop {
        match word(tokens.get(i)).as_deref() {
            Some(
                "OR" | "REPLACE" | "TEMPORARY" | "ONLINE" | "OFFLINE" | "IGNORE" | "UNIQUE" | "FULLTEXT" | "SPATIAL" | "AGGREGATE"
                | "SECURITY" | "INVOKER",
            ) => i += 1,
            // `DEFINER = user` (`'u'@'h'`, `` `u`@`h` ``, CURRENT_USER()), `ALGORITHM = MERGE`,
            // `SQL SECURITY DEFINER`: skip the value up to the next word in object position.
            Some("DEFINER" | "ALGORITHM" | "SQL") => {
                i += 1;
                let value_end = (i..(i + 8).min(tokens.len())).find(|&k| {
                    word(tokens.get(k)).is_some_and(|w| {
                        matches!(w.as_str(), "PROCEDURE" | "FUNCTION" | "TRIGGER" | "EVENT" | "VIEW" | "AGGREGATE" | "SQL" | "DEFINER")
                    })
                });
                match value_end {
                    Some(k) => i = k,
                    None => return i,
                }
            }
            _ => return i,
        }
    }
}

fn is_word(t: Option<&Token>, w: &str) -> bool {
    word(t).is_some_and(|x| x == w)
}

fn keyword(w: &str) -> Token {
    Token::make_keyword(w)
}

/// An equivalent sqlparser accepts, or `None`.
fn rewrite(tokens: &[Token]) -> Option<Vec<Token>> {
    let mut out: Vec<Token> = tokens.to_vec();
    let mut changed = false;
    match word(out.first()).as_deref() {
        // DO expr, … evaluates expressions and discards them: a SELECT of them.
        Some("DO") => {
            out[0] = keyword("SELECT");
            changed = true;
        }
        // UPDATE [LOW_PRIORITY] [IGNORE] a, b SET …: modifiers that change no table, and
        // the comma is a join.
        Some("UPDATE") => {
            while word(out.get(1)).is_some_and(|w| w == "LOW_PRIORITY" || w == "IGNORE") {
                out.remove(1);
                changed = true;
            }
            let mut depth = 0usize;
            let mut i = 1;
            while i < out.len() {
                match &out[i] {
                    Token::LParen => depth += 1,
                    Token::RParen => depth = depth.saturating_sub(1),
                    Token::Comma if depth == 0 => {
                        out.splice(i..=i, [keyword("CROSS"), keyword("JOIN")]);
                        changed = true;
                    }
                    Token::Word(w) if depth == 0 && w.keyword == Keyword::SET => break,
                    _ => {}
                }
                i += 1;
            }
        }
        // SET @v := expr: the other spelling of `=`.
        Some("SET") => {
            for t in out.iter_mut().filter(|t| **t == Token::Assignment) {
                *t = Token::Eq;
                changed = true;
            }
        }
        // DELETE [LOW_PRIORITY] [QUICK] [IGNORE]: modifiers that change no table.
        Some("DELETE") => {
            while word(out.get(1)).is_some_and(|w| matches!(w.as_str(), "LOW_PRIORITY" | "QUICK" | "IGNORE")) {
                out.remove(1);
                changed = true;
            }
        }
        _ => {}
    }
    // SELECT … LOCK IN SHARE MODE: the old spelling of FOR SHARE.
    let mut i = 0;
    while i + 3 < out.len() {
        if ["LOCK", "IN", "SHARE", "MODE"].iter().enumerate().all(|(k, w)| is_word(out.get(i + k), w)) {
            out.splice(i..i + 4, [keyword("FOR"), keyword("SHARE")]);
            changed = true;
        }
        i += 1;
    }
    // SELECT … INTO OUTFILE/DUMPFILE 'file' [options]: writes a file on the server, no table.
    if let Some(at) =
        out.windows(2).position(|p| is_word(p.first(), "INTO") && word(p.get(1)).is_some_and(|w| w == "OUTFILE" || w == "DUMPFILE"))
    {
        const CLAUSES: [&str; 10] = ["FROM", "WHERE", "GROUP", "HAVING", "WINDOW", "ORDER", "LIMIT", "FOR", "LOCK", "UNION"];
        let end = (at + 2..out.len()).find(|&k| word(out.get(k)).is_some_and(|w| CLAUSES.contains(&w.as_str()))).unwrap_or(out.len());
        out.drain(at..end);
        changed = true;
    }
    changed.then_some(out)
}

/// `COMMIT`/`ROLLBACK` options after the first word: `WORK`, `AND [NO] CHAIN`, `[NO] RELEASE`.
fn ends_a_transaction(rest: &[Token]) -> bool {
    rest.iter().all(|t| word(Some(t)).is_some_and(|w| matches!(w.as_str(), "WORK" | "AND" | "NO" | "CHAIN" | "RELEASE")))
}

/// `XA {START|BEGIN|END|PREPARE|COMMIT|ROLLBACK} xid …`, `XA RECOVER`.
fn xa(tokens: &[Token]) -> Option<StatementClass> {
    let verb = word(tokens.get(1))?;
    if verb == "RECOVER" {
        return Some(StatementClass::of_kind(Kind::Utility));
    }
    let (xid, rest) = xid(tokens.get(2..)?)?;
    let tail: Vec<String> = rest.iter().filter_map(|t| word(Some(t))).collect();
    let control = match verb.as_str() {
        "START" | "BEGIN" => TxControl::XaStart(xid),
        "END" => TxControl::XaEnd(xid),
        "PREPARE" => TxControl::PrepareTransaction(xid),
        "COMMIT" if tail == ["ONE", "PHASE"] => TxControl::Commit,
        "COMMIT" => TxControl::CommitPrepared(xid),
        "ROLLBACK" => TxControl::RollbackPrepared(xid),
        _ => return None,
    };
    Some(StatementClass::of_kind(Kind::Transaction(control)))
}

/// An xid — `gtrid [, bqual [, formatID]]`, the strings quoted or `X'…'` — in a canonical
/// SQL spelling (`'gtrid','bqual',1`, as written, white space removed), and what follows it.
fn xid(tokens: &[Token]) -> Option<(String, &[Token])> {
    let mut parts = Vec::new();
    let mut i = 0;
    loop {
        let part = match tokens.get(i)? {
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => format!("'{}'", s.replace('\'', "''")),
            Token::HexStringLiteral(h) => format!("X'{h}'"),
            Token::Number(n, _) if !parts.is_empty() => n.clone(),
            _ => return None,
        };
        parts.push(part);
        i += 1;
        if tokens.get(i) != Some(&Token::Comma) || parts.len() == 3 {
            break;
        }
        i += 1;
    }
    Some((parts.join(","), &tokens[i..]))
}

/// `LOAD DATA … INTO TABLE t …`, `LOAD XML … INTO TABLE t`: a write to `t`.
fn load_data(ctx: &Ctx, tokens: &[Token], err: &str) -> StatementClass {
    let at = tokens.windows(2).position(|p| is_word(p.first(), "INTO") && is_word(p.get(1), "TABLE"));
    match at {
        Some(i) => {
            let class = names_after(ctx, &tokens[i + 2..], true);
            if class.writes.is_empty() && !matches!(class.kind, Kind::Unknown(_)) {
                unknown(format!("cannot parse: {err}"))
            } else {
                class.with_kind(Kind::Write)
            }
        }
        // LOAD INDEX INTO CACHE …
        None if is_word(tokens.get(1), "INDEX") => StatementClass::of_kind(Kind::Utility),
        None => unknown(format!("cannot parse: {err}")),
    }
}

/// `LOCK TABLE[S] name [[AS] alias] lock_type, … [WAIT n | NOWAIT]`: every item's table is
/// read and locked.
fn lock_tables(ctx: &Ctx, items: &[Token]) -> StatementClass {
    let mut class = StatementClass::of_kind(Kind::Utility);
    for item in items.split(|t| *t == Token::Comma) {
        let one = names_after(ctx, item, false);
        if matches!(one.kind, Kind::Unknown(_)) {
            return one;
        }
        for t in one.reads {
            if !class.reads.contains(&t) {
                class.reads.push(t);
            }
        }
    }
    class.locks = class.reads.clone();
    class
}

/// `OPTIMIZE [NO_WRITE_TO_BINLOG | LOCAL] TABLE a, b …` and friends: rebuilt or checked,
/// no row changes.
fn table_maintenance(ctx: &Ctx, tokens: &[Token]) -> StatementClass {
    let start = tokens.iter().position(|t| is_word(Some(t), "TABLE") || is_word(Some(t), "TABLES"));
    match start {
        Some(i) => names_after(ctx, &tokens[i + 1..], false),
        None => StatementClass::of_kind(Kind::Utility),
    }
}

/// DDL sqlparser does not know (`ALTER TABLE t DISABLE KEYS`, `CREATE TRIGGER … ON t`,
/// `CREATE PROCEDURE … BEGIN … END`, `CREATE USER 'u'@'%'` …): the table whose definition
/// changes where one is named, else none.
fn ddl(ctx: &Ctx, tokens: &[Token]) -> StatementClass {
    let at = |i: usize| word(tokens.get(i)).unwrap_or_default();
    let first = at(0);
    let i = object_position(tokens);
    let temporary = (1..i).any(|k| at(k) == "TEMPORARY");
    let object = at(i);
    let after = |k: usize| -> usize {
        let mut k = k;
        while matches!(at(k).as_str(), "IF" | "NOT" | "EXISTS") {
            k += 1;
        }
        k
    };
    let target = match (first.as_str(), object.as_str()) {
        // Temporary tables belong to the session: nothing to replicate.
        ("CREATE" | "DROP" | "ALTER", "TABLE") if temporary => None,
        ("CREATE" | "DROP" | "ALTER", "TABLE") => Some(after(i + 1)),
        ("CREATE", "TRIGGER") => {
            // CREATE TRIGGER name {BEFORE|AFTER} {INSERT|UPDATE|DELETE} ON table
            (i..tokens.len()).find(|&k| at(k) == "ON" && matches!(at(k - 1).as_str(), "INSERT" | "UPDATE" | "DELETE")).map(|k| k + 1)
        }
        ("CREATE", "INDEX") => (i..tokens.len()).find(|&k| at(k) == "ON").map(|k| k + 1),
        _ => None,
    };
    match target {
        Some(k) => names_after(ctx, tokens.get(k..).unwrap_or(&[]), true).with_kind(Kind::Ddl),
        None => StatementClass::of_kind(Kind::Ddl),
    }
}
