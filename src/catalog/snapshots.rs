//! Snapshots and the packs each needs.

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use rusqlite::params;

use super::*;

/// Where a snapshot is in its life: `complete` (restorable, its packs kept), then
/// `forgotten` once past its retain-until (its record kept until prune deletes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Complete,
    Forgotten,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Complete => "complete",
            SnapshotState::Forgotten => "forgotten",
        }
    }

    pub fn parse(s: &str) -> Option<SnapshotState> {
        [SnapshotState::Complete, SnapshotState::Forgotten].into_iter().find(|v| v.as_str() == s)
    }
}

super::text_column!(SnapshotState, "snapshot state");

#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotRow {
    #[serde(rename = "snapshot")]
    pub id: String,
    pub job: String,
    pub host: String,
    pub created_at: i64,
    pub state: SnapshotState,
    pub source: String,
    pub files: u64,
    pub bytes: u64,
    pub bytes_new: u64,
    pub bytes_uploaded: u64,
    pub errors: u64,
    pub retain_until: Option<i64>,
    /// What the source contained beyond its files (git refs, a command's output).
    pub contents: Option<crate::format::contents::Contents>,
    /// The key set its record is encrypted to.
    pub keyset: u32,
    pub tags: Vec<String>,
}

/// Which snapshots `--tag` and `--host` leave: those with every tag, made on the host.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub tags: Vec<String>,
    pub host: Option<String>,
}

impl Filter {
    pub fn matches(&self, s: &SnapshotRow) -> bool {
        self.tags.iter().all(|t| s.tags.contains(t)) && self.host.as_ref().is_none_or(|h| *h == s.host)
    }

    /// ` with tag a, b on host h`, for messages; empty without a filter.
    pub fn said(&self) -> String {
        let mut s = String::new();
        if !self.tags.is_empty() {
            s.push_str(&format!(" with tag {}", self.tags.join(", ")));
        }
        if let Some(h) = &self.host {
            s.push_str(&format!(" on host {h}"));
        }
        s
    }
}

impl SnapshotRow {
    /// Complete, and not past its retain-until at `now`: a snapshot restores count on.
    pub fn is_live(&self, now: i64) -> bool {
        self.state == SnapshotState::Complete && self.retain_until.is_none_or(|u| u > now)
    }

    /// The row of a snapshot, from its record.
    pub fn from_record(r: &crate::format::snapshot::SnapshotRecord) -> SnapshotRow {
        SnapshotRow {
            id: r.id.clone(),
            job: r.job.clone(),
            host: r.host.clone(),
            created_at: r.created,
            state: SnapshotState::Complete,
            source: r.source.clone(),
            files: r.stats.files,
            bytes: r.stats.bytes,
            bytes_new: r.stats.bytes_new,
            bytes_uploaded: r.stats.bytes_uploaded,
            errors: r.errors.len() as u64,
            retain_until: r.retain_until,
            contents: r.contents.clone(),
            keyset: r.keyset.unwrap_or(0),
            // A record's tags as the restorer sees them; a forged one's that could not
            // have been typed are left out.
            tags: r
                .tags
                .iter()
                .filter(|t| crate::format::snapshot::check_tag(t).is_ok())
                .take(crate::format::snapshot::MAX_TAGS)
                .cloned()
                .collect(),
        }
    }
}

impl Catalog {
    /// How many file-cache rows `complete_snapshot` writes per sorted lookup of their
    /// chunks. At a million small files this reads 0.9 GB of catalog pages, against
    /// 1.8 GB a batch of 2^15 rows and 7 GB row by row; the rows (about 30 MB) are held
    /// after the run's pack buffers are freed, below its peak.
    const COMPLETE_BATCH: usize = 1 << 17;

    /// Records a complete snapshot, the targets that hold its record (`copies`), the packs
    /// it needs, and the job's file cache, in one transaction: `cache`
    /// gives the files whose row changed (new, or read again), `current` says which paths
    /// the snapshot holds; rows of other paths go. A file reused unchanged keeps its row,
    /// so a run with no change writes almost nothing. `counts`, when given (files in the
    /// snapshot, and how many of them had no row), spares the scan for rows to remove
    /// when none can be left over.
    pub fn complete_snapshot(
        &mut self,
        snap: &SnapshotRow,
        copies: &[(TargetId, StoredCopy)],
        packs: &HashSet<i64>,
        cache: impl IntoIterator<Item = Result<(Vec<u8>, CachedFile)>>,
        current: impl Fn(&[u8]) -> Result<bool>,
        counts: Option<(u64, u64)>,
    ) -> Result<i64> {
        // Unchecked (on `&self`): inside it, the rows' packs come from the dedup lookup.
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO snapshots (id, job, host, created_at, state, source, files, bytes,
                                    bytes_new, bytes_uploaded, errors, retain_until, contents, keyset, tags)
             VALUES (?1, ?2, ?3, ?4, 'complete', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                snap.id,
                snap.job,
                snap.host,
                snap.created_at,
                snap.source,
                snap.files,
                snap.bytes,
                snap.bytes_new,
                snap.bytes_uploaded,
                snap.errors,
                snap.retain_until,
                snap.contents.as_ref().map(serde_json::to_string).transpose()?,
                snap.keyset,
                serde_json::to_string(&snap.tags)?
            ],
        )?;
        let seq = tx.last_insert_rowid();
        for (target, copy) in copies {
            super::targets::insert_snapshot_copy(&tx, *target, &snap.id, copy)?;
        }
        {
            let mut st = tx.prepare("INSERT INTO snapshot_packs (snapshot, pack) VALUES (?1, ?2)")?;
            for p in packs {
                st.execute(params![seq, p])?;
            }
            let rows: u64 =
                tx.query_row("SELECT count(*) FROM file_cache WHERE job = ?1", [&snap.job], |r| r.get(0))?;
            let none_left = counts.is_some_and(|(files, new)| rows + new == files);
            let gone: Vec<Vec<u8>> = if none_left {
                Vec::new()
            } else {
                let mut st = tx.prepare("SELECT path FROM file_cache WHERE job = ?1")?;
                let mut rows = st.query([&snap.job])?;
                let mut gone = Vec::new();
                while let Some(row) = rows.next()? {
                    let path: Vec<u8> = row.get(0)?;
                    if !current(&path)? {
                        gone.push(path);
                    }
                }
                gone
            };
            let mut st = tx.prepare("DELETE FROM file_cache WHERE job = ?1 AND path = ?2")?;
            for path in gone {
                st.execute(params![snap.job, path])?;
            }
            let mut st = tx.prepare(
                "INSERT OR REPLACE INTO file_cache (job, path, size, mtime_ns, ctime_ns, inode, chunks, packs,
                                                    content_type, xattrs, traits, packs_check)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            // A batch of rows at a time, their chunks looked up in id order: the ids are
            // random, so looked up row by row nearly every one read another page of
            // `chunks`; in order, neighbours share the page just read.
            let mut cache = cache.into_iter().peekable();
            while cache.peek().is_some() {
                let rows = cache.by_ref().take(Self::COMPLETE_BATCH).collect::<Result<Vec<_>>>()?;
                let packs = self.chunk_packs_sorted(rows.iter().flat_map(|(_, f)| &f.chunks))?;
                for (path, f) in rows {
                    let ids: Vec<u8> = f.chunks.iter().flat_map(|c| c.0).collect();
                    // Each chunk's pack, as the dedup lookup finds it now that every pack is in.
                    let packs: Vec<i64> = f.chunks.iter().map(|id| packs.get(id)).collect();
                    let xattrs = f.xattrs.as_ref().map(serde_json::to_string).transpose()?;
                    let packs = super::file_cache::packs_column(&packs);
                    let check = super::file_cache::packs_check(f.size, &ids, &packs);
                    st.execute(params![
                        snap.job,
                        path,
                        f.size,
                        f.mtime_ns,
                        f.ctime_ns,
                        f.inode,
                        ids,
                        packs,
                        f.content_type,
                        xattrs,
                        f.traits,
                        &check[..]
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    pub fn snapshots(&self, job: Option<&str>) -> Result<Vec<SnapshotRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, job, host, created_at, state, source, files, bytes, bytes_new,
                    bytes_uploaded, errors, retain_until, contents, keyset, tags
             FROM snapshots WHERE ?1 IS NULL OR job = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([job], |r| {
            Ok(SnapshotRow {
                id: r.get(0)?,
                job: r.get(1)?,
                host: r.get(2)?,
                created_at: r.get(3)?,
                state: r.get(4)?,
                source: r.get(5)?,
                files: r.get(6)?,
                bytes: r.get(7)?,
                bytes_new: r.get(8)?,
                bytes_uploaded: r.get(9)?,
                errors: r.get(10)?,
                retain_until: r.get(11)?,
                contents: r.get::<_, Option<String>>(12)?.and_then(|j| serde_json::from_str(&j).ok()),
                keyset: r.get(13)?,
                // A row that does not read (the catalog is input too) has no tags.
                tags: serde_json::from_str(&r.get::<_, String>(14)?).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The job's newest complete snapshot.
    pub fn latest_complete(&self, job: &str) -> Result<Option<SnapshotRow>> {
        Ok(self.snapshots(Some(job))?.into_iter().rev().find(|s| s.state == SnapshotState::Complete))
    }

    /// The snapshot `selector` names in `job`: an id or a unique prefix, `latest`, or
    /// `latest-clean` (the newest the tripwire did not find suspicious).
    pub fn find_snapshot(&self, job: &str, selector: &str) -> Result<SnapshotRow> {
        self.find_snapshot_where(job, selector, &Filter::default())
    }

    /// As [`Catalog::find_snapshot`], among the snapshots `filter` leaves.
    pub fn find_snapshot_where(&self, job: &str, selector: &str, filter: &Filter) -> Result<SnapshotRow> {
        let complete = || -> Result<Vec<SnapshotRow>> {
            let all = self.snapshots(Some(job))?.into_iter();
            Ok(all.filter(|s| s.state == SnapshotState::Complete && filter.matches(s)).collect())
        };
        let said = filter.said();
        if selector == "latest" {
            return complete()?.pop().with_context(|| format!("job `{job}` has no complete snapshot{said} yet"));
        }
        if selector == "latest-clean" {
            let suspicious = self.suspicious_snapshots()?;
            return complete()?
                .into_iter()
                .filter(|s| !suspicious.contains(&s.id))
                .max_by_key(|s| s.created_at)
                .with_context(|| {
                    format!("job `{job}` has no complete snapshot{said} the tripwire did not find suspicious")
                });
        }
        let all: Vec<SnapshotRow> = self.snapshots(Some(job))?.into_iter().filter(|s| filter.matches(s)).collect();
        let matches: Vec<SnapshotRow> = all.into_iter().filter(|s| s.id.starts_with(selector)).collect();
        match matches.len() {
            0 => bail!("no snapshot `{selector}` in job `{job}` (see `coffer snapshots {job}`)"),
            1 => Ok(matches.into_iter().next().expect("one match")),
            n => bail!("snapshot prefix `{selector}` is ambiguous: {n} snapshots of job `{job}` match"),
        }
    }
}
