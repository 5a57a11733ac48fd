-- Packs that a restore or verify found damaged (content hash, decryption or a chunk's
-- keyed hash failed): why, and when. Backups no longer deduplicate against their chunks,
-- so the next run stores those chunks again in a new pack, and every snapshot that needs
-- them reads them from there: the repository heals itself.
ALTER TABLE packs ADD COLUMN damaged TEXT;
ALTER TABLE packs ADD COLUMN damaged_at INTEGER;
