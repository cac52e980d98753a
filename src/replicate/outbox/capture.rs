//! The capture API for the relay: what it runs on the CLIENT'S primary connection, inside
//! the client's own transaction, so the outbox row commits or rolls back with the data.
//!
//! Per replicated statement, after the primary answered it (the row count is known):
//! [`Capture::insert_sql`], one self-contained simple query (values inlined as dollar-quoted
//! literals, independent of the session's `search_path` and `standard_conforming_strings`).
//! Just before the client's COMMIT (and for an autocommit statement, inside the
//! `BEGIN … COMMIT` the relay wraps it in): [`ORDER_SQL`], the ordering step. It takes the
//! commit-counter row lock and stamps this transaction's rows with the next `seq`; the lock
//! is held until COMMIT, so `seq` order is commit order (docs/decisions/0006). The relay
//! must run it exactly once per transaction that captured something, as the last statement
//! before COMMIT (after it, only COMMIT): anything between widens the serialized window.
//! If the client rolls back, nothing remains; rows of a committed transaction that skipped
//! the ordering step are never shipped (they keep `seq IS NULL`).
//!
//! [`record`] and [`commit_captured`] do the same through a tokio-postgres client, for tests
//! and tools.

use tokio_postgres::Client;

use super::literal::quote;

/// The ordering step: the last statement before COMMIT of a transaction that captured rows.
pub const ORDER_SQL: &str = "WITH s AS (UPDATE capgate.outbox_seq SET seq = seq + 1 RETURNING seq) \
     UPDATE capgate.outbox o SET seq = s.seq, committed_at = pg_catalog.clock_timestamp() FROM s \
     WHERE o.xid = pg_catalog.pg_current_xact_id() AND o.seq IS NULL";

/// How the client sent a parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamFormat {
    Text,
    Binary,
}

impl ParamFormat {
    /// The protocol's format code (0 text, 1 binary).
    pub fn code(self) -> i16 {
        match self {
            ParamFormat::Text => 0,
            ParamFormat::Binary => 1,
        }
    }
}

/// One bound parameter, as it arrived in the client's Bind message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter's type on the primary (0 = unspecified).
    pub type_oid: u32,
    pub format: ParamFormat,
    /// `None` is SQL NULL.
    pub value: Option<Vec<u8>>,
}

/// One captured write.
#[derive(Debug, Clone)]
pub struct Capture {
    /// The site whose primary committed it (the config's `site`).
    pub origin: String,
    /// The statement, already made deterministic, with `$n` placeholders for `params`.
    pub statement: String,
    pub params: Vec<Param>,
    /// The session's values of the settings that change the statement's meaning (see
    /// [`super::schema::MEANINGFUL_SETTINGS`]), lower-case names.
    pub settings: Vec<(String, String)>,
    /// Tables written, `schema.table`.
    pub tables: Vec<String>,
    /// Rows the primary reported (None when the command tag carries no count).
    pub row_count: Option<u64>,
}

impl Capture {
    /// The outbox row insert as one simple query with every value inlined.
    pub fn insert_sql(&self) -> String {
        let types: Vec<String> = self.params.iter().map(|p| p.type_oid.to_string()).collect();
        let formats: Vec<String> = self.params.iter().map(|p| p.format.code().to_string()).collect();
        let values: Vec<String> = self
            .params
            .iter()
            .map(|p| match &p.value {
                Some(v) => format!("{}::bytea", quote(&hex(v))),
                None => "NULL".to_owned(),
            })
            .collect();
        let tables: Vec<String> = self.tables.iter().map(|t| quote(t)).collect();
        let row_count = self.row_count.map_or("NULL".to_owned(), |n| n.to_string());
        format!(
            "INSERT INTO capgate.outbox (origin, statement, param_types, param_formats, params, settings, row_count, tables) \
             VALUES ({}, {}, ARRAY[{}]::oid[], ARRAY[{}]::int2[], ARRAY[{}]::bytea[], {}::jsonb, {row_count}, ARRAY[{}]::text[])",
            quote(&self.origin),
            quote(&self.statement),
            types.join(","),
            formats.join(","),
            values.join(","),
            quote(&self.settings_json()),
            tables.join(","),
        )
    }

    /// [`Capture::insert_sql`] with the settings read on the primary, in the capturing
    /// session, by the insert itself (`settings` is ignored): the values are the session's
    /// own, at no extra round trip.
    pub fn insert_sql_with_session_settings(&self) -> String {
        let names: Vec<String> = super::schema::MEANINGFUL_SETTINGS.iter().map(|s| quote(s)).collect();
        let live = format!(
            "(SELECT pg_catalog.jsonb_object_agg(n, pg_catalog.current_setting(n)) FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS n)",
            names.join(",")
        );
        let fixed = format!("{}::jsonb", quote(&self.settings_json()));
        self.insert_sql().replacen(&fixed, &live, 1)
    }

    /// The settings as the JSON object stored in `outbox.settings`.
    pub fn settings_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> =
            self.settings.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        serde_json::Value::Object(map).to_string()
    }

    /// Bytes this capture adds to a batch (statement and values), for batch sizing.
    pub fn size(&self) -> usize {
        self.statement.len() + self.params.iter().map(|p| p.value.as_ref().map_or(4, |v| v.len())).sum::<usize>()
    }
}

/// `\x` + hex, the bytea input form that needs no escaping.
fn hex(v: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * v.len());
    s.push_str("\\x");
    for b in v {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Inserts `capture`'s outbox row on `client` (inside whatever transaction it is in).
pub async fn record(client: &Client, capture: &Capture) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&capture.insert_sql()).await
}

/// Runs the ordering step on `client` (inside the transaction that captured rows).
pub async fn order(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(ORDER_SQL).await
}

/// A whole captured transaction: BEGIN, `data` (the write itself, any SQL), the captures,
/// the ordering step, COMMIT — what the relay produces for an autocommit statement.
pub async fn commit_captured(client: &Client, data: &str, captures: &[Capture]) -> Result<(), tokio_postgres::Error> {
    let mut sql = String::from("BEGIN;\n");
    if !data.is_empty() {
        sql.push_str(data);
        sql.push_str(";\n");
    }
    for c in captures {
        sql.push_str(&c.insert_sql());
        sql.push_str(";\n");
    }
    sql.push_str(ORDER_SQL);
    sql.push_str(";\nCOMMIT;");
    let result = client.batch_execute(&sql).await;
    if result.is_err() && !client.is_closed() {
        // Leave the session usable for the caller.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_inlines_everything() {
        let c = Capture {
            origin: "a".into(),
            statement: "UPDATE t SET v = $1 WHERE k = $2".into(),
            params: vec![
                Param { type_oid: 25, format: ParamFormat::Text, value: Some(b"it's".to_vec()) },
                Param { type_oid: 23, format: ParamFormat::Binary, value: None },
            ],
            settings: vec![("search_path".into(), "public".into())],
            tables: vec!["public.t".into()],
            row_count: Some(1),
        };
        let sql = c.insert_sql();
        assert!(sql.contains("ARRAY[25,23]::oid[], ARRAY[0,1]::int2[], ARRAY[$cg$\\x69742773$cg$::bytea,NULL]::bytea[]"), "{sql}");
        assert!(sql.contains("$cg${\"search_path\":\"public\"}$cg$::jsonb, 1, ARRAY[$cg$public.t$cg$]::text[]"), "{sql}");
    }
}
