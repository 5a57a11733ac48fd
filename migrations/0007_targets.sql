-- coffer catalog, version 7: several targets. Each target holds its own copy of the
-- repository, object by object (the same ciphertext everywhere, so pack ids are equal);
-- what differs per target is each object's version id and lock, and whether it is there
-- yet. A target added to the config later starts empty, and backups catch it up.
CREATE TABLE targets (
    id                  INTEGER PRIMARY KEY,
    name                TEXT    NOT NULL UNIQUE,
    url                 TEXT    NOT NULL,
    added_at            INTEGER NOT NULL,
    record_stored_at    INTEGER,              -- coffer.repo on this target (NULL: not yet)
    record_version      TEXT,
    record_lock_mode    TEXT,
    record_retain_until INTEGER,
    -- Why init accepted this target although it does not protect its objects, if it did.
    unprotected         TEXT
);
INSERT INTO targets (id, name, url, added_at, record_stored_at, record_version, record_lock_mode,
                     record_retain_until, unprotected)
    SELECT 1, 'default', target_url, created_at, created_at, record_version, record_lock_mode,
           record_retain_until, unprotected FROM repo;

-- A pack stored on a target: recorded only after that target acknowledged it.
CREATE TABLE pack_copies (
    target       INTEGER NOT NULL REFERENCES targets(id),
    pack         INTEGER NOT NULL REFERENCES packs(id),
    version      TEXT,
    lock_mode    TEXT,
    retain_until INTEGER,
    stored_at    INTEGER NOT NULL,
    confirmed_at INTEGER,                     -- last time the server confirmed its lock
    PRIMARY KEY (target, pack)
) WITHOUT ROWID;
CREATE INDEX pack_copies_by_pack ON pack_copies(pack);
INSERT INTO pack_copies (target, pack, version, lock_mode, retain_until, stored_at, confirmed_at)
    SELECT 1, id, version, lock_mode, retain_until, uploaded_at, confirmed_at FROM packs
    WHERE EXISTS (SELECT 1 FROM targets WHERE id = 1);

-- A snapshot record stored on a target, after every pack it needs is there: the snapshot
-- is complete on that target.
CREATE TABLE snapshot_copies (
    target         INTEGER NOT NULL REFERENCES targets(id),
    snapshot       INTEGER NOT NULL REFERENCES snapshots(seq),
    record_version TEXT,
    lock_mode      TEXT,                      -- locked until the snapshot's retain_until
    stored_at      INTEGER NOT NULL,
    PRIMARY KEY (target, snapshot)
) WITHOUT ROWID;
CREATE INDEX snapshot_copies_by_snapshot ON snapshot_copies(snapshot);
INSERT INTO snapshot_copies (target, snapshot, record_version, lock_mode, stored_at)
    SELECT 1, seq, record_version, lock_mode, created_at FROM snapshots
    WHERE EXISTS (SELECT 1 FROM targets WHERE id = 1);

ALTER TABLE packs DROP COLUMN version;
ALTER TABLE packs DROP COLUMN lock_mode;
ALTER TABLE packs DROP COLUMN retain_until;
ALTER TABLE packs DROP COLUMN confirmed_at;
ALTER TABLE snapshots DROP COLUMN record_version;
ALTER TABLE snapshots DROP COLUMN lock_mode;
ALTER TABLE repo DROP COLUMN target_url;
ALTER TABLE repo DROP COLUMN record_version;
ALTER TABLE repo DROP COLUMN record_lock_mode;
ALTER TABLE repo DROP COLUMN record_retain_until;
ALTER TABLE repo DROP COLUMN unprotected;

-- The outcome `degraded`: the snapshot is complete on some of the job's targets, not all.
CREATE TABLE runs_new (
    id             INTEGER PRIMARY KEY,
    job            TEXT    NOT NULL,
    trigger        TEXT    NOT NULL DEFAULT 'manual' CHECK (trigger IN ('manual', 'schedule', 'catch-up')),
    scheduled_for  INTEGER,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    duration_ms    INTEGER,
    outcome        TEXT    NOT NULL CHECK (outcome IN ('running', 'success', 'partial', 'degraded', 'failed',
                                                       'interrupted', 'skipped')),
    snapshot       TEXT,
    bytes_read     INTEGER NOT NULL DEFAULT 0,
    bytes_new      INTEGER NOT NULL DEFAULT 0,
    bytes_uploaded INTEGER NOT NULL DEFAULT 0,
    retries        INTEGER NOT NULL DEFAULT 0,
    error          TEXT
);
INSERT INTO runs_new SELECT * FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_by_job ON runs (job, id);
