//! Expiry and prune: snapshots past their retain-until, and what only they needed.

use anyhow::Result;
use rusqlite::params;

use super::*;

/// The jobs whose prune the tripwire froze: a suspicious run nobody acknowledged.
const FROZEN: &str = "(SELECT job FROM tripwire_runs WHERE verdict = 'suspicious' AND acked_at IS NULL)";

impl Catalog {
    /// Marks complete snapshots whose retain-until has passed as forgotten (nothing is
    /// deleted), except a frozen job's ([`FROZEN`]). Returns their ids.
    pub fn forget_expired(&self, now: i64) -> Result<Vec<String>> {
        let tx = self.conn.unchecked_transaction()?;
        let ids: Vec<(String, String)> = {
            let mut st = tx.prepare(&format!(
                "SELECT id, job FROM snapshots WHERE state = 'complete' AND retain_until IS NOT NULL AND retain_until <= ?1
                   AND job NOT IN {FROZEN}"
            ))?;
            st.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        for (id, job) in &ids {
            tx.execute("UPDATE snapshots SET state = 'forgotten' WHERE id = ?1", [id])?;
            insert_event(&tx, "forgotten", Some(job), &format!("snapshot {id} passed its retain-until"))?;
        }
        tx.commit()?;
        Ok(ids.into_iter().map(|(id, _)| id).collect())
    }

    /// Packs on `target` that no complete snapshot (nor any of a frozen job's) needs and
    /// whose lock there (as recorded) has ended.
    pub fn prunable_packs(&self, target: TargetId, now: i64) -> Result<Vec<PackRow>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT p.id, p.hash, c.version, p.size FROM pack_copies c JOIN packs p ON p.id = c.pack
             WHERE c.target = ?1 AND (c.retain_until IS NULL OR c.retain_until <= ?2)
               AND p.id NOT IN (SELECT sp.pack FROM snapshot_packs sp JOIN snapshots s ON s.seq = sp.snapshot
                                WHERE s.state = 'complete' OR s.job IN {FROZEN})
             ORDER BY p.id"
        ))?;
        let rows = st.query_map(params![target, now], |r| {
            Ok(PackRow { id: r.get(0)?, hash: r.get(1)?, version: r.get(2)?, size: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgotten snapshots past their retain-until whose record `target` holds: (id,
    /// job, record version there).
    pub fn prunable_snapshots(&self, target: TargetId, now: i64) -> Result<Vec<(String, String, Option<String>)>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT s.id, s.job, c.record_version FROM snapshot_copies c JOIN snapshots s ON s.seq = c.snapshot
             WHERE c.target = ?1 AND s.state = 'forgotten' AND s.retain_until <= ?2 AND s.job NOT IN {FROZEN}
             ORDER BY s.seq"
        ))?;
        let rows = st.query_map(params![target, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets a pack deleted from `target`; once no target holds it, the pack and its
    /// chunks go, and the file cache too (it may name them).
    pub fn remove_pack(&self, target: TargetId, id: i64, hash: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM pack_copies WHERE target = ?1 AND pack = ?2", params![target, id])?;
        let held: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM pack_copies WHERE pack = ?1)", [id], |r| r.get(0))?;
        if !held {
            tx.execute("DELETE FROM chunks WHERE pack = ?1", [id])?;
            tx.execute("DELETE FROM unindexed WHERE pack = ?1", [id])?;
            tx.execute("DELETE FROM snapshot_packs WHERE pack = ?1", [id])?;
            tx.execute("DELETE FROM packs WHERE id = ?1", [id])?;
            tx.execute("DELETE FROM file_cache", [])?;
        }
        insert_event(&tx, "pruned", None, &format!("pack {hash} from target {}", target.0))?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a snapshot record deleted from `target`; once no target holds it, the
    /// snapshot goes.
    pub fn remove_snapshot(&self, target: TargetId, id: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let seq: i64 = tx.query_row("SELECT seq FROM snapshots WHERE id = ?1", [id], |r| r.get(0))?;
        tx.execute("DELETE FROM snapshot_copies WHERE target = ?1 AND snapshot = ?2", params![target, seq])?;
        let held: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM snapshot_copies WHERE snapshot = ?1)", [seq], |r| r.get(0))?;
        if !held {
            tx.execute("DELETE FROM snapshot_packs WHERE snapshot = ?1", [seq])?;
            tx.execute("DELETE FROM snapshots WHERE seq = ?1", [seq])?;
        }
        insert_event(&tx, "pruned", None, &format!("snapshot {id} from target {}", target.0))?;
        tx.commit()?;
        Ok(())
    }
}
