//! The primary's `capgate` schema: versioned tables, and the functions that capture row
//! changes (decision 0009).
//!
//! Tables change through numbered migration steps, recorded in `capgate.schema_version`;
//! functions are replaced on every install (`CREATE OR REPLACE`), so fixing a function never
//! needs a migration. Both run in one transaction serialized by an advisory lock: several
//! capgate processes (or tests) starting at once do not race on `CREATE … IF NOT EXISTS`,
//! which is not safe under concurrency in PostgreSQL.

use tokio_postgres::Client;

/// The version of the primary's `capgate` tables this build installs.
pub const PRIMARY_SCHEMA_VERSION: i32 = PRIMARY_MIGRATIONS.len() as i32;

/// One step per version: step `i` takes the tables from version `i` to `i + 1`. Append, never
/// edit a released step. Steps must be idempotent: version 1 is what capgate installed before
/// the version was recorded, so it may run again on such a database.
///
/// 1. the statement outbox of the first core;
/// 2. `capgate.decisions`: one row per two-phase commit, written by the sync coordinator inside
///    the client's primary transaction;
/// 3. row images: `capgate.changes` (async), `capgate.sync_changes` (sync, read and deleted at
///    COMMIT), `capgate.sync_txn` (one row per transaction with sync changes, checked at COMMIT),
///    `capgate.shipped_snapshots` (each replica's applied snapshot, for pruning and lag), and whether a
///    decision is a commit or an abort written by recovery (the fence of decision 0009);
/// 4. the statement outbox of step 1 removed (row images replaced it);
/// 5. `capture_ddl` takes the caller's search_path;
/// 6. `capgate.changes.gid`: a sync commit under a quorum also writes its changes to the
///    stream, tagged with its gid, for the replicas outside the quorum (decision 0017);
/// 7. `capgate.local_site` (this site's name and its policy's fingerprint, written by capgate,
///    for `check-config --connect` on the other sites) and
///    `capgate.latest` (the same table the replica side keeps): a `latest` table's local
///    writes record their time and site there, so changes from another site that takes writes
///    are compared with them (decision 0019);
/// 8. the shared `capgate.sync_changes` and `capgate.sync_txn` removed: a transaction's sync
///    changes wait for its COMMIT in a temporary table of its own session (see
///    [`FUNCTIONS_SQL`], `capgate.sync_buffer`), where no other transaction reads or writes;
///    `capgate.capture_since`: the snapshot each table's capture trigger was installed in
///    (`capgate.install_capture`), where a sync table enters replication (decision 0014).
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
    r#"
CREATE SEQUENCE IF NOT EXISTS capgate.change_seq;
CREATE TABLE IF NOT EXISTS capgate.changes (
    seq bigint PRIMARY KEY DEFAULT pg_catalog.nextval('capgate.change_seq'),
    xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    tbl text NOT NULL,
    op "char" NOT NULL,
    old json,
    new json,
    proxied boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_xid ON capgate.changes (xid);
CREATE UNLOGGED TABLE IF NOT EXISTS capgate.sync_changes (
    seq bigint PRIMARY KEY DEFAULT pg_catalog.nextval('capgate.change_seq'),
    xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    tbl text NOT NULL,
    op "char" NOT NULL,
    old json,
    new json,
    proxied boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS sync_changes_xid ON capgate.sync_changes (xid);
CREATE UNLOGGED TABLE IF NOT EXISTS capgate.sync_txn (
    xid xid8 PRIMARY KEY,
    tbl text NOT NULL
);
CREATE TABLE IF NOT EXISTS capgate.shipped_snapshots (
    replica text PRIMARY KEY,
    snapshot pg_snapshot NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE capgate.decisions ADD COLUMN IF NOT EXISTS committed boolean NOT NULL DEFAULT true;
"#,
    r#"
DROP TABLE IF EXISTS capgate.outbox;
DROP TABLE IF EXISTS capgate.outbox_seq;
DROP TABLE IF EXISTS capgate.shipped;
"#,
    r#"
DROP FUNCTION IF EXISTS capgate.capture_ddl(text, text, text);
"#,
    r#"
ALTER TABLE capgate.changes ADD COLUMN IF NOT EXISTS gid text;
DROP FUNCTION IF EXISTS capgate.sync_prepare(text, text);
"#,
    r#"
CREATE TABLE IF NOT EXISTS capgate.local_site (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    name text NOT NULL,
    policy text
);
CREATE TABLE IF NOT EXISTS capgate.latest (
    tbl text NOT NULL,
    key jsonb NOT NULL,
    origin text NOT NULL,
    at timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tbl, key)
);
"#,
    r#"
DROP TABLE IF EXISTS capgate.sync_changes;
DROP TABLE IF EXISTS capgate.sync_txn;
CREATE TABLE IF NOT EXISTS capgate.capture_since (
    tbl text PRIMARY KEY,
    snapshot pg_snapshot NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
"#,
];

/// The functions, replaced on every install. `@` placeholders: none; every name is
/// schema-qualified because the functions run with the client's search_path.
///
/// The functions a client's session runs (the trigger, `sync_prepare`, `capture_ddl`) are
/// `SECURITY DEFINER`, owned by capgate's role: application roles need no rights on the
/// `capgate` schema. Their search_path is fixed, and everything they name is qualified.
///
/// - `capgate.capture(mode, table)`: the trigger function (`'sync'` or `'async'`, and the name
///   of the table as capgate writes it, see [`crate::classify::TableName`]), see decision
///   0009. A row's JSON must read back as the same values on the replica whatever the
///   writer's session settings: when they would print a value differently (a non-ISO
///   DateStyle, another IntervalStyle, rounded floats, a money locale), the images come from
///   `capgate.row_image`, whose `SET` clauses fix them; otherwise the trigger skips that cost
///   (decision 0025). TimeZone and bytea_output change the text, never the value (a `latest`
///   table's key text is compared across sites, so there they are fixed too). A sync table
///   changed outside a capgate session (`capgate.session` not `on`: a DBA's psql, a cron job) is captured as
///   async: it is shipped later, and counted.
/// - `capgate.sync_buffer()`: creates, once per session (again after a `DISCARD`), the
///   temporary table `pg_temp.capgate_sync_changes` (`ON COMMIT DELETE ROWS`) where a capgate
///   session's sync changes wait for its COMMIT, with the deferred constraint trigger that
///   fires on each transaction's first one. Temporary, so that no other transaction ever reads
///   or writes these rows: PostgreSQL takes no predicate locks on temporary tables, and the
///   read at COMMIT adds nothing to a SERIALIZABLE transaction's conflicts (a shared table's
///   index pages, read at COMMIT and written by every sync writer, made unrelated writers
///   fail with 40001). The table is owned by capgate's role (the functions that use it are
///   `SECURITY DEFINER`), which needs `TEMPORARY` on the database. A transaction that used it
///   cannot be `PREPARE TRANSACTION`ed on the primary: a client's own two-phase commit of sync
///   changes is refused by PostgreSQL (0A000).
/// - `capgate.check_coordinated()`: the deferred constraint trigger on a transaction's first
///   sync change.
/// - `capgate.sync_prepare(gid, origin, stream)`: the first step of a sync COMMIT: the tables
///   and the changes (NULL when the transaction has none left, e.g. after ROLLBACK TO
///   SAVEPOINT); with `stream`, the changes are also written to `capgate.changes` with the
///   gid, keeping their capture order (`seq`), for replicas outside a quorum. The rows go at
///   COMMIT (`ON COMMIT DELETE ROWS`).
/// - `capgate.changed_tables()`: the tables the current transaction's captured async and
///   bounded changes touch (an index scan on `xid`), read at a held COMMIT for bounded
///   admission (decision 0024).
/// - `capgate.install_capture(table, mode, name)` / `remove_capture(table)`: the triggers;
///   `capgate.capture_began(name)` (`SECURITY DEFINER`: a client's CREATE TABLE installs them
///   too) records the snapshot the trigger was installed in, in `capgate.capture_since`.
/// - `capgate.capture_ddl(sql, mode, table, search_path)`: records a schema change in the
///   change stream, in the transaction that runs it, with the caller's search_path.
const FUNCTIONS_SQL: &str = r#"
CREATE OR REPLACE FUNCTION capgate.check_coordinated() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF pg_catalog.current_setting('capgate.commit_xid', true) IS DISTINCT FROM NEW.xid::text THEN
        RAISE EXCEPTION 'capgate: this transaction changed table % (mode sync), but capgate was not coordinating its commit; nothing was committed', NEW.tbl
            USING ERRCODE = 'CGS01',
                  HINT = 'the change came from a function or trigger in an autocommit statement, from a COMMIT inside a multi-statement query string, or from SET CONSTRAINTS ALL IMMEDIATE; run the statement inside BEGIN … COMMIT, with COMMIT sent as its own statement';
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION capgate.sync_buffer() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF pg_catalog.to_regclass('pg_temp.capgate_sync_changes') IS NULL THEN
        CREATE TEMPORARY TABLE capgate_sync_changes (
            seq bigint NOT NULL DEFAULT pg_catalog.nextval('capgate.change_seq'),
            xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
            at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
            tbl text NOT NULL,
            op "char" NOT NULL,
            old json,
            new json,
            first boolean NOT NULL
        );
        CREATE CONSTRAINT TRIGGER capgate_coordinated AFTER INSERT ON pg_temp.capgate_sync_changes
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.first) EXECUTE FUNCTION capgate.check_coordinated();
    ELSIF pg_catalog.pg_relation_size('pg_temp.capgate_sync_changes') > 262144 THEN
        -- Only dead rows are left here (each transaction deletes its own at COMMIT, or rolled
        -- back): give the space back now and then (no autovacuum for temporary tables).
        TRUNCATE pg_temp.capgate_sync_changes;
    END IF;
END
$fn$;

-- A row as JSON printed with the settings the replica reads it with (decision 0025): what
-- the trigger uses when the writer's session has settings that change a value's text.
CREATE OR REPLACE FUNCTION capgate.row_image(p_row anyelement) RETURNS json
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC' SET "DateStyle" = 'ISO' SET "IntervalStyle" = 'postgres'
SET extra_float_digits = 1 SET lc_monetary = 'C' SET bytea_output = 'hex'
AS $fn$ SELECT pg_catalog.row_to_json(p_row) $fn$;

CREATE OR REPLACE FUNCTION capgate.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
-- Written for the cost of a call (docs/performance.md, "Fewer expressions in the capture
-- trigger"): PL/pgSQL evaluates every DECLARE default on every call, and sets up each simple
-- expression (an IF condition, an assignment) again in each transaction for each table's copy
-- of the function, which is nearly every call in a short transaction. So the variables have no
-- defaults, and the common path (an async change, or a sync table's change made outside a
-- capgate session) evaluates two conditions and runs one INSERT.
DECLARE
    v_xid text;
    v_at timestamptz;
    v_proxied boolean;
    v_tbl text;
    v_op "char";
    v_old json;
    v_new json;
    v_first boolean;
    v_plain boolean;
BEGIN
    IF TG_ARGV[0] = 'async' OR (TG_ARGV[0] = 'sync' AND pg_catalog.current_setting('capgate.session', true) IS DISTINCT FROM 'on') THEN
        -- Whether the session's settings print every value as the replica reads it (decision
        -- 0025): ISO dates (in ranges), postgres intervals, shortest-exact floats, C money.
        -- Else the images come from capgate.row_image, which fixes them (its SET clauses cost
        -- ~10 % of an async transaction's primary CPU, paid only by such sessions). OLD and
        -- NEW are NULL where the operation has none (row_to_json of NULL is NULL).
        IF pg_catalog.current_setting('DateStyle') LIKE 'ISO,%'
            AND pg_catalog.current_setting('IntervalStyle') = 'postgres'
            AND pg_catalog.current_setting('extra_float_digits')::int > 0
            AND pg_catalog.current_setting('lc_monetary') IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8') THEN
            INSERT INTO capgate.changes (tbl, op, old, new, proxied) VALUES (
                -- The name the policy matched (capgate passes it; for a partition, its root's).
                coalesce(TG_ARGV[1], pg_catalog.quote_ident(TG_TABLE_SCHEMA) || '.' || pg_catalog.quote_ident(TG_TABLE_NAME)),
                CASE TG_OP WHEN 'INSERT' THEN 'I' WHEN 'UPDATE' THEN 'U' WHEN 'DELETE' THEN 'D' ELSE 'T' END,
                pg_catalog.row_to_json(OLD), pg_catalog.row_to_json(NEW),
                pg_catalog.current_setting('capgate.session', true) IS NOT DISTINCT FROM 'on');
        ELSE
            INSERT INTO capgate.changes (tbl, op, old, new, proxied) VALUES (
                coalesce(TG_ARGV[1], pg_catalog.quote_ident(TG_TABLE_SCHEMA) || '.' || pg_catalog.quote_ident(TG_TABLE_NAME)),
                CASE TG_OP WHEN 'INSERT' THEN 'I' WHEN 'UPDATE' THEN 'U' WHEN 'DELETE' THEN 'D' ELSE 'T' END,
                CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN capgate.row_image(OLD) END,
                CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN capgate.row_image(NEW) END,
                pg_catalog.current_setting('capgate.session', true) IS NOT DISTINCT FROM 'on');
        END IF;
        RETURN NULL;
    END IF;
    -- A sync table's change in a capgate session, or a `latest` table's change.
    v_xid := pg_catalog.pg_current_xact_id()::text;
    v_at := pg_catalog.clock_timestamp();
    v_proxied := pg_catalog.current_setting('capgate.session', true) IS NOT DISTINCT FROM 'on';
    v_tbl := coalesce(TG_ARGV[1], pg_catalog.quote_ident(TG_TABLE_SCHEMA) || '.' || pg_catalog.quote_ident(TG_TABLE_NAME));
    v_first := false;
    -- As above; under `latest` also UTC and hex bytea, as the key's text is compared across
    -- sites (`capgate.latest` is keyed by it).
    v_plain := pg_catalog.current_setting('DateStyle') LIKE 'ISO,%'
        AND pg_catalog.current_setting('IntervalStyle') = 'postgres'
        AND pg_catalog.current_setting('extra_float_digits')::int > 0
        AND pg_catalog.current_setting('lc_monetary') IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8')
        AND (TG_ARGV[0] <> 'latest' OR (pg_catalog.current_setting('TimeZone') = 'UTC'
                                        AND pg_catalog.current_setting('bytea_output') = 'hex'));
    IF TG_OP = 'INSERT' THEN
        v_op := 'I';
        v_new := CASE WHEN v_plain THEN pg_catalog.row_to_json(NEW) ELSE capgate.row_image(NEW) END;
    ELSIF TG_OP = 'UPDATE' THEN
        v_op := 'U';
        v_old := CASE WHEN v_plain THEN pg_catalog.row_to_json(OLD) ELSE capgate.row_image(OLD) END;
        v_new := CASE WHEN v_plain THEN pg_catalog.row_to_json(NEW) ELSE capgate.row_image(NEW) END;
    ELSIF TG_OP = 'DELETE' THEN
        v_op := 'D';
        v_old := CASE WHEN v_plain THEN pg_catalog.row_to_json(OLD) ELSE capgate.row_image(OLD) END;
    ELSE
        v_op := 'T';
    END IF;
    IF TG_ARGV[0] = 'sync' AND v_proxied THEN
        IF pg_catalog.current_setting('capgate.commit_xid', true) IS NOT DISTINCT FROM v_xid THEN
            RAISE EXCEPTION 'capgate: table % (mode sync) was changed after capgate prepared this transaction''s commit', v_tbl
                USING ERRCODE = 'CGS01',
                      HINT = 'a deferred trigger or constraint writes a sync table at COMMIT; capgate cannot replicate that change: make the trigger immediate';
        END IF;
        IF pg_catalog.current_setting('capgate.sync_xid', true) IS DISTINCT FROM v_xid THEN
            PERFORM capgate.sync_buffer();
            v_first := true;
            PERFORM pg_catalog.set_config('capgate.sync_xid', v_xid, true);
            -- Once per transaction: its changes are committed on the replicas (COMMIT
            -- PREPARED) after the primary commits, so that commit must never be lost by a
            -- crash, whatever the client's synchronous_commit. (Async changes need no such
            -- thing: the shipper makes the primary's WAL durable before a replica commits.)
            PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
            -- INFO reaches the client whatever client_min_messages says; capgate hides it.
            RAISE INFO USING MESSAGE = 'capgate: sync change', ERRCODE = 'CGS00', DETAIL = v_tbl;
        END IF;
        INSERT INTO pg_temp.capgate_sync_changes (tbl, op, old, new, first) VALUES (v_tbl, v_op, v_old, v_new, v_first);
    ELSE
        INSERT INTO capgate.changes (at, tbl, op, old, new, proxied) VALUES (v_at, v_tbl, v_op, v_old, v_new, v_proxied);
    END IF;
    IF TG_ARGV[0] = 'latest' AND v_op <> 'T' THEN
        -- The row's last write, here: what a change from another site must be later than.
        INSERT INTO capgate.latest AS l (tbl, key, origin, at, deleted)
        SELECT v_tbl, k.key, coalesce((SELECT s.name FROM capgate.local_site s), ''), v_at, v_op = 'D'
          FROM (SELECT pg_catalog.jsonb_agg(coalesce(v_new, v_old) -> a.attname::text ORDER BY k.ord) AS key
                  FROM pg_catalog.pg_index i
                  CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = TG_RELID AND i.indisprimary) AS k
         WHERE k.key IS NOT NULL
        ON CONFLICT (tbl, key) DO UPDATE SET origin = EXCLUDED.origin, at = EXCLUDED.at, deleted = EXCLUDED.deleted;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION capgate.sync_prepare(p_gid text, p_origin text, p_stream boolean, OUT tables text[], OUT changes json)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('capgate.commit_xid', pg_catalog.pg_current_xact_id()::text, true);
    IF pg_catalog.current_setting('capgate.sync_xid', true) IS DISTINCT FROM pg_catalog.pg_current_xact_id()::text THEN
        -- No sync change in this transaction (or none left after ROLLBACK TO SAVEPOINT).
        RETURN;
    END IF;
    WITH d AS (
        DELETE FROM pg_temp.capgate_sync_changes c WHERE c.xid = pg_catalog.pg_current_xact_id()
        RETURNING c.seq, c.xid, c.at, c.tbl, c.op, c.old, c.new
    ), s AS (
        INSERT INTO capgate.changes (seq, xid, at, tbl, op, old, new, proxied, gid)
        SELECT seq, xid, at, tbl, op, old, new, true, p_gid FROM d WHERE p_stream
    )
    SELECT pg_catalog.array_agg(DISTINCT tbl),
           pg_catalog.json_agg(pg_catalog.json_build_object('seq', seq, 'at', at, 'tbl', tbl, 'op', op, 'old', old, 'new', new) ORDER BY seq)
        INTO tables, changes FROM d;
    IF changes IS NOT NULL THEN
        INSERT INTO capgate.decisions (gid, origin, committed) VALUES (p_gid, p_origin, true);
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION capgate.changed_tables() RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT pg_catalog.array_agg(DISTINCT c.tbl) FROM capgate.changes c
     WHERE c.xid = pg_catalog.pg_current_xact_id_if_assigned();
$fn$;

CREATE OR REPLACE FUNCTION capgate.install_capture(p_table regclass, p_mode text, p_name text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS capgate_capture ON %s', p_table);
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS capgate_truncate ON %s', p_table);
    EXECUTE pg_catalog.format('CREATE TRIGGER capgate_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION capgate.capture(%L, %L)', p_table, p_mode, p_name);
    EXECUTE pg_catalog.format('CREATE TRIGGER capgate_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION capgate.capture(%L, %L)', p_table, p_mode, p_name);
    -- Taken now, with the table's lock held: a transaction visible in it wrote the table
    -- before this trigger existed; its changes, if queued, belong to an earlier life of the
    -- table (decision 0014: where a sync table enters replication).
    PERFORM capgate.capture_began(p_name);
END
$fn$;

CREATE OR REPLACE FUNCTION capgate.capture_began(p_name text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    INSERT INTO capgate.capture_since AS s (tbl, snapshot) VALUES (p_name, pg_catalog.pg_current_snapshot())
    ON CONFLICT (tbl) DO UPDATE SET snapshot = EXCLUDED.snapshot, at = pg_catalog.now();
$fn$;

CREATE OR REPLACE FUNCTION capgate.remove_capture(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS capgate_capture ON %s', p_table);
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS capgate_truncate ON %s', p_table);
END
$fn$;

CREATE OR REPLACE FUNCTION capgate.capture_ddl(p_sql text, p_mode text, p_tbl text, p_search_path text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    -- The caller's search_path comes as an argument: inside, the function's own is in force.
    v_new json := pg_catalog.json_build_object('sql', p_sql, 'search_path', p_search_path);
    v_xid text := pg_catalog.pg_current_xact_id()::text;
    v_first boolean := false;
BEGIN
    IF p_mode = 'sync' THEN
        IF pg_catalog.current_setting('capgate.sync_xid', true) IS DISTINCT FROM v_xid THEN
            PERFORM capgate.sync_buffer();
            v_first := true;
            PERFORM pg_catalog.set_config('capgate.sync_xid', v_xid, true);
            PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
            RAISE INFO USING MESSAGE = 'capgate: sync change', ERRCODE = 'CGS00', DETAIL = p_tbl;
        END IF;
        INSERT INTO pg_temp.capgate_sync_changes (tbl, op, new, first) VALUES (p_tbl, 'S', v_new, v_first);
    ELSE
        INSERT INTO capgate.changes (tbl, op, new, proxied) VALUES (p_tbl, 'S', v_new, true);
    END IF;
END
$fn$;
"#;

/// Installs (or confirms) the primary's `capgate` schema: migrates the tables from the
/// version recorded in `capgate.schema_version` (0 when absent) to [`PRIMARY_SCHEMA_VERSION`]
/// and replaces the functions, in one transaction. Tables already at a newer version (a newer
/// capgate installed them) are left as they are, and so are the functions then.
pub async fn install_primary(client: &Client) -> Result<(), tokio_postgres::Error> {
    let result = client.batch_execute(&primary_sql()).await;
    if result.is_err() {
        // The script's own transaction may be left open and aborted: end it, so the caller
        // may keep using the connection. Best effort: the first error is the one to report.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The version the primary's `capgate` tables are at (0: not installed).
pub async fn primary_schema_version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    let exists = client.query_one("SELECT pg_catalog.to_regclass('capgate.schema_version') IS NOT NULL", &[]).await?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client.query_one("SELECT coalesce(max(version), 0) FROM capgate.schema_version", &[]).await?;
    Ok(row.get(0))
}

/// The install script: lock, version table, each step not yet applied in a DO block that
/// checks the recorded version, then the functions (unless a newer capgate owns the schema).
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
    sql.push_str(&format!(
        "DO $functions$\nBEGIN\n    IF (SELECT version FROM capgate.schema_version) = {PRIMARY_SCHEMA_VERSION} THEN\n        \
         EXECUTE $body${FUNCTIONS_SQL}$body$;\n    END IF;\nEND\n$functions$;\n"
    ));
    sql.push_str("COMMIT;\n");
    sql
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_migration_step_is_wrapped_once() {
        let sql = super::primary_sql();
        for step in super::PRIMARY_MIGRATIONS {
            assert!(!step.contains("$step$") && !step.contains("$migrate$"));
        }
        assert!(!super::FUNCTIONS_SQL.contains("$body$") && !super::FUNCTIONS_SQL.contains("$functions$"));
        assert_eq!(sql.matches("DO $migrate$").count(), super::PRIMARY_SCHEMA_VERSION as usize);
        assert!(sql.contains("capgate.sync_prepare"));
        assert!(sql.starts_with("BEGIN;") && sql.trim_end().ends_with("COMMIT;"));
    }
}
