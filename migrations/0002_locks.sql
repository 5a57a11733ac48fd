-- coffer catalog, version 2: the Object Lock each object was written with.
-- NULL where the target has no locks (file://, or lock_mode = "none").

ALTER TABLE packs ADD COLUMN lock_mode TEXT;
ALTER TABLE packs ADD COLUMN retain_until INTEGER;

-- The snapshot record object is locked until the snapshot's retain_until.
ALTER TABLE snapshots ADD COLUMN lock_mode TEXT;

ALTER TABLE repo ADD COLUMN record_lock_mode TEXT;
ALTER TABLE repo ADD COLUMN record_retain_until INTEGER;

-- Why init accepted a target that does not protect its objects (`--allow-unprotected`);
-- NULL when the checks passed. Every status report repeats it.
ALTER TABLE repo ADD COLUMN unprotected TEXT;
