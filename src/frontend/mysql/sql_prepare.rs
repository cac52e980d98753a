//! The statement text of an SQL-level `PREPARE name FROM '<text>'` (MySQL / MariaDB): capgate
//! classifies a prepared text at its COM_STMT_PREPARE, but an SQL `PREPARE` is one statement
//! whose `EXECUTE` names no table; the checks that must see what would run look at this text
//! (a text built at run time, `PREPARE name FROM @v`, is not known until it runs). Nothing here
//! does I/O.

use sqlparser::dialect::MySqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The text `sql` (one statement) prepares, when it is `PREPARE name FROM '<literal>'`
/// (comments anywhere, any case, the literal in single or double quotes, unescaped).
pub fn prepared_text(sql: &str) -> Option<String> {
    let head = crate::protocol::mysql::command::skip_comments(sql);
    if !head.get(..7).is_some_and(|w| w.eq_ignore_ascii_case("prepare")) {
        return None;
    }
    let tokens = Tokenizer::new(&MySqlDialect {}, sql).tokenize().ok()?;
    let mut words = tokens.into_iter().filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF));
    let is = |t: Option<Token>, w: &str| matches!(t, Some(Token::Word(word)) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w));
    if !is(words.next(), "PREPARE") || !matches!(words.next(), Some(Token::Word(_))) || !is(words.next(), "FROM") {
        return None;
    }
    match words.next() {
        Some(Token::SingleQuotedString(text) | Token::DoubleQuotedString(text)) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::prepared_text;

    #[test]
    fn the_text_of_an_sql_prepare() {
        assert_eq!(prepared_text("PREPARE s FROM 'SELECT 1'").as_deref(), Some("SELECT 1"));
        assert_eq!(prepared_text("/* x */ prepare `my s` from \"SHOW CAPGATE STATUS\";").as_deref(), Some("SHOW CAPGATE STATUS"));
        assert_eq!(prepared_text("PREPARE s FROM 'it''s'").as_deref(), Some("it's"));
        assert_eq!(prepared_text("PREPARE s FROM @text"), None);
        assert_eq!(prepared_text("SELECT 'PREPARE s FROM ''x'''"), None);
    }
}
