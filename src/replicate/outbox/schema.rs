//! The `capgate` schema: the outbox and its commit counter on the primary; the watermark,
//! the conflict record and the apply functions on the replica.
//!
//! Both installs are idempotent and serialized by a transaction-level advisory lock, so
//! several capgate processes (or tests) starting at once do not race on `CREATE … IF NOT
//! EXISTS` (which is not safe under concurrency in PostgreSQL).

use tokio_postgres::Client;

/// Settings whose value changes what a statement writes. Capture records them with each
/// statement; the replica resets them to their defaults before applying a statement and
/// then applies the captured values (all with `is_local`, i.e. `SET LOCAL`).
pub const MEANINGFUL_SETTINGS: &[&str] = &[
    "search_path",
    "timezone",
    "datestyle",
    "intervalstyle",
    "standard_conforming_strings",
    "extra_float_digits",
    "bytea_output",
    "default_text_search_config",
    "lc_monetary",
    "lc_numeric",
];

/// The version of the primary's `capgate` schema this build installs (recorded in
/// `capgate.schema_version`).
pub const PRIMARY_SCHEMA_VERSION: i32 = PRIMARY_MIGRATIONS.len() as i32;

/// The primary's schema, one step per version: step `i` takes the schema from version `i`
/// to `i + 1`. Append, never edit a released step. Steps must also be idempotent: version 1
/// is what capgate installed before the version was recorded, so it runs again on such a
/// database.
///
/// 1. the outbox, its commit counter and the shipped-seq record;
/// 2. `capgate.decisions`: one row per two-phase commit whose primary transaction committed,
///    written by the sync coordinator inside that transaction just before COMMIT; recovery
///    commits a replica's prepared transaction only when its gid is here (presumed abort).
///
/// The outbox (see docs/decisions/0007-outbox-commit-order.md):
///
/// - `id`: insertion order inside a transaction (a sequence, so NOT commit order);
/// - `xid`: the capturing transaction, how the ordering step finds its rows;
/// - `seq`: commit order, NULL until the ordering step sets it just before COMMIT. All rows of
///   one transaction share it. Gapless between committed transactions that captured rows;
/// - `committed_at`: `clock_timestamp()` at the ordering step, i.e. a moment before COMMIT;
/// - `params`/`param_types`/`param_formats`: the bound parameters as the client sent them
///   (format 0 = text, 1 = binary; NULL element = SQL NULL);
/// - `settings`: `{"search_path": "...", "timezone": "..."}`, see [`MEANINGFUL_SETTINGS`];
/// - `row_count`: what the primary reported for the statement (NULL = not comparable).
const PRIMARY_MIGRATIONS: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS capgate.outbox_seq (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint NOT NULL
);
INSERT INTO capgate.outbox_seq (seq) VALUES (0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS capgate.outbox (
    id bigserial PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    seq bigint,
    committed_at timestamptz,
    origin text NOT NULL,
    statement text NOT NULL,
    param_types oid[] NOT NULL DEFAULT '{}',
    param_formats int2[] NOT NULL DEFAULT '{}',
    params bytea[] NOT NULL DEFAULT '{}',
    settings jsonb NOT NULL DEFAULT '{}',
    row_count bigint,
    tables text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS outbox_unordered ON capgate.outbox (xid) WHERE seq IS NULL;
CREATE INDEX IF NOT EXISTS outbox_order ON capgate.outbox (origin, seq, id) WHERE seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS capgate.shipped (
    origin text NOT NULL,
    replica text NOT NULL,
    seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, replica)
);
"#,
    r#"
CREATE TABLE IF NOT EXISTS capgate.decisions (
    gid text PRIMARY KEY,
    origin text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS decisions_decided_at ON capgate.decisions (origin, decided_at);
"#,
];

/// The replica side. `capgate.advance` moves the watermark only from the value the shipper
/// read (so a second, stale shipper fails instead of applying twice); `capgate.apply` runs
/// one captured statement in a subtransaction under its session settings, compares the row
/// count and records a conflict (or raises `CGH01` for `halt`, aborting the whole batch).
const REPLICA_SQL: &str = r#"
BEGIN;
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('capgate schema install', 0));
CREATE SCHEMA IF NOT EXISTS capgate;
CREATE TABLE IF NOT EXISTS capgate.applied (
    origin text PRIMARY KEY,
    seq bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS capgate.conflicts (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    origin text NOT NULL,
    seq bigint NOT NULL,
    outbox_id bigint NOT NULL,
    tables text[] NOT NULL,
    statement text NOT NULL,
    params text[],
    expected_rows bigint,
    actual_rows bigint,
    sqlstate text,
    error text,
    resolution text NOT NULL
);
CREATE OR REPLACE FUNCTION capgate.advance(p_origin text, p_from bigint, p_to bigint)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO capgate.applied (origin, seq) VALUES (p_origin, 0) ON CONFLICT DO NOTHING;
    UPDATE capgate.applied SET seq = p_to, applied_at = now() WHERE origin = p_origin AND seq = p_from;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'capgate: the watermark of origin % is no longer %; another shipper applied it', p_origin, p_from
            USING ERRCODE = 'CGW01';
    END IF;
END
$fn$;
CREATE OR REPLACE FUNCTION capgate.apply(
    p_origin text, p_seq bigint, p_id bigint, p_tables text[], p_sql text, p_params text[],
    p_expected bigint, p_settings jsonb, p_on_conflict text)
RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
    n bigint;
    e_state text;
    e_msg text;
    resolution text;
BEGIN
    -- Settings change rarely between statements: applied only when they differ from the
    -- last ones applied in this transaction (remembered in a custom setting).
    IF p_settings::text IS DISTINCT FROM current_setting('capgate.settings', true) THEN
        BEGIN
            PERFORM pg_catalog.set_config(s.name, s.reset_val, true) FROM pg_catalog.pg_settings s
                WHERE lower(s.name) = ANY (ARRAY[@SETTINGS@]);
            PERFORM pg_catalog.set_config(j.key, j.value, true) FROM jsonb_each_text(p_settings) AS j;
            PERFORM pg_catalog.set_config('capgate.settings', p_settings::text, true);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT;
        END;
    END IF;
    IF e_state IS NULL THEN
        BEGIN
            EXECUTE p_sql;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF p_expected IS NOT NULL AND n <> p_expected THEN
                RAISE EXCEPTION 'capgate: % rows affected on the replica, % on the primary', n, p_expected
                    USING ERRCODE = 'CGR01';
            END IF;
            RETURN 'ok';
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT;
        END;
    END IF;
    IF e_state <> 'CGR01' THEN
        n := NULL;
    END IF;
    IF p_on_conflict = 'halt' THEN
        RAISE EXCEPTION 'capgate: conflict at origin % seq % (outbox id %): %', p_origin, p_seq, p_id, e_msg
            USING ERRCODE = 'CGH01',
                  DETAIL = jsonb_build_object('seq', p_seq, 'id', p_id, 'actual', n, 'sqlstate', e_state, 'error', e_msg)::text;
    END IF;
    resolution := CASE p_on_conflict WHEN 'overwrite' THEN 'skipped (overwrite is not implemented)' ELSE 'skipped' END;
    INSERT INTO capgate.conflicts (origin, seq, outbox_id, tables, statement, params, expected_rows, actual_rows,
                                   sqlstate, error, resolution)
        VALUES (p_origin, p_seq, p_id, p_tables, p_sql, p_params, p_expected, n, e_state, e_msg, resolution);
    RETURN jsonb_build_object('origin', p_origin, 'seq', p_seq, 'id', p_id, 'tables', p_tables,
        'statement', p_sql, 'params', p_params, 'expected_rows', p_expected, 'actual_rows', n,
        'sqlstate', e_state, 'error', e_msg, 'resolution', resolution)::text;
END
$fn$;
COMMIT;
"#;

/// Installs (or confirms) the outbox and the decision record on the primary: migrates the
/// `capgate` schema from the version recorded in `capgate.schema_version` (0 when absent)
/// to [`PRIMARY_SCHEMA_VERSION`], in one transaction. A database already at a newer version
/// (a newer capgate installed it) is left as it is.
pub async fn install_primary(client: &Client) -> Result<(), tokio_postgres::Error> {
    let result = client.batch_execute(&primary_sql()).await;
    if result.is_err() {
        // The script's own transaction may be left open and aborted: end it, so the caller
        // may keep using the connection. Best effort: the first error is the one to report.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The version the primary's `capgate` schema is at (0: not installed).
pub async fn primary_schema_version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    let exists = client.query_one("SELECT pg_catalog.to_regclass('capgate.schema_version') IS NOT NULL", &[]).await?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client.query_one("SELECT coalesce(max(version), 0) FROM capgate.schema_version", &[]).await?;
    Ok(row.get(0))
}

/// The install script: lock, version table, then each step not yet applied in a DO block
/// that checks the recorded version, runs the step and records the new version.
fn primary_sql() -> String {
    let mut sql = String::from(
        "BEGIN;\n\
         SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('capgate schema install', 0));\n\
         CREATE SCHEMA IF NOT EXISTS capgate;\n\
         CREATE TABLE IF NOT EXISTS capgate.schema_version (\n    \
             one boolean PRIMARY KEY DEFAULT true CHECK (one),\n    \
             version integer NOT NULL,\n    \
             updated_at timestamptz NOT NULL DEFAULT now()\n);\n\
         INSERT INTO capgate.schema_version (version) VALUES (0) ON CONFLICT DO NOTHING;\n",
    );
    for (i, step) in PRIMARY_MIGRATIONS.iter().enumerate() {
        let version = i + 1;
        sql.push_str(&format!(
            "DO $migrate$\nBEGIN\n    IF (SELECT version FROM capgate.schema_version) < {version} THEN\n        \
             EXECUTE $step${step}$step$;\n        \
             UPDATE capgate.schema_version SET version = {version}, updated_at = now();\n    \
             END IF;\nEND\n$migrate$;\n"
        ));
    }
    sql.push_str("COMMIT;\n");
    sql
}

/// Installs (or confirms) the watermark, the conflict table and the apply functions on a
/// replica.
pub async fn install_replica(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&replica_sql()).await
}

fn replica_sql() -> String {
    let list: Vec<String> = MEANINGFUL_SETTINGS.iter().map(|s| format!("'{s}'")).collect();
    REPLICA_SQL.replace("@SETTINGS@", &list.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_migration_step_is_wrapped_once() {
        let sql = super::primary_sql();
        for step in super::PRIMARY_MIGRATIONS {
            assert!(!step.contains("$step$") && !step.contains("$migrate$"));
        }
        assert_eq!(sql.matches("DO $migrate$").count(), super::PRIMARY_SCHEMA_VERSION as usize);
        assert!(sql.contains("capgate.decisions"));
        assert!(sql.starts_with("BEGIN;") && sql.trim_end().ends_with("COMMIT;"));
    }

    #[test]
    fn settings_are_spliced_into_the_apply_function() {
        let sql = super::replica_sql();
        assert!(sql.contains("ARRAY['search_path', 'timezone'"));
        assert!(!sql.contains("@SETTINGS@"));
    }
}
