//! The repository this state directory serves: its record's version and lock.

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params};

use super::*;

#[derive(Debug, Clone)]
pub struct RepoRow {
    pub repo_id: String,
    pub target_url: String,
    pub record_version: Option<String>,
    pub chunker: ChunkerParams,
    /// The lock `coffer.repo` was written with.
    pub record_lock: Option<Retention>,
    /// Why init accepted a target that does not protect its objects, if it did.
    pub unprotected: Option<String>,
}

/// One state directory serves one target: refuse a config that names another.
pub fn ensure_same_target(repo: &RepoRow, cfg: &crate::config::Config) -> Result<()> {
    if repo.target_url != cfg.target.url {
        bail!(
            "state directory {} belongs to target {}, but the config names {}; use one state_dir per target",
            cfg.state_dir.display(),
            repo.target_url,
            cfg.target.url
        );
    }
    Ok(())
}

impl Catalog {
    pub fn repo(&self) -> Result<Option<RepoRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT repo_id, target_url, record_version, chunk_min, chunk_avg, chunk_max, record_lock_mode,
                        record_retain_until, unprotected FROM repo WHERE id = 1",
                [],
                |r| {
                    Ok(RepoRow {
                        repo_id: r.get(0)?,
                        target_url: r.get(1)?,
                        record_version: r.get(2)?,
                        chunker: ChunkerParams { min: r.get(3)?, avg: r.get(4)?, max: r.get(5)? },
                        record_lock: lock_from(r.get(6)?, r.get(7)?),
                        unprotected: r.get(8)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn set_repo(&self, row: &RepoRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO repo (id, repo_id, target_url, record_version, chunk_min, chunk_avg, chunk_max, created_at,
                               record_lock_mode, record_retain_until, unprotected)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                row.repo_id,
                row.target_url,
                row.record_version,
                row.chunker.min,
                row.chunker.avg,
                row.chunker.max,
                crate::time::now_secs(),
                row.record_lock.map(|l| l.mode.as_str()),
                row.record_lock.map(|l| l.until),
                row.unprotected
            ],
        )?;
        Ok(())
    }
}
