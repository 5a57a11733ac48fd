//! The repository this state directory serves: its id and chunker parameters (what
//! each target holds of it is in `targets.rs`).

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::*;

/// A target `init` (or `recover`) stored the repository record on.
pub struct NewTarget<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub record: Copy,
    /// Why init accepted it although it does not protect its objects, if it did.
    pub unprotected: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct RepoRow {
    pub repo_id: String,
    pub chunker: ChunkerParams,
}

impl Catalog {
    pub fn repo(&self) -> Result<Option<RepoRow>> {
        Ok(self
            .conn
            .query_row("SELECT repo_id, chunk_min, chunk_avg, chunk_max FROM repo WHERE id = 1", [], |r| {
                Ok(RepoRow {
                    repo_id: r.get(0)?,
                    chunker: ChunkerParams { min: r.get(1)?, avg: r.get(2)?, max: r.get(3)? },
                })
            })
            .optional()?)
    }

    /// Records the repository, and the targets that hold its record, in one transaction
    /// (`init`: after every target acknowledged the record).
    pub fn set_repo(&self, row: &RepoRow, targets: &[NewTarget]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO repo (id, repo_id, chunk_min, chunk_avg, chunk_max, created_at) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![row.repo_id, row.chunker.min, row.chunker.avg, row.chunker.max, crate::time::now_secs()],
        )?;
        for t in targets {
            let id = super::targets::insert_target(&tx, t.name, t.url)?;
            super::targets::update_repo_record(&tx, id, &t.record, t.unprotected)?;
        }
        tx.commit()?;
        Ok(())
    }
}
