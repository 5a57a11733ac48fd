-- The pack of each cached chunk (4-byte little-endian row ids, in the order of `chunks`),
-- so that a backup reuses an unchanged file on its packs alone, without a lookup per
-- chunk. NULL in rows from before: those chunks are looked up, as they were.
ALTER TABLE file_cache ADD COLUMN packs BLOB;
-- A check of the row's chunks, packs and size (16 bytes of their blake3): a row whose
-- chunk list was corrupted or edited without it has its chunks looked up one by one.
ALTER TABLE file_cache ADD COLUMN packs_check BLOB;
