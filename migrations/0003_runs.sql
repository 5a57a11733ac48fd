-- Run history for the daemon: why a run started, when it was due, how often it retried
-- the target, and the outcomes `interrupted` (a shutdown stopped it at a checkpoint) and
-- `skipped` (its fire time came while the job was still running).
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt.
CREATE TABLE runs_new (
    id             INTEGER PRIMARY KEY,
    job            TEXT    NOT NULL,
    trigger        TEXT    NOT NULL DEFAULT 'manual' CHECK (trigger IN ('manual', 'schedule', 'catch-up')),
    scheduled_for  INTEGER,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    duration_ms    INTEGER,
    outcome        TEXT    NOT NULL
                   CHECK (outcome IN ('running', 'success', 'partial', 'failed', 'interrupted', 'skipped')),
    snapshot       TEXT,
    bytes_read     INTEGER NOT NULL DEFAULT 0,
    bytes_new      INTEGER NOT NULL DEFAULT 0,
    bytes_uploaded INTEGER NOT NULL DEFAULT 0,
    retries        INTEGER NOT NULL DEFAULT 0,
    error          TEXT
);
INSERT INTO runs_new (id, job, started_at, ended_at, outcome, snapshot, bytes_read, bytes_new, bytes_uploaded, error)
    SELECT id, job, started_at, ended_at, outcome, snapshot, bytes_read, bytes_new, bytes_uploaded, error FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_by_job ON runs (job, id);
