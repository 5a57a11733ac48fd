//! The repository's key sets (set 0: `coffer.repo`'s recipients; then one per `coffer key
//! add` or `key remove`), their records on each target, and which keys can read what.

use std::collections::BTreeSet;

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::*;

/// One key set: its number, when it was made, its recipients' fingerprints, and the
/// hash of its record (`keys/<seq>`; none for set 0, which is `coffer.repo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetRow {
    pub seq: u32,
    pub created_at: i64,
    pub recipients: BTreeSet<String>,
    pub record_hash: Option<String>,
}

fn keyset_row(r: &rusqlite::Row) -> rusqlite::Result<KeySetRow> {
    let recipients: String = r.get(2)?;
    Ok(KeySetRow {
        seq: r.get(0)?,
        created_at: r.get(1)?,
        // The catalog is input too: a list that does not parse names no key.
        recipients: serde_json::from_str(&recipients).unwrap_or_default(),
        record_hash: r.get(3)?,
    })
}

impl Catalog {
    /// Every key set, oldest first.
    pub fn keysets(&self) -> Result<Vec<KeySetRow>> {
        let mut st =
            self.conn.prepare_cached("SELECT seq, created_at, recipients, record_hash FROM keysets ORDER BY seq")?;
        let rows = st.query_map([], keyset_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The set backups encrypt to now (`None`: a catalog that has not learnt set 0 yet).
    pub fn current_keyset(&self) -> Result<Option<KeySetRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, created_at, recipients, record_hash FROM keysets ORDER BY seq DESC LIMIT 1")?;
        Ok(st.query_row([], keyset_row).optional()?)
    }

    /// Records a key set and the targets that stored its record, in one transaction
    /// (after every one of them acknowledged it).
    pub fn add_keyset(&self, set: &KeySetRow, copies: &[(TargetId, StoredCopy)]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO keysets (seq, created_at, recipients, record_hash) VALUES (?1, ?2, ?3, ?4)",
            params![set.seq, set.created_at, serde_json::to_string(&set.recipients)?, set.record_hash],
        )?;
        for (target, copy) in copies {
            insert_keyset_copy(&tx, *target, set.seq, copy)?;
        }
        let who: Vec<&str> = set.recipients.iter().map(String::as_str).collect();
        insert_event(&tx, "keys", None, &format!("key set {} of recipients {}", set.seq, who.join(", ")))?;
        tx.commit()?;
        self.load_skipped()?;
        Ok(())
    }

    /// Records a key-set record as stored on a target (a copy made by catch-up).
    pub fn add_keyset_copy(&self, target: TargetId, seq: u32, copy: &StoredCopy) -> Result<()> {
        insert_keyset_copy(&self.conn, target, seq, copy)
    }

    /// The targets holding the record of set `seq`, with their copies.
    pub fn keyset_holders(&self, seq: u32) -> Result<Vec<(TargetId, StoredCopy)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT target, version, lock_mode, retain_until FROM keyset_copies WHERE seq = ?1 ORDER BY target",
        )?;
        let rows = st.query_map([seq], |r| {
            Ok((r.get(0)?, StoredCopy { version: r.get(1)?, lock: lock_from(r.get(2)?, r.get(3)?) }))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a key-set record's new lock on a target, with an audit event.
    pub fn set_keyset_lock(&self, target: TargetId, seq: u32, lock: Retention, job: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE keyset_copies SET lock_mode = ?3, retain_until = ?4 WHERE target = ?1 AND seq = ?2",
            params![target, seq, lock.mode.as_str(), lock.until],
        )?;
        lock_event(&tx, job, &crate::format::keyset::key(seq), lock)?;
        tx.commit()?;
        Ok(())
    }

    /// The sets whose recipients include every recipient of the current set: a pack
    /// encrypted to one of them can be read by every key backups encrypt to now.
    pub fn readable_keysets(&self) -> Result<Option<Vec<u32>>> {
        let sets = self.keysets()?;
        let Some(current) = sets.last() else { return Ok(None) };
        Ok(Some(sets.iter().filter(|s| s.recipients.is_superset(&current.recipients)).map(|s| s.seq).collect()))
    }

    /// The keys (fingerprints) that can restore a snapshot: those of the set its record
    /// was encrypted to, and of every set one of its packs was.
    pub fn snapshot_readers(&self, snapshot: &str) -> Result<BTreeSet<String>> {
        let sets = self.keysets()?;
        let mut st = self.conn.prepare_cached(
            "SELECT keyset FROM snapshots WHERE id = ?1
             UNION SELECT DISTINCT p.keyset FROM snapshot_packs sp JOIN snapshots s ON s.seq = sp.snapshot
                   JOIN packs p ON p.id = sp.pack WHERE s.id = ?1",
        )?;
        let used: Vec<u32> = st.query_map([snapshot], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        let mut readers: Option<BTreeSet<String>> = None;
        for seq in used {
            let set = sets.iter().find(|s| s.seq == seq).map(|s| s.recipients.clone()).unwrap_or_default();
            readers = Some(match readers {
                None => set,
                Some(r) => r.intersection(&set).cloned().collect(),
            });
        }
        Ok(readers.unwrap_or_default())
    }

    /// The recipients (fingerprints) a pack is encrypted to, by its hash.
    pub fn pack_readers(&self, hash: &str) -> Result<BTreeSet<String>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT k.recipients FROM packs p JOIN keysets k ON k.seq = p.keyset WHERE p.hash = ?1")?;
        let text: Option<String> = st.query_row([hash], |r| r.get(0)).optional()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default())
    }
}

pub(super) fn insert_keyset_copy(conn: &Connection, target: TargetId, seq: u32, copy: &StoredCopy) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO keyset_copies (target, seq, version, lock_mode, retain_until, stored_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            target,
            seq,
            copy.version,
            copy.lock.map(|l| l.mode.as_str()),
            copy.lock.map(|l| l.until),
            crate::time::now_secs()
        ],
    )?;
    Ok(())
}
