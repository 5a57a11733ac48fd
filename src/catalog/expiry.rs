//! Expiry and prune: snapshots past their retain-until, and what only they needed.

use anyhow::Result;

use super::*;

impl Catalog {
    /// Marks complete snapshots whose retain-until has passed as forgotten (nothing is
    /// deleted). Returns their ids.
    pub fn forget_expired(&self, now: i64) -> Result<Vec<String>> {
        let tx = self.conn.unchecked_transaction()?;
        let ids: Vec<(String, String)> = {
            let mut st = tx.prepare(
                "SELECT id, job FROM snapshots WHERE state = 'complete' AND retain_until IS NOT NULL AND retain_until <= ?1",
            )?;
            st.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        for (id, job) in &ids {
            tx.execute("UPDATE snapshots SET state = 'forgotten' WHERE id = ?1", [id])?;
            insert_event(&tx, "forgotten", Some(job), &format!("snapshot {id} passed its retain-until"))?;
        }
        tx.commit()?;
        Ok(ids.into_iter().map(|(id, _)| id).collect())
    }

    /// Packs no complete snapshot needs and whose lock (as recorded) has ended.
    pub fn prunable_packs(&self, now: i64) -> Result<Vec<PackRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, hash, version, size FROM packs
             WHERE (retain_until IS NULL OR retain_until <= ?1)
               AND id NOT IN (SELECT sp.pack FROM snapshot_packs sp JOIN snapshots s ON s.seq = sp.snapshot
                              WHERE s.state = 'complete')
             ORDER BY id",
        )?;
        let rows = st.query_map([now], |r| {
            Ok(PackRow { id: r.get(0)?, hash: r.get(1)?, version: r.get(2)?, size: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgotten snapshots past their retain-until: (id, job, record version).
    pub fn prunable_snapshots(&self, now: i64) -> Result<Vec<(String, String, Option<String>)>> {
        let mut st = self.conn.prepare(
            "SELECT id, job, record_version FROM snapshots WHERE state = 'forgotten' AND retain_until <= ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets a deleted pack and its chunks. The file cache goes too: it may name them.
    pub fn remove_pack(&self, id: i64, hash: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM chunks WHERE pack = ?1", [id])?;
        tx.execute("DELETE FROM snapshot_packs WHERE pack = ?1", [id])?;
        tx.execute("DELETE FROM packs WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM file_cache", [])?;
        insert_event(&tx, "pruned", None, &format!("pack {hash}"))?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a snapshot whose record was deleted.
    pub fn remove_snapshot(&self, id: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM snapshot_packs WHERE snapshot = (SELECT seq FROM snapshots WHERE id = ?1)", [id])?;
        tx.execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
        insert_event(&tx, "pruned", None, &format!("snapshot {id}"))?;
        tx.commit()?;
        Ok(())
    }
}
