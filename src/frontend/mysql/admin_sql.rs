//! The admin SQL commands (`SHOW CAPGATE …`, `CAPGATE …`, see [`crate::admin::commands`]) on
//! the MySQL port: capgate answers them itself and never forwards them to the primary.
//!
//! A COM_QUERY whose text is one admin command is held like a COMMIT the sync commit takes
//! over (`super::hold`): every reply owed to earlier commands reaches the client first, then
//! capgate answers in its place with a text-protocol result set (or an ERR) whose final
//! status flags are the session's as the last reply left them — the primary never saw the
//! command, so an open transaction is neither advanced nor ended by it.
//!
//! What is refused, before anything reaches the primary:
//! - an admin command in a multi-statement query (the primary would run the statements
//!   around it, then fail on it, or the reverse): ERR 1235, nothing of the query runs;
//! - an SQL `PREPARE name FROM '<admin command>'` (the primary would be asked to prepare a
//!   command it does not know): ERR 1295, nothing of the query runs;
//! - a COM_STMT_PREPARE of one: ERR 1295, as MariaDB answers a statement that cannot be
//!   prepared (connectors that fall back to client-side prepares on 1295 then send it as a
//!   plain query, which works);
//! - a user not in `admin_users`: ERR 1227 (42000), MySQL's "you need the … privilege".
//!
//! Comments (`/* … */`, `-- `, `#`) before and after a command are skipped, as the server
//! skips them; an executable comment (`/*! … */`) is not a comment.
//!
//! The result sets are UTF-8 text declared `utf8mb4` whatever the session's
//! `character_set_results`: the declaration says what the bytes are (drivers decode by it);
//! following the session's character set would mean tracking `SET NAMES` and the handshake's
//! collation and converting to any of MariaDB's character sets, for names that are ASCII in
//! nearly every schema (CONFIG.md, "Admin SQL commands").

use std::sync::Arc;

use super::relay::SessionState;
use super::statements::Statements;
use crate::admin::commands::{self, Names};
use crate::admin::table::{ColumnType, ResultTable};
use crate::admin::AdminError;
use crate::classify::{statement_ends, Dialect, SearchPath, SqlMode};
use crate::protocol::mysql::command::skip_comments;
use crate::protocol::mysql::result_set::{self, Framing, Kind};
use crate::protocol::mysql::{errors, packet, status};

/// ER_SPECIFIC_ACCESS_DENIED_ERROR: the user is not in `admin_users`.
const ACCESS_DENIED: (u16, &str) = errors::SPECIFIC_ACCESS_DENIED;
/// ER_PARSE_ERROR: not a command capgate knows.
const SYNTAX: (u16, &str) = (1064, "42000");
/// ER_UNSUPPORTED_PS: an admin command sent to be prepared.
const UNSUPPORTED_PS: (u16, &str) = (1295, "HY000");

/// What the text of a COM_QUERY (or COM_STMT_PREPARE) holds of admin commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The whole text is one admin command: this text, comments before and after it removed.
    Alone(String),
    /// An admin command among other statements.
    Mixed,
    /// An SQL-level `PREPARE name FROM '<admin command>'`: the primary would be asked to
    /// prepare a command it does not know.
    Prepared,
}

/// Whether `sql` holds an admin command; `flags`: the session's status flags (how quotes
/// and backslashes cut the text into statements). Done on every query, so a text is
/// rejected on its first bytes unless it may start with a command (or an SQL `PREPARE`) or
/// holds a `;`, and then unless it holds the word `capgate`; only then is it cut into
/// statements.
pub fn find(sql: &[u8], flags: u16) -> Option<Found> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let may_start = matches!(sql[start], b's' | b'S' | b'c' | b'C' | b'p' | b'P' | b'/' | b'#' | b'-');
    let several = sql[start..].contains(&b';');
    if !may_start && !several {
        return None;
    }
    let text = String::from_utf8_lossy(sql);
    let first = skip_comments(&text);
    let starts = commands::is_admin_text(first.as_bytes()) || first.get(..7).is_some_and(|w| w.eq_ignore_ascii_case("prepare"));
    // Every admin command holds the word `capgate`.
    let names_capgate = || sql.windows(7).any(|w| w.eq_ignore_ascii_case(b"capgate"));
    if !(starts || several && names_capgate()) {
        return None;
    }
    let mode = SqlMode { ansi_quotes: flags & status::ANSI_QUOTES != 0, no_backslash_escapes: flags & status::NO_BACKSLASH_ESCAPES != 0 };
    let path = SearchPath::new(None::<String>).with_sql_mode(mode);
    let ends = statement_ends(Dialect::MySql, &path, &text).unwrap_or_else(|| vec![text.len()]);
    let mut pieces = Vec::new();
    let mut from = 0;
    for end in ends {
        pieces.push(text.get(from..end).unwrap_or(""));
        from = end;
    }
    let is_admin = |p: &str| commands::is_admin_text(skip_comments(p).as_bytes());
    if pieces.iter().any(|p| super::sql_prepare::prepared_text(p).is_some_and(|t| is_admin(&t))) {
        return Some(Found::Prepared);
    }
    let admin = pieces.iter().filter(|p| is_admin(p)).count();
    match (pieces.as_slice(), admin) {
        (_, 0) => None,
        // The statement, without the comments before it or after it (with or without `;`).
        ([one], _) => Some(Found::Alone(without_trailing_comments(skip_comments(one), mode).to_owned())),
        _ => Some(Found::Mixed),
    }
}

/// `text` up to the end of its last token: white space and comments after it (`/* … */`,
/// `-- …`, `# …`; not an executable `/*! … */`) left out, as the server ignores them. Quotes
/// (`'`, `"`, `` ` ``, doubled or backslash-escaped as `mode` says) are followed, so a comment
/// marker inside one is text.
fn without_trailing_comments(text: &str, mode: SqlMode) -> &str {
    let bytes = text.as_bytes();
    let (mut i, mut end) = (0, 0);
    while i < bytes.len() {
        let rest = &bytes[i..];
        match bytes[i] {
            b'\'' | b'"' | b'`' => {
                let quote = bytes[i];
                let mut k = i + 1;
                while k < bytes.len() {
                    let escaped = bytes[k] == b'\\' && quote != b'`' && !mode.no_backslash_escapes;
                    if escaped || (bytes[k] == quote && bytes.get(k + 1) == Some(&quote)) {
                        k += 2;
                    } else if bytes[k] == quote {
                        break;
                    } else {
                        k += 1;
                    }
                }
                i = (k + 1).min(bytes.len());
                end = i;
            }
            b'/' if rest.starts_with(b"/*") && !rest.starts_with(b"/*!") && !rest.starts_with(b"/*M!") => {
                i = text[i + 2..].find("*/").map_or(bytes.len(), |k| i + 2 + k + 2);
            }
            b'-' if rest.starts_with(b"--") && rest.get(2).is_none_or(|c| c.is_ascii_whitespace()) => {
                i = text[i..].find('\n').map_or(bytes.len(), |k| i + k + 1);
            }
            b'#' => i = text[i..].find('\n').map_or(bytes.len(), |k| i + k + 1),
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                i += 1;
                end = i;
            }
        }
    }
    &text[..end]
}

/// The reply to a query holding an admin command among other statements.
pub fn mixed_refusal() -> Vec<u8> {
    packet::err(
        1,
        errors::NOT_SUPPORTED,
        "capgate: an admin command (SHOW CAPGATE ..., CAPGATE ...) must be sent as a query of its own, not inside a \
         multi-statement query; nothing of this query ran: send the admin command alone",
    )
}

/// The reply to an SQL `PREPARE … FROM '<admin command>'`.
pub fn sql_prepare_refusal() -> Vec<u8> {
    packet::err(
        1,
        UNSUPPORTED_PS,
        "This command is not supported in the prepared statement protocol: capgate admin commands (SHOW CAPGATE ..., \
         CAPGATE ...) cannot be prepared with SQL PREPARE (capgate answers them itself; the primary does not know them); \
         nothing of this query ran: send the admin command as a plain query of its own",
    )
}

/// The reply to a COM_STMT_PREPARE of an admin command.
pub fn prepare_refusal() -> Vec<u8> {
    packet::err(
        1,
        UNSUPPORTED_PS,
        "This command is not supported in the prepared statement protocol: capgate admin commands (SHOW CAPGATE ..., \
         CAPGATE ...) run as plain queries only (COM_QUERY: the mariadb client sends them so; in a driver, use its text or \
         unprepared query call)",
    )
}

/// Answer the admin command `sql` once every earlier reply has reached the client: queue
/// capgate's own reply in its turn.
pub async fn answer(state: &SessionState, statements: &Statements, sql: &str) {
    state.wait_drained().await;
    let (flags, database) = {
        let flow = state.lock();
        (flow.status, flow.schema.clone())
    };
    let shared: &Arc<super::Shared> = statements.shared();
    let user = statements.user();
    let names = Names::MySql { database: database.as_deref() };
    let reply = match commands::run_with(&shared.admin, user, sql, names).await {
        Ok(table) => encode(&table, flags, statements.framing()),
        Err(e) => {
            tracing::info!(%user, "admin command refused: {e}");
            error(&e)
        }
    };
    state.push_own(reply);
}

/// An [`AdminError`] as an ERR packet with MySQL's code for it.
fn error(e: &AdminError) -> Vec<u8> {
    match e {
        AdminError::Permission(why) => packet::err(
            1,
            ACCESS_DENIED,
            &format!("Access denied; you need (at least one of) the capgate admin privilege(s) for this operation: {why}"),
        ),
        AdminError::Syntax(why) => packet::err(1, SYNTAX, &format!("{why} (SHOW CAPGATE HELP lists the commands)")),
        AdminError::Unreachable(why) => packet::err(1, errors::PRIMARY_UNREACHABLE, why),
        AdminError::Failed(why) => packet::err(1, errors::ADMIN_FAILED, why),
    }
}

/// A [`ResultTable`] as a text-protocol result set ending with `flags`.
fn encode(table: &ResultTable, flags: u16, framing: Framing) -> Vec<u8> {
    let rows: Vec<Vec<Option<String>>> = table.rows.iter().map(|r| r.iter().map(|v| v.to_text()).collect()).collect();
    let columns: Vec<_> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (name, t))| {
            let width = rows.iter().filter_map(|r| r.get(i).and_then(|v| v.as_ref())).map(|v| v.chars().count()).max().unwrap_or(0);
            let kind = match t {
                ColumnType::Text => Kind::Text,
                ColumnType::Int => Kind::Int,
                // Three decimals, as `Value::to_text` writes them.
                ColumnType::Float => Kind::Float { decimals: 3 },
            };
            result_set::column(name, kind, width)
        })
        .collect();
    result_set::text_result_set(&columns, &rows, flags, framing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_commands_are_found_alone_among_others_and_not_in_literals() {
        let alone = |s: &str| Some(Found::Alone(s.to_owned()));
        assert_eq!(find(b"SHOW CAPGATE STATUS", 0), alone("SHOW CAPGATE STATUS"));
        assert_eq!(find(b"  show capgate lag;  ", 0), alone("show capgate lag;"));
        assert_eq!(find(b"/* app */ CAPGATE VERIFY `t;x`", 0), alone("CAPGATE VERIFY `t;x`"));
        assert_eq!(find(b"-- x\nSHOW CAPGATE POLICY; -- done", 0), alone("SHOW CAPGATE POLICY;"));
        // Comments after a command without `;` are not part of it.
        assert_eq!(find(b"SHOW CAPGATE STATUS -- from the runbook", 0), alone("SHOW CAPGATE STATUS"));
        assert_eq!(find(b"show capgate lag /* why */ # and this\n", 0), alone("show capgate lag"));
        assert_eq!(find(b"CAPGATE VERIFY `t -- x` /* y */", 0), alone("CAPGATE VERIFY `t -- x`"));
        assert_eq!(find(b"CAPGATE VERIFY 'a''#b' # c", 0), alone("CAPGATE VERIFY 'a''#b'"));
        // An SQL PREPARE of a command, alone or not: found, to be refused.
        assert_eq!(find(b"PREPARE s FROM 'SHOW CAPGATE STATUS'", 0), Some(Found::Prepared));
        assert_eq!(find(b"SELECT 1; prepare s from \"capgate reload\"", 0), Some(Found::Prepared));
        assert_eq!(find(b"PREPARE s FROM 'SELECT capgate FROM t'", 0), None);
        for mixed in ["SHOW CAPGATE STATUS; SELECT 1", "INSERT INTO t VALUES (1); show capgate status", "SELECT 1;/**/CAPGATE RELOAD"] {
            assert_eq!(find(mixed.as_bytes(), 0), Some(Found::Mixed), "{mixed}");
        }
        for no in ["SELECT 1", "SELECT 'x; show capgate status'", "INSERT INTO capgate_log VALUES (1); SELECT 2", "SHOW TABLES", ""] {
            assert_eq!(find(no.as_bytes(), 0), None, "{no}");
        }
        // Under ANSI_QUOTES a double-quoted text is a name, not a string: still one statement.
        assert_eq!(find(br#"SELECT "a;b" FROM capgate"#, status::ANSI_QUOTES), None);
        // An executable comment runs its contents: not an admin command capgate answers.
        assert_eq!(find(b"/*! SHOW CAPGATE STATUS */", 0), None);
    }

    #[test]
    fn errors_carry_mysqls_codes() {
        let denied = error(&AdminError::Permission("user \"app\" may not".into()));
        let e = crate::protocol::mysql::response::parse_err(&denied[4..]).expect("err");
        assert_eq!((e.code, e.sqlstate.as_str()), (1227, "42000"));
        assert!(e.message.starts_with("Access denied; you need (at least one of) the capgate admin privilege"), "{}", e.message);
        let e = crate::protocol::mysql::response::parse_err(&error(&AdminError::Syntax("unknown".into()))[4..]).expect("err");
        assert_eq!((e.code, e.sqlstate.as_str()), (1064, "42000"));
        let e = crate::protocol::mysql::response::parse_err(&prepare_refusal()[4..]).expect("err");
        assert_eq!(e.code, 1295);
    }
}
