-- coffer catalog, version 9: the repository record, pinned. `record_hash` is the blake3
-- hash of the coffer.repo this catalog belongs to: every copy read from any target must
-- have it. `fingerprint` binds that record to the repository secret; `init` prints it
-- and the restorer keeps it beside the identity. NULL in catalogs made before: the next
-- backup pins what every target holds, if they agree.
ALTER TABLE repo ADD COLUMN record_hash TEXT;
ALTER TABLE repo ADD COLUMN fingerprint TEXT;
