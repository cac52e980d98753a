//! Reading the facts classification needs from a PostgreSQL primary's catalog: every
//! function's volatility (`pg_proc.provolatile`), the tables that exist (to resolve
//! unqualified names along the search_path), and the columns whose defaults are not
//! deterministic (sequences, identity columns, volatile expressions).

use crate::classify::{Catalog, ColumnDefault, DefaultKind, FunctionInfo, TableName, Volatility};

/// Functions with their volatility. An overloaded name takes the most volatile of its
/// overloads: classification works on names, and must not call a write a read.
const FUNCTIONS: &str = "SELECT n.nspname::text, p.proname::text, max(p.provolatile::text) \
     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.prokind IN ('f', 'p', 'a', 'w') GROUP BY 1, 2";

/// Relations a statement can name: tables, views, materialized views, foreign tables,
/// sequences.
const RELATIONS: &str = "SELECT n.nspname::text, c.relname::text FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND n.nspname NOT LIKE 'pg_toast%'";

/// Columns with a default or identity, outside the system schemas.
const DEFAULTS: &str = "SELECT n.nspname::text, c.relname::text, a.attname::text, \
     coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity::text \
     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
     WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') \
     AND (d.adbin IS NOT NULL OR a.attidentity <> '') \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, a.attnum";

/// Load a complete catalog through `client`.
pub async fn load(client: &tokio_postgres::Client) -> Result<Catalog, tokio_postgres::Error> {
    let mut catalog = Catalog::new();
    for row in client.query(FUNCTIONS, &[]).await? {
        let volatility = match row.get::<_, String>(2).as_str() {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            _ => Volatility::Volatile,
        };
        catalog.add_function(row.get(0), row.get(1), FunctionInfo { volatility, writes: None });
    }
    for row in client.query("SELECT nspname::text FROM pg_namespace", &[]).await? {
        catalog.add_schema(row.get::<_, &str>(0));
    }
    for row in client.query(RELATIONS, &[]).await? {
        catalog.add_table(&TableName::new(row.get::<_, String>(0), row.get::<_, String>(1)));
    }
    let mut current: Option<(TableName, Vec<ColumnDefault>)> = None;
    for row in client.query(DEFAULTS, &[]).await? {
        let table = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let expr: String = row.get(3);
        let identity: String = row.get(4);
        let Some(kind) = default_kind(&expr, &identity) else { continue };
        if current.as_ref().is_some_and(|(t, _)| *t != table) {
            if let Some((t, d)) = current.take() {
                catalog.set_defaults(t, d);
            }
        }
        current.get_or_insert_with(|| (table, Vec::new())).1.push(ColumnDefault { column: row.get(2), kind, expr });
    }
    if let Some((t, d)) = current {
        catalog.set_defaults(t, d);
    }
    catalog.set_complete(true);
    Ok(catalog)
}

/// Whether a default makes an INSERT that omits the column non-deterministic, and why.
/// Constants (`0`, `'new'::text`, `false`) are deterministic; anything that calls a function
/// is treated as volatile, except sequences and identity columns which have their own kinds.
fn default_kind(expr: &str, identity: &str) -> Option<DefaultKind> {
    if !identity.is_empty() {
        return Some(DefaultKind::Identity);
    }
    if expr.contains("nextval(") {
        return Some(DefaultKind::Sequence);
    }
    let lower = expr.to_ascii_lowercase();
    let time_keyword = ["current_timestamp", "current_date", "current_time", "localtime", "now()"].iter().any(|k| lower.contains(k));
    if time_keyword || expr.contains('(') {
        return Some(DefaultKind::Volatile);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_kinds() {
        assert_eq!(default_kind("nextval('orders_id_seq'::regclass)", ""), Some(DefaultKind::Sequence));
        assert_eq!(default_kind("", "a"), Some(DefaultKind::Identity));
        assert_eq!(default_kind("now()", ""), Some(DefaultKind::Volatile));
        assert_eq!(default_kind("CURRENT_TIMESTAMP", ""), Some(DefaultKind::Volatile));
        assert_eq!(default_kind("gen_random_uuid()", ""), Some(DefaultKind::Volatile));
        assert_eq!(default_kind("'new'::text", ""), None);
        assert_eq!(default_kind("0", ""), None);
    }
}
