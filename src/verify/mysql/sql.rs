//! SQL text for verifying a MySQL / MariaDB table: identifiers in backticks, key values as
//! literals, and the chunk queries, built from the primary's catalog.
//!
//! How a row is compared (docs/guarantees.md, "capgate verify"): each column becomes a
//! piece — `N` for NULL, else `V`, the length, `:` and the value in the form the database
//! compares it in (the length keeps a value from running into the next) — and the row's
//! fingerprint is the MD5 of its pieces (one MD5 per row, not per column: twice as fast). Text
//! columns are taken through `WEIGHT_STRING`, the collation's sort key, without trailing
//! spaces under a PAD SPACE collation: two values the database calls equal (`'abc' = 'ABC'`
//! under a case-insensitive collation, `'a' = 'a '` under a PAD SPACE one) give the same. Binary columns (BINARY, VARBINARY, BLOB, BIT)
//! are taken byte for byte; numbers, DECIMAL, dates and times by their exact text (sessions
//! run in UTC, so TIMESTAMP reads the same on both sides). A chunk's checksum is the row
//! count and the sum of the fingerprints' first 64 bits (exact DECIMAL arithmetic, so the
//! order rows are read in does not matter).

use crate::classify::TableName;

/// Backtick-quote an identifier.
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// `` `db`.`table` ``.
pub fn quoted(table: &TableName) -> String {
    format!("{}.{}", ident(&table.schema), ident(&table.name))
}

/// A string literal, safe under any `sql_mode` (backslashes and quotes doubled or escaped
/// both ways: verify sessions run with an empty `sql_mode`).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Parse a table name as typed on the command line: `db.table`, either part in backticks or
/// double quotes (a doubled quote inside stands for one). MySQL names are not case-folded.
pub fn parse_table_name(s: &str) -> Result<TableName, String> {
    parse_table_name_in(s, None)
}

/// [`parse_table_name`], where a name without a database is in `database` (a session's
/// current one), when given.
pub fn parse_table_name_in(s: &str, database: Option<&str>) -> Result<TableName, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '`' | '"') => quote = Some(c),
            (Some(q), c) if c == q && chars.peek() == Some(&q) => {
                chars.next();
                cur.push(q);
            }
            (Some(q), c) if c == q => quote = None,
            (None, '.') => parts.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in table name `{s}`"));
    }
    parts.push(cur);
    match (parts.as_slice(), database) {
        ([db, t], _) if !db.is_empty() && !t.is_empty() => Ok(TableName::new(db.clone(), t.clone())),
        ([t], Some(db)) if !t.is_empty() => Ok(TableName::new(db, t.clone())),
        ([t], None) if !t.is_empty() => Err(format!("`{s}` names no database (and none is selected): write the table as database.table")),
        _ => Err(format!("expected a MySQL table name as database.table, found `{s}`")),
    }
}

/// How one column is compared and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has a collation: compared by its sort key, shown quoted. `pad`: a PAD SPACE collation
    /// (every one but MariaDB's `*_nopad_*` and MySQL's `*_0900_*`), under which trailing
    /// spaces do not count (`'a' = 'a '`), though `WEIGHT_STRING` keeps them.
    Text { pad: bool },
    /// Bytes: compared exactly, shown as hex.
    Binary,
    /// Numbers, dates, times: compared and shown by their text.
    Other,
}

impl Kind {
    /// From `information_schema.COLUMNS`' `DATA_TYPE` and `COLLATION_NAME`.
    pub fn of(data_type: &str, collation: Option<&str>) -> Kind {
        match (data_type.to_ascii_lowercase().as_str(), collation) {
            (_, Some(c)) => Kind::Text { pad: !(c.contains("nopad") || c.contains("_0900_")) },
            ("binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "bit", None) => Kind::Binary,
            (t, None) if t.contains("geometry") || matches!(t, "point" | "linestring" | "polygon") => Kind::Binary,
            _ => Kind::Other,
        }
    }
}

/// What a row without a fingerprint adds to a chunk's sum: 10^30, above any sum of 64-bit
/// values over fewer than 10^10 rows.
pub const UNHASHED: u128 = 1_000_000_000_000_000_000_000_000_000_000;

/// Text values longer than this (in characters) are compared byte for byte, not by their
/// collation's sort key (see [`Column::large`]).
pub const LARGE_TEXT: u32 = 1_000_000;

/// A column of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// A TEXT, BLOB or JSON column, whose values can be as large as a packet: it enters the
    /// fingerprint as its MD5, so the row's concatenation stays far below
    /// `max_allowed_packet` (past it, CONCAT gives NULL and the row would not count).
    pub large: bool,
}

impl Column {
    /// A column from `information_schema.COLUMNS`' `COLUMN_NAME`, `DATA_TYPE` and
    /// `COLLATION_NAME`.
    pub fn of(name: String, data_type: &str, collation: Option<&str>) -> Column {
        let t = data_type.to_ascii_lowercase();
        Column { name, kind: Kind::of(&t, collation), large: t.ends_with("text") || t.ends_with("blob") || t == "json" }
    }

    /// The column's piece of the row fingerprint.
    fn piece(&self) -> String {
        let c = ident(&self.name);
        let value = match self.kind {
            Kind::Text { pad: true } => format!("WEIGHT_STRING(TRIM(TRAILING ' ' FROM {c}))"),
            Kind::Text { pad: false } => format!("WEIGHT_STRING({c})"),
            Kind::Binary | Kind::Other => c.clone(),
        };
        let value = match (self.large, self.kind) {
            // A sort key is several bytes a character: past LARGE_TEXT characters it could
            // outgrow max_allowed_packet (the server then gives NULL), so such a value is
            // taken byte for byte.
            (true, Kind::Text { .. }) => format!("MD5(IF(CHAR_LENGTH({c}) <= {LARGE_TEXT}, {value}, {c}))"),
            (true, _) => format!("MD5({value})"),
            (false, _) => value,
        };
        format!("IF({c} IS NULL, 'N', CONCAT('V', LENGTH({value}), ':', {value}))")
    }

    /// The value as a person reads it (never NULL: `NULL` for NULL).
    fn shown(&self) -> String {
        let c = ident(&self.name);
        match self.kind {
            Kind::Text { .. } => format!("QUOTE({c})"),
            Kind::Binary => format!("IF({c} IS NULL, 'NULL', CONCAT('0x', HEX({c})))"),
            Kind::Other => format!("IFNULL(CAST({c} AS CHAR), 'NULL')"),
        }
    }

    /// A key value as text (key columns are never NULL).
    fn key_text(&self) -> String {
        let c = ident(&self.name);
        match self.kind {
            Kind::Binary => format!("CONCAT('0x', HEX({c}))"),
            Kind::Text { .. } | Kind::Other => format!("CAST({c} AS CHAR)"),
        }
    }
}

/// A key value read back from the server (text protocol) as an SQL literal for a chunk's
/// range: numbers bare (a quoted number compared with an integer column is compared as a
/// double, inexact past 2^53), text quoted, bytes that are not UTF-8 in hex.
pub fn key_literal(column: &Column, value: &mysql_async::Value) -> String {
    match value {
        mysql_async::Value::Bytes(b) => {
            let numeric = |t: &str| t.bytes().all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'.')) && t.parse::<f64>().is_ok();
            match std::str::from_utf8(b) {
                Ok(t) if column.kind == Kind::Other && numeric(t) => t.to_owned(),
                Ok(t) if column.kind != Kind::Binary => literal(t),
                _ => format!("0x{}", b.iter().map(|c| format!("{c:02X}")).collect::<String>()),
            }
        }
        other => other.as_sql(false),
    }
}

/// One table's comparison: its key and columns, in the primary's order.
#[derive(Debug, Clone)]
pub struct Shape {
    pub table: TableName,
    /// Primary-key columns in key order; empty when the table has none.
    pub key: Vec<Column>,
    pub columns: Vec<Column>,
}

impl Shape {
    fn fingerprint(&self) -> String {
        format!("MD5(CONCAT({}))", self.columns.iter().map(Column::piece).collect::<Vec<_>>().join(", "))
    }

    fn key_list(&self) -> String {
        self.key.iter().map(|c| ident(&c.name)).collect::<Vec<_>>().join(", ")
    }

    /// The WHERE clause of a chunk: keys above `lower` (exclusive) and up to `upper`
    /// (inclusive), each a list of SQL literals; `None` leaves that side open. Written out
    /// column by column (`a > 1 OR (a = 1 AND b > 2)`), which the optimizer turns into an
    /// index range.
    pub fn range(&self, lower: Option<&[String]>, upper: Option<&[String]>) -> String {
        let mut conds = Vec::new();
        if let Some(l) = lower {
            conds.push(self.compare(l, ">", ">"));
        }
        if let Some(u) = upper {
            conds.push(self.compare(u, "<", "<="));
        }
        if conds.is_empty() {
            "TRUE".into()
        } else {
            conds.join(" AND ")
        }
    }

    /// The key compared with `values` lexicographically: `strict` on every column but the
    /// last, `last` on the last.
    fn compare(&self, values: &[String], strict: &str, last: &str) -> String {
        let n = self.key.len().min(values.len());
        let mut alternatives = Vec::new();
        for i in 0..n {
            let mut terms: Vec<String> = (0..i).map(|j| format!("{} = {}", ident(&self.key[j].name), values[j])).collect();
            let op = if i + 1 == n { last } else { strict };
            terms.push(format!("{} {op} {}", ident(&self.key[i].name), values[i]));
            alternatives.push(format!("({})", terms.join(" AND ")));
        }
        format!("({})", alternatives.join(" OR "))
    }

    /// The key that ends a chunk of `rows` rows after `lower`, or no row when fewer remain.
    pub fn boundary_query(&self, lower: Option<&[String]>, rows: usize) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT 1 OFFSET {}",
            self.key_list(),
            quoted(&self.table),
            self.range(lower, None),
            self.key_list(),
            rows.saturating_sub(1)
        )
    }

    /// Row count and order-independent checksum of the rows in `range`.
    /// A row without a fingerprint (the server gave NULL: a row too large for
    /// `max_allowed_packet`) adds [`UNHASHED`] instead of being left out of the sum, so the
    /// caller can tell (the fingerprint is computed once per row).
    pub fn checksum_query(&self, range: &str) -> String {
        format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(IFNULL(CAST(CONV(LEFT({}, 16), 16, 10) AS DECIMAL(20, 0)), {UNHASHED})), 0) AS CHAR) FROM {} WHERE {}",
            self.fingerprint(),
            quoted(&self.table),
            range
        )
    }

    /// The rows of a range, to pinpoint differences: the key as the collation compares it
    /// (MD5 of its pieces), the row's fingerprint, the row as a person reads it, then the key
    /// columns as text.
    pub fn rows_query(&self, range: &str) -> String {
        let key_id = format!("MD5(CONCAT({}))", self.key.iter().map(Column::piece).collect::<Vec<_>>().join(", "));
        let shown = format!("CONCAT('(', CONCAT_WS(', ', {}), ')')", self.columns.iter().map(Column::shown).collect::<Vec<_>>().join(", "));
        let keys: Vec<String> = self.key.iter().map(Column::key_text).collect();
        format!("SELECT {key_id}, {}, {shown}, {} FROM {} WHERE {}", self.fingerprint(), keys.join(", "), quoted(&self.table), range)
    }
}

/// Session settings that make a row read the same on both servers: UTC for TIMESTAMP, no
/// `sql_mode` (PAD_CHAR_TO_FULL_LENGTH would change CHAR values, NO_BACKSLASH_ESCAPES and
/// ANSI_QUOTES the meaning of literals), repeatable read for the consistent snapshot.
pub const SESSION_SETUP: &str = "SET NAMES utf8mb4; SET SESSION time_zone = '+00:00'; SET SESSION sql_mode = ''; \
     SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ";

/// The consistent point: a read-only snapshot of every InnoDB table, taken at once.
pub const SNAPSHOT: &str = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";

/// Key columns of a table (`?` database, `?` table), in key order.
pub const PRIMARY_KEY: &str = "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX";

/// Columns of a table with their type and collation, in table order.
pub const COLUMNS: &str = "SELECT COLUMN_NAME, DATA_TYPE, COLLATION_NAME FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION";

/// Whether a base table exists.
pub const EXISTS: &str =
    "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND TABLE_TYPE = 'BASE TABLE'";

/// The server's estimate of a table's rows.
pub const ESTIMATE: &str = "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?";

/// Base tables outside the system databases and capgate's own.
pub const USER_TABLES: &str = "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' \
     AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys', 'capgate') ORDER BY 1, 2";

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, kind: Kind) -> Column {
        Column { name: name.into(), kind, large: false }
    }

    #[test]
    fn table_names_as_typed() {
        assert_eq!(parse_table_name("Shop.Orders").unwrap(), TableName::new("Shop", "Orders"));
        assert_eq!(parse_table_name("`we.ird`.`a``b`").unwrap(), TableName::new("we.ird", "a`b"));
        assert_eq!(parse_table_name("\"db\".t").unwrap(), TableName::new("db", "t"));
        for bad in ["orders", "a.b.c", "`open.t", "", ".t"] {
            assert!(parse_table_name(bad).is_err(), "{bad}");
        }
        // A session's current database completes a bare name, never a qualified one.
        assert_eq!(parse_table_name_in("Orders", Some("shop")).unwrap(), TableName::new("shop", "Orders"));
        assert_eq!(parse_table_name_in("`a.b`", Some("shop")).unwrap(), TableName::new("shop", "a.b"));
        assert_eq!(parse_table_name_in("other.t", Some("shop")).unwrap(), TableName::new("other", "t"));
        assert!(parse_table_name_in("orders", None).unwrap_err().contains("database.table"));
    }

    #[test]
    fn kinds_and_quoting() {
        assert_eq!(Kind::of("varchar", Some("utf8mb4_general_ci")), Kind::Text { pad: true });
        assert_eq!(Kind::of("longtext", Some("utf8mb4_bin")), Kind::Text { pad: true });
        assert_eq!(Kind::of("varchar", Some("utf8mb4_nopad_bin")), Kind::Text { pad: false });
        assert_eq!(Kind::of("varchar", Some("utf8mb4_0900_ai_ci")), Kind::Text { pad: false });
        assert_eq!(Kind::of("BLOB", None), Kind::Binary);
        assert_eq!(Kind::of("decimal", None), Kind::Other);
        assert!(Column::of("b".into(), "MEDIUMBLOB", None).large && Column::of("t".into(), "longtext", Some("utf8mb4_bin")).large);
        assert!(!Column::of("v".into(), "varchar", Some("utf8mb4_bin")).large);
        assert_eq!(quoted(&TableName::new("d", "we`ird")), "`d`.`we``ird`");
        assert_eq!(literal("it's \\ x"), "'it''s \\\\ x'");
        let bytes = |b: &[u8]| mysql_async::Value::Bytes(b.to_vec());
        assert_eq!(key_literal(&col("n", Kind::Other), &bytes(b"-12.50")), "-12.50");
        assert_eq!(key_literal(&col("d", Kind::Other), &bytes(b"2024-01-02 03:04:05.000006")), "'2024-01-02 03:04:05.000006'");
        assert_eq!(key_literal(&col("s", Kind::Text { pad: true }), &bytes(b"12")), "'12'");
        assert_eq!(key_literal(&col("d", Kind::Other), &bytes(b"2024-01-02")), "'2024-01-02'");
        assert_eq!(key_literal(&col("b", Kind::Binary), &bytes(b"\x00\xff")), "0x00FF");
    }

    #[test]
    fn ranges_are_lexicographic() {
        let shape = Shape {
            table: TableName::new("d", "t"),
            key: vec![col("a", Kind::Other), col("b", Kind::Text { pad: true })],
            columns: vec![],
        };
        let lower = ["1".to_owned(), "'x'".to_owned()];
        assert_eq!(shape.range(Some(&lower), None), "((`a` > 1) OR (`a` = 1 AND `b` > 'x'))");
        assert_eq!(shape.range(None, Some(&lower)), "((`a` < 1) OR (`a` = 1 AND `b` <= 'x'))");
        assert_eq!(shape.range(None, None), "TRUE");
        let one = Shape { table: TableName::new("d", "t"), key: vec![col("id", Kind::Other)], columns: vec![] };
        assert_eq!(one.range(Some(&["5".into()]), Some(&["9".into()])), "((`id` > 5)) AND ((`id` <= 9))");
    }
}
