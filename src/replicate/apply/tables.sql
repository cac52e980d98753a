-- The replica's capgate tables, version 1 (row images; decision 0009).
-- Run inside the install transaction, under the schema-install advisory lock.

-- The statement-replay layout (decision 0007) kept its watermark as a seq and its conflicts
-- as statements: neither means anything for row images, so they go.
DROP FUNCTION IF EXISTS capgate.apply(text, bigint, bigint, text[], text, text[], bigint, jsonb, text);
DROP FUNCTION IF EXISTS capgate.advance(text, bigint, bigint);
DO $old$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'capgate' AND table_name = 'applied' AND column_name = 'seq') THEN
        DROP TABLE capgate.applied;
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'capgate' AND table_name = 'conflicts' AND column_name = 'outbox_id') THEN
        DROP TABLE capgate.conflicts;
    END IF;
END
$old$;

-- How far each origin's changes are applied here: the primary snapshot of the last range
-- applied, moved in the same replica transaction that applied the range (exactly once).
CREATE TABLE IF NOT EXISTS capgate.applied (
    origin text PRIMARY KEY,
    snapshot pg_snapshot NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Per (origin, table): where a table is in its life on this replica. `copying`: an initial
-- copy is under way; `copied`: copied at `snapshot` (a change of the table applies only if
-- its transaction is not visible in it); `halted`: stopped by `error` until an operator
-- resumes it (which copies it again).
CREATE TABLE IF NOT EXISTS capgate.tables (
    origin text NOT NULL,
    tbl text NOT NULL,
    state text NOT NULL CHECK (state IN ('copying', 'copied', 'halted')),
    snapshot pg_snapshot,
    error text,
    since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, tbl)
);

-- Every conflict an async apply resolved (sync conflicts refuse the commit and are recorded
-- by the coordinator). `old`/`new`: the origin's row images; `replica_row`: the row found here.
CREATE TABLE IF NOT EXISTS capgate.conflicts (
    id bigserial PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    origin text NOT NULL,
    seq bigint,
    origin_at timestamptz,
    tbl text NOT NULL,
    op text NOT NULL,
    kind text NOT NULL,
    old json,
    new json,
    replica_row jsonb,
    resolution text NOT NULL,
    detail text,
    -- An operator's mark (`capgate conflicts resolve`).
    resolved_at timestamptz,
    resolved_by text,
    resolved_note text
);
CREATE INDEX IF NOT EXISTS conflicts_tbl ON capgate.conflicts (tbl, id);

-- `on_conflict = "latest"`: the origin change time of each row applied to such a table (and
-- of each delete, as a tombstone), so the later change wins whatever order they arrive in.
CREATE TABLE IF NOT EXISTS capgate.latest (
    tbl text NOT NULL,
    key jsonb NOT NULL,
    origin text NOT NULL,
    at timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tbl, key)
);
