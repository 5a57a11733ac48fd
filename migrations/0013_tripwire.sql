-- coffer catalog, version 13: the change-anomaly tripwire (src/tripwire).
--
-- The outcome `suspicious`: a complete snapshot whose changes look like an attack on the
-- source (SQLite cannot change a CHECK constraint in place: the table is rebuilt).
CREATE TABLE runs_new (
    id             INTEGER PRIMARY KEY,
    job            TEXT    NOT NULL,
    trigger        TEXT    NOT NULL DEFAULT 'manual' CHECK (trigger IN ('manual', 'schedule', 'catch-up')),
    scheduled_for  INTEGER,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    duration_ms    INTEGER,
    outcome        TEXT    NOT NULL CHECK (outcome IN ('running', 'success', 'partial', 'degraded', 'suspicious',
                                                       'failed', 'interrupted', 'skipped')),
    snapshot       TEXT,
    bytes_read     INTEGER NOT NULL DEFAULT 0,
    bytes_new      INTEGER NOT NULL DEFAULT 0,
    bytes_uploaded INTEGER NOT NULL DEFAULT 0,
    retries        INTEGER NOT NULL DEFAULT 0,
    error          TEXT,
    findings       INTEGER NOT NULL DEFAULT 0,
    kind           TEXT    NOT NULL DEFAULT 'backup'
);
INSERT INTO runs_new (id, job, trigger, scheduled_for, started_at, ended_at, duration_ms, outcome, snapshot,
                      bytes_read, bytes_new, bytes_uploaded, retries, error, findings, kind)
    SELECT id, job, trigger, scheduled_for, started_at, ended_at, duration_ms, outcome, snapshot,
           bytes_read, bytes_new, bytes_uploaded, retries, error, findings, kind FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_by_job ON runs (job, id);

-- Each file's traits as its last snapshot read it: its type and how well a sample of it
-- compressed (class | sample ratio in percent, 255: unknown, << 8), so that a later run
-- sees a file that stopped compressing or changed type. NULL: not known (an older row).
ALTER TABLE file_cache ADD COLUMN traits INTEGER;

-- Each judged backup run: its measures (the baseline of the runs after it), its verdict,
-- the signals that fired, and, for a suspicious run, who acknowledged it and why.
CREATE TABLE tripwire_runs (
    run         INTEGER PRIMARY KEY REFERENCES runs(id),
    job         TEXT    NOT NULL,
    snapshot    TEXT,
    at          INTEGER NOT NULL,
    verdict     TEXT    NOT NULL,       -- first, not-enough-history, clean, suspicious
    measures    TEXT    NOT NULL,       -- JSON
    signals     TEXT    NOT NULL,       -- JSON: the signals that fired
    acked_at    INTEGER,
    ack_reason  TEXT,
    false_alarm INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tripwire_runs_job ON tripwire_runs (job, run);
