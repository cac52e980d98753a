//! How a MySQL server reads statement text under its `sql_mode`: the two flags that change
//! tokenizing, and a sqlparser dialect that follows them.
//!
//! Why this matters for replication: under NO_BACKSLASH_ESCAPES the text
//! `INSERT INTO t VALUES ('C:\'); DELETE FROM accounts` holds two statements, while with
//! backslash escapes the string runs on and swallows the DELETE. The classifier must cut the
//! text where the server cuts it, or a write goes unseen.

use std::any::TypeId;

use sqlparser::ast::{Expr, Statement};
use sqlparser::dialect::{BindPlaceholderStyle, Dialect, MySqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};

/// The `sql_mode` flags that change how MySQL tokenizes text. The front end follows them
/// from the server: MariaDB reports both in every OK packet's status flags
/// (`SERVER_STATUS_ANSI_QUOTES` 0x8000, MariaDB only; `SERVER_STATUS_NO_BACKSLASH_ESCAPES`
/// 0x200, both servers); with MySQL, track `sql_mode` through session tracking
/// (`session_track_system_variables`) and use [`SqlMode::from_sql_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SqlMode {
    /// ANSI_QUOTES: `"…"` quotes an identifier (as `` `…` `` does), not a string.
    pub ansi_quotes: bool,
    /// NO_BACKSLASH_ESCAPES: a backslash in a string literal is an ordinary character.
    pub no_backslash_escapes: bool,
}

impl SqlMode {
    /// From a `sql_mode` value as the server reports it (`@@sql_mode`, session tracking):
    /// comma-separated mode names, case-insensitive. The combination modes that include
    /// ANSI_QUOTES (ANSI; MariaDB's DB2, MAXDB, MSSQL, ORACLE, POSTGRESQL) count too.
    pub fn from_sql_mode(value: &str) -> SqlMode {
        let mut mode = SqlMode::default();
        for name in value.split(',').map(|n| n.trim().to_ascii_uppercase()) {
            match name.as_str() {
                "ANSI_QUOTES" | "ANSI" | "DB2" | "MAXDB" | "MSSQL" | "ORACLE" | "POSTGRESQL" => mode.ansi_quotes = true,
                "NO_BACKSLASH_ESCAPES" => mode.no_backslash_escapes = true,
                _ => {}
            }
        }
        mode
    }
}

/// The sqlparser dialect for text sent in `mode`: sqlparser's own MySQL dialect for the
/// server's default mode, else [`ModeDialect`].
pub(in crate::classify) fn parser_dialect(mode: SqlMode) -> Box<dyn Dialect> {
    if mode == SqlMode::default() {
        Box::new(MySqlDialect {})
    } else {
        Box::new(ModeDialect { mode })
    }
}

/// sqlparser's MySqlDialect with the two lexical switches of [`SqlMode`]. It reports
/// itself as MySqlDialect (`dialect()`), so every MySQL-specific rule inside the parser
/// applies, and forwards every method MySqlDialect overrides (sqlparser 0.64's
/// `dialect/mysql.rs`); the test `mode_dialect_parses_like_mysql` compares the two on the
/// MySQL corpus.
#[derive(Debug)]
struct ModeDialect {
    mode: SqlMode,
}

/// Forward argument-less `bool` methods to MySqlDialect.
macro_rules! forward {
    ($($name:ident),* $(,)?) => {
        $(fn $name(&self) -> bool { MySqlDialect {}.$name() })*
    };
}

impl Dialect for ModeDialect {
    fn dialect(&self) -> TypeId {
        TypeId::of::<MySqlDialect>()
    }

    // The two switches.
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        ch == '`' || (self.mode.ansi_quotes && ch == '"')
    }
    fn supports_string_literal_backslash_escape(&self) -> bool {
        !self.mode.no_backslash_escapes
    }

    // Everything else as MySqlDialect does it.
    fn supports_string_literal_table_alias(&self, explicit: bool) -> bool {
        MySqlDialect {}.supports_string_literal_table_alias(explicit)
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        MySqlDialect {}.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        MySqlDialect {}.is_identifier_part(ch)
    }
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        MySqlDialect {}.identifier_quote_style(identifier)
    }
    fn ordered_bind_placeholder_style(&self) -> Option<BindPlaceholderStyle> {
        MySqlDialect {}.ordered_bind_placeholder_style()
    }
    fn parse_infix(&self, parser: &mut Parser, expr: &Expr, precedence: u8) -> Option<Result<Expr, ParserError>> {
        MySqlDialect {}.parse_infix(parser, expr, precedence)
    }
    fn parse_statement(&self, parser: &mut Parser) -> Option<Result<Statement, ParserError>> {
        MySqlDialect {}.parse_statement(parser)
    }
    fn is_table_factor_alias(&self, explicit: bool, kw: &Keyword, parser: &mut Parser) -> bool {
        MySqlDialect {}.is_table_factor_alias(explicit, kw, parser)
    }
    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        MySqlDialect {}.get_next_precedence(parser)
    }
    forward!(
        supports_string_literal_concatenation,
        ignores_wildcard_escapes,
        supports_numeric_prefix,
        supports_literal_prefix_in_qualified_name,
        supports_bitwise_shift_operators,
        supports_singular_value_keyword,
        supports_multiline_comment_hints,
        require_interval_qualifier,
        supports_limit_comma,
        supports_create_table_select,
        supports_insert_set,
        supports_user_host_grantee,
        supports_table_hints,
        requires_single_line_comment_whitespace,
        supports_hash_comment,
        supports_match_against,
        supports_select_modifiers,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_alter_column_position,
        supports_update_order_by,
        supports_data_type_signed_suffix,
        supports_data_type_zerofill_suffix,
        supports_cross_join_constraint,
        supports_double_ampersand_operator,
        supports_binary_kw_as_cast,
        supports_table_partitions,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
        supports_key_column_option,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ModeDialect is MySqlDialect except for the two switches: on text without double
    /// quotes and backslashes it must build the very same AST. The statements exercise the
    /// methods MySqlDialect overrides (LIMIT a, b; INSERT … SET; index hints; `#` comments;
    /// MATCH … AGAINST; SET NAMES; `&&`; DIV; LOCK TABLES; select modifiers; optimizer hints;
    /// partitions; column positions; UNSIGNED/ZEROFILL; UPDATE … ORDER BY; BINARY casts;
    /// WITH ROLLUP; CREATE TABLE … SELECT; user@host grantees; shifts; INTERVAL; introducers).
    #[test]
    fn mode_dialect_parses_like_mysql() {
        const SQL: &[&str] = &[
            "SELECT a FROM t LIMIT 5, 10",
            "INSERT INTO t SET a = 1, b = 2",
            "SELECT * FROM t USE INDEX (i) FORCE INDEX FOR JOIN (j) WHERE a = 1 # comment",
            "SELECT * FROM t WHERE MATCH (a, b) AGAINST ('x' IN NATURAL LANGUAGE MODE)",
            "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
            "SELECT a && b, a DIV 2, a << 2, a XOR b, a <=> b FROM t",
            "LOCK TABLES t READ, u AS x WRITE",
            "SELECT SQL_CALC_FOUND_ROWS HIGH_PRIORITY STRAIGHT_JOIN a FROM t",
            "SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t",
            "SELECT * FROM t PARTITION (p0, p1)",
            "ALTER TABLE t ADD COLUMN c INT FIRST, MODIFY d BIGINT AFTER c",
            "CREATE TABLE t (a INT UNSIGNED ZEROFILL, b INT SIGNED, KEY k (a), CONSTRAINT UNIQUE (b))",
            "UPDATE t SET a = 1 ORDER BY b LIMIT 1",
            "SELECT BINARY a, CAST(a AS BINARY) FROM t",
            "SELECT a, COUNT(*) FROM t GROUP BY a WITH ROLLUP",
            "CREATE TABLE t2 SELECT * FROM t1",
            "GRANT SELECT ON db.* TO 'u'@'h'",
            "SELECT DATE_ADD(d, INTERVAL 1 DAY) FROM t",
            "SELECT _utf8mb4 'x', X'41', 0x41",
            "SELECT * FROM a CROSS JOIN b ON a.id = b.id JOIN c ON c.id = b.id",
            "SELECT @a, @@session.sql_mode, $x FROM t",
            "INSERT INTO t (a) VALUES (?) ON DUPLICATE KEY UPDATE a = VALUES(a)",
            "DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id WHERE t2.x = 'it''s'",
            "SELECT a FROM t WHERE b = 1 -- trailing comment",
        ];
        let plain = MySqlDialect {};
        let moded = ModeDialect { mode: SqlMode { ansi_quotes: true, no_backslash_escapes: true } };
        for sql in SQL {
            let a = Parser::parse_sql(&plain, sql).map(|s| format!("{s:?}")).map_err(|e| e.to_string());
            let b = Parser::parse_sql(&moded, sql).map(|s| format!("{s:?}")).map_err(|e| e.to_string());
            assert!(a.is_ok(), "{sql}: {a:?}");
            assert_eq!(a, b, "{sql}");
        }
    }

    #[test]
    fn sql_mode_values() {
        assert_eq!(SqlMode::from_sql_mode(""), SqlMode::default());
        assert_eq!(
            SqlMode::from_sql_mode("STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"),
            SqlMode::default()
        );
        let both = SqlMode { ansi_quotes: true, no_backslash_escapes: true };
        assert_eq!(SqlMode::from_sql_mode("ansi_quotes, no_backslash_escapes"), both);
        // What MySQL reports after SET sql_mode = 'ANSI'.
        let ansi = SqlMode::from_sql_mode("REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ONLY_FULL_GROUP_BY,ANSI");
        assert!(ansi.ansi_quotes && !ansi.no_backslash_escapes);
        assert!(SqlMode::from_sql_mode("ORACLE").ansi_quotes);
    }
}
