//! Where the statements of a query string end, in bytes, found with the dialect's tokenizer
//! (which knows quotes, dollar quotes and comments): so that a Query can be cut before one of
//! its statements and the statements before it still run.

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
    let tokens = Tokenizer::new(parser_dialect.as_ref(), sql).tokenize_with_location().ok()?;
    let lines: Vec<usize> = std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let mut ends = Vec::new();
    let mut open = false;
    for t in &tokens {
        match t.token {
            Token::SemiColon => {
                if open {
                    ends.push(byte_offset(sql, &lines, t.span.start)? + 1);
                }
                open = false;
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => open = true,
        }
    }
    if open {
        ends.push(sql.len());
    }
    Some(ends)
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
}
