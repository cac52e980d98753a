-- The replica's capgate tables, version 3: a range committed in parts (decision 0022). While
-- a long range from A (`snapshot`) to B (`target`) is committed part by part, `seq` is the
-- last change of it applied; the range's last part makes `snapshot` B and clears both.
-- `snapshot` is NULL while the first range of an origin is under way (nothing was applied
-- completely yet).
ALTER TABLE capgate.applied ALTER COLUMN snapshot DROP NOT NULL;
ALTER TABLE capgate.applied ADD COLUMN IF NOT EXISTS target pg_snapshot;
ALTER TABLE capgate.applied ADD COLUMN IF NOT EXISTS seq bigint;
DROP FUNCTION IF EXISTS capgate.advance(text, pg_snapshot, pg_snapshot);
