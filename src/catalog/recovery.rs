//! The catalog rebuilt by `recover`: packs and snapshots recorded as they are proven.

use std::collections::HashSet;

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::packs::insert_pack;
use super::*;

impl Catalog {
    /// Scratch space for `coffer recover`: the blobs of snapshot entry streams as the
    /// packs store them (compressed: a forged stream that expands a thousandfold takes
    /// no more room here than in its pack), until the snapshots are rebuilt from them.
    pub fn begin_recovery(&self) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS recovered_blobs (id BLOB PRIMARY KEY, raw_length INTEGER NOT NULL,
                                                         flags INTEGER NOT NULL, stored BLOB NOT NULL) WITHOUT ROWID",
        )?;
        Ok(())
    }

    /// Records a pack read back from the target, and the entry-stream blobs it held
    /// (their table entries and stored bytes), in one transaction.
    pub fn add_recovered_pack(&mut self, pack: &StoredPack, tree: &[(&BlobEntry, &[u8])]) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let id = insert_pack(&tx, pack)?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO recovered_blobs (id, raw_length, flags, stored) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (b, stored) in tree {
                st.execute(params![&b.id.0[..], b.raw_length, b.flags, stored])?;
            }
        }
        tx.commit()?;
        Ok(id)
    }

    /// An entry-stream blob a recovery kept: its table entry (offset 0 in the stored
    /// bytes) and those bytes, to be verified by the caller.
    pub fn recovered_blob(&self, id: &ChunkId) -> Result<Option<(BlobEntry, Vec<u8>)>> {
        let mut st = self.conn.prepare_cached("SELECT raw_length, flags, stored FROM recovered_blobs WHERE id = ?1")?;
        Ok(st
            .query_row([&id.0[..]], |r| {
                let stored: Vec<u8> = r.get(2)?;
                let length = u32::try_from(stored.len()).unwrap_or(u32::MAX);
                Ok((BlobEntry { id: *id, offset: 0, length, raw_length: r.get(0)?, flags: r.get(1)? }, stored))
            })
            .optional()?)
    }

    pub fn has_snapshot(&self, id: &str) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM snapshots WHERE id = ?1")?;
        Ok(st.exists([id])?)
    }

    /// Ends a recovery: the tamper findings become events (replacing those of an earlier,
    /// interrupted attempt) and the scratch space goes, in one transaction.
    pub fn end_recovery(&self, findings: &[crate::inventory::Finding]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM events WHERE kind = 'tamper'", [])?;
        for f in findings {
            insert_event(&tx, "tamper", None, &f.to_string())?;
        }
        tx.execute_batch("DROP TABLE IF EXISTS recovered_tree; DROP TABLE IF EXISTS recovered_blobs")?;
        tx.commit()?;
        // The scratch space may have been most of the file: give it back.
        self.conn.execute_batch("VACUUM")?;
        Ok(())
    }

    /// Closes the database, checkpointing its write-ahead log into the main file.
    pub fn close(self) -> Result<()> {
        self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
        self.conn.close().map_err(|(_, e)| e)?;
        Ok(())
    }

    /// Of the given packs, those whose lock on `target` (as the catalog knows it) ends
    /// before `until`: (id, hash, version there).
    pub fn packs_locked_before(
        &self,
        target: TargetId,
        ids: &HashSet<i64>,
        until: i64,
    ) -> Result<Vec<(i64, String, Option<String>)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT p.id, p.hash, c.version FROM pack_copies c JOIN packs p ON p.id = c.pack
             WHERE c.target = ?1 AND c.pack = ?2 AND (c.retain_until IS NULL OR c.retain_until < ?3)",
        )?;
        let mut out = Vec::new();
        for id in ids {
            let row = st.query_row(params![target, id, until], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
            out.extend(row);
        }
        Ok(out)
    }

    /// Records a pack's new lock on `target`, as the server acknowledged it, with an
    /// audit event.
    pub fn set_pack_lock(&self, target: TargetId, id: i64, lock: Retention, job: &str, hash: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE pack_copies SET lock_mode = ?3, retain_until = ?4, confirmed_at = ?5 WHERE target = ?1 AND pack = ?2",
            params![target, id, lock.mode.as_str(), lock.until, crate::time::now_secs()],
        )?;
        lock_event(&tx, job, &format!("pack {hash}"), lock)?;
        tx.commit()?;
        Ok(())
    }

    /// Every pack a snapshot needs, with its copy on `target` (no version and no lock
    /// where the target holds none).
    pub fn snapshot_packs(&self, target: TargetId, snapshot_id: &str) -> Result<Vec<PackLock>> {
        let mut st = self.conn.prepare_cached(
            "SELECT p.id, p.hash, c.version, c.lock_mode, c.retain_until FROM snapshot_packs sp
             JOIN snapshots s ON s.seq = sp.snapshot JOIN packs p ON p.id = sp.pack
             LEFT JOIN pack_copies c ON c.pack = p.id AND c.target = ?1
             WHERE s.id = ?2 ORDER BY p.id",
        )?;
        let rows = st.query_map(params![target, snapshot_id], |r| {
            Ok(PackLock { id: r.get(0)?, hash: r.get(1)?, version: r.get(2)?, lock: lock_from(r.get(3)?, r.get(4)?) })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes that `target` confirmed a pack's lock now.
    pub fn confirm_pack(&self, target: TargetId, id: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE pack_copies SET confirmed_at = ?3 WHERE target = ?1 AND pack = ?2",
            params![target, id, crate::time::now_secs()],
        )?;
        Ok(())
    }
}
