-- What a snapshot's source contained beyond its files (git refs, a command's output
-- size), as JSON: shown by `coffer snapshots`, compared by restore checks.
ALTER TABLE snapshots ADD COLUMN contents TEXT;
-- An object's content type (bucket sources), so that an unchanged object keeps it
-- without being read again.
ALTER TABLE file_cache ADD COLUMN content_type TEXT;
