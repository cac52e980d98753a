//! Query strings sqlparser cannot parse whole: split them into statements with the dialect's
//! tokenizer (which knows quotes, dollar quotes and comments), parse each alone, and give the
//! ones that still fail a kind from their leading keywords — or `unknown` with the parser's
//! reason. Never a silent "read".

use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::statement;
use super::walk::{Ctx, Walker};
use super::{Kind, StatementClass, TxControl};

/// Classify `sql` statement by statement after the whole-string parse failed with `err`.
pub(super) fn classify_pieces(ctx: &Ctx, sql: &str, err: &str) -> Vec<StatementClass> {
    let dialect = ctx.dialect.parser_dialect();
    let tokens = match Tokenizer::new(dialect.as_ref(), sql).tokenize() {
        Ok(t) => t,
        Err(e) => return vec![unknown(format!("cannot tokenize: {e}"))],
    };
    let mut out = Vec::new();
    for piece in tokens.split(|t| *t == Token::SemiColon) {
        let meaningful: Vec<Token> = piece.iter().filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF)).cloned().collect();
        if meaningful.is_empty() {
            continue;
        }
        let mut parser = Parser::new(dialect.as_ref()).with_tokens(piece.to_vec());
        let parsed = parser.parse_statement().and_then(|s| {
            // The statement must use the whole piece.
            match parser.peek_token().token {
                Token::EOF => Ok(s),
                t => Err(sqlparser::parser::ParserError::ParserError(format!("unexpected {t} after the statement"))),
            }
        });
        out.push(match parsed {
            Ok(stmt) => statement::classify(ctx, &stmt),
            Err(e) => by_keywords(ctx, &meaningful, &e.to_string()),
        });
    }
    if out.is_empty() {
        out.push(unknown(format!("cannot parse: {err}")));
    }
    out
}

fn unknown(reason: String) -> StatementClass {
    StatementClass::of_kind(Kind::Unknown(reason))
}

fn word(t: Option<&Token>) -> Option<String> {
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
        ("REINDEX" | "CHECKPOINT" | "LOAD" | "LISTEN" | "UNLISTEN" | "NOTIFY" | "SHOW" | "DEALLOCATE" | "CLOSE", _, _)
            if !(w0 == "LOAD" && w1 == "DATA") =>
        {
            StatementClass::of_kind(Kind::Utility)
        }
        ("LOAD", "DATA", _) => load_data(ctx, tokens, err),
        ("ALTER", "SEQUENCE", _) => {
            let mut class = names_after(ctx, &tokens[2..], true);
            class.kind = Kind::Ddl;
            class
        }
        ("SET" | "RESET", _, _) => StatementClass::of_kind(Kind::Session(super::SessionChange::Other)),
        _ => unknown(format!("cannot parse: {err}")),
    }
}

/// `VACUUM (VERBOSE) FULL a, b (col)`: utility; the named tables are reported as read.
fn utility_with_tables(ctx: &Ctx, tokens: &[Token]) -> StatementClass {
    let mut class = names_after(ctx, tokens, false);
    class.kind = Kind::Utility;
    class
}

/// Parse a comma-separated list of names after option words and a parenthesized option list.
fn names_after(ctx: &Ctx, tokens: &[Token], write: bool) -> StatementClass {
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
    let dialect = ctx.dialect.parser_dialect();
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
    StatementClass { kind: Kind::Utility, writes: acc.writes, reads: acc.reads, locks: Vec::new(), nondeterministic: Vec::new() }
}

/// MySQL `LOAD DATA … INTO TABLE t`: a write to `t`.
fn load_data(ctx: &Ctx, tokens: &[Token], err: &str) -> StatementClass {
    let at = tokens.windows(2).position(
        |p| matches!((&p[0], &p[1]), (Token::Word(a), Token::Word(b)) if a.keyword == Keyword::INTO && b.keyword == Keyword::TABLE),
    );
    match at {
        Some(i) => {
            let mut class = names_after(ctx, &tokens[i + 2..], true);
            class.kind = if class.writes.is_empty() { Kind::Unknown(format!("cannot parse: {err}")) } else { Kind::Write };
            class
        }
        None => unknown(format!("cannot parse: {err}")),
    }
}
