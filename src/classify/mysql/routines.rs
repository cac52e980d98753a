//! What MySQL stored procedures and functions write, read from their bodies.
//!
//! The MySQL front end reads `information_schema.ROUTINES` on the primary and hands the rows
//! to [`add_routines`]. A body's data-changing statements (INSERT, REPLACE, UPDATE, DELETE,
//! TRUNCATE, LOAD DATA, CALL, DDL) are cut out of its compound-statement syntax at the
//! semicolon that ends each one and classified like any statement, with the routine's
//! database as current database and its own `sql_mode`; calls of other stored functions are
//! followed through the catalog. What cannot be told — dynamic SQL (PREPARE / EXECUTE), a
//! statement that does not parse, a hidden body — leaves the routine's writes unknown, so
//! calling it is `unknown` until the policy's `[[function]]` names its tables.
//! `SQL_DATA_ACCESS` (`READS SQL DATA` …) is not used: MySQL does not enforce it.

use std::collections::HashMap;

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::dialect::{parser_dialect, SqlMode};
use crate::classify::catalog::{Catalog, FunctionInfo, Volatility};
use crate::classify::fallback::{parse_one, word};
use crate::classify::names::{SearchPath, TableName};
use crate::classify::walk::Ctx;
use crate::classify::{statement, Dialect, Kind};

/// The query that reads the rows [`add_routines`] takes, in [`Routine`]'s field order
/// (`IS_DETERMINISTIC` is `YES` or `NO`; `ROUTINE_DEFINITION` may be NULL).
pub const ROUTINES_QUERY: &str =
    "SELECT ROUTINE_SCHEMA, ROUTINE_NAME, IS_DETERMINISTIC, ROUTINE_DEFINITION, SQL_MODE FROM information_schema.ROUTINES";

/// One row of `information_schema.ROUTINES` (the columns classification needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routine {
    /// `ROUTINE_SCHEMA`: its database, where its body's unqualified names resolve.
    pub schema: String,
    /// `ROUTINE_NAME`.
    pub name: String,
    /// `IS_DETERMINISTIC = 'YES'`.
    pub deterministic: bool,
    /// `ROUTINE_DEFINITION`; `None` when the server hides it (the reading account may not
    /// see the routine's body).
    pub body: Option<String>,
    /// `SQL_MODE`: the mode the routine was created in, which its body is read in.
    pub sql_mode: String,
}

/// How many rounds of following calls between routines before giving up: each round
/// settles one more level of nesting.
const MAX_ROUNDS: usize = 32;

/// Add `routines` to `catalog`, each with the tables its body writes (or unknown writes), and
/// switch the catalog to MySQL's case-insensitive routine names. Procedures and functions of
/// the same name share one entry, which covers both. Add the policy's `[[function]]` entries
/// after this, so they override.
pub fn add_routines(catalog: &mut Catalog, routines: &[Routine]) {
    catalog.set_routine_names_ignore_case();
    // Least fixpoint: start from "writes nothing" and let each round add what the bodies and
    // the routines they call write, until nothing changes.
    let mut writes: HashMap<(String, String), Option<Vec<TableName>>> = HashMap::new();
    for r in routines {
        writes.insert(key(r), Some(Vec::new()));
    }
    let mut settled = false;
    for _ in 0..MAX_ROUNDS {
        let mut round = catalog.clone();
        for ((schema, name), w) in &writes {
            round.add_function(schema, name, FunctionInfo { volatility: Volatility::Volatile, writes: w.clone() });
        }
        let mut next: HashMap<(String, String), Option<Vec<TableName>>> = HashMap::new();
        for r in routines {
            let found = body_writes(r, &round);
            let entry = next.entry(key(r)).or_insert_with(|| Some(Vec::new()));
            *entry = union(entry.take(), found);
        }
        if next == writes {
            settled = true;
            break;
        }
        writes = next;
    }
    for r in routines {
        let w = if settled { writes.get(&key(r)).cloned().flatten() } else { None };
        let volatility = match &w {
            Some(tables) if tables.is_empty() && routines.iter().filter(|o| key(o) == key(r)).all(|o| o.deterministic) => {
                Volatility::Stable
            }
            _ => Volatility::Volatile,
        };
        catalog.add_function(&r.schema, &r.name, FunctionInfo { volatility, writes: w });
    }
}

fn key(r: &Routine) -> (String, String) {
    (r.schema.clone(), r.name.to_lowercase())
}

/// Both sets of tables; unknown if either is.
fn union(a: Option<Vec<TableName>>, b: Option<Vec<TableName>>) -> Option<Vec<TableName>> {
    let (mut a, b) = (a?, b?);
    for t in b {
        if !a.contains(&t) {
            a.push(t);
        }
    }
    a.sort();
    Some(a)
}

/// Words after which a data-changing keyword is not a statement of its own: `FOR UPDATE`,
/// `ON DUPLICATE KEY UPDATE`, `ON DELETE CASCADE`, a trigger's `AFTER INSERT`.
const NOT_A_STATEMENT_AFTER: [&str; 5] = ["FOR", "KEY", "ON", "BEFORE", "AFTER"];

/// The tables one routine's body writes, `None` when that cannot be told.
fn body_writes(r: &Routine, catalog: &Catalog) -> Option<Vec<TableName>> {
    let body = r.body.as_deref()?;
    let mode = SqlMode::from_sql_mode(&r.sql_mode);
    let path = SearchPath::database(Some(&r.schema)).with_sql_mode(mode);
    let ctx = Ctx { dialect: Dialect::MySql, path: &path, catalog };
    let dialect = parser_dialect(mode);
    let tokens: Vec<Token> = Tokenizer::new(dialect.as_ref(), body)
        .tokenize()
        .ok()?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .collect();
    let mut writes = Some(Vec::new());
    let mut i = 0;
    while i < tokens.len() {
        let w = word(tokens.get(i)).unwrap_or_default();
        let before = i.checked_sub(1).and_then(|p| tokens.get(p));
        let follows_name =
            matches!(before, Some(Token::Period)) || word(before).is_some_and(|b| NOT_A_STATEMENT_AFTER.contains(&b.as_str()));
        match w.as_str() {
            // Dynamic SQL: its text is only known when it runs.
            "PREPARE" | "EXECUTE" => return None,
            "INSERT" | "REPLACE" | "UPDATE" | "DELETE" | "TRUNCATE" | "LOAD" | "CALL" | "CREATE" | "ALTER" | "DROP" | "RENAME"
                if !follows_name && tokens.get(i + 1) != Some(&Token::LParen) =>
            {
                let end = statement_end(&tokens, i);
                let class = statement::classify(&ctx, &parse_one(&ctx, tokens[i..end].to_vec()).ok()?);
                if matches!(class.kind, Kind::Unknown(_)) {
                    return None;
                }
                writes = union(writes, Some(class.writes));
                i = end;
                continue;
            }
            _ => {}
        }
        // A call of a stored function outside those statements (`SET v = f(x)`, `IF f(x)`).
        if tokens.get(i + 1) == Some(&Token::LParen) {
            if let Token::Word(word) = &tokens[i] {
                let schema = match (before, i.checked_sub(2).and_then(|p| tokens.get(p))) {
                    (Some(Token::Period), Some(Token::Word(db))) => db.value.clone(),
                    _ => r.schema.clone(),
                };
                match catalog.function(&schema, &word.value) {
                    Some(info) if info.volatility == Volatility::Volatile => writes = union(writes, info.writes.clone()),
                    Some(_) => {}
                    // A type (`VARCHAR(20)`), a control word or a built-in: not a routine.
                    None if word.quote_style.is_none()
                        && (word.keyword != Keyword::NoKeyword || super::builtin(&word.value.to_lowercase(), 1).is_some()) => {}
                    None if catalog.is_complete() => {}
                    None => return None,
                }
            }
        }
        i += 1;
    }
    writes
}

/// The index of the `;` that ends the statement starting at `start` (outside parentheses),
/// or the end of the body.
fn statement_end(tokens: &[Token], start: usize) -> usize {
    let mut depth = 0usize;
    for (k, t) in tokens.iter().enumerate().skip(start) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::SemiColon if depth == 0 => return k,
            _ => {}
        }
    }
    tokens.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn routine(name: &str, deterministic: bool, body: &str) -> Routine {
        Routine { schema: "app".into(), name: name.into(), deterministic, body: Some(body.into()), sql_mode: String::new() }
    }

    fn info<'a>(catalog: &'a Catalog, name: &str) -> &'a FunctionInfo {
        catalog.function("app", name).unwrap_or_else(|| panic!("{name} not in the catalog"))
    }

    fn tables(names: &[(&str, &str)]) -> Option<Vec<TableName>> {
        Some(names.iter().map(|(s, n)| TableName::new(*s, *n)).collect())
    }

    #[test]
    fn bodies_are_read_statement_by_statement() {
        let mut catalog = Catalog::new();
        add_routines(
            &mut catalog,
            &[
                // Labels, handlers, loops, a handler's own statement, FOR UPDATE and
                // ON DUPLICATE KEY UPDATE (no statements of their own), the INSERT() string
                // function, a stored function called in a SET.
                routine(
                    "worker",
                    false,
                    "BEGIN
                       DECLARE done INT DEFAULT 0;
                       DECLARE c CURSOR FOR SELECT id FROM jobs WHERE state = 'new' FOR UPDATE;
                       DECLARE CONTINUE HANDLER FOR SQLEXCEPTION INSERT INTO errors (at) VALUES (NOW());
                       main: LOOP
                         FETCH c INTO v;
                         IF done THEN LEAVE main; END IF;
                         UPDATE jobs SET state = INSERT(state, 1, 0, 'x') WHERE id = v;
                         INSERT INTO other.stats (k, n) VALUES ('jobs', 1) ON DUPLICATE KEY UPDATE n = n + 1;
                         SET @next = next_id();
                       END LOOP main;
                     END",
                ),
                routine("next_id", false, "BEGIN UPDATE seq SET n = n + 1; RETURN (SELECT n FROM seq); END"),
                // Declared DETERMINISTIC, but it writes: its calls still count as writes.
                routine("touch", true, "UPDATE t SET n = n + 1"),
                routine("pure", true, "RETURN x * 2"),
                // A procedure and a function of one name share an entry covering both.
                routine("twin", false, "DELETE FROM a"),
                routine("Twin", true, "RETURN (SELECT COUNT(*) FROM b)"),
            ],
        );
        let worker = info(&catalog, "worker");
        assert_eq!(worker.writes, tables(&[("app", "errors"), ("app", "jobs"), ("app", "seq"), ("other", "stats")]), "{worker:?}");
        assert_eq!(info(&catalog, "touch").volatility, Volatility::Volatile);
        assert_eq!(info(&catalog, "touch").writes, tables(&[("app", "t")]));
        assert_eq!(info(&catalog, "pure").volatility, Volatility::Stable);
        assert_eq!(info(&catalog, "TWIN").writes, tables(&[("app", "a")]));
        assert_eq!(info(&catalog, "twin").volatility, Volatility::Volatile);
    }

    #[test]
    fn what_cannot_be_told_stays_unknown() {
        let mut catalog = Catalog::new();
        let hidden = Routine { body: None, ..routine("hidden", false, "") };
        add_routines(
            &mut catalog,
            &[
                routine("dynamic", false, "BEGIN SET @s = 'DELETE FROM t'; PREPARE s FROM @s; EXECUTE s; END"),
                routine("calls_dynamic", false, "BEGIN INSERT INTO log VALUES (1); CALL dynamic(); END"),
                routine("unparsed", false, "BEGIN UPDATE FROM WHERE; END"),
                routine("calls_unknown", false, "BEGIN SET @x = mystery(1); END"),
                hidden,
            ],
        );
        for name in ["dynamic", "calls_dynamic", "unparsed", "calls_unknown", "hidden"] {
            assert_eq!(info(&catalog, name).writes, None, "{name}");
        }
        // With every routine of the server loaded, a name that is none of them is a built-in
        // (or a column, a variable): nothing to follow.
        let mut complete = Catalog::new();
        complete.set_complete(true);
        add_routines(&mut complete, &[routine("calls_unknown", false, "BEGIN SET @x = mystery(1); END")]);
        assert_eq!(info(&complete, "calls_unknown").writes, Some(vec![]));
    }

    #[test]
    fn a_body_is_read_in_its_own_sql_mode_and_database() {
        let mut catalog = Catalog::new();
        let ansi = Routine { sql_mode: "ANSI_QUOTES".into(), ..routine("ansi", false, r#"UPDATE "Orders" SET "paid" = 1"#) };
        add_routines(&mut catalog, &[ansi]);
        assert_eq!(info(&catalog, "ansi").writes, tables(&[("app", "Orders")]));
        // Called from another database, it still writes app's table.
        let c = classify(Dialect::MySql, "CALL app.ansi()", &SearchPath::database(Some("shop")), &catalog);
        assert_eq!(c.statements[0].writes, [TableName::new("app", "Orders")]);
    }
}
