-- The pack of each cached chunk (4-byte little-endian row ids, in the order of `chunks`),
-- so that a backup reuses an unchanged file on its packs alone, without a lookup per
-- chunk. NULL in rows from before: those chunks are looked up, as they were.
ALTER TABLE file_cache ADD COLUMN packs BLOB;
