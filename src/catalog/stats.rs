//! What the repository holds, summed up (`coffer stats`): per job, per target, in all.

use anyhow::Result;
use rusqlite::params;

use super::{Catalog, TargetId};

/// The stored data that a set of snapshots needs.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stored {
    /// Snapshots stored (complete, not forgotten), and their sizes summed: what restoring
    /// each of them would write.
    pub snapshots: u64,
    pub logical_bytes: u64,
    /// Distinct packs they need, and their size on the target.
    pub packs: u64,
    pub stored_bytes: u64,
    /// Distinct chunks in those packs: before compression, and as stored (compressed,
    /// encrypted).
    pub chunks: u64,
    pub unique_bytes: u64,
    pub chunk_bytes: u64,
}

/// One target's copies of the packs, and their locks at a given time.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct OnTarget {
    pub packs: u64,
    pub stored_bytes: u64,
    pub snapshot_records: u64,
    /// Pack bytes still under lock, and the earliest and latest lock end among them.
    pub locked_bytes: u64,
    pub locked_until_earliest: Option<i64>,
    pub locked_until_latest: Option<i64>,
}

impl Catalog {
    /// What the stored snapshots of `job` (every job: `None`) need.
    pub fn stored(&self, job: Option<&str>) -> Result<Stored> {
        let (snapshots, logical_bytes): (u64, u64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM snapshots
             WHERE state = 'complete' AND (?1 IS NULL OR job = ?1)",
            params![job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let needed = "SELECT DISTINCT sp.pack FROM snapshot_packs sp JOIN snapshots s ON s.seq = sp.snapshot
                      WHERE s.state = 'complete' AND (?1 IS NULL OR s.job = ?1)";
        let (packs, stored_bytes): (u64, u64) = self.conn.query_row(
            &format!("SELECT COUNT(*), COALESCE(SUM(p.size), 0) FROM packs p WHERE p.id IN ({needed})"),
            params![job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (chunks, unique_bytes, chunk_bytes): (u64, u64, u64) = self.conn.query_row(
            &format!(
                "SELECT COUNT(*), COALESCE(SUM(raw_length), 0), COALESCE(SUM(length), 0) FROM chunks
                 WHERE pack IN ({needed})"
            ),
            params![job],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(Stored { snapshots, logical_bytes, packs, stored_bytes, chunks, unique_bytes, chunk_bytes })
    }

    /// What `target` holds of the packs and snapshot records, and how much is locked at `now`.
    pub fn on_target(&self, target: TargetId, now: i64) -> Result<OnTarget> {
        let mut on = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(p.size), 0),
                    COALESCE(SUM(CASE WHEN c.retain_until > ?2 THEN p.size END), 0),
                    MIN(CASE WHEN c.retain_until > ?2 THEN c.retain_until END),
                    MAX(CASE WHEN c.retain_until > ?2 THEN c.retain_until END)
             FROM pack_copies c JOIN packs p ON p.id = c.pack WHERE c.target = ?1",
            params![target, now],
            |r| {
                Ok(OnTarget {
                    packs: r.get(0)?,
                    stored_bytes: r.get(1)?,
                    locked_bytes: r.get(2)?,
                    locked_until_earliest: r.get(3)?,
                    locked_until_latest: r.get(4)?,
                    snapshot_records: 0,
                })
            },
        )?;
        on.snapshot_records =
            self.conn.query_row("SELECT COUNT(*) FROM snapshot_copies WHERE target = ?1", [target], |r| r.get(0))?;
        Ok(on)
    }
}
