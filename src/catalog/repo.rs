//! The repository this state directory serves: its id and chunker parameters (what
//! each target holds of it is in `targets.rs`).

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::*;
use crate::pin::Pin;

/// A target `init` (or `recover`) stored the repository record on.
pub struct NewTarget<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub record: StoredCopy,
    /// Why init accepted it although it does not protect its objects, if it did.
    pub unprotected: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct RepoRow {
    pub repo_id: String,
    pub chunker: ChunkerParams,
    /// The repository record every target must hold (`None`: a catalog made before
    /// records were pinned, until the next backup pins it).
    pub pin: Option<Pin>,
}

impl Catalog {
    pub fn repo(&self) -> Result<Option<RepoRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT repo_id, chunk_min, chunk_avg, chunk_max, record_hash, fingerprint FROM repo WHERE id = 1",
                [],
                |r| {
                    let (record_hash, fingerprint): (Option<String>, Option<String>) = (r.get(4)?, r.get(5)?);
                    Ok(RepoRow {
                        repo_id: r.get(0)?,
                        chunker: ChunkerParams { min: r.get(1)?, avg: r.get(2)?, max: r.get(3)? },
                        pin: record_hash
                            .zip(fingerprint)
                            .map(|(record_hash, fingerprint)| Pin { record_hash, fingerprint }),
                    })
                },
            )
            .optional()?)
    }

    /// Records the repository, and the targets that hold its record, in one transaction
    /// (`init`: after every target acknowledged the record).
    pub fn set_repo(&self, row: &RepoRow, targets: &[NewTarget]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO repo (id, repo_id, chunk_min, chunk_avg, chunk_max, created_at, record_hash, fingerprint)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                row.repo_id,
                row.chunker.min,
                row.chunker.avg,
                row.chunker.max,
                crate::time::now_secs(),
                row.pin.as_ref().map(|p| &p.record_hash),
                row.pin.as_ref().map(|p| &p.fingerprint)
            ],
        )?;
        for t in targets {
            let id = super::targets::insert_target(&tx, t.name, t.url)?;
            super::targets::update_repo_record(&tx, id, &t.record, t.unprotected)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Pins the repository record of a catalog made before records were pinned.
    pub fn set_pin(&self, pin: &Pin) -> Result<()> {
        self.conn.execute(
            "UPDATE repo SET record_hash = ?1, fingerprint = ?2 WHERE id = 1 AND record_hash IS NULL",
            params![pin.record_hash, pin.fingerprint],
        )?;
        insert_event(&self.conn, "pinned", None, &format!("repository fingerprint {}", pin.fingerprint))?;
        Ok(())
    }
}
