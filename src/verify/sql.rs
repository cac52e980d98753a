//! SQL text for verify: identifiers and literals quoted by PostgreSQL's rules, and the
//! chunk queries. Table and column names come from the catalog as separate parts, never
//! from splitting a dotted string.

use crate::classify::TableName;

/// `"schema"."name"`, safe to put in SQL. Every part is quoted, unlike [`TableName`]'s
/// `Display` (which quotes only where needed, for people to read).
pub fn quoted(table: &TableName) -> String {
    format!("{}.{}", ident(&table.schema), ident(&table.name))
}

/// Parse a table name as a user types it on the command line (`--table`): `schema.table`,
/// or `table` (schema `public`), with double-quoted parts kept exact (`""` for a quote) and
/// unquoted parts folded to lower case, as PostgreSQL reads them. The error says what is
/// wrong with the text.
pub fn parse_table_name(s: &str) -> Result<TableName, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                was_quoted = true;
            }
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => quoted = false,
            ('.', false) => {
                parts.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (c, true) => cur.push(c),
            (c, false) => cur.push(if was_quoted { c } else { c.to_ascii_lowercase() }),
        }
    }
    if quoted {
        return Err(format!("unterminated quote in table name `{s}`"));
    }
    parts.push(cur);
    match parts.as_slice() {
        [t] if !t.is_empty() => Ok(TableName::new("public", t.clone())),
        [sch, t] if !sch.is_empty() && !t.is_empty() => Ok(TableName::new(sch.clone(), t.clone())),
        _ => Err(format!("expected a table name as schema.table, found `{s}`")),
    }
}

/// Quote an identifier: `"…"` with inner quotes doubled.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote a text literal (standard_conforming_strings is on in every supported version).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The shape of one table's comparison: key columns and all columns, in the primary's order.
#[derive(Debug, Clone)]
pub struct Shape {
    pub table: TableName,
    /// Primary-key columns in key order; empty when the table has none.
    pub key: Vec<String>,
    /// Every column, in attribute order.
    pub columns: Vec<String>,
}

impl Shape {
    fn key_row(&self) -> String {
        format!("({})", self.key.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "))
    }

    fn all_row(&self) -> String {
        format!("ROW({})::text", self.columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "))
    }

    /// A key value as a row of literals, typed by context when compared with the key columns.
    pub fn key_literal(values: &[String]) -> String {
        format!("({})", values.iter().map(|v| literal(v)).collect::<Vec<_>>().join(", "))
    }

    /// The WHERE clause of a chunk: keys above `lower` (exclusive) and up to `upper`
    /// (inclusive); `None` leaves that side open.
    pub fn range(&self, lower: Option<&[String]>, upper: Option<&[String]>) -> String {
        let mut conds = Vec::new();
        if let Some(l) = lower {
            conds.push(format!("{} > {}", self.key_row(), Shape::key_literal(l)));
        }
        if let Some(u) = upper {
            conds.push(format!("{} <= {}", self.key_row(), Shape::key_literal(u)));
        }
        if conds.is_empty() {
            "true".into()
        } else {
            conds.join(" AND ")
        }
    }

    /// The key that ends a chunk of `rows` rows after `lower`: its text values, or no row when
    /// fewer remain. ORDER BY names the table's columns through an alias: a bare name would
    /// resolve to the text output column of the same name and sort as text.
    pub fn boundary_query(&self, lower: Option<&[String]>, rows: usize) -> String {
        format!(
            "SELECT {} FROM {} AS capgate_t WHERE {} ORDER BY {} LIMIT 1 OFFSET {}",
            self.key.iter().map(|c| format!("capgate_t.{}::text", ident(c))).collect::<Vec<_>>().join(", "),
            quoted(&self.table),
            self.range(lower, None),
            self.key.iter().map(|c| format!("capgate_t.{}", ident(c))).collect::<Vec<_>>().join(", "),
            rows.saturating_sub(1)
        )
    }

    /// Row count and an order-independent checksum of the rows in `range` (a WHERE clause):
    /// the sum of a 64-bit hash of each row's text, as numeric so it cannot overflow.
    pub fn checksum_query(&self, range: &str) -> String {
        format!(
            "SELECT count(*), coalesce(sum(hashtextextended({}, 0)::numeric), 0)::text FROM {} WHERE {}",
            self.all_row(),
            quoted(&self.table),
            range
        )
    }

    /// The rows of a range with their keys, for pinpointing differences.
    pub fn rows_query(&self, range: &str) -> String {
        format!(
            "SELECT ARRAY[{}]::text[], {} FROM {} WHERE {}",
            self.key.iter().map(|c| format!("{}::text", ident(c))).collect::<Vec<_>>().join(", "),
            self.all_row(),
            quoted(&self.table),
            range
        )
    }
}

/// Session settings that make a row's text form the same on both servers.
pub const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 3; SET bytea_output = 'hex'; SET default_transaction_read_only = on; \
     SET statement_timeout = 0";

/// Key columns of a table, in key order.
pub const PRIMARY_KEY: &str = "SELECT a.attname::text FROM pg_index i \
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
     WHERE i.indrelid = to_regclass($1) AND i.indisprimary \
     ORDER BY array_position(i.indkey::int2[], a.attnum)";

/// Columns of a table, in attribute order.
pub const COLUMNS: &str = "SELECT attname::text FROM pg_attribute \
     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum";

/// Ordinary and partitioned tables outside the system schemas.
pub const USER_TABLES: &str = "SELECT n.nspname::text, c.relname::text FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'capgate') AND n.nspname NOT LIKE 'pg_toast%' \
     AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1, 2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table_names_like_postgres() {
        assert_eq!(parse_table_name("Orders").unwrap(), TableName::new("public", "orders"));
        assert_eq!(parse_table_name("Shop.\"Cart.Items\"").unwrap(), TableName::new("shop", "Cart.Items"));
        assert_eq!(parse_table_name("\"a\"\"b\".c").unwrap(), TableName::new("a\"b", "c"));
        assert!(parse_table_name("a.b.c").is_err());
        assert!(parse_table_name("\"open").is_err());
        assert!(parse_table_name("").is_err());
        assert!(parse_table_name(".t").is_err());
        // What is parsed prints back the way it was typed (where the case matters, quoted).
        assert_eq!(parse_table_name("Shop.\"Cart.Items\"").unwrap().to_string(), "shop.\"Cart.Items\"");
    }

    #[test]
    fn quoting() {
        assert_eq!(quoted(&TableName::new("s", "we\"ird")), "\"s\".\"we\"\"ird\"");
        assert_eq!(literal("it's"), "'it''s'");
        let shape = Shape { table: TableName::new("public", "t"), key: vec!["a".into(), "b".into()], columns: vec!["a".into()] };
        assert_eq!(shape.range(Some(&["1".into(), "x".into()]), None), "(\"a\", \"b\") > ('1', 'x')");
    }
}
