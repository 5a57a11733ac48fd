-- coffer catalog, version 11: the scrub. When each pack was last read back from each
-- target and found to be what its name says (NULL: never), so that every pack is read
-- once per period, oldest first, and a killed scrub goes on where it stopped. A scrub
-- is a run (job `@scrub`, which no job can be called) with the number of its findings.
ALTER TABLE pack_copies ADD COLUMN scrubbed_at INTEGER;
ALTER TABLE runs ADD COLUMN findings INTEGER NOT NULL DEFAULT 0;
