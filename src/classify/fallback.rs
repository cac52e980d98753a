//! Query strings sqlparser cannot parse whole: split them into statements with the dialect's
//! tokenizer (which knows quotes, dollar quotes and comments; `super::split`), parse each alone, and give the
//! ones that still fail a kind from their leading keywords — or `unknown` with the parser's
//! reason. Never a silent "read".

use sqlparser::ast::Statement;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

use super::walk::{Ctx, Walker};
use super::{mysql, split, statement};
use super::{Dialect, Kind, StatementClass, TxControl};

/// Classify `sql` statement by statement after the whole-string parse failed with `err`.
pub(super) fn classify_pieces(ctx: &Ctx, sql: &str, err: &str) -> Vec<StatementClass> {
    let dialect = ctx.parser_dialect();
    let tokens = match Tokenizer::new(dialect.as_ref(), sql).tokenize() {
        Ok(t) => t,
        Err(e) => return vec![unknown(format!("cannot tokenize: {e}"))],
    };
    let mut out = Vec::new();
    // Cut where the server cuts (in MySQL a stored program's definition ends with its body).
    for range in split::statements(ctx.dialect, &tokens) {
        let piece = &tokens[range];
        let meaningful = meaningful(piece);
        if meaningful.is_empty() {
            continue;
        }
        out.push(match parse_one(ctx, piece.to_vec()) {
            Ok(stmt) if !(ctx.dialect == Dialect::MySql && mysql::misparsed(&stmt)) => statement::classify(ctx, &stmt),
            Ok(_) => mysql::by_keywords(ctx, &meaningful, "misread by the parser"),
            Err(e) => match ctx.dialect {
                Dialect::Postgres => by_keywords(ctx, &meaningful, &e.to_string()),
                Dialect::MySql => mysql::by_keywords(ctx, &meaningful, &e.to_string()),
            },
        });
    }
    if out.is_empty() {
        out.push(unknown(format!("cannot parse: {err}")));
    }
    out
}

/// The tokens that carry meaning: no white space, comments or end marker.
fn meaningful(piece: &[Token]) -> Vec<Token> {
    piece.iter().filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF)).cloned().collect()
}

/// Parse `tokens` as exactly one statement.
pub(super) fn parse_one(ctx: &Ctx, tokens: Vec<Token>) -> Result<Statement, ParserError> {
    let dialect = ctx.parser_dialect();
    let mut parser = Parser::new(dialect.as_ref()).with_tokens(tokens);
    let stmt = parser.parse_statement()?;
    // The statement must use the whole piece.
    match parser.peek_token().token {
        Token::EOF => Ok(stmt),
        t => Err(ParserError::ParserError(format!("unexpected {t} after the statement"))),
    }
}

pub(super) fn unknown(reason: String) -> StatementClass {
    StatementClass::of_kind(Kind::Unknown(reason))
}

pub(super) fn word(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn string(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::SingleQuotedString(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A statement the parser rejected, known by its first words.
fn by_keywords(ctx: &Ctx, tokens: &[Token], err: &str) -> StatementClass {
    let w0 = word(tokens.first()).unwrap_or_default();
    let w1 = word(tokens.get(1)).unwrap_or_default();
    let gid = string(tokens.get(2));
    let tx = |t: TxControl| StatementClass::of_kind(Kind::Transaction(t));
    match (w0.as_str(), w1.as_str(), gid) {
        ("PREPARE", "TRANSACTION", Some(g)) => tx(TxControl::PrepareTransaction(g)),
        ("COMMIT", "PREPARED", Some(g)) => tx(TxControl::CommitPrepared(g)),
        ("ROLLBACK", "PREPARED", Some(g)) => tx(TxControl::RollbackPrepared(g)),
        ("DO", _, _) => unknown(
            "DO block: anonymous procedural code may write any table (use a function named in the policy's [[function]])".to_owned(),
        ),
        ("VACUUM" | "ANALYZE" | "ANALYSE" | "CLUSTER", _, _) => utility_with_tables(ctx, &tokens[1..]),
        ("REINDEX", "TABLE", _) => utility_with_tables(ctx, &tokens[2..]),
        ("REINDEX" | "CHECKPOINT" | "LOAD" | "LISTEN" | "UNLISTEN" | "NOTIFY" | "SHOW" | "DEALLOCATE" | "CLOSE", _, _) => {
            StatementClass::of_kind(Kind::Utility)
        }
        ("ALTER", "SEQUENCE", _) => names_after(ctx, &tokens[2..], true).with_kind(Kind::Ddl),
        ("SET" | "RESET", _, _) => StatementClass::of_kind(Kind::Session(super::SessionChange::Other)),
        _ => unknown(format!("cannot parse: {err}")),
    }
}

/// `VACUUM (VERBOSE) FULL a, b (col)`: utility; the named tables are reported as read.
fn utility_with_tables(ctx: &Ctx, tokens: &[Token]) -> StatementClass {
    names_after(ctx, tokens, false)
}

/// Parse a comma-separated list of names after option words and a parenthesized option list:
/// a utility statement that writes (`write`) or reads them; `unknown` when a name cannot be
/// resolved.
pub(super) fn names_after(ctx: &Ctx, tokens: &[Token], write: bool) -> StatementClass {
    const OPTIONS: [&str; 10] = ["FULL", "FREEZE", "VERBOSE", "ANALYZE", "ANALYSE", "SKIP_LOCKED", "CONCURRENTLY", "IF", "EXISTS", "ONLY"];
    let mut i = 0;
    if tokens.first() == Some(&Token::LParen) {
        let mut depth = 0usize;
        while let Some(t) = tokens.get(i) {
            i += 1;
            match t {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    while word(tokens.get(i)).is_some_and(|w| OPTIONS.contains(&w.as_str())) {
        i += 1;
    }
    let dialect = ctx.parser_dialect();
    let mut parser = Parser::new(dialect.as_ref()).with_tokens(tokens.get(i..).unwrap_or(&[]).to_vec());
    let mut found = Vec::new();
    while let Ok(name) = parser.parse_object_name(false) {
        found.push(name);
        if parser.consume_token(&Token::LParen) {
            let mut depth = 1usize;
            while depth > 0 {
                match parser.next_token().token {
                    Token::LParen => depth += 1,
                    Token::RParen => depth -= 1,
                    Token::EOF => break,
                    _ => {}
                }
            }
        }
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    let mut w = Walker::new(ctx);
    for n in &found {
        if write {
            w.target(n);
        } else {
            w.touched(n);
        }
    }
    let acc = w.acc;
    let kind = acc.unknown.map_or(Kind::Utility, Kind::Unknown);
    StatementClass { kind, writes: acc.writes, reads: acc.reads, locks: Vec::new(), nondeterministic: Vec::new() }
}
