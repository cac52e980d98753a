//! Row images on MySQL / MariaDB: how each column's value is written into the JSON object a
//! capture trigger records, and how the replica turns it back into the same value
//! (decision 0015).
//!
//! MySQL triggers cannot take `NEW.*`, so every table's triggers name each column with an
//! expression chosen from its type. The JSON holds only integers, strings and `null`, so the
//! image can be read by any JSON parser without losing a digit:
//!
//! | type | in the image | back on the replica |
//! |---|---|---|
//! | integer types, `YEAR` | JSON number | as is |
//! | `BIT(n)` | `col + 0`: JSON number | as is (an integer assigns the bits) |
//! | `DECIMAL` | `CAST(col AS CHAR)`: exact digits | the text (the server converts exactly) |
//! | `DOUBLE` | `CAST(col AS CHAR)`: shortest text that reads back as the same double | the text |
//! | `FLOAT` | `CAST(CAST(col AS DOUBLE) AS CHAR)` (the server prints FLOAT with 6 digits) | the text |
//! | `DATE`, `DATETIME(n)`, `TIME(n)` | the server's text, every fractional digit | the text |
//! | `TIMESTAMP(n)` | `UNIX_TIMESTAMP(col)` as text: the stored instant, whatever the time zone | `FROM_UNIXTIME` in a `+00:00` session; `0` is the zero date |
//! | `CHAR`, `VARCHAR`, `TEXT`s, `ENUM`, `SET` | the text (converted to utf8mb4 by JSON) | the text |
//! | `JSON` (MariaDB: `LONGTEXT` checked with `json_valid`) | the document's text, byte for byte | the text |
//! | `BINARY`, `VARBINARY`, `BLOB`s | `HEX(col)` | `UNHEX(?)` |
//! | spatial types | `HEX(col)`: the stored SRID and WKB | `UNHEX(?)` |
//!
//! Generated columns are left out (the replica computes them); so are columns of a type this
//! module does not know, which makes the table refuse capture with a message instead of
//! replicating a value it cannot round-trip.

use std::fmt::Write;

/// One column of a replicated table, from `information_schema.COLUMNS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `DATA_TYPE`, lower case (`int`, `decimal`, `longtext`, …).
    pub data_type: String,
    /// Part of the primary key.
    pub key: bool,
    /// `EXTRA` says it is generated (`VIRTUAL GENERATED`, `STORED GENERATED`, `PERSISTENT`).
    pub generated: bool,
}

/// How a column's value travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A JSON number or string the replica assigns as it is.
    Plain,
    /// `FLOAT`: widened to DOUBLE for printing.
    Float,
    /// `DECIMAL`, `DOUBLE`: printed exactly by the server.
    Exact,
    /// `TIMESTAMP`: seconds since the epoch.
    Epoch,
    /// Bytes as hexadecimal.
    Hex,
    /// `BIT`: an unsigned integer.
    Bits,
    /// Text, which may be a JSON document: cast so JSON_OBJECT writes a string, not a
    /// nested document (which would lose its exact text).
    Text,
}

/// Why a column cannot be captured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("column `{column}` has type {data_type}, which capgate cannot replicate exactly")]
    UnknownType { column: String, data_type: String },
    #[error("the table has no primary key; capgate matches replica rows by primary key")]
    NoPrimaryKey,
}

impl Encoding {
    /// The encoding of a `DATA_TYPE`.
    pub fn of(column: &Column) -> Result<Encoding, ImageError> {
        Ok(match column.data_type.as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => Encoding::Plain,
            "bit" => Encoding::Bits,
            "decimal" | "numeric" | "double" | "real" => Encoding::Exact,
            "float" => Encoding::Float,
            "date" | "datetime" | "time" | "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "enum" | "set" => Encoding::Plain,
            "longtext" | "json" => Encoding::Text,
            "timestamp" => Encoding::Epoch,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry" | "point" | "linestring" | "polygon"
            | "multipoint" | "multilinestring" | "multipolygon" | "geometrycollection" | "geomcollection" => Encoding::Hex,
            other => return Err(ImageError::UnknownType { column: column.name.clone(), data_type: other.to_owned() }),
        })
    }

    /// The SQL expression a trigger writes for `row.column` (`row`: `NEW` or `OLD`).
    pub fn capture(self, row: &str, column: &str) -> String {
        let c = format!("{row}.{}", quote_ident(column));
        match self {
            Encoding::Plain => c,
            Encoding::Bits => format!("{c} + 0"),
            Encoding::Exact => format!("CAST({c} AS CHAR)"),
            Encoding::Float => format!("CAST(CAST({c} AS DOUBLE) AS CHAR)"),
            Encoding::Epoch => format!("CAST(UNIX_TIMESTAMP({c}) AS CHAR)"),
            Encoding::Hex => format!("HEX({c})"),
            Encoding::Text => format!("CAST({c} AS CHAR CHARACTER SET utf8mb4)"),
        }
    }

    /// The SQL expression that turns a bound parameter (`?`, the image's value `value`) back
    /// into the column's value. The apply session runs with `time_zone = '+00:00'`. The zero
    /// instant is the zero date (`0000-00-00 00:00:00`): TIMESTAMP stores it as 0, and
    /// FROM_UNIXTIME(0) would name 1970 instead: it is bound as that text (the second value).
    pub fn apply(self, value: Option<&str>) -> (&'static str, Option<&'static str>) {
        match self {
            Encoding::Plain | Encoding::Bits | Encoding::Exact | Encoding::Float | Encoding::Text => ("?", None),
            Encoding::Epoch if value.is_some_and(|v| v.chars().all(|c| c == '0' || c == '.')) => ("?", Some("0000-00-00 00:00:00")),
            Encoding::Epoch => ("FROM_UNIXTIME(CAST(? AS DECIMAL(20,6)))", None),
            Encoding::Hex => ("UNHEX(?)", None),
        }
    }
}

/// `JSON_OBJECT('a', NEW.`a`, …)` over the columns a row image holds.
pub fn json_object(row: &str, columns: &[Column]) -> Result<String, ImageError> {
    let mut out = String::from("JSON_OBJECT(");
    let mut first = true;
    for c in columns.iter().filter(|c| !c.generated) {
        let enc = Encoding::of(c)?;
        if !first {
            out.push_str(", ");
        }
        first = false;
        let _ = write!(out, "{}, {}", quote_literal(&c.name), enc.capture(row, &c.name));
    }
    out.push(')');
    Ok(out)
}

/// `name` as a MySQL identifier: backticks, doubled inside.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `text` as a MySQL string literal that means the same under every `sql_mode` (no
/// backslash escapes, so `NO_BACKSLASH_ESCAPES` does not change it): quotes are doubled,
/// and the characters that need a backslash elsewhere are spliced in with `CHAR()`.
pub fn quote_literal(text: &str) -> String {
    if !text.contains(['\\', '\0']) {
        return format!("'{}'", text.replace('\'', "''"));
    }
    let mut parts = Vec::new();
    for (i, piece) in text.split('\\').enumerate() {
        if i > 0 {
            parts.push("CHAR(92 USING utf8mb4)".to_owned());
        }
        for (j, p) in piece.split('\0').enumerate() {
            if j > 0 {
                parts.push("CHAR(0 USING utf8mb4)".to_owned());
            }
            if !p.is_empty() {
                parts.push(format!("'{}'", p.replace('\'', "''")));
            }
        }
    }
    format!("CONCAT({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, data_type: &str) -> Column {
        Column { name: name.into(), data_type: data_type.into(), key: false, generated: false }
    }

    #[test]
    fn each_type_has_an_exact_encoding() {
        assert_eq!(Encoding::of(&col("a", "decimal")).map(|e| e.capture("NEW", "a")), Ok("CAST(NEW.`a` AS CHAR)".into()));
        assert_eq!(Encoding::of(&col("a", "float")).map(|e| e.capture("OLD", "a")), Ok("CAST(CAST(OLD.`a` AS DOUBLE) AS CHAR)".into()));
        assert_eq!(Encoding::of(&col("a", "point")), Ok(Encoding::Hex));
        assert_eq!(Encoding::Epoch.apply(Some("1709254923.500000")), ("FROM_UNIXTIME(CAST(? AS DECIMAL(20,6)))", None));
        assert_eq!(Encoding::Epoch.apply(Some("0.000000")), ("?", Some("0000-00-00 00:00:00")));
        assert_eq!(Encoding::of(&col("v", "vector")), Err(ImageError::UnknownType { column: "v".into(), data_type: "vector".into() }));
    }

    #[test]
    fn generated_columns_are_left_out() {
        let mut g = col("g", "int");
        g.generated = true;
        let cols = [col("id", "int"), g, col("b`q", "blob")];
        assert_eq!(json_object("NEW", &cols), Ok("JSON_OBJECT('id', NEW.`id`, 'b`q', HEX(NEW.`b``q`))".into()));
    }

    #[test]
    fn literals_mean_the_same_in_every_sql_mode() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), "CONCAT('a', CHAR(92 USING utf8mb4), 'b')");
        assert_eq!(quote_literal("\\"), "CONCAT(CHAR(92 USING utf8mb4))");
    }
}
