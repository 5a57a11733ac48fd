-- coffer catalog, version 12: what each run was of (`backup`, `scrub`, …), so that the
-- daemon's tasks share one history and a new kind of periodic task needs no new table.
ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'backup';
UPDATE runs SET kind = 'scrub' WHERE job = '@scrub';
