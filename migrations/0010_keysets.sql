-- coffer catalog, version 10: the repository's key sets. Set 0 is the recipients of
-- coffer.repo; each `coffer key add` or `coffer key remove` makes the next, stored on the
-- targets as keys/<seq>. Packs and snapshots record the set they were encrypted to, so
-- that coffer can say which keys restore what, and stops deduplicating against packs a
-- key of the current set cannot read.
CREATE TABLE keysets (
    seq          INTEGER PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    recipients   TEXT    NOT NULL,            -- JSON array of recipient fingerprints
    record_hash  TEXT                         -- blake3 of keys/<seq>; NULL for set 0 (coffer.repo)
);

-- A key-set record stored on a target.
CREATE TABLE keyset_copies (
    target       INTEGER NOT NULL REFERENCES targets(id),
    seq          INTEGER NOT NULL REFERENCES keysets(seq),
    version      TEXT,
    lock_mode    TEXT,
    retain_until INTEGER,
    stored_at    INTEGER NOT NULL,
    PRIMARY KEY (target, seq)
) WITHOUT ROWID;

ALTER TABLE packs ADD COLUMN keyset INTEGER NOT NULL DEFAULT 0;
ALTER TABLE snapshots ADD COLUMN keyset INTEGER NOT NULL DEFAULT 0;

-- A chunk may be stored in several packs: again after its first pack was found damaged,
-- or again in a pack that a newly added key can read. Every location is kept: a restore
-- takes the one its snapshot was made with (snapshot_packs), the dedup lookup any that
-- is not skipped. (A chunk used to move to its new pack, which left older snapshots
-- pointing at a pack locked only as long as the newest.)
CREATE TABLE chunks_new (
    id         BLOB    NOT NULL,
    pack       INTEGER NOT NULL REFERENCES packs(id),
    offset     INTEGER NOT NULL,
    length     INTEGER NOT NULL,
    raw_length INTEGER NOT NULL,
    flags      INTEGER NOT NULL,
    PRIMARY KEY (id, pack)
) WITHOUT ROWID;
INSERT INTO chunks_new SELECT id, pack, offset, length, raw_length, flags FROM chunks;
DROP TABLE chunks;
ALTER TABLE chunks_new RENAME TO chunks;
CREATE INDEX chunks_by_pack ON chunks(pack);
