//! Where the statements of a query string end, found with the dialect's tokenizer (which
//! knows quotes, dollar quotes and comments): so that a Query can be cut before one of its
//! statements and the statements before it still run, and so that each statement of a text
//! the parser rejects as a whole is classified alone. In the MySQL dialect a stored
//! program's definition ends where its body does, semicolons inside it included
//! ([`super::mysql::definition_end`]): MariaDB runs what follows as statements of their own.

use std::ops::Range;

use sqlparser::tokenizer::{Location, Token, Tokenizer};

use super::{Dialect, SearchPath};

/// For each statement of `sql`, the byte offset just past the `;` that ends it (the text's
/// length for a last statement without one). Empty statements (`;;`) are not counted, as the
/// parser does not count them. `path` matters to MySQL (its `sql_mode` changes how text is
/// tokenized). `None` when the text cannot be tokenized.
pub fn statement_ends(dialect: Dialect, path: &SearchPath, sql: &str) -> Option<Vec<usize>> {
    let parser_dialect = match dialect {
        Dialect::Postgres => dialect.parser_dialect(),
        Dialect::MySql => super::mysql::parser_dialect(path.sql_mode()),
    };
    let spanned = Tokenizer::new(parser_dialect.as_ref(), sql).tokenize_with_location().ok()?;
    let tokens: Vec<Token> = spanned.iter().map(|t| t.token.clone()).collect();
    let lines: Vec<usize> = std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let mut ends = Vec::new();
    for piece in statements(dialect, &tokens) {
        match spanned.get(piece.end) {
            Some(semicolon) => ends.push(byte_offset(sql, &lines, semicolon.span.start)? + 1),
            None => ends.push(sql.len()),
        }
    }
    Some(ends)
}

/// The statements of a token stream: for each, the range of its tokens, the `;` that ends it
/// left out (its index is the range's end; `tokens.len()` for a last statement without one).
/// Statements holding only white space and comments are left out.
pub(super) fn statements(dialect: Dialect, tokens: &[Token]) -> Vec<Range<usize>> {
    let blank = |t: &Token| matches!(t, Token::Whitespace(_) | Token::EOF);
    // The meaningful tokens, and where each is in `tokens`.
    let at: Vec<usize> = tokens.iter().enumerate().filter(|(_, t)| !blank(t)).map(|(i, _)| i).collect();
    let meaningful: Vec<Token> = match dialect {
        Dialect::MySql => at.iter().map(|&i| tokens[i].clone()).collect(),
        Dialect::Postgres => Vec::new(),
    };
    let mut out = Vec::new();
    let (mut start, mut j) = (0, 0);
    while j < at.len() {
        let token = &tokens[at[j]];
        if *token == Token::SemiColon {
            start = at[j] + 1;
            j += 1;
            continue;
        }
        let definition = match dialect {
            Dialect::MySql => super::mysql::definition_end(&meaningful[j..]).map(|e| j + e),
            Dialect::Postgres => None,
        };
        let end = definition.unwrap_or_else(|| (j..at.len()).find(|&k| tokens[at[k]] == Token::SemiColon).unwrap_or(at.len()));
        let end_index = at.get(end).copied().unwrap_or(tokens.len());
        out.push(start..end_index);
        start = end_index + 1;
        j = end + 1;
    }
    out
}

/// The byte offset of a tokenizer location (1-based line, 1-based column in characters).
fn byte_offset(sql: &str, lines: &[usize], at: Location) -> Option<usize> {
    let start = *lines.get(usize::try_from(at.line).ok()?.checked_sub(1)?)?;
    let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
    sql.get(start..)?.char_indices().nth(column).map(|(i, _)| start + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_follow_quotes_comments_and_lines() {
        let sql = "SELECT ';'; -- a ; comment\nINSERT INTO t VALUES ($$;é;$$);;  SELECT 'ü' ";
        let ends = statement_ends(Dialect::Postgres, &SearchPath::default(), sql).unwrap_or_default();
        assert_eq!(ends.len(), 3, "{ends:?}");
        assert_eq!(&sql[..ends[0]], "SELECT ';';");
        assert!(sql[..ends[1]].ends_with("($$;é;$$);"), "{}", &sql[..ends[1]]);
        assert_eq!(ends[2], sql.len());
        assert_eq!(statement_ends(Dialect::Postgres, &SearchPath::default(), "  ; ;"), Some(Vec::new()));
        assert_eq!(statement_ends(Dialect::Postgres, &SearchPath::default(), "SELECT 1").as_deref(), Some(&[8][..]));
    }

    #[test]
    fn a_stored_program_ends_with_its_body() {
        let path = SearchPath::default();
        let sql = "CREATE PROCEDURE p() BEGIN SELECT ';'; IF 1 THEN SELECT 2; END IF; END; UPDATE t SET a = 1;\n SELECT 3";
        let ends = statement_ends(Dialect::MySql, &path, sql).unwrap_or_default();
        assert_eq!(ends.len(), 3, "{ends:?}");
        assert!(sql[..ends[0]].ends_with("END IF; END;"), "{}", &sql[..ends[0]]);
        assert_eq!(sql[ends[0]..ends[1]].trim(), "UPDATE t SET a = 1;");
        assert_eq!(ends[2], sql.len());
        // The PostgreSQL dialect knows no such bodies (its functions' bodies are strings).
        assert_eq!(statement_ends(Dialect::Postgres, &path, "SELECT 1; BEGIN; SELECT 2; END").map(|e| e.len()), Some(4));
    }
}
