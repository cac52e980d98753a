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

pub use crate::store::postgres::primary::{install_primary, primary_schema_version, PRIMARY_SCHEMA_VERSION};

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
    fn settings_are_spliced_into_the_apply_function() {
        let sql = super::replica_sql();
        assert!(sql.contains("ARRAY['search_path', 'timezone'"));
        assert!(!sql.contains("@SETTINGS@"));
    }
}
