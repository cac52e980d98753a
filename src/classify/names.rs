//! Table names as the database stores them: identifiers folded per dialect, schemas resolved
//! against the session's search_path.
//!
//! Names come from the parser's identifier parts (`ObjectName`), never from splitting a string
//! on dots: a quoted identifier may contain dots, quotes and upper-case letters.

use std::fmt;

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

use super::catalog::Catalog;
use super::{Dialect, SqlMode};

/// PostgreSQL keeps the first 63 bytes of an identifier (NAMEDATALEN - 1).
const PG_MAX_IDENT: usize = 63;

/// A schema-qualified table (or sequence, or view) name, exactly as the database stores it.
///
/// Why a pair and not a string: policy globs match the schema and the table separately, and
/// a quoted name may itself contain a dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// The schema (PostgreSQL) or database (MySQL).
    pub schema: String,
    /// The relation's own name.
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableName {
        TableName { schema: schema.into(), name: name.into() }
    }

    /// `schema.table` with either part possibly double-quoted (`""` inside quotes), the form
    /// its Display writes; None for anything else.
    pub fn parse(text: &str) -> Option<TableName> {
        let mut parts = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        '"' => break,
                        c => part.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    part.push(c);
                    chars.next();
                }
            }
            if part.is_empty() {
                return None;
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return None,
            }
        }
        match <[String; 2]>::try_from(parts) {
            Ok([schema, name]) => Some(TableName::new(schema, name)),
            Err(_) => None,
        }
    }
}

/// `schema.table`, each part double-quoted only when it would not read back as itself
/// unquoted (upper case, dots, spaces …), so `public.orders` but `public."Order Items"`.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_ident(f, &self.schema)?;
        f.write_str(".")?;
        write_ident(f, &self.name)
    }
}

fn write_ident(f: &mut fmt::Formatter<'_>, ident: &str) -> fmt::Result {
    let plain = ident.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        f.write_str(ident)
    } else {
        write!(f, "\"{}\"", ident.replace('"', "\"\""))
    }
}

/// Fold one identifier as the dialect stores it: PostgreSQL lower-cases unquoted ASCII
/// letters and truncates to 63 bytes; MySQL keeps the case (whether table names compare
/// case-insensitively is a server setting, `lower_case_table_names`, not a parse rule).
pub fn fold(dialect: Dialect, ident: &Ident) -> String {
    let mut s = match (dialect, ident.quote_style) {
        (Dialect::Postgres, None) => ident.value.to_ascii_lowercase(),
        _ => ident.value.clone(),
    };
    if dialect == Dialect::Postgres && s.len() > PG_MAX_IDENT {
        let mut end = PG_MAX_IDENT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The folded identifier parts of a name, or `None` when a part is not a plain identifier
/// (a dialect-specific function in a name).
pub fn parts(dialect: Dialect, name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(fold(dialect, i)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// The session state a statement's text is read under: the schemas an unqualified name is
/// looked up in, in order, and (MySQL) the `sql_mode` flags that change tokenizing.
///
/// PostgreSQL: the front end tracks the schemas from `SET search_path` and the server's
/// reports; `$user` must already be replaced by the session user's name (a `$user` left in
/// is skipped, as PostgreSQL skips it when no such schema exists).
///
/// MySQL: the one "schema" is the session's current database ([`SearchPath::database`]),
/// from the login packet, COM_INIT_DB, `USE` and session tracking; none before one is
/// chosen. The [`SqlMode`] comes from the server's status flags or session tracking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchPath {
    /// Schema names exactly as stored (already folded/unquoted).
    schemas: Vec<String>,
    /// MySQL's lexical `sql_mode` flags (ignored for PostgreSQL). Part of the cache key: the
    /// same text can hold other statements under another mode.
    sql_mode: SqlMode,
}

impl SearchPath {
    pub fn new<I, S>(schemas: I) -> SearchPath
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SearchPath {
            schemas: schemas.into_iter().map(Into::into).filter(|s: &String| s != "$user").collect(),
            sql_mode: SqlMode::default(),
        }
    }

    /// MySQL: unqualified names live in `database`, the session's current database; `None`
    /// when the session has none (such names are then `unknown`, as the server refuses them
    /// with error 1046).
    pub fn database(database: Option<&str>) -> SearchPath {
        SearchPath::new(database)
    }

    /// The same path, read under MySQL's `mode`.
    pub fn with_sql_mode(mut self, mode: SqlMode) -> SearchPath {
        self.sql_mode = mode;
        self
    }

    /// The schemas, in lookup order.
    pub fn schemas(&self) -> &[String] {
        &self.schemas
    }

    /// MySQL's lexical `sql_mode` flags.
    pub fn sql_mode(&self) -> SqlMode {
        self.sql_mode
    }
}

/// PostgreSQL's default `"$user", public`, for a session whose user has no schema.
impl Default for SearchPath {
    fn default() -> SearchPath {
        SearchPath::new(["public"])
    }
}

/// Resolve a relation name. Qualified names are taken as they are (a three-part name drops
/// its database part). PostgreSQL: an unqualified name lives in the first search_path schema
/// where the catalog knows it, else in `pg_catalog` if it starts with `pg_`, else in the
/// first search_path schema (where PostgreSQL would create it), else `public`. MySQL: in the
/// current database; `None` when there is none; folded to lower case when the catalog says
/// the server does (`lower_case_table_names`).
pub fn resolve(dialect: Dialect, name: &ObjectName, path: &SearchPath, catalog: &Catalog) -> Option<TableName> {
    let mut parts = parts(dialect, name)?;
    if dialect == Dialect::MySql && catalog.table_names_lower_case() {
        parts.iter_mut().for_each(|p| *p = p.to_lowercase());
    }
    match parts.len() {
        1 => {
            let name = parts.pop()?;
            match dialect {
                Dialect::Postgres => Some(resolve_unqualified(name, path, catalog)),
                Dialect::MySql => path
                    .schemas()
                    .first()
                    .map(|db| TableName { schema: if catalog.table_names_lower_case() { db.to_lowercase() } else { db.clone() }, name }),
            }
        }
        2 | 3 => {
            let name = parts.pop()?;
            let schema = parts.pop()?;
            Some(TableName { schema, name })
        }
        _ => None,
    }
}

/// Resolve an already folded, unqualified PostgreSQL name (see [`resolve`]).
pub fn resolve_unqualified(name: String, path: &SearchPath, catalog: &Catalog) -> TableName {
    if let Some(schema) = path.schemas().iter().find(|s| catalog.has_table(s, &name)) {
        return TableName { schema: schema.clone(), name };
    }
    // PostgreSQL searches pg_catalog before the search_path: `pg_class`, `pg_attribute` …
    // are system catalogs (user tables may not be named pg_* in practice: they would be
    // shadowed).
    if name.starts_with("pg_") && !path.schemas().iter().any(|s| s == "pg_catalog") {
        return TableName { schema: "pg_catalog".to_owned(), name };
    }
    // Not a known table: where PostgreSQL would look first, i.e. the first schema of the
    // path that exists (`$user` usually does not).
    let schema = path
        .schemas()
        .iter()
        .find(|s| catalog.has_schema(s) != Some(false))
        .or_else(|| path.schemas().first())
        .cloned()
        .unwrap_or_else(|| "public".to_owned());
    TableName { schema, name }
}
