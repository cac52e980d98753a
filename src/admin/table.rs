//! The answer to an admin SQL command, independent of any wire protocol: named, typed
//! columns and rows of values, plus the command tag. The PostgreSQL front end encodes it as
//! RowDescription / DataRow / CommandComplete, the MySQL one as column definitions and text
//! rows, so psql and `mariadb` print it as a table.

/// A column's type, as far as a client needs it to print the value (numbers right-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int,
    Float,
}

/// One value; `Null` prints as the client's null.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
}

impl Value {
    /// The value in text format (what both protocols send), None for NULL.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Text(s) => Some(s.clone()),
            Value::Int(n) => Some(n.to_string()),
            // Three decimals: lag and round trips are read by people, not compared exactly.
            Value::Float(f) => Some(format!("{f:.3}")),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<Option<String>> for Value {
    fn from(s: Option<String>) -> Value {
        s.map_or(Value::Null, Value::Text)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n.min(i64::MAX as u64) as i64)
    }
}

impl From<Option<u64>> for Value {
    fn from(n: Option<u64>) -> Value {
        n.map_or(Value::Null, Value::from)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<Option<f64>> for Value {
    fn from(f: Option<f64>) -> Value {
        f.map_or(Value::Null, Value::Float)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultTable {
    pub columns: Vec<(String, ColumnType)>,
    pub rows: Vec<Vec<Value>>,
    /// The command tag (`SHOW`, `RELOAD` …); the PostgreSQL front end appends the row
    /// count where PostgreSQL would (`SELECT n`).
    pub tag: &'static str,
}

impl ResultTable {
    /// An empty table with these columns.
    pub fn new(tag: &'static str, columns: &[(&str, ColumnType)]) -> ResultTable {
        ResultTable { columns: columns.iter().map(|(n, t)| (n.to_string(), *t)).collect(), rows: Vec::new(), tag }
    }

    /// Add a row (as many values as columns).
    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    /// The values of the column called `name`, as text (for tests and the CLI).
    pub fn column(&self, name: &str) -> Vec<Option<String>> {
        let Some(i) = self.columns.iter().position(|(n, _)| n == name) else { return Vec::new() };
        self.rows.iter().map(|r| r.get(i).and_then(Value::to_text)).collect()
    }
}
