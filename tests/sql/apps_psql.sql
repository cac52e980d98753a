-- psql with every table replicated (tests/it/apps/libpq.rs): run without replication, then
-- through capgate with ap_psql_* sync and async; the outputs must be identical. The tables
-- are created by the caller on every site.
\set ON_ERROR_STOP off

-- transactions, savepoints, a rollback
BEGIN;
INSERT INTO ap_psql_acct (id, label, amount) VALUES (1, 'one', 1.50), (2, 'two', 2.25);
SAVEPOINT s1;
INSERT INTO ap_psql_acct (id, label, amount) VALUES (3, 'three', 3);
ROLLBACK TO SAVEPOINT s1;
/* tag */ SAVEPOINT s2;
INSERT INTO ap_psql_acct (id, label, amount) VALUES (4, 'four', 4);
RELEASE SAVEPOINT s2;
COMMIT;
BEGIN;
UPDATE ap_psql_acct SET amount = 999 WHERE id = 1;
ROLLBACK;
SELECT id, label, amount FROM ap_psql_acct ORDER BY id;

-- an error in the middle of a transaction: the SQLSTATE, then 25P02 until the end
BEGIN;
UPDATE ap_psql_acct SET label = 'changed' WHERE id = 2;
INSERT INTO ap_psql_acct (id, label) VALUES (1, 'duplicate');
\echo sqlstate :LAST_ERROR_SQLSTATE
UPDATE ap_psql_acct SET label = 'changed too' WHERE id = 4;
\echo sqlstate :LAST_ERROR_SQLSTATE
COMMIT;
SELECT id, label FROM ap_psql_acct ORDER BY id;

-- several statements in one Query
INSERT INTO ap_psql_acct (id, label, amount) VALUES (5, 'five', 5)\; UPDATE ap_psql_acct SET amount = amount * 2 WHERE id <= 2\; SELECT sum(amount) FROM ap_psql_acct;

-- COPY in (inline data, csv), \copy from a file, COPY out
COPY ap_psql_acct (id, label, amount) FROM STDIN WITH (FORMAT csv);
10,"ten, with comma",10.10
11,"eleven ""quoted""",11.11
12,,12
\.
\copy ap_psql_acct (id, label) FROM 'tests/sql/copy_in.csv' WITH (FORMAT csv)
COPY (SELECT id, label, amount FROM ap_psql_acct ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER);
-- a COPY that fails part way leaves nothing
COPY ap_psql_acct (id, label) FROM STDIN;
500	fine
not-a-number	broken
\.
SELECT count(*) FROM ap_psql_acct WHERE id = 500;

-- serial keys, INSERT ... SELECT, RETURNING, upserts, a writable CTE, a DO block, TRUNCATE
INSERT INTO ap_psql_log (msg) SELECT 'copied ' || id FROM ap_psql_acct WHERE id < 100 ORDER BY id RETURNING id, msg;
INSERT INTO ap_psql_acct (id, label, amount) VALUES (1, 'upserted', 1) ON CONFLICT (id) DO UPDATE SET label = EXCLUDED.label, amount = ap_psql_acct.amount + 1;
WITH gone AS (DELETE FROM ap_psql_acct WHERE id BETWEEN 100 AND 110 RETURNING id) INSERT INTO ap_psql_log (msg) SELECT 'deleted ' || count(*) FROM gone;
DO $$ BEGIN UPDATE ap_psql_acct SET amount = coalesce(amount, 0) + 0.01 WHERE id >= 10; END $$;
BEGIN;
TRUNCATE ap_psql_log;
INSERT INTO ap_psql_log (msg) VALUES ('after truncate');
COMMIT;
SELECT id, label, amount FROM ap_psql_acct ORDER BY id;
SELECT msg FROM ap_psql_log ORDER BY id;
