//! The targets this state directory writes to, and what each holds: every object is
//! stored once per target, with that target's version id and lock.

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params};

use super::*;

pub use crate::store::TargetId;

impl rusqlite::types::ToSql for TargetId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for TargetId {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        i64::column_result(value).map(TargetId)
    }
}

/// An object as one target stores it: its version id, and the lock it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredCopy {
    pub version: Option<String>,
    pub lock: Option<Retention>,
}

#[derive(Debug, Clone)]
pub struct TargetRow {
    pub id: TargetId,
    pub name: String,
    pub url: String,
    /// `coffer.repo` on this target, once it is there.
    pub record: Option<StoredCopy>,
    /// Why init accepted this target although it does not protect its objects, if it did.
    pub unprotected: Option<String>,
}

/// One state directory serves one repository, whose targets are known by name: refuse a
/// config that gives a known name another URL.
pub fn ensure_same_url(row: &TargetRow, state_dir: &std::path::Path, url: &str) -> Result<()> {
    if row.url != url {
        bail!(
            "state directory {} holds target `{}` at {}, but the config names {}; use one state_dir per repository \
             (a new target needs a new name)",
            state_dir.display(),
            row.name,
            row.url,
            url
        );
    }
    Ok(())
}

impl Catalog {
    pub fn targets(&self) -> Result<Vec<TargetRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, name, url, record_stored_at, record_version, record_lock_mode, record_retain_until, unprotected
             FROM targets ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            let stored: Option<i64> = r.get(3)?;
            let record = StoredCopy { version: r.get(4)?, lock: lock_from(r.get(5)?, r.get(6)?) };
            Ok(TargetRow {
                id: r.get(0)?,
                name: r.get(1)?,
                url: r.get(2)?,
                record: stored.map(|_| record),
                unprotected: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `coffer.repo` on a target, once it is there.
    pub fn repo_record(&self, target: TargetId) -> Result<Option<StoredCopy>> {
        Ok(self.targets()?.into_iter().find(|t| t.id == target).and_then(|t| t.record))
    }

    pub fn target_named(&self, name: &str) -> Result<Option<TargetRow>> {
        Ok(self.targets()?.into_iter().find(|t| t.name == name))
    }

    /// A target the catalog does not know yet: it holds nothing until a backup catches it up.
    pub fn add_target(&self, name: &str, url: &str) -> Result<TargetId> {
        insert_target(&self.conn, name, url)
    }

    /// Records `coffer.repo` as stored on a target.
    pub fn set_repo_record(&self, target: TargetId, copy: &StoredCopy) -> Result<()> {
        update_repo_record(&self.conn, target, copy, None)
    }

    /// Records the new lock of `coffer.repo` on a target, with an audit event.
    pub fn set_repo_lock(&self, target: TargetId, lock: Retention, job: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE targets SET record_lock_mode = ?2, record_retain_until = ?3 WHERE id = ?1",
            params![target, lock.mode.as_str(), lock.until],
        )?;
        lock_event(&tx, job, crate::format::REPO_KEY, lock)?;
        tx.commit()?;
        Ok(())
    }

    /// Records a pack as stored on a target (a copy made after the pack's first upload).
    pub fn add_pack_copy(&self, target: TargetId, pack: i64, copy: &StoredCopy) -> Result<()> {
        insert_pack_copy(&self.conn, target, pack, copy)
    }

    /// The pack's copy on a target, if it has one.
    pub fn pack_copy(&self, target: TargetId, pack: i64) -> Result<Option<StoredCopy>> {
        let mut st = self.conn.prepare_cached(
            "SELECT version, lock_mode, retain_until FROM pack_copies WHERE target = ?1 AND pack = ?2",
        )?;
        Ok(st
            .query_row(params![target, pack], |r| {
                Ok(StoredCopy { version: r.get(0)?, lock: lock_from(r.get(1)?, r.get(2)?) })
            })
            .optional()?)
    }

    /// The targets holding a pack, with their copies.
    pub fn pack_holders(&self, pack: i64) -> Result<Vec<(TargetId, StoredCopy)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT target, version, lock_mode, retain_until FROM pack_copies WHERE pack = ?1 ORDER BY target",
        )?;
        let rows = st.query_map([pack], |r| {
            Ok((r.get(0)?, StoredCopy { version: r.get(1)?, lock: lock_from(r.get(2)?, r.get(3)?) }))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a snapshot as complete on a target: its record is stored there.
    pub fn add_snapshot_copy(&self, target: TargetId, snapshot: &str, copy: &StoredCopy) -> Result<()> {
        insert_snapshot_copy(&self.conn, target, snapshot, copy)
    }

    /// The targets holding a snapshot's record, with their copies.
    pub fn snapshot_holders(&self, snapshot: &str) -> Result<Vec<(TargetId, StoredCopy)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT c.target, c.record_version, c.lock_mode, s.retain_until FROM snapshot_copies c
             JOIN snapshots s ON s.seq = c.snapshot WHERE s.id = ?1 ORDER BY c.target",
        )?;
        let rows = st.query_map([snapshot], |r| {
            Ok((r.get(0)?, StoredCopy { version: r.get(1)?, lock: lock_from(r.get(2)?, r.get(3)?) }))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The job's complete snapshots a target does not hold yet, oldest first.
    pub fn lagging_snapshots(&self, target: TargetId, job: &str) -> Result<Vec<SnapshotRow>> {
        let held: std::collections::HashSet<String> = {
            let mut st = self.conn.prepare_cached(
                "SELECT s.id FROM snapshot_copies c JOIN snapshots s ON s.seq = c.snapshot
                 WHERE c.target = ?1 AND s.job = ?2",
            )?;
            st.query_map(params![target, job], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
        };
        Ok(self
            .snapshots(Some(job))?
            .into_iter()
            .filter(|s| s.state == SnapshotState::Complete && !held.contains(&s.id))
            .collect())
    }

    /// The newest snapshot of the job a target holds (complete or not).
    pub fn latest_on(&self, target: TargetId, job: &str) -> Result<Option<(String, i64)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT s.id, s.created_at FROM snapshot_copies c JOIN snapshots s ON s.seq = c.snapshot
             WHERE c.target = ?1 AND s.job = ?2 ORDER BY s.seq DESC LIMIT 1",
        )?;
        Ok(st.query_row(params![target, job], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
    }
}

pub(super) fn insert_target(conn: &Connection, name: &str, url: &str) -> Result<TargetId> {
    conn.execute(
        "INSERT INTO targets (name, url, added_at) VALUES (?1, ?2, ?3)",
        params![name, url, crate::time::now_secs()],
    )?;
    let id = TargetId(conn.last_insert_rowid());
    insert_event(conn, "target-added", None, &format!("target `{name}` at {url}"))?;
    Ok(id)
}

pub(super) fn update_repo_record(
    conn: &Connection,
    target: TargetId,
    copy: &StoredCopy,
    unprotected: Option<&str>,
) -> Result<()> {
    conn.execute(
        "UPDATE targets SET record_stored_at = ?2, record_version = ?3, record_lock_mode = ?4,
                            record_retain_until = ?5, unprotected = coalesce(?6, unprotected) WHERE id = ?1",
        params![
            target,
            crate::time::now_secs(),
            copy.version,
            copy.lock.map(|l| l.mode.as_str()),
            copy.lock.map(|l| l.until),
            unprotected
        ],
    )?;
    Ok(())
}

pub(super) fn insert_pack_copy(conn: &Connection, target: TargetId, pack: i64, copy: &StoredCopy) -> Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT OR REPLACE INTO pack_copies (target, pack, version, lock_mode, retain_until, stored_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    st.execute(params![
        target,
        pack,
        copy.version,
        copy.lock.map(|l| l.mode.as_str()),
        copy.lock.map(|l| l.until),
        crate::time::now_secs()
    ])?;
    Ok(())
}

pub(super) fn insert_snapshot_copy(
    conn: &Connection,
    target: TargetId,
    snapshot: &str,
    copy: &StoredCopy,
) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO snapshot_copies (target, snapshot, record_version, lock_mode, stored_at)
         VALUES (?1, (SELECT seq FROM snapshots WHERE id = ?2), ?3, ?4, ?5)",
        params![target, snapshot, copy.version, copy.lock.map(|l| l.mode.as_str()), crate::time::now_secs()],
    )?;
    Ok(())
}
