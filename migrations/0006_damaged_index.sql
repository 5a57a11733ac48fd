-- The packs found damaged, for the dedup lookup to skip: few or none, so a partial
-- index lets every read transaction list them at no cost.
CREATE INDEX packs_damaged ON packs(id) WHERE damaged IS NOT NULL;
