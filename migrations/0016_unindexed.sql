-- The chunks of packs a backup stored, as recorded when the server acknowledged each
-- pack, until they are merged into `chunks` many packs at a time, in id order. Chunk ids
-- are random, so inserting one pack's chunks into `chunks` touched most of its pages:
-- at a million files, each pack's commit wrote tens of megabytes to the write-ahead log.
-- Appending here writes about the chunk list itself.
CREATE TABLE unindexed (
    pack  INTEGER PRIMARY KEY REFERENCES packs(id),
    blobs BLOB    NOT NULL   -- 49 bytes a chunk: id, offset (u64), length, raw length (u32), flags
);
