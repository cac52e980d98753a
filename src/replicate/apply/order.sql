-- The order in which one call's changes apply, and the entry point (decision 0009, "Apply";
-- decision 0026). Replaced on every install with functions.sql.
--
-- Tables are independent of each other on the apply session (triggers and foreign-key
-- actions are off), so each table's changes go together. Inside a table, a change must follow
-- every earlier change of its row (same primary key); changes of different rows commute. A
-- run of one operation is one bulk statement (capgate.apply_run), so the fewer runs the
-- faster: a page of a table where inserts and updates alternate (new rows and a hot counter,
-- the usual OLTP mix) would otherwise cost one run per alternation.

-- capgate.apply_groups applies `changes` in groups (table, operation, changes in capture
-- order), each under its table's policy. A schema change ('S') is a barrier nothing moves
-- across. With `p_reorder`, a table whose changes in a segment mix operations (and hold no
-- TRUNCATE and no update of a key, and whose key's text is one per value) has them grouped
-- by generation: a change's generation counts how often its row's operation changed before
-- it, so two changes of one row in one generation have the same operation; the groups go by
-- generation, deletes then updates then inserts in each (a unique value freed before it is
-- taken again). Without it, or for any other table, runs are consecutive changes of one
-- operation, in capture order. (The grouping query is in the function's body, where PL/pgSQL
-- keeps its plan; a SQL function with a SET clause would be planned again at every call.)
-- The usual page needs none of it: when each table's changes are of one operation (and no
-- schema change or truncate), each table is one run in capture order, taken without the
-- grouping's sorts (which cost more than applying such a page).
CREATE OR REPLACE FUNCTION capgate.apply_groups(
    origin text, changes jsonb, mode text, on_conflict json, prepared_wait interval, p_reorder boolean, text_tables text[])
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r record;
    found jsonb := '[]';
    simple boolean;
BEGIN
    SELECT coalesce(bool_and(t.ops = 1 AND t.op IN ('I', 'U', 'D')), true) INTO simple
      FROM (SELECT count(DISTINCT x.c ->> 'op') AS ops, min(x.c ->> 'op') AS op
              FROM jsonb_array_elements(changes) AS x(c) GROUP BY x.c ->> 'tbl') AS t;
    IF simple THEN
        FOR r IN
            SELECT x.c ->> 'tbl' AS tbl, min(x.c ->> 'op') AS op, jsonb_agg(x.c ORDER BY x.i) AS items
              FROM jsonb_array_elements(changes) WITH ORDINALITY AS x(c, i) GROUP BY x.c ->> 'tbl' ORDER BY min(x.i)
        LOOP
            found := found || capgate.apply_one(origin, r.tbl, r.op, r.items, mode, on_conflict, prepared_wait, p_reorder,
                                                r.tbl = ANY (text_tables));
        END LOOP;
        RETURN found;
    END IF;
    FOR r IN
        WITH e AS (
            SELECT x.i, x.c ->> 'tbl' AS tbl, x.c ->> 'op' AS op, x.c
              FROM jsonb_array_elements(changes) WITH ORDINALITY AS x(c, i)),
        s AS (SELECT e.*, count(*) FILTER (WHERE e.op = 'S') OVER (ORDER BY e.i) AS seg FROM e),
        m AS (
            SELECT s.*,
                   p_reorder AND min(s.op) OVER w <> max(s.op) OVER w AND bool_and(s.op IN ('I', 'U', 'D')) OVER w AS mixed,
                   min(s.i) OVER (PARTITION BY s.seg, s.op = 'S', s.tbl) AS first_i,
                   row_number() OVER (PARTITION BY s.seg, s.tbl ORDER BY s.i)
                       - row_number() OVER (PARTITION BY s.seg, s.tbl, s.op ORDER BY s.i) AS island
              FROM s WINDOW w AS (PARTITION BY s.seg, s.tbl)),
        -- Only keys whose text is one per value: the grouping compares the images' text,
        -- the replica matches rows by value (a timestamptz prints in the writer's TimeZone,
        -- bytea in its bytea_output, numeric keeps its scale, a nondeterministic collation
        -- equates different texts).
        pk AS (
            SELECT t.tbl, array_agg(a.attname::text ORDER BY k.ord) AS cols
              FROM (SELECT DISTINCT m.tbl FROM m WHERE m.mixed) AS t
              JOIN pg_index ix ON ix.indrelid = to_regclass(t.tbl) AND ix.indisprimary
              CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
              JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum
              LEFT JOIN pg_collation co ON co.oid = a.attcollation
             GROUP BY t.tbl
            HAVING bool_and(a.atttypid = ANY ('{int2,int4,int8,bool,uuid,date,timestamp,text,varchar}'::regtype[]::oid[])
                            AND coalesce(co.collisdeterministic, true))),
        k AS (
            SELECT m.*,
                   CASE WHEN pk.cols IS NOT NULL THEN (
                       SELECT jsonb_agg(m.c -> (CASE m.op WHEN 'I' THEN 'new' ELSE 'old' END) -> u.col ORDER BY u.o)
                         FROM unnest(pk.cols) WITH ORDINALITY AS u(col, o)) END AS key,
                   CASE WHEN pk.cols IS NOT NULL AND m.op = 'U' THEN (
                       SELECT jsonb_agg(m.c -> 'new' -> u.col ORDER BY u.o) FROM unnest(pk.cols) WITH ORDINALITY AS u(col, o)) END AS key_after
              FROM m LEFT JOIN pk ON pk.tbl = m.tbl AND m.mixed),
        kr AS (
            SELECT k.*, coalesce(bool_and(k.key IS NOT NULL AND NOT k.key @> '[null]' AND (k.op <> 'U' OR k.key = k.key_after))
                                     OVER (PARTITION BY k.seg, k.tbl), false) AS reorder
              FROM k),
        g AS (
            SELECT ks.*, CASE WHEN ks.reorder THEN sum(ks.switched) OVER (PARTITION BY ks.seg, ks.tbl, ks.key ORDER BY ks.i) ELSE ks.island END AS grp
              FROM (SELECT kr.*, coalesce(kr.reorder AND lag(kr.op) OVER (PARTITION BY kr.seg, kr.tbl, kr.key ORDER BY kr.i) <> kr.op, false)::int AS switched
                      FROM kr) AS ks)
        SELECT g.tbl, g.op, jsonb_agg(g.c ORDER BY g.i) AS items
          FROM g GROUP BY g.seg, g.tbl, g.op, g.reorder, g.grp
         ORDER BY g.seg, g.op <> 'S', min(g.first_i),
                  CASE WHEN g.reorder THEN g.grp * 3 + CASE g.op WHEN 'D' THEN 0 WHEN 'U' THEN 1 ELSE 2 END ELSE min(g.i) END
    LOOP
        found := found || capgate.apply_one(origin, r.tbl, r.op, r.items, mode, on_conflict, prepared_wait, p_reorder,
                                            r.tbl = ANY (text_tables));
    END LOOP;
    RETURN found;
END
$fn$;

-- One group of apply_groups under its table's policy (`p_text`: see capgate.apply_run).
CREATE OR REPLACE FUNCTION capgate.apply_one(
    origin text, p_tbl text, p_op text, p_items jsonb, mode text, on_conflict json, prepared_wait interval, p_reorder boolean,
    p_text boolean)
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    policy text;
    e_state text;
    e_msg text;
BEGIN
    IF p_op IS NULL OR p_op NOT IN ('I', 'U', 'D', 'T', 'S') THEN
        RAISE EXCEPTION 'capgate.apply_changes: unknown operation % in a change of %', coalesce(quote_literal(p_op), 'NULL'), p_tbl
            USING ERRCODE = '22023';
    END IF;
    policy := CASE WHEN mode = 'sync' THEN 'halt' ELSE coalesce(on_conflict ->> p_tbl, on_conflict ->> '*', 'halt') END;
    IF policy NOT IN ('skip', 'halt', 'overwrite', 'latest') THEN
        RAISE EXCEPTION 'capgate.apply_changes: on_conflict of % is %, not one of skip, halt, overwrite, latest', p_tbl, quote_literal(policy)
            USING ERRCODE = '22023';
    END IF;
    IF mode = 'sync' THEN
        RETURN capgate.apply_group(origin, p_tbl, p_op, p_items, mode, policy, prepared_wait, p_text);
    END IF;
    -- Async: a run that fails stops its table only (the shipper halts it and ships the rest);
    -- the error, with the table, comes back as CGH01 like a `halt` conflict.
    BEGIN
        RETURN capgate.apply_group(origin, p_tbl, p_op, p_items, mode, policy, prepared_wait, p_text);
    EXCEPTION
        WHEN SQLSTATE 'CGH01' OR SQLSTATE 'CGC01' THEN
            RAISE;
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT;
            IF p_reorder AND e_state IN ('23505', '23P01') THEN
                RAISE;  -- apply_changes applies the changes again in capture order
            END IF;
            RAISE EXCEPTION 'capgate: applying changes of % failed: % (SQLSTATE %); shipping this table stops', p_tbl, e_msg, e_state
                USING ERRCODE = 'CGH01',
                      DETAIL = jsonb_build_object('origin', origin, 'seq', p_items -> 0 -> 'seq', 'at', p_items -> 0 -> 'at',
                          'tbl', p_tbl, 'op', p_op, 'kind', 'apply_error', 'old', p_items -> 0 -> 'old', 'new', p_items -> 0 -> 'new',
                          'replica', NULL, 'detail', format('%s (SQLSTATE %s)', e_msg, e_state), 'resolution', 'halted')::text,
                      HINT = 'fix the cause on the replica, then resume the table (`capgate resume --replica <name> --table <table>`)';
    END;
END
$fn$;


-- The entry point: applies `changes` (see capgate.apply_groups) and returns the conflicts it
-- resolved. The changes go grouped by generation first; a unique or exclusion violation there
-- (a value of another unique index than the key, or a range of an exclusion constraint, freed
-- and taken again across rows in an order the grouping changed) applies them again in
-- capture order. The page is parsed once, into jsonb (see functions.sql); the changes of a
-- table with a `json` or float column keep their images' text beside it.
CREATE OR REPLACE FUNCTION capgate.apply_changes(
    origin text, changes json, mode text, on_conflict json, prepared_wait interval DEFAULT interval '1 second')
RETURNS json LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET lc_monetary = 'C'
AS $fn$
DECLARE
    parsed jsonb;
    text_tables text[];
BEGIN
    IF mode IS NULL OR mode NOT IN ('sync', 'async') THEN
        RAISE EXCEPTION 'capgate.apply_changes: mode must be ''sync'' or ''async'', not %', coalesce(quote_literal(mode), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF json_typeof(changes) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'capgate.apply_changes: changes must be a JSON array' USING ERRCODE = '22023';
    END IF;
    IF current_setting('session_replication_role') <> 'replica' THEN
        BEGIN
            PERFORM set_config('session_replication_role', 'replica', true);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'capgate: role % may not set session_replication_role, which applying row changes needs (user triggers and foreign-key actions must not fire twice)', current_user
                USING ERRCODE = '42501',
                      HINT = format('make %I a superuser, or on PostgreSQL 15 and later: GRANT SET ON PARAMETER session_replication_role TO %I', current_user, current_user);
        END;
    END IF;
    -- Under a quorum the stream also carries sync commits (with their gid): skip those
    -- whose branch committed here (decision 0017).
    IF mode = 'async' AND strpos(changes::text, '"gid"') > 0 THEN
        changes := capgate.skip_synced(origin, changes);
    END IF;
    parsed := changes::jsonb;
    text_tables := ARRAY(SELECT DISTINCT x.c ->> 'tbl' FROM jsonb_array_elements(parsed) AS x(c));
    -- A schema change in the page may create or alter a table (a `json` or float column added,
    -- a table created): what the replica holds now does not tell, so every table keeps its text.
    IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(parsed) AS x(c) WHERE x.c ->> 'op' = 'S') THEN
        text_tables := ARRAY(SELECT t FROM unnest(text_tables) AS t WHERE capgate.table_needs_text(t));
    END IF;
    IF cardinality(text_tables) > 0 THEN
        parsed := (SELECT jsonb_agg(CASE WHEN x.c ->> 'tbl' = ANY (text_tables)
                                         THEN x.c::jsonb || jsonb_build_object('old_t', (x.c -> 'old')::text, 'new_t', (x.c -> 'new')::text)
                                         ELSE x.c::jsonb END ORDER BY x.i)
                     FROM json_array_elements(changes) WITH ORDINALITY AS x(c, i));
    END IF;
    BEGIN
        RETURN capgate.apply_groups(origin, parsed, mode, on_conflict, prepared_wait, true, text_tables)::json;
    EXCEPTION WHEN unique_violation OR exclusion_violation THEN
        RETURN capgate.apply_groups(origin, parsed, mode, on_conflict, prepared_wait, false, text_tables)::json;
    END;
END
$fn$;
