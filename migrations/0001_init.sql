-- coffer catalog, version 1. The catalog is a cache of what the target holds:
-- `coffer recover` can rebuild it from the bucket and the identity.
-- Times are unix seconds (UTC). Ids are lower-case hex or raw 32-byte blobs.

-- The repository this state directory writes to (one row).
CREATE TABLE repo (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    repo_id       TEXT    NOT NULL,
    target_url    TEXT    NOT NULL,
    record_version TEXT,                 -- version id of coffer.repo, where the store has versions
    chunk_min     INTEGER NOT NULL,
    chunk_avg     INTEGER NOT NULL,
    chunk_max     INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);

-- A pack is recorded only after the server acknowledged its upload.
CREATE TABLE packs (
    id          INTEGER PRIMARY KEY,
    hash        TEXT    NOT NULL UNIQUE,  -- blake3 of the ciphertext; the key is packs/<hash[0..2]>/<hash>
    version     TEXT,                     -- version id returned by the store
    size        INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL,
    confirmed_at INTEGER                  -- last time the server confirmed it (status --remote)
);

-- Every stored chunk, and where it lives. Written in the same transaction as its pack.
CREATE TABLE chunks (
    id         BLOB    PRIMARY KEY,       -- keyed blake3 of the plaintext (32 bytes)
    pack       INTEGER NOT NULL REFERENCES packs(id),
    offset     INTEGER NOT NULL,
    length     INTEGER NOT NULL,          -- stored length inside the pack
    raw_length INTEGER NOT NULL,
    flags      INTEGER NOT NULL           -- 1 = zstd
) WITHOUT ROWID;
CREATE INDEX chunks_by_pack ON chunks(pack);

CREATE TABLE snapshots (
    seq            INTEGER PRIMARY KEY,   -- creation order
    id             TEXT    NOT NULL UNIQUE,
    job            TEXT    NOT NULL,
    host           TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('complete', 'forgotten')),
    record_version TEXT,                  -- version id of snapshots/<job>/<id>
    source         TEXT    NOT NULL,
    files          INTEGER NOT NULL,
    bytes          INTEGER NOT NULL,
    bytes_new      INTEGER NOT NULL,
    bytes_uploaded INTEGER NOT NULL,
    errors         INTEGER NOT NULL,
    retain_until   INTEGER
);
CREATE INDEX snapshots_by_job ON snapshots(job, seq);

-- Which packs a snapshot needs (for retention and verification).
CREATE TABLE snapshot_packs (
    snapshot INTEGER NOT NULL REFERENCES snapshots(seq),
    pack     INTEGER NOT NULL REFERENCES packs(id),
    PRIMARY KEY (snapshot, pack)
) WITHOUT ROWID;

-- The incremental fast path: files of the job's last complete snapshot. Replaced as a
-- whole when a snapshot completes, so it never names a chunk that is not stored.
CREATE TABLE file_cache (
    job      TEXT    NOT NULL,
    path     BLOB    NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode    INTEGER NOT NULL,
    chunks   BLOB    NOT NULL,            -- concatenated 32-byte chunk ids
    PRIMARY KEY (job, path)
) WITHOUT ROWID;

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY,
    job            TEXT    NOT NULL,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    outcome        TEXT    NOT NULL CHECK (outcome IN ('running', 'success', 'partial', 'failed')),
    snapshot       TEXT,
    bytes_read     INTEGER NOT NULL DEFAULT 0,
    bytes_new      INTEGER NOT NULL DEFAULT 0,
    bytes_uploaded INTEGER NOT NULL DEFAULT 0,
    error          TEXT
);

-- Audit log: restores, refusals, and (later) lock extensions and tamper findings.
CREATE TABLE events (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    kind   TEXT    NOT NULL,
    job    TEXT,
    detail TEXT    NOT NULL
);
