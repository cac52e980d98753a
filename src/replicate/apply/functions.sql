-- The replica's capgate functions (decision 0009, "Apply"). Replaced on every install.
--
-- capgate.apply_changes(origin, changes, mode, on_conflict[, prepared_wait]) applies a JSON
-- array of captured row changes, each {"seq", "at", "tbl", "op", "old", "new"}, and returns
-- the conflicts it resolved as a JSON array. See src/replicate/apply/mod.rs for the rules.
--
-- The page is parsed once, into jsonb: every later look at a change (its table, key, images)
-- is then a binary lookup, where the `json` text would be lexed again each time (measured:
-- 6 µs a change for each pass over a page of TPC-B changes). jsonb keeps every value a row
-- image can hold but two: the text of a `json` column (key order, spaces, duplicate keys) and
-- a float's negative zero (a jsonb number is a numeric, which has none). A table with a column
-- that can hold either gets each image's original text as well ("old_t", "new_t"), and its
-- rows are read from that text.

-- The functions before the page was parsed once took `json` runs (a replica upgraded in
-- place keeps no stale overload).
DROP FUNCTION IF EXISTS capgate.apply_run(text, text, text, json, text, text, interval);
DROP FUNCTION IF EXISTS capgate.apply_group(text, text, text, json, text, text, interval);
DROP FUNCTION IF EXISTS capgate.apply_groups(text, json, text, json, interval, boolean);
DROP FUNCTION IF EXISTS capgate.conflict(text, json, text, jsonb, text, text, text, text);

-- Whether a value of `p_type` can hold what jsonb would not keep — a `json` value's text, a
-- float's negative zero — as itself, in an array or a domain of one, or in a composite's field.
CREATE OR REPLACE FUNCTION capgate.needs_text(p_type oid)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    WITH RECURSIVE t(oid) AS (
        SELECT p_type
        UNION
        SELECT u.oid FROM t JOIN pg_type ty ON ty.oid = t.oid
          CROSS JOIN LATERAL (SELECT ty.typelem WHERE ty.typelem <> 0
                              UNION ALL SELECT ty.typbasetype WHERE ty.typbasetype <> 0
                              UNION ALL SELECT a.atttypid FROM pg_attribute a
                                         WHERE ty.typrelid <> 0 AND a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS u(oid))
    SELECT EXISTS (SELECT 1 FROM t WHERE t.oid IN ('json'::regtype, 'float4'::regtype, 'float8'::regtype))
$fn$;

-- Whether table `p_tbl` has a column of such a type (see above).
CREATE OR REPLACE FUNCTION capgate.table_needs_text(p_tbl text)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce(bool_or(capgate.needs_text(a.atttypid)), false)
      FROM pg_attribute a WHERE a.attrelid = to_regclass(p_tbl) AND a.attnum > 0 AND NOT a.attisdropped
$fn$;

-- The SQL of the row `p_img` ('old' or 'new') of the change `p_item` (an expression) as a
-- record of `p_rel`: from the jsonb image, or, with `p_text`, from the image's original text.
CREATE OR REPLACE FUNCTION capgate.image_sql(p_rel regclass, p_item text, p_img text, p_text boolean)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE WHEN p_text THEN format('json_populate_record(NULL::%s, (%s ->> %L)::json)', p_rel, p_item, p_img || '_t')
                ELSE format('jsonb_populate_record(NULL::%s, %s -> %L)', p_rel, p_item, p_img) END
$fn$;

-- Records (or refuses) one conflict. `resolution` says what the caller is about to do.
-- mode 'sync': raises CGC01 (the sites already differ: the commit is refused).
-- policy 'halt': raises CGH01 (the table stops until an operator resumes it).
-- Otherwise the conflict goes to capgate.conflicts and comes back as JSON.
CREATE OR REPLACE FUNCTION capgate.conflict(
    p_origin text, p_change jsonb, p_kind text, p_replica_row jsonb,
    p_mode text, p_policy text, p_resolution text, p_detail text)
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    rec jsonb := jsonb_build_object(
        'origin', p_origin, 'seq', p_change -> 'seq', 'at', p_change -> 'at', 'tbl', p_change ->> 'tbl',
        'op', p_change ->> 'op', 'kind', p_kind, 'old', coalesce((p_change ->> 'old_t')::jsonb, p_change -> 'old'),
        'new', coalesce((p_change ->> 'new_t')::jsonb, p_change -> 'new'),
        'replica', p_replica_row, 'detail', p_detail);
BEGIN
    IF p_mode = 'sync' THEN
        RAISE EXCEPTION 'capgate: % on % (origin %, seq %): %; the sites already differ, so this sync commit is refused',
                p_kind, p_change ->> 'tbl', p_origin, p_change ->> 'seq', p_detail
            USING ERRCODE = 'CGC01', DETAIL = (rec || jsonb_build_object('resolution', 'refused'))::text,
                  HINT = 'compare the table with `capgate verify` and repair the row on the replica';
    END IF;
    IF p_policy = 'halt' THEN
        RAISE EXCEPTION 'capgate: % on % (origin %, seq %): %; on_conflict = "halt" stops shipping this table',
                p_kind, p_change ->> 'tbl', p_origin, p_change ->> 'seq', p_detail
            USING ERRCODE = 'CGH01', DETAIL = (rec || jsonb_build_object('resolution', 'halted'))::text,
                  HINT = 'repair the table on the replica, then resume it (`capgate resume --replica <name> --table <table>`)';
    END IF;
    INSERT INTO capgate.conflicts (origin, seq, origin_at, tbl, op, kind, old, new, replica_row, resolution, detail)
        VALUES (p_origin, (p_change ->> 'seq')::bigint, (p_change ->> 'at')::timestamptz, p_change ->> 'tbl',
                p_change ->> 'op', p_kind, coalesce((p_change ->> 'old_t')::json, (p_change -> 'old')::json),
                coalesce((p_change ->> 'new_t')::json, (p_change -> 'new')::json), p_replica_row, p_resolution, p_detail);
    RETURN rec || jsonb_build_object('resolution', p_resolution);
END
$fn$;

-- `latest`: whether a change made at `p_at` on `p_origin` wins over the row's last write here:
-- the last change applied to it, or, on a site that takes writes itself, its own last write
-- (recorded by the capture trigger, decision 0019). Later time wins; equal times go to the
-- greater site name, so every site decides the same. A row with no record (written before
-- capgate recorded times) takes the incoming change.
CREATE OR REPLACE FUNCTION capgate.incoming_wins(p_tbl text, p_key jsonb, p_origin text, p_at timestamptz)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce((SELECT (p_at, p_origin) > (l.at, l.origin) FROM capgate.latest l WHERE l.tbl = p_tbl AND l.key = p_key), true)
$fn$;

CREATE OR REPLACE FUNCTION capgate.note_latest(p_tbl text, p_key jsonb, p_origin text, p_at timestamptz, p_deleted boolean)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $fn$
    INSERT INTO capgate.latest AS l (tbl, key, origin, at, deleted) VALUES (p_tbl, p_key, p_origin, p_at, p_deleted)
    ON CONFLICT (tbl, key) DO UPDATE SET origin = EXCLUDED.origin, at = EXCLUDED.at, deleted = EXCLUDED.deleted
$fn$;

-- Sync mode: a row inserted by a transaction still PREPARED here (its COMMIT PREPARED not yet
-- arrived) is invisible. Wait, at most `p_wait`, for capgate's prepared transactions that
-- exist now (so were prepared before this one) to be resolved.
CREATE OR REPLACE FUNCTION capgate.wait_prepared(p_wait interval)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    gids text[] := ARRAY(SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, 'capgate:') AND database = current_database());
    deadline timestamptz := clock_timestamp() + p_wait;
BEGIN
    WHILE cardinality(gids) > 0 AND clock_timestamp() < deadline LOOP
        PERFORM pg_sleep(0.005);
        gids := ARRAY(SELECT gid FROM pg_prepared_xacts WHERE gid = ANY (gids));
    END LOOP;
END
$fn$;

-- Applies one run: changes of one table and one operation ('I', 'U' or 'D'), in order.
-- A bulk statement first (inside a subtransaction); when it does not account for every change
-- (a conflict) or the run repeats a key, the run is applied again row by row. `p_text`: the
-- changes carry their images' original text too, which the rows are read from (see the top).
CREATE OR REPLACE FUNCTION capgate.apply_run(
    p_origin text, p_tbl text, p_op text, p_items jsonb, p_mode text, p_policy text, p_wait interval, p_text boolean)
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    rel regclass := to_regclass(p_tbl);
    img text := CASE p_op WHEN 'D' THEN 'old' ELSE 'new' END;   -- the image holding the key to look up
    keyimg text := CASE p_op WHEN 'I' THEN 'new' ELSE 'old' END;
    schema_policy text := CASE p_policy WHEN 'skip' THEN 'skip' ELSE 'halt' END;
    allcols text[];
    pk text[];
    image_keys text[];
    missing text[];
    setcols text[];
    updcols text[];
    excl text[];
    n_items bigint := jsonb_array_length(p_items);
    n bigint;
    distinct_keys boolean;
    same_keys boolean;
    bulk_items jsonb := p_items;  -- what the fast path applies (repeated keys collapsed)
    source text;
    -- The fast path's extra condition under `latest` (empty otherwise).
    later text;
    q_pk_t text; q_pk_o text; q_pk_n text; q_set text; q_set_r text; q_upd text; q_upd_n text;
    key_sql text;        -- the key of change x.c, from the image it is looked up by
    key_after_sql text;  -- the key the row has after the change (for `latest`)
    sql_bulk text; sql_find text; sql_insert text; sql_update_old text; sql_update_new text; sql_delete text;
    conflicts jsonb := '[]';
    c record;
    key jsonb;
    cur jsonb;
    cur_cmp jsonb;
    old_cmp jsonb;
    miss text[];
    waited boolean := false;
    applied boolean;
BEGIN
    IF rel IS NULL THEN
        FOR c IN SELECT x FROM jsonb_array_elements(p_items) AS x LOOP
            conflicts := conflicts || capgate.conflict(p_origin, c.x, 'missing_table', NULL, p_mode, schema_policy, 'skipped',
                format('table %s does not exist on this replica', p_tbl));
        END LOOP;
        RETURN conflicts;
    END IF;

    -- What the run needs to know of the table, in few statements (each costs an executor
    -- start in PL/pgSQL, which is most of a small sync apply's time).
    SELECT array_agg(DISTINCT k) INTO image_keys FROM jsonb_array_elements(p_items) AS x(c), jsonb_object_keys(x.c -> img) AS k;
    image_keys := coalesce(image_keys, '{}');
    WITH a AS (
        SELECT attname::text AS name, attnum, attgenerated = '' AND attname::text = ANY (image_keys) AS settable, attidentity = 'a' AS always
          FROM pg_attribute WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped),
    k AS (
        SELECT a.name, k.ord FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN a ON a.attnum = k.attnum WHERE i.indrelid = rel AND i.indisprimary)
    SELECT (SELECT array_agg(name ORDER BY attnum) FROM a),
           (SELECT array_agg(name ORDER BY ord) FROM k),
           ARRAY(SELECT col FROM unnest(image_keys) AS col WHERE col NOT IN (SELECT name FROM a) ORDER BY col),
           ARRAY(SELECT name FROM a WHERE settable ORDER BY attnum),
           ARRAY(SELECT name FROM a WHERE settable AND NOT always ORDER BY attnum),
           ARRAY(SELECT name FROM a WHERE NOT settable)
      INTO allcols, pk, missing, setcols, updcols, excl;
    IF pk IS NULL THEN
        RAISE EXCEPTION 'capgate: table % has no primary key on this replica, so its row changes cannot be matched', p_tbl
            USING ERRCODE = '55000',
                  HINT = 'add a primary key to the table on every site, or make it local in the policy';
    END IF;
    IF n_items > 0 AND NOT pk <@ image_keys THEN
        RAISE EXCEPTION 'capgate: a change of % lacks its primary key column(s) % in its % image', p_tbl, pk, img
            USING ERRCODE = '22023';
    END IF;
    SELECT string_agg('t.' || quote_ident(k), ', ' ORDER BY o), string_agg('o.' || quote_ident(k), ', ' ORDER BY o),
           string_agg('n.' || quote_ident(k), ', ' ORDER BY o),
           -- The key of a change, as the origin wrote it: for repeated keys and `latest`.
           format('jsonb_build_array(%s)', string_agg(format('x.c -> %L -> %L', keyimg, k), ', ' ORDER BY o)),
           format('jsonb_build_array(%s)', string_agg(format('x.c -> %L -> %L', img, k), ', ' ORDER BY o))
      INTO q_pk_t, q_pk_o, q_pk_n, key_sql, key_after_sql FROM unnest(pk) WITH ORDINALITY AS u(k, o);
    SELECT string_agg(quote_ident(col), ', ' ORDER BY o), string_agg('n.' || quote_ident(col), ', ' ORDER BY o),
           string_agg(quote_ident(col), ', ' ORDER BY o) FILTER (WHERE col = ANY (updcols)),
           string_agg('n.' || quote_ident(col), ', ' ORDER BY o) FILTER (WHERE col = ANY (updcols))
      INTO q_set, q_set_r, q_upd, q_upd_n FROM unnest(setcols) WITH ORDINALITY AS u(col, o);

    IF n_items = 1 THEN
        distinct_keys := true;
    ELSE
        EXECUTE format('SELECT count(DISTINCT %s) = count(*), bool_and(%s = %s) FROM jsonb_array_elements($1) AS x(c)',
                       key_sql, key_sql, key_after_sql)
            INTO distinct_keys, same_keys USING p_items;
    END IF;

    -- Updates that repeat a key without changing it (a hot row: a counter, a branch
    -- balance) collapse to one change per key: the first old image, the last new one. The
    -- fast path then checks the replica's row against the first old image; if anything
    -- differs, the run goes row by row from its original changes, conflicts and all.
    IF p_op = 'U' AND NOT distinct_keys AND same_keys THEN
        -- Each key's first and last change by position (a jsonb array element is found by
        -- its index without a scan).
        EXECUTE format(
            'WITH fl AS (SELECT min(x.i)::int - 1 AS f, max(x.i)::int - 1 AS l '
            'FROM jsonb_array_elements($1) WITH ORDINALITY AS x(c, i) GROUP BY %s) '
            'SELECT jsonb_agg(($1 -> fl.l) || jsonb_build_object(''old'', $1 -> fl.f -> ''old''%s)) FROM fl',
            key_sql, CASE WHEN p_text THEN ', ''old_t'', $1 -> fl.f -> ''old_t''' ELSE '' END)
            INTO bulk_items USING p_items;
        distinct_keys := true;
    END IF;

    -- The fast path.
    IF distinct_keys AND cardinality(missing) = 0 THEN
        -- Under `latest` a row equal to the change's old image may still be a later write
        -- here (this site reached the same values on its own): only a later change applies;
        -- any other sends the run row by row, where it is kept as a conflict.
        later := CASE WHEN p_policy = 'latest' THEN format(' AND capgate.incoming_wins(%L, %s, %L, (x.c ->> ''at'')::timestamptz)',
                                                           p_tbl, key_sql, p_origin) ELSE '' END;
        -- The changes as a relation the planner knows the size of (jsonb_array_elements is
        -- estimated at 100 rows whatever it holds: one change would get a hash join over a
        -- sequential scan of the whole table instead of an index lookup).
        source := format('(SELECT e.c FROM jsonb_array_elements($1) AS e(c) LIMIT %s) AS x', jsonb_array_length(bulk_items));
        sql_bulk := CASE p_op
            WHEN 'I' THEN format(
                'INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM jsonb_array_elements($1) AS x(c), %s AS n',
                rel, q_set, q_set_r, capgate.image_sql(rel, 'x.c', 'new', p_text))
            WHEN 'U' THEN CASE WHEN q_upd IS NULL THEN NULL ELSE format(
                'UPDATE %s AS t SET (%s) = ROW(%s) FROM %s, %s AS o, %s AS n '
                'WHERE (%s) = (%s) AND (to_jsonb(t.*) - $2) = (to_jsonb(o.*) - $2)%s',
                rel, q_upd, q_upd_n, source, capgate.image_sql(rel, 'x.c', 'old', p_text), capgate.image_sql(rel, 'x.c', 'new', p_text),
                q_pk_t, q_pk_o, later) END
            WHEN 'D' THEN format(
                'DELETE FROM %s AS t USING %s, %s AS o WHERE (%s) = (%s) AND (to_jsonb(t.*) - $2) = (to_jsonb(o.*) - $2)%s',
                rel, source, capgate.image_sql(rel, 'x.c', 'old', p_text), q_pk_t, q_pk_o, later)
        END;
        IF sql_bulk IS NOT NULL THEN
            BEGIN
                EXECUTE sql_bulk USING bulk_items, excl;
                GET DIAGNOSTICS n = ROW_COUNT;
                IF n <> jsonb_array_length(bulk_items) THEN
                    RAISE EXCEPTION 'not every change applied' USING ERRCODE = 'CGF00';
                END IF;
                IF p_policy = 'latest' AND p_mode = 'async' THEN
                    EXECUTE format('INSERT INTO capgate.latest AS l (tbl, key, origin, at, deleted) '
                                   'SELECT %L, %s, %L, (x.c ->> ''at'')::timestamptz, %L FROM jsonb_array_elements($1) AS x(c) '
                                   'ON CONFLICT (tbl, key) DO UPDATE SET origin = EXCLUDED.origin, at = EXCLUDED.at, deleted = EXCLUDED.deleted',
                                   p_tbl, key_after_sql, p_origin, p_op = 'D')
                        USING bulk_items;
                END IF;
                RETURN conflicts;
            EXCEPTION WHEN SQLSTATE 'CGF00' OR unique_violation OR exclusion_violation OR cardinality_violation THEN
                NULL;  -- undone with the subtransaction: go row by row
            END;
        END IF;
    END IF;

    -- Row by row, in order.
    sql_find := format('SELECT to_jsonb(t.*) FROM %s AS t, %s AS o WHERE (%s) = (%s) FOR UPDATE OF t',
                       rel, capgate.image_sql(rel, '$1', keyimg, p_text), q_pk_t, q_pk_o);
    sql_insert := format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s AS n',
                         rel, q_set, q_set_r, capgate.image_sql(rel, '$1', 'new', p_text));
    -- Update the row found by the old (or new) image's key to the new image.
    sql_update_old := CASE WHEN q_upd IS NULL THEN NULL ELSE format(
        'UPDATE %s AS t SET (%s) = ROW(%s) FROM %s AS o, %s AS n WHERE (%s) = (%s)', rel, q_upd, q_upd_n,
        capgate.image_sql(rel, '$1', 'old', p_text), capgate.image_sql(rel, '$1', 'new', p_text), q_pk_t, q_pk_o) END;
    sql_update_new := CASE WHEN q_upd IS NULL THEN NULL ELSE format(
        'UPDATE %s AS t SET (%s) = ROW(%s) FROM %s AS n WHERE (%s) = (%s)',
        rel, q_upd, q_upd_n, capgate.image_sql(rel, '$1', 'new', p_text), q_pk_t, q_pk_n) END;
    sql_delete := format('DELETE FROM %s AS t USING %s AS o WHERE (%s) = (%s)',
                         rel, capgate.image_sql(rel, '$1', 'old', p_text), q_pk_t, q_pk_o);

    FOR c IN SELECT x.c FROM jsonb_array_elements(p_items) WITH ORDINALITY AS x(c, i) ORDER BY x.i LOOP
        miss := ARRAY(SELECT k FROM jsonb_object_keys(c.c -> img) AS k WHERE k <> ALL (allcols) ORDER BY k);
        IF cardinality(miss) > 0 THEN
            conflicts := conflicts || capgate.conflict(p_origin, c.c, 'missing_column', NULL, p_mode, schema_policy, 'skipped',
                format('column(s) %s of %s do not exist on this replica', array_to_string(miss, ', '), p_tbl));
            CONTINUE;
        END IF;
        EXECUTE format('SELECT %s FROM (SELECT $1 AS c) AS x', key_sql) INTO key USING c.c;
        EXECUTE sql_find INTO cur USING c.c;
        IF cur IS NULL AND p_op <> 'I' AND p_mode = 'sync' AND NOT waited THEN
            PERFORM capgate.wait_prepared(p_wait);
            waited := true;
            EXECUTE sql_find INTO cur USING c.c;
        END IF;
        applied := true;
        IF p_op = 'I' THEN
            IF cur IS NULL THEN
                EXECUTE sql_insert USING c.c;
            ELSIF p_policy = 'skip' OR (p_policy = 'latest' AND NOT capgate.incoming_wins(p_tbl, key, p_origin, (c.c ->> 'at')::timestamptz)) THEN
                conflicts := conflicts || capgate.conflict(p_origin, c.c, 'insert_exists', cur, p_mode, p_policy,
                    CASE p_policy WHEN 'skip' THEN 'skipped' ELSE 'kept the replica row (later)' END, 'the key already exists on this replica');
                applied := false;
            ELSE
                conflicts := conflicts || capgate.conflict(p_origin, c.c, 'insert_exists', cur, p_mode, p_policy,
                    CASE p_policy WHEN 'latest' THEN 'applied the new row (later)' ELSE 'overwritten with the new row' END,
                    'the key already exists on this replica');
                IF sql_update_new IS NOT NULL THEN
                    EXECUTE sql_update_new USING c.c;
                END IF;
            END IF;
        ELSE
            IF cur IS NOT NULL THEN
                cur_cmp := cur - excl;
                EXECUTE format('SELECT to_jsonb(o.*) - $2 FROM %s AS o', capgate.image_sql(rel, '$1', 'old', p_text))
                    INTO old_cmp USING c.c, excl;
            END IF;
            -- Under `latest` the row must also be older than the change (see the fast path):
            -- else it is a later write with the same values, kept below as a conflict.
            IF cur IS NOT NULL AND cur_cmp = old_cmp
               AND (p_policy <> 'latest' OR capgate.incoming_wins(p_tbl, key, p_origin, (c.c ->> 'at')::timestamptz)) THEN
                IF p_op = 'U' THEN
                    IF sql_update_old IS NOT NULL THEN
                        EXECUTE sql_update_old USING c.c;
                    END IF;
                ELSE
                    EXECUTE sql_delete USING c.c;
                END IF;
            ELSIF cur IS NULL THEN
                -- update_missing / delete_missing
                IF p_op = 'U' AND (p_policy = 'overwrite' OR (p_policy = 'latest'
                        AND capgate.incoming_wins(p_tbl, key, p_origin, (c.c ->> 'at')::timestamptz))) THEN
                    conflicts := conflicts || capgate.conflict(p_origin, c.c, 'update_missing', NULL, p_mode, p_policy,
                        'inserted the new row', 'the row is not on this replica');
                    EXECUTE sql_insert USING c.c;
                ELSE
                    conflicts := conflicts || capgate.conflict(p_origin, c.c,
                        CASE p_op WHEN 'U' THEN 'update_missing' ELSE 'delete_missing' END, NULL, p_mode, p_policy,
                        CASE WHEN p_op = 'D' AND p_policy IN ('overwrite', 'latest') THEN 'nothing to delete'
                             WHEN p_policy = 'latest' THEN 'skipped (a later delete)' ELSE 'skipped' END,
                        'the row is not on this replica');
                    applied := p_op = 'D';
                END IF;
            ELSE
                -- update_differs / delete_differs
                IF p_policy = 'overwrite' OR (p_policy = 'latest'
                        AND capgate.incoming_wins(p_tbl, key, p_origin, (c.c ->> 'at')::timestamptz)) THEN
                    conflicts := conflicts || capgate.conflict(p_origin, c.c,
                        CASE p_op WHEN 'U' THEN 'update_differs' ELSE 'delete_differs' END, cur, p_mode, p_policy,
                        CASE WHEN p_op = 'D' THEN 'deleted anyway' ELSE 'applied the new row' END
                            || CASE WHEN p_policy = 'latest' THEN ' (later)' ELSE '' END,
                        'the row on this replica is not the old image');
                    IF p_op = 'D' THEN
                        EXECUTE sql_delete USING c.c;
                    ELSIF sql_update_old IS NOT NULL THEN
                        EXECUTE sql_update_old USING c.c;
                    END IF;
                ELSE
                    conflicts := conflicts || capgate.conflict(p_origin, c.c,
                        CASE p_op WHEN 'U' THEN 'update_differs' ELSE 'delete_differs' END, cur, p_mode, p_policy,
                        CASE WHEN p_policy = 'latest' THEN 'kept the replica row (later)' ELSE 'skipped' END,
                        CASE WHEN cur_cmp = old_cmp THEN 'the row on this replica has the old image''s values but is a later write'
                             ELSE 'the row on this replica is not the old image' END);
                    applied := false;
                END IF;
            END IF;
        END IF;
        IF applied AND p_policy = 'latest' AND p_mode = 'async' THEN
            EXECUTE format('SELECT %s FROM (SELECT $1 AS c) AS x', key_after_sql) INTO key USING c.c;
            PERFORM capgate.note_latest(p_tbl, key, p_origin, (c.c ->> 'at')::timestamptz, p_op = 'D');
        END IF;
    END LOOP;
    RETURN conflicts;
END
$fn$;

-- One group of changes: a schema change, a truncate, or a run of one table and operation
-- (`p_text`: see capgate.apply_run). The SET clause puts the search_path back after a schema
-- change ran with its own.
CREATE OR REPLACE FUNCTION capgate.apply_group(
    origin text, p_tbl text, p_op text, p_items jsonb, mode text, policy text, prepared_wait interval, p_text boolean)
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    found jsonb := '[]';
    rel regclass;
    ddl jsonb;
BEGIN
    IF p_op = 'S' THEN
        ddl := p_items -> 0 -> 'new';
        PERFORM set_config('search_path', coalesce(ddl ->> 'search_path', 'public'), true);
        EXECUTE ddl ->> 'sql';
    ELSIF p_op = 'T' THEN
        rel := to_regclass(p_tbl);
        IF rel IS NULL THEN
            found := found || capgate.conflict(origin, p_items -> 0, 'missing_table', NULL, mode,
                CASE policy WHEN 'skip' THEN 'skip' ELSE 'halt' END, 'skipped', format('table %s does not exist on this replica', p_tbl));
        ELSE
            EXECUTE format('TRUNCATE %s', rel);
            DELETE FROM capgate.latest WHERE tbl = p_tbl;
        END IF;
    ELSE
        found := found || capgate.apply_run(origin, p_tbl, p_op, p_items, mode, policy, prepared_wait, p_text);
    END IF;
    RETURN found;
END
$fn$;

-- A sync branch under a quorum records its gid before applying (decision 0017): a unique
-- violation means the change stream brought this commit here first, and the branch fails.
CREATE OR REPLACE FUNCTION capgate.note_sync_gid(p_origin text, p_gid text)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $fn$
    INSERT INTO capgate.sync_gids (origin, gid) VALUES (p_origin, p_gid)
$fn$;

-- The stream's side: records each gid of `p_changes` not recorded yet (those are applied
-- now) and returns the changes without the gids already recorded (their branch committed
-- here). ON CONFLICT waits for a branch still prepared, so its outcome decides.
CREATE OR REPLACE FUNCTION capgate.skip_synced(p_origin text, p_changes json)
RETURNS json LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    had text[];
BEGIN
    WITH g AS (
        SELECT DISTINCT c ->> 'gid' AS gid FROM json_array_elements(p_changes) AS c WHERE c ->> 'gid' IS NOT NULL
    ), ins AS (
        INSERT INTO capgate.sync_gids (origin, gid) SELECT p_origin, gid FROM g ON CONFLICT DO NOTHING RETURNING gid
    )
    SELECT array_agg(g.gid) INTO had FROM g WHERE g.gid NOT IN (SELECT gid FROM ins);
    IF had IS NULL THEN
        RETURN p_changes;
    END IF;
    RETURN coalesce((SELECT json_agg(x.c ORDER BY x.i) FROM json_array_elements(p_changes) WITH ORDINALITY AS x(c, i)
                      WHERE x.c ->> 'gid' IS NULL OR NOT x.c ->> 'gid' = ANY (had)), '[]'::json);
END
$fn$;

-- Moves the position of `p_origin` on this replica, in the transaction that applied the
-- changes (decision 0022): from A = `p_from` (NULL: none yet) and, in a range to `p_to` under
-- way, `p_from_seq` (NULL: none of it applied yet); to the range's end (`p_seq` NULL: A
-- becomes `p_to`) or to the last change of a part (`p_seq`; A stays). A stale shipper (one
-- that read an older position) fails here instead of applying changes twice.
CREATE OR REPLACE FUNCTION capgate.advance(p_origin text, p_from pg_snapshot, p_from_seq bigint, p_to pg_snapshot, p_seq bigint)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    -- The shipper's idea of where this replica stands (A = p_from, and p_from_seq in the
    -- range to p_to when it is under way) must be the replica's: else another shipper moved it.
    UPDATE capgate.applied
       SET snapshot = CASE WHEN p_seq IS NULL THEN p_to ELSE snapshot END,
           target = CASE WHEN p_seq IS NULL THEN NULL ELSE p_to END,
           seq = p_seq, applied_at = now()
     WHERE origin = p_origin AND snapshot::text IS NOT DISTINCT FROM p_from::text AND seq IS NOT DISTINCT FROM p_from_seq
       AND (p_from_seq IS NULL OR target::text = p_to::text);
    IF NOT FOUND AND p_from IS NULL AND p_from_seq IS NULL THEN
        INSERT INTO capgate.applied (origin, snapshot, target, seq)
        VALUES (p_origin, CASE WHEN p_seq IS NULL THEN p_to END, CASE WHEN p_seq IS NOT NULL THEN p_to END, p_seq)
        ON CONFLICT DO NOTHING;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'capgate: the position of origin % is no longer % (seq %); another shipper applied it',
            p_origin, coalesce(p_from::text, 'none'), coalesce(p_from_seq::text, 'none')
            USING ERRCODE = 'CGW01';
    END IF;
    IF p_seq IS NOT NULL THEN
        RETURN;
    END IF;
    -- A gid is needed only while a late branch of it could still arrive (a PREPARE capgate
    -- gave up on is rolled back within a minute).
    DELETE FROM capgate.sync_gids WHERE origin = p_origin AND at < now() - interval '10 minutes';
    -- A copy snapshot stops filtering once no later range can hold a change visible in it.
    UPDATE capgate.tables SET snapshot = NULL
     WHERE origin = p_origin AND snapshot IS NOT NULL AND pg_snapshot_xmax(snapshot) <= pg_snapshot_xmin(p_to);
END
$fn$;
