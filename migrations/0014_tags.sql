-- Snapshot tags (`backup --tag`, a job's `tags`): a JSON array of strings, as the
-- snapshot record carries them.
ALTER TABLE snapshots ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
