//! Chunks and the packs that hold them: the dedup lookup, locks, damage.

use std::collections::HashSet;

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::*;

#[derive(Debug, Clone)]
pub struct ChunkLoc {
    pub pack_hash: String,
    pub pack_version: Option<String>,
    /// The pack's size as stored: the most a read of it may return.
    pub pack_size: u64,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    pub flags: u8,
}

impl ChunkLoc {
    /// The chunk's entry in its pack's table.
    pub fn blob(&self, id: ChunkId) -> crate::format::pack::BlobEntry {
        let ChunkLoc { offset, length, raw_length, flags, .. } = *self;
        crate::format::pack::BlobEntry { id, offset, length, raw_length, flags }
    }
}

/// A pack as one target stores it, and the lock the catalog recorded for it there.
#[derive(Debug, Clone)]
pub struct PackLock {
    pub id: i64,
    pub hash: String,
    pub version: Option<String>,
    pub lock: Option<Retention>,
}

/// A pack stored on a target: catalog row id, content hash, version id there, size.
#[derive(Debug, Clone)]
pub struct PackRow {
    pub id: i64,
    pub hash: String,
    pub version: Option<String>,
    pub size: u64,
}

/// A pack the targets in `copies` have acknowledged.
pub struct StoredPack<'a> {
    pub hash: &'a str,
    pub size: u64,
    /// The key set it is encrypted to.
    pub keyset: u32,
    pub blobs: &'a [BlobEntry],
    /// Each target that stored it, with its version id and the lock it was written with.
    pub copies: &'a [(TargetId, StoredCopy)],
}

/// Inserts a pack row, its copies and its chunks (a chunk already stored elsewhere keeps
/// its first location). Returns the pack's row id.
pub(super) fn insert_pack(tx: &rusqlite::Transaction, pack: &StoredPack) -> Result<i64> {
    let pack_id = insert_pack_row(tx, pack)?;
    index_blobs(tx, pack_id, pack.blobs)?;
    Ok(pack_id)
}

/// Inserts a pack row and its copies, not its chunks.
fn insert_pack_row(tx: &rusqlite::Transaction, pack: &StoredPack) -> Result<i64> {
    tx.execute(
        "INSERT INTO packs (hash, size, uploaded_at, keyset) VALUES (?1, ?2, ?3, ?4)",
        params![pack.hash, pack.size, crate::time::now_secs(), pack.keyset],
    )?;
    let pack_id = tx.last_insert_rowid();
    for (target, copy) in pack.copies {
        super::targets::insert_pack_copy(tx, *target, pack_id, copy)?;
    }
    Ok(pack_id)
}

/// A chunk stored again (its first pack damaged, or unreadable to a key added since) gets
/// one more location; the others stay for the snapshots made with them.
const INSERT_CHUNK: &str =
    "INSERT OR IGNORE INTO chunks (id, pack, offset, length, raw_length, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Inserts a pack's chunks into `chunks`.
fn index_blobs(tx: &rusqlite::Transaction, pack_id: i64, blobs: &[BlobEntry]) -> Result<()> {
    let mut st = tx.prepare_cached(INSERT_CHUNK)?;
    for b in blobs {
        st.execute(params![&b.id.0[..], pack_id, b.offset, b.length, b.raw_length, b.flags])?;
    }
    Ok(())
}

/// A pack's chunks as `unindexed` holds them. The catalog is input like any other: a
/// list that does not parse is named, never guessed at.
fn unindexed_blobs(pack: i64, bytes: &[u8]) -> Result<Vec<BlobEntry>> {
    crate::format::pack::read_entries(bytes).map_err(|e| {
        anyhow::anyhow!(
            "catalog: the chunk list recorded for pack row {pack} is damaged: {e} \
                 (`coffer recover` rebuilds the catalog from a target)"
        )
    })
}

/// Chunks' packs found by [`Catalog::chunk_packs_sorted`], sorted by chunk id.
pub(super) struct PacksOf(Vec<(ChunkId, i64)>);

impl PacksOf {
    /// The pack of a chunk looked up; 0 (no pack's id) for one not stored.
    pub(super) fn get(&self, id: &ChunkId) -> i64 {
        self.0.binary_search_by(|(c, _)| c.cmp(id)).map_or(0, |i| self.0[i].1)
    }
}

impl Catalog {
    /// The pack (row id) holding a stored chunk, if any: the dedup lookup. A chunk in a
    /// pack found damaged counts as not stored, so that a backup stores it again.
    pub fn chunk_pack(&self, id: &ChunkId) -> Result<Option<i64>> {
        Ok(self.chunk_pack_and_size(id)?.map(|(pack, _)| pack))
    }

    /// The dedup lookup with the chunk's plaintext length, to check a cached file's chunk
    /// list against the size it claims.
    pub fn chunk_pack_and_size(&self, id: &ChunkId) -> Result<Option<(i64, u64)>> {
        let mut st = self.conn.prepare_cached("SELECT pack, raw_length FROM chunks WHERE id = ?1")?;
        let skipped = self.skipped.borrow();
        let mut rows = st.query([&id.0[..]])?;
        while let Some(r) = rows.next()? {
            let pack: i64 = r.get(0)?;
            if !skipped.contains(&pack) {
                return Ok(Some((pack, r.get(1)?)));
            }
        }
        Ok(None)
    }

    /// The dedup lookup for many chunks at once, in id order: ids are random, so in
    /// the order they come each would read another page of `chunks`; sorted, neighbours
    /// share the page just read.
    pub(super) fn chunk_packs_sorted<'a>(&self, ids: impl Iterator<Item = &'a ChunkId>) -> Result<PacksOf> {
        let mut ids: Vec<ChunkId> = ids.copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let found = ids.into_iter().map(|id| Ok((id, self.chunk_pack(&id)?.unwrap_or(0))));
        Ok(PacksOf(found.collect::<Result<_>>()?))
    }

    /// Every pack holding a chunk, with the key set each is encrypted to.
    pub fn chunk_packs(&self, id: &ChunkId) -> Result<Vec<(i64, u32)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT c.pack, (SELECT keyset FROM packs WHERE id = c.pack) FROM chunks c WHERE c.id = ?1",
        )?;
        let rows = st.query_map([&id.0[..]], |r| Ok((r.get(0)?, r.get::<_, Option<u32>>(1)?.unwrap_or(0))))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The packs the dedup lookup skips: damaged ones, and those whose key set lacks a
    /// key of the current one (after `coffer key add`, a new key must be able to read
    /// every snapshot made from then on, so their chunks are stored again).
    pub(super) fn load_skipped(&self) -> Result<()> {
        let mut st = self.conn.prepare_cached("SELECT id FROM packs WHERE damaged IS NOT NULL")?;
        let mut ids = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<HashSet<i64>>>()?;
        if let Some(readable) = self.readable_keysets()? {
            let mut st = self
                .conn
                .prepare_cached("SELECT id FROM packs WHERE keyset NOT IN (SELECT value FROM json_each(?1))")?;
            let list = serde_json::to_string(&readable)?;
            ids.extend(st.query_map([list], |r| r.get::<_, i64>(0))?.collect::<rusqlite::Result<Vec<i64>>>()?);
        }
        *self.skipped.borrow_mut() = ids;
        Ok(())
    }

    /// Marks a pack as damaged (by its hash), with why; backups then store its chunks
    /// again. Returns whether the catalog knew the pack.
    pub fn mark_damaged(&self, hash: &str, why: &str) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE packs SET damaged = ?2, damaged_at = ?3 WHERE hash = ?1 AND damaged IS NULL",
            params![hash, why, crate::time::now_secs()],
        )?;
        if n > 0 {
            self.load_skipped()?;
            self.event(
                "pack-damaged",
                None,
                &format!("pack {hash}: {why}; its chunks are stored again by the next backup"),
            )?;
        }
        Ok(n > 0)
    }

    /// Begins a read transaction, for many lookups at the cost of one lock ([`Catalog::end_read`]).
    pub fn begin_read(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        self.load_skipped()
    }

    pub fn end_read(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Runs `f` in one read transaction: one consistent view, and one lock instead of a
    /// lock and a WAL check per query (a restore asks once per chunk).
    pub fn reading<T>(&self, f: impl FnOnce(&Catalog) -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let out = f(self);
        tx.finish()?;
        out
    }

    /// Where a chunk is, with its pack's version id on `target`. Of several locations,
    /// the first in `made_with` (the packs the snapshot read was made with) that is not
    /// damaged; else one the dedup lookup would take; else one not damaged; else any.
    pub fn chunk_location(
        &self,
        target: TargetId,
        id: &ChunkId,
        made_with: Option<&HashSet<i64>>,
    ) -> Result<Option<ChunkLoc>> {
        // Scalar subqueries, not a JOIN: SQLite 3.54 re-prepares this JOIN at every step
        // (measured: 3x slower), and a restore asks once per chunk.
        let mut st = self.conn.prepare_cached(
            "SELECT (SELECT hash FROM packs WHERE id = c.pack),
                    (SELECT version FROM pack_copies WHERE target = ?2 AND pack = c.pack),
                    c.offset, c.length, c.raw_length, c.flags, (SELECT size FROM packs WHERE id = c.pack),
                    c.pack, (SELECT damaged IS NOT NULL FROM packs WHERE id = c.pack)
             FROM chunks c WHERE c.id = ?1",
        )?;
        let rows = st.query_map(params![&id.0[..], target], |r| {
            let hash: Option<String> = r.get(0)?;
            let (pack, damaged): (i64, Option<bool>) = (r.get(7)?, r.get(8)?);
            // A chunk whose pack row is gone is in no pack the catalog knows.
            let Some(pack_hash) = hash else { return Ok(None) };
            let loc = ChunkLoc {
                pack_hash,
                pack_version: r.get(1)?,
                pack_size: r.get(6)?,
                offset: r.get(2)?,
                length: r.get(3)?,
                raw_length: r.get(4)?,
                flags: r.get(5)?,
            };
            Ok(Some((pack, damaged.unwrap_or(false), loc)))
        })?;
        let found: Vec<(i64, bool, ChunkLoc)> = rows.filter_map(|r| r.transpose()).collect::<rusqlite::Result<_>>()?;
        let skipped = self.skipped.borrow();
        let rank =
            |(pack, damaged, _): &(i64, bool, ChunkLoc)| match (made_with.is_some_and(|m| m.contains(pack)), damaged) {
                (true, false) => 0,
                (false, false) if !skipped.contains(pack) => 1,
                (_, false) => 2,
                (_, true) => 3,
            };
        Ok(found.into_iter().min_by_key(rank).map(|(_, _, loc)| loc))
    }

    /// The packs a snapshot was made with (its chunks' locations then).
    pub fn snapshot_pack_ids(&self, snapshot: &str) -> Result<HashSet<i64>> {
        let mut st = self.conn.prepare_cached(
            "SELECT sp.pack FROM snapshot_packs sp JOIN snapshots s ON s.seq = sp.snapshot WHERE s.id = ?1",
        )?;
        let rows = st.query_map([snapshot], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records an acknowledged pack in one transaction, with its chunks kept aside in
    /// `unindexed` until [`Catalog::index_chunks`]: a backup's commit per pack then writes
    /// about the pack's chunk list, not most of the `chunks` B-tree. The dedup lookup
    /// does not see these chunks yet; the backup that stored them remembers them until it
    /// indexes. Returns the pack's row id.
    pub fn add_pack(&mut self, pack: &StoredPack) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let id = insert_pack_row(&tx, pack)?;
        let mut blobs = Vec::with_capacity(pack.blobs.len() * crate::format::pack::ENTRY_LEN);
        crate::format::pack::write_entries(pack.blobs, &mut blobs);
        tx.execute("INSERT INTO unindexed (pack, blobs) VALUES (?1, ?2)", params![id, blobs])?;
        tx.commit()?;
        Ok(id)
    }

    /// Moves the chunks of every pack in `unindexed` into `chunks`, in id order and in
    /// one transaction, so that each page of the B-tree is written once for them all.
    /// Returns how many chunks it moved.
    pub fn index_chunks(&mut self) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let entries: i64 = tx.query_row("SELECT coalesce(sum(length(blobs)), 0) FROM unindexed", [], |r| r.get(0))?;
        let mut all = Vec::with_capacity(usize::try_from(entries).unwrap_or(0) / crate::format::pack::ENTRY_LEN);
        {
            let mut st = tx.prepare("SELECT pack, blobs FROM unindexed")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let pack: i64 = r.get(0)?;
                let bytes = r.get_ref(1)?.as_blob()?;
                all.extend(unindexed_blobs(pack, bytes)?.into_iter().map(|b| (pack, b)));
            }
        }
        if all.is_empty() {
            return Ok(0);
        }
        all.sort_unstable_by_key(|(_, b)| b.id.0);
        {
            let mut st = tx.prepare_cached(INSERT_CHUNK)?;
            for (pack, b) in &all {
                st.execute(params![&b.id.0[..], pack, b.offset, b.length, b.raw_length, b.flags])?;
            }
        }
        tx.execute("DELETE FROM unindexed", [])?;
        tx.commit()?;
        tracing::debug!(chunks = all.len(), "chunks indexed");
        Ok(all.len())
    }

    pub fn has_pack(&self, hash: &str) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM packs WHERE hash = ?1")?;
        Ok(st.exists([hash])?)
    }

    /// The version id recorded for a pack on `target`.
    pub fn pack_version(&self, target: TargetId, hash: &str) -> Result<Option<String>> {
        let mut st = self.conn.prepare_cached(
            "SELECT c.version FROM pack_copies c JOIN packs p ON p.id = c.pack WHERE c.target = ?1 AND p.hash = ?2",
        )?;
        Ok(st.query_row(params![target, hash], |r| r.get(0)).optional()?.flatten())
    }

    /// The hash of a pack row.
    pub fn pack_hash(&self, id: i64) -> Result<String> {
        let mut st = self.conn.prepare_cached("SELECT hash FROM packs WHERE id = ?1")?;
        Ok(st.query_row([id], |r| r.get(0))?)
    }

    /// The size of a pack row.
    pub fn pack_size(&self, id: i64) -> Result<u64> {
        let mut st = self.conn.prepare_cached("SELECT size FROM packs WHERE id = ?1")?;
        Ok(st.query_row([id], |r| r.get(0))?)
    }

    /// The pack row id of a hash.
    pub fn pack_id(&self, hash: &str) -> Result<Option<i64>> {
        let mut st = self.conn.prepare_cached("SELECT id FROM packs WHERE hash = ?1")?;
        Ok(st.query_row([hash], |r| r.get(0)).optional()?)
    }

    /// Every pack stored on `target`, with the snapshots that need it: (pack, size,
    /// snapshot ids).
    pub fn packs_with_snapshots(&self, target: TargetId) -> Result<Vec<(PackLock, u64, Vec<String>)>> {
        let mut st = self.conn.prepare(
            "SELECT p.id, p.hash, c.version, c.lock_mode, c.retain_until, p.size,
                    (SELECT group_concat(s.id, ' ') FROM snapshot_packs sp JOIN snapshots s ON s.seq = sp.snapshot
                     WHERE sp.pack = p.id AND s.state = 'complete')
             FROM pack_copies c JOIN packs p ON p.id = c.pack WHERE c.target = ?1 ORDER BY p.id",
        )?;
        let rows = st.query_map([target], |r| {
            let lock =
                PackLock { id: r.get(0)?, hash: r.get(1)?, version: r.get(2)?, lock: lock_from(r.get(3)?, r.get(4)?) };
            let snaps: Option<String> = r.get(6)?;
            Ok((lock, r.get(5)?, snaps.map(|s| s.split(' ').map(str::to_string).collect()).unwrap_or_default()))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The chunks the catalog places in a pack: (id, offset, length, raw length, flags).
    pub fn pack_chunks(&self, pack: i64) -> Result<Vec<BlobEntry>> {
        let mut st = self.conn.prepare_cached("SELECT blobs FROM unindexed WHERE pack = ?1")?;
        if let Some(bytes) = st.query_row([pack], |r| r.get::<_, Vec<u8>>(0)).optional()? {
            return unindexed_blobs(pack, &bytes);
        }
        let mut st = self.conn.prepare_cached(
            "SELECT id, offset, length, raw_length, flags FROM chunks WHERE pack = ?1 ORDER BY offset",
        )?;
        let rows = st.query_map([pack], |r| {
            let id: Vec<u8> = r.get(0)?;
            Ok(BlobEntry {
                id: ChunkId(id.try_into().unwrap_or([0; 32])),
                offset: r.get(1)?,
                length: r.get(2)?,
                raw_length: r.get(3)?,
                flags: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every object the catalog records on `target`, by key, with its version id there.
    pub fn recorded_objects(&self, target: TargetId) -> Result<std::collections::HashMap<String, Option<String>>> {
        let mut out = std::collections::HashMap::new();
        let mut st = self
            .conn
            .prepare("SELECT p.hash, c.version FROM pack_copies c JOIN packs p ON p.id = c.pack WHERE c.target = ?1")?;
        for row in st.query_map([target], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (hash, version) = row?;
            out.insert(crate::format::pack_key(&hash), version);
        }
        let mut st = self.conn.prepare(
            "SELECT s.job, s.id, c.record_version FROM snapshot_copies c JOIN snapshots s ON s.seq = c.snapshot
             WHERE c.target = ?1",
        )?;
        for row in st.query_map([target], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?)))? {
            let (job, id, version) = row?;
            out.insert(crate::format::snapshot_key(&job, &id), version);
        }
        if let Some(record) = self.repo_record(target)? {
            out.insert(crate::format::REPO_KEY.to_string(), record.version);
        }
        for set in self.keysets()? {
            if let Some((_, copy)) = self.keyset_holders(set.seq)?.into_iter().find(|(t, _)| *t == target) {
                out.insert(crate::format::keyset::key(set.seq), copy.version);
            }
        }
        Ok(out)
    }

    /// The packs on `target` the scrub reads next, least recently read first (never
    /// read before all), as many as `budget` bytes allow (at least one): (row id, hash,
    /// version there, size). Packs already found damaged are known and left out (their
    /// chunks are stored again elsewhere).
    pub fn packs_to_scrub(&self, target: TargetId, budget: u64) -> Result<Vec<PackRow>> {
        let mut st = self.conn.prepare(
            "SELECT p.id, p.hash, c.version, p.size FROM pack_copies c JOIN packs p ON p.id = c.pack
             WHERE c.target = ?1 AND p.damaged IS NULL ORDER BY c.scrubbed_at IS NOT NULL, c.scrubbed_at, p.id",
        )?;
        let mut rows = st.query([target])?;
        let (mut out, mut total) = (Vec::new(), 0u64);
        while let Some(r) = rows.next()? {
            let pack = PackRow { id: r.get(0)?, hash: r.get(1)?, version: r.get(2)?, size: r.get(3)? };
            if !out.is_empty() && total + pack.size > budget {
                break;
            }
            total += pack.size;
            out.push(pack);
        }
        Ok(out)
    }

    /// Notes that the scrub read a pack from `target` and found it whole.
    pub fn set_scrubbed(&self, target: TargetId, pack: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE pack_copies SET scrubbed_at = ?3 WHERE target = ?1 AND pack = ?2",
            params![target, pack, crate::time::now_secs()],
        )?;
        Ok(())
    }

    /// Packs on `target` not read by the scrub since `since` (behind its period).
    pub fn packs_unscrubbed_since(&self, target: TargetId, since: i64) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM pack_copies c JOIN packs p ON p.id = c.pack
             WHERE c.target = ?1 AND p.damaged IS NULL AND (c.scrubbed_at IS NULL OR c.scrubbed_at < ?2)",
            params![target, since],
            |r| r.get(0),
        )?)
    }

    /// The size of every pack not found damaged, by hash (one query, for the scrub's
    /// pass over every recorded object).
    pub fn undamaged_pack_sizes(&self) -> Result<std::collections::HashMap<String, u64>> {
        let mut st = self.conn.prepare_cached("SELECT hash, size FROM packs WHERE damaged IS NULL")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
