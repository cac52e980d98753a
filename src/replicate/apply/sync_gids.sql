-- The replica's capgate tables, version 2: sync commits under a quorum (decision 0017).
-- Such a commit reaches a replica by its two-phase branch or by the change stream, whichever
-- gets there first; the gid recorded here (by the branch, or by the stream's apply) makes the
-- other one skip it. A branch still prepared holds its row uncommitted, so the stream's
-- insert waits for the branch's outcome.
CREATE TABLE IF NOT EXISTS capgate.sync_gids (
    origin text NOT NULL,
    gid text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, gid)
);
CREATE INDEX IF NOT EXISTS sync_gids_at ON capgate.sync_gids (at);
