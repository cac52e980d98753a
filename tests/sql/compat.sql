-- psql compatibility script: run once through capgate and once directly; the outputs must
-- be identical. The table is a temporary one, so the two runs cannot collide.
\set ON_ERROR_STOP off
CREATE TEMP TABLE compat (id int PRIMARY KEY, label text, amount numeric(12,2), at timestamptz DEFAULT '2026-01-01 00:00:00+00');

-- transactions and savepoints
BEGIN;
INSERT INTO compat (id, label, amount) VALUES (1, 'one', 1.50), (2, 'two', 2.25);
SAVEPOINT s1;
INSERT INTO compat (id, label, amount) VALUES (3, 'three', 3);
ROLLBACK TO SAVEPOINT s1;
INSERT INTO compat (id, label, amount) VALUES (4, 'four', 4);
COMMIT;
SELECT * FROM compat ORDER BY id;

-- an error in the middle of a transaction: the SQLSTATE, then 25P02 until ROLLBACK
BEGIN;
INSERT INTO compat (id, label) VALUES (1, 'duplicate');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT 1;
\echo sqlstate :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT count(*) FROM compat;

-- multi-statement simple query
SELECT 1 AS a\; SELECT 'two' AS b\; SELECT 3.0 AS c;

-- COPY in (inline data) and out
COPY compat (id, label, amount) FROM STDIN WITH (FORMAT csv);
10,"ten, with comma",10.10
11,"eleven ""quoted""",11.11
12,,12
\.
COPY (SELECT id, label, amount FROM compat ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER);
\copy compat (id, label) FROM 'tests/sql/copy_in.csv' WITH (FORMAT csv)
\copy (SELECT id, label FROM compat WHERE id >= 100 ORDER BY id) TO STDOUT WITH (FORMAT text)
-- a COPY that fails part way
COPY compat (id, label) FROM STDIN;
500	fine
not-a-number	broken
\.
SELECT count(*) AS after_failed_copy FROM compat;

-- notices and notifications
DO $$ BEGIN RAISE NOTICE 'notice from %', 'plpgsql'; END $$;
LISTEN compat_channel;
NOTIFY compat_channel, 'self-notification';
SELECT 'after notify';
-- another session notifies while this one listens (\! waits for it to finish)
\! "$CAPGATE_PSQL" -X -q -c "NOTIFY compat_channel, 'from another session'" "$CAPGATE_NOTIFY_URL"
SELECT 'after the other session';

-- a result of 100,000 rows
SELECT g, md5(g::text) FROM generate_series(1, 100000) AS g;

-- session parameters
SET TimeZone = 'America/New_York';
SHOW TimeZone;
SELECT '2026-06-01 12:00:00+00'::timestamptz;
RESET TimeZone;
DROP TABLE compat;
