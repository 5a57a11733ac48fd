//! The catalog: a SQLite database (WAL) in the state directory that records what the
//! target holds. It is only ever told about an object after the server acknowledged it,
//! and every change that spans rows is one transaction, so it can never claim a chunk is
//! stored when it is not. Schema: `migrations/*.sql`, applied in order by `user_version`.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};

use crate::ChunkId;
use crate::chunker::ChunkerParams;
use crate::format::pack::BlobEntry;
use crate::run_outcome::RunOutcome;
use crate::target::{LockMode, Retention};

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_locks.sql"),
    include_str!("../migrations/0003_runs.sql"),
    include_str!("../migrations/0004_contents.sql"),
    include_str!("../migrations/0005_damaged.sql"),
    include_str!("../migrations/0006_damaged_index.sql"),
];

pub struct Catalog {
    conn: Connection,
    /// The packs found damaged, as of the last read transaction begun: the dedup lookup
    /// skips them in memory instead of asking per chunk.
    damaged: std::cell::RefCell<HashSet<i64>>,
}

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

#[derive(Debug, Clone)]
pub struct ChunkLoc {
    pub pack_hash: String,
    pub pack_version: Option<String>,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    pub flags: u8,
}

impl ChunkLoc {
    /// The chunk's entry in its pack's table.
    pub fn blob(&self, id: ChunkId) -> crate::format::pack::BlobEntry {
        let ChunkLoc { offset, length, raw_length, flags, .. } = *self;
        crate::format::pack::BlobEntry { id, offset, length, raw_length, flags }
    }
}

/// A stored pack and the lock the catalog recorded for it.
#[derive(Debug, Clone)]
pub struct PackLock {
    pub id: i64,
    pub hash: String,
    pub version: Option<String>,
    pub lock: Option<Retention>,
}

/// A stored pack: catalog row id, content hash, version id, size.
#[derive(Debug, Clone)]
pub struct PackRow {
    pub id: i64,
    pub hash: String,
    pub version: Option<String>,
    pub size: u64,
}

/// A pack the server has acknowledged.
pub struct StoredPack<'a> {
    pub hash: &'a str,
    pub version: Option<&'a str>,
    pub size: u64,
    pub blobs: &'a [BlobEntry],
    /// The lock it was written with, where the target locks.
    pub lock: Option<Retention>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotRow {
    pub id: String,
    pub job: String,
    pub host: String,
    pub created_at: i64,
    pub state: String,
    pub record_version: Option<String>,
    pub source: String,
    pub files: u64,
    pub bytes: u64,
    pub bytes_new: u64,
    pub bytes_uploaded: u64,
    pub errors: u64,
    pub retain_until: Option<i64>,
    /// The lock mode of the snapshot record (locked until `retain_until`), if any.
    pub lock_mode: Option<String>,
    /// What the source contained beyond its files (git refs, a command's output).
    pub contents: Option<crate::format::contents::Contents>,
}

impl SnapshotRow {
    /// The row of a snapshot whose record is stored as `record_version`, locked in
    /// `lock_mode` (until its retain-until) where the target locks.
    pub fn from_record(
        r: &crate::format::snapshot::SnapshotRecord,
        record_version: Option<String>,
        lock_mode: Option<String>,
    ) -> SnapshotRow {
        SnapshotRow {
            id: r.id.clone(),
            job: r.job.clone(),
            host: r.host.clone(),
            created_at: r.created,
            state: "complete".into(),
            record_version,
            source: r.source.clone(),
            files: r.stats.files,
            bytes: r.stats.bytes,
            bytes_new: r.stats.bytes_new,
            bytes_uploaded: r.stats.bytes_uploaded,
            errors: r.errors.len() as u64,
            retain_until: r.retain_until,
            lock_mode,
            contents: r.contents.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub chunks: Vec<ChunkId>,
    pub content_type: Option<String>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: RunOutcome,
    pub snapshot: Option<String>,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_uploaded: u64,
    pub duration_ms: u64,
    /// Transient target failures that were retried.
    pub retries: u64,
    pub error: Option<String>,
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `coffer backup`.
    Manual,
    /// A fire time of the job's schedule.
    Schedule,
    /// At daemon start, for fire times missed while it was down.
    CatchUp,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
        }
    }
}

/// One row of the run history (`coffer runs`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub id: i64,
    pub job: String,
    pub trigger: String,
    pub scheduled_for: Option<i64>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub duration_ms: Option<u64>,
    pub outcome: RunOutcome,
    pub snapshot: Option<String>,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_uploaded: u64,
    pub retries: u64,
    pub error: Option<String>,
}

/// A job's history summed up, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct JobTotals {
    pub last_success_at: Option<i64>,
    /// The newest finished run (not skipped).
    pub last_run: Option<RunRow>,
    pub runs: u64,
    pub failures: u64,
    pub skips: u64,
    pub retries: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub lock_extensions: u64,
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog> {
        let ctx = || format!("catalog {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsutil::secure_state_dir(dir)?;
        }
        let conn = Connection::open(path).with_context(ctx)?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).with_context(ctx)?;
        conn.pragma_update(None, "journal_mode", "WAL").with_context(ctx)?;
        conn.pragma_update(None, "synchronous", "FULL").with_context(ctx)?;
        conn.pragma_update(None, "foreign_keys", "ON").with_context(ctx)?;
        // Reads through a bounded memory map instead of a read syscall per page: a backup
        // looks up every file and chunk (memory-mapped pages are the page cache's, and
        // at most this much of the catalog counts in the process's RSS).
        conn.pragma_update(None, "mmap_size", 64 << 20).with_context(ctx)?;
        let mut cat = Catalog { conn, damaged: Default::default() };
        cat.migrate().with_context(ctx)?;
        cat.load_damaged().with_context(ctx)?;
        Ok(cat)
    }

    /// The catalog of an initialised state directory, with a hint when there is none.
    pub fn open_existing(cfg: &crate::config::Config) -> Result<Catalog> {
        let path = cfg.state().catalog();
        if !path.exists() {
            bail!("state directory {} holds no catalog; run `coffer init` first", cfg.state_dir.display());
        }
        Catalog::open(&path)
    }

    /// The catalog and repository of an initialised state directory that belongs to the
    /// configured target.
    pub fn open_repo(cfg: &crate::config::Config) -> Result<(Catalog, RepoRow)> {
        let catalog = Catalog::open_existing(cfg)?;
        let repo = catalog.repo()?.with_context(|| {
            format!("the catalog in {} has no repository; run `coffer init` first", cfg.state_dir.display())
        })?;
        ensure_same_target(&repo, cfg)?;
        Ok((catalog, repo))
    }

    fn migrate(&mut self) -> Result<()> {
        let version: usize = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            bail!("schema version {version} is newer than this coffer understands ({})", MIGRATIONS.len());
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    // ---- repository ------------------------------------------------------------------

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

    // ---- chunks and packs ------------------------------------------------------------

    /// The pack (row id) holding a stored chunk, if any: the dedup lookup. A chunk in a
    /// pack found damaged counts as not stored, so that a backup stores it again.
    pub fn chunk_pack(&self, id: &ChunkId) -> Result<Option<i64>> {
        Ok(self.chunk_pack_and_size(id)?.map(|(pack, _)| pack))
    }

    /// The dedup lookup with the chunk's plaintext length, to check a cached file's chunk
    /// list against the size it claims.
    pub fn chunk_pack_and_size(&self, id: &ChunkId) -> Result<Option<(i64, u64)>> {
        let mut st = self.conn.prepare_cached("SELECT pack, raw_length FROM chunks WHERE id = ?1")?;
        let found: Option<(i64, u64)> = st.query_row([&id.0[..]], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        Ok(found.filter(|(pack, _)| !self.damaged.borrow().contains(pack)))
    }

    fn load_damaged(&self) -> Result<()> {
        let mut st = self.conn.prepare_cached("SELECT id FROM packs WHERE damaged IS NOT NULL")?;
        let ids = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<HashSet<i64>>>()?;
        *self.damaged.borrow_mut() = ids;
        Ok(())
    }

    /// Marks a pack as damaged (by its hash), with why; backups then store its chunks
    /// again. Returns whether the catalog knew the pack.
    pub fn mark_damaged(&self, hash: &str, why: &str) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE packs SET damaged = ?2, damaged_at = ?3 WHERE hash = ?1 AND damaged IS NULL",
            params![hash, why, crate::time::now_secs()],
        )?;
        if n > 0 {
            self.load_damaged()?;
            self.event(
                "pack-damaged",
                None,
                &format!("pack {hash}: {why}; its chunks are stored again by the next backup"),
            )?;
        }
        Ok(n > 0)
    }

    /// Begins a read transaction, for many lookups at the cost of one lock ([`Catalog::end_read`]).
    pub fn begin_read(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        self.load_damaged()
    }

    pub fn end_read(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Runs `f` in one read transaction: one consistent view, and one lock instead of a
    /// lock and a WAL check per query (a restore asks once per chunk).
    pub fn reading<T>(&self, f: impl FnOnce(&Catalog) -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let out = f(self);
        tx.finish()?;
        out
    }

    pub fn chunk_location(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        // Scalar subqueries, not a JOIN: SQLite 3.54 re-prepares this JOIN at every step
        // (measured: 3x slower), and a restore asks once per chunk.
        let mut st = self.conn.prepare_cached(
            "SELECT (SELECT hash FROM packs WHERE id = c.pack), (SELECT version FROM packs WHERE id = c.pack),
                    c.offset, c.length, c.raw_length, c.flags
             FROM chunks c WHERE c.id = ?1",
        )?;
        let row = st.query_row([&id.0[..]], |r| {
            let hash: Option<String> = r.get(0)?;
            Ok(hash.map(|pack_hash| -> rusqlite::Result<ChunkLoc> {
                Ok(ChunkLoc {
                    pack_hash,
                    pack_version: r.get(1)?,
                    offset: r.get(2)?,
                    length: r.get(3)?,
                    raw_length: r.get(4)?,
                    flags: r.get(5)?,
                })
            }))
        });
        // A chunk whose pack row is gone is in no pack the catalog knows.
        Ok(row.optional()?.flatten().transpose()?)
    }

    /// Records an acknowledged pack and its chunks in one transaction. Returns its row id.
    pub fn add_pack(&mut self, pack: &StoredPack) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let id = insert_pack(&tx, pack)?;
        tx.commit()?;
        Ok(id)
    }

    pub fn has_pack(&self, hash: &str) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM packs WHERE hash = ?1")?;
        Ok(st.exists([hash])?)
    }

    /// The version id recorded for a pack.
    pub fn pack_version(&self, hash: &str) -> Result<Option<String>> {
        let mut st = self.conn.prepare_cached("SELECT version FROM packs WHERE hash = ?1")?;
        Ok(st.query_row([hash], |r| r.get(0)).optional()?.flatten())
    }

    /// Every pack with the snapshots that need it: (pack, version, size, lock, snapshot ids).
    pub fn packs_with_snapshots(&self) -> Result<Vec<(PackLock, u64, Vec<String>)>> {
        let mut st = self.conn.prepare(
            "SELECT p.id, p.hash, p.version, p.lock_mode, p.retain_until, p.size,
                    (SELECT group_concat(s.id, ' ') FROM snapshot_packs sp JOIN snapshots s ON s.seq = sp.snapshot
                     WHERE sp.pack = p.id AND s.state = 'complete')
             FROM packs p ORDER BY p.id",
        )?;
        let rows = st.query_map([], |r| {
            let lock =
                PackLock { id: r.get(0)?, hash: r.get(1)?, version: r.get(2)?, lock: lock_from(r.get(3)?, r.get(4)?) };
            let snaps: Option<String> = r.get(6)?;
            Ok((lock, r.get(5)?, snaps.map(|s| s.split(' ').map(str::to_string).collect()).unwrap_or_default()))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The chunks the catalog places in a pack: (id, offset, length, raw length, flags).
    pub fn pack_chunks(&self, pack: i64) -> Result<Vec<BlobEntry>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, offset, length, raw_length, flags FROM chunks WHERE pack = ?1 ORDER BY offset",
        )?;
        let rows = st.query_map([pack], |r| {
            let id: Vec<u8> = r.get(0)?;
            Ok(BlobEntry {
                id: ChunkId(id.try_into().unwrap_or([0; 32])),
                offset: r.get(1)?,
                length: r.get(2)?,
                raw_length: r.get(3)?,
                flags: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every object the catalog records, by key, with its version id.
    pub fn recorded_objects(&self) -> Result<std::collections::HashMap<String, Option<String>>> {
        let mut out = std::collections::HashMap::new();
        let mut st = self.conn.prepare("SELECT hash, version FROM packs")?;
        for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (hash, version) = row?;
            out.insert(crate::format::pack_key(&hash), version);
        }
        let mut st = self.conn.prepare("SELECT job, id, record_version FROM snapshots")?;
        for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?)))? {
            let (job, id, version) = row?;
            out.insert(crate::format::snapshot_key(&job, &id), version);
        }
        if let Some(repo) = self.repo()? {
            out.insert(crate::format::REPO_KEY.to_string(), repo.record_version);
        }
        Ok(out)
    }

    // ---- recovery ----------------------------------------------------------------------

    /// Scratch space for `coffer recover`: the decoded chunks of snapshot entry streams,
    /// stored with the pack that held them, until the snapshots are rebuilt from them.
    pub fn begin_recovery(&self) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS recovered_tree (id BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID",
        )?;
        Ok(())
    }

    /// Records a pack read back from the target, and the entry-stream chunks it held, in
    /// one transaction.
    pub fn add_recovered_pack(&mut self, pack: &StoredPack, tree: &[(ChunkId, Vec<u8>)]) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let id = insert_pack(&tx, pack)?;
        {
            let mut st = tx.prepare_cached("INSERT OR IGNORE INTO recovered_tree (id, data) VALUES (?1, ?2)")?;
            for (chunk, data) in tree {
                st.execute(params![&chunk.0[..], data])?;
            }
        }
        tx.commit()?;
        Ok(id)
    }

    pub fn recovered_tree_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let mut st = self.conn.prepare_cached("SELECT data FROM recovered_tree WHERE id = ?1")?;
        Ok(st.query_row([&id.0[..]], |r| r.get(0)).optional()?)
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
        tx.execute_batch("DROP TABLE IF EXISTS recovered_tree")?;
        tx.commit()?;
        Ok(())
    }

    /// Closes the database, checkpointing its write-ahead log into the main file.
    pub fn close(self) -> Result<()> {
        self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
        self.conn.close().map_err(|(_, e)| e)?;
        Ok(())
    }

    /// Of the given packs, those whose lock (as the catalog knows it) ends before `until`.
    pub fn packs_locked_before(&self, ids: &HashSet<i64>, until: i64) -> Result<Vec<(i64, String, Option<String>)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, hash, version FROM packs WHERE id = ?1 AND (retain_until IS NULL OR retain_until < ?2)",
        )?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(row) = st.query_row(params![id, until], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()? {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// Records a pack's new lock, as the server acknowledged it, with an audit event.
    pub fn set_pack_lock(&self, id: i64, lock: Retention, job: &str, hash: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE packs SET lock_mode = ?2, retain_until = ?3, confirmed_at = ?4 WHERE id = ?1",
            params![id, lock.mode.as_str(), lock.until, crate::time::now_secs()],
        )?;
        lock_event(&tx, job, &format!("pack {hash}"), lock)?;
        tx.commit()?;
        Ok(())
    }

    /// Every pack a snapshot needs, with the lock the catalog knows for it.
    pub fn snapshot_packs(&self, snapshot_id: &str) -> Result<Vec<PackLock>> {
        let mut st = self.conn.prepare_cached(
            "SELECT p.id, p.hash, p.version, p.lock_mode, p.retain_until FROM snapshot_packs sp
             JOIN snapshots s ON s.seq = sp.snapshot JOIN packs p ON p.id = sp.pack
             WHERE s.id = ?1 ORDER BY p.id",
        )?;
        let rows = st.query_map([snapshot_id], |r| {
            Ok(PackLock { id: r.get(0)?, hash: r.get(1)?, version: r.get(2)?, lock: lock_from(r.get(3)?, r.get(4)?) })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes that the server confirmed a pack's lock now.
    pub fn confirm_pack(&self, id: i64) -> Result<()> {
        self.conn.execute("UPDATE packs SET confirmed_at = ?2 WHERE id = ?1", params![id, crate::time::now_secs()])?;
        Ok(())
    }

    /// Records the new lock of `coffer.repo`, with an audit event.
    pub fn set_repo_lock(&self, lock: Retention, job: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE repo SET record_lock_mode = ?1, record_retain_until = ?2 WHERE id = 1",
            params![lock.mode.as_str(), lock.until],
        )?;
        lock_event(&tx, job, crate::format::REPO_KEY, lock)?;
        tx.commit()?;
        Ok(())
    }

    // ---- the incremental fast path ---------------------------------------------------

    pub fn cached_file(&self, job: &str, path: &[u8]) -> Result<Option<CachedFile>> {
        let mut st = self.conn.prepare_cached(
            "SELECT size, mtime_ns, ctime_ns, inode, chunks, content_type FROM file_cache WHERE job = ?1 AND path = ?2",
        )?;
        Ok(st
            .query_row(params![job, path], |r| {
                let blob: Vec<u8> = r.get(4)?;
                Ok(CachedFile {
                    size: r.get(0)?,
                    mtime_ns: r.get(1)?,
                    ctime_ns: r.get(2)?,
                    inode: r.get(3)?,
                    chunks: blob.chunks_exact(32).map(|c| ChunkId(c.try_into().unwrap_or([0; 32]))).collect(),
                    content_type: r.get(5)?,
                })
            })
            .optional()?)
    }

    // ---- snapshots -------------------------------------------------------------------

    /// Marks a snapshot complete: its row, the packs it needs, and the job's new file
    /// cache, all in one transaction.
    /// Records a complete snapshot, the packs it needs, and the job's file cache: `cache`
    /// gives the files whose row changed (new, or read again), `current` says which paths
    /// the snapshot holds; rows of other paths go. A file reused unchanged keeps its row,
    /// so a run with no change writes almost nothing. `counts`, when given (files in the
    /// snapshot, and how many of them had no row), spares the scan for rows to remove
    /// when none can be left over.
    pub fn complete_snapshot(
        &mut self,
        snap: &SnapshotRow,
        packs: &HashSet<i64>,
        cache: impl IntoIterator<Item = Result<(Vec<u8>, CachedFile)>>,
        current: impl Fn(&[u8]) -> bool,
        counts: Option<(u64, u64)>,
    ) -> Result<i64> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO snapshots (id, job, host, created_at, state, record_version, source, files, bytes,
                                    bytes_new, bytes_uploaded, errors, retain_until, lock_mode, contents)
             VALUES (?1, ?2, ?3, ?4, 'complete', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                snap.id,
                snap.job,
                snap.host,
                snap.created_at,
                snap.record_version,
                snap.source,
                snap.files,
                snap.bytes,
                snap.bytes_new,
                snap.bytes_uploaded,
                snap.errors,
                snap.retain_until,
                snap.lock_mode,
                snap.contents.as_ref().map(serde_json::to_string).transpose()?
            ],
        )?;
        let seq = tx.last_insert_rowid();
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
                let paths = st.query_map([&snap.job], |r| r.get::<_, Vec<u8>>(0))?;
                paths.filter(|p| p.as_ref().map_or(true, |p| !current(p))).collect::<rusqlite::Result<_>>()?
            };
            let mut st = tx.prepare("DELETE FROM file_cache WHERE job = ?1 AND path = ?2")?;
            for path in gone {
                st.execute(params![snap.job, path])?;
            }
            let mut st = tx.prepare(
                "INSERT OR REPLACE INTO file_cache (job, path, size, mtime_ns, ctime_ns, inode, chunks, content_type)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for item in cache {
                let (path, f) = item?;
                let ids: Vec<u8> = f.chunks.iter().flat_map(|c| c.0).collect();
                st.execute(params![snap.job, path, f.size, f.mtime_ns, f.ctime_ns, f.inode, ids, f.content_type])?;
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    pub fn snapshots(&self, job: Option<&str>) -> Result<Vec<SnapshotRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, job, host, created_at, state, record_version, source, files, bytes, bytes_new,
                    bytes_uploaded, errors, retain_until, lock_mode, contents
             FROM snapshots WHERE ?1 IS NULL OR job = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([job], |r| {
            Ok(SnapshotRow {
                id: r.get(0)?,
                job: r.get(1)?,
                host: r.get(2)?,
                created_at: r.get(3)?,
                state: r.get(4)?,
                record_version: r.get(5)?,
                source: r.get(6)?,
                files: r.get(7)?,
                bytes: r.get(8)?,
                bytes_new: r.get(9)?,
                bytes_uploaded: r.get(10)?,
                errors: r.get(11)?,
                retain_until: r.get(12)?,
                lock_mode: r.get(13)?,
                contents: r.get::<_, Option<String>>(14)?.and_then(|j| serde_json::from_str(&j).ok()),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The job's newest complete snapshot.
    pub fn latest_complete(&self, job: &str) -> Result<Option<SnapshotRow>> {
        Ok(self.snapshots(Some(job))?.into_iter().rev().find(|s| s.state == "complete"))
    }

    /// `latest`, a full id, or a unique prefix of one, within a job.
    pub fn find_snapshot(&self, job: &str, selector: &str) -> Result<SnapshotRow> {
        if selector == "latest" {
            return self.latest_complete(job)?.with_context(|| format!("job `{job}` has no complete snapshot yet"));
        }
        let all = self.snapshots(Some(job))?;
        let matches: Vec<SnapshotRow> = all.into_iter().filter(|s| s.id.starts_with(selector)).collect();
        match matches.len() {
            0 => bail!("no snapshot `{selector}` in job `{job}` (see `coffer snapshots {job}`)"),
            1 => Ok(matches.into_iter().next().expect("one match")),
            n => bail!("snapshot prefix `{selector}` is ambiguous: {n} snapshots of job `{job}` match"),
        }
    }

    // ---- expiry and prune ----------------------------------------------------------

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

    // ---- runs and events -------------------------------------------------------------

    /// Records the start of a run. The caller holds the job's lock, so any other run of
    /// the job still marked running belongs to a process that died: it is closed as
    /// interrupted.
    pub fn start_run(&self, job: &str, trigger: Trigger, scheduled_for: Option<i64>) -> Result<i64> {
        let now = crate::time::now_secs();
        self.conn.execute(
            "UPDATE runs SET outcome = 'interrupted', ended_at = ?2,
                             error = 'the process ended before this run finished'
             WHERE job = ?1 AND outcome = 'running'",
            params![job, now],
        )?;
        self.conn.execute(
            "INSERT INTO runs (job, trigger, scheduled_for, started_at, outcome) VALUES (?1, ?2, ?3, ?4, 'running')",
            params![job, trigger.as_str(), scheduled_for, now],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_run(&self, id: i64, r: &RunReport) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET ended_at = ?2, outcome = ?3, snapshot = ?4, bytes_read = ?5, bytes_new = ?6,
                             bytes_uploaded = ?7, duration_ms = ?8, retries = ?9, error = ?10 WHERE id = ?1",
            params![
                id,
                crate::time::now_secs(),
                r.outcome,
                r.snapshot,
                r.bytes_read,
                r.bytes_new,
                r.bytes_uploaded,
                r.duration_ms,
                r.retries,
                r.error
            ],
        )?;
        Ok(())
    }

    /// A fire time that came while the job was still running (or waiting to run).
    pub fn record_skip(&self, job: &str, scheduled_for: i64, why: &str) -> Result<()> {
        let now = crate::time::now_secs();
        self.conn.execute(
            "INSERT INTO runs (job, trigger, scheduled_for, started_at, ended_at, duration_ms, outcome, error)
             VALUES (?1, 'schedule', ?2, ?3, ?3, 0, 'skipped', ?4)",
            params![job, scheduled_for, now, why],
        )?;
        Ok(())
    }

    /// The run history, newest first.
    pub fn runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, job, trigger, scheduled_for, started_at, ended_at, duration_ms, outcome, snapshot,
                    bytes_read, bytes_new, bytes_uploaded, retries, error
             FROM runs WHERE ?1 IS NULL OR job = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![job, limit as i64], run_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When the job was last considered, run or skipped (its fire time where it had one),
    /// and how that ended: fire times after it were missed, and so is a run a shutdown
    /// interrupted.
    pub fn last_run(&self, job: &str) -> Result<Option<(i64, RunOutcome)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT max(started_at, coalesce(scheduled_for, 0)), outcome FROM runs WHERE job = ?1
                 ORDER BY id DESC LIMIT 1",
                [job],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The job's history summed up.
    pub fn job_totals(&self, job: &str) -> Result<JobTotals> {
        let mut t = self.conn.query_row(
            "SELECT max(CASE WHEN outcome IN ('success', 'partial') THEN ended_at END),
                    count(CASE WHEN outcome NOT IN ('skipped', 'running') THEN 1 END),
                    count(CASE WHEN outcome = 'failed' THEN 1 END),
                    count(CASE WHEN outcome = 'skipped' THEN 1 END),
                    coalesce(sum(retries), 0), coalesce(sum(bytes_read), 0), coalesce(sum(bytes_uploaded), 0)
             FROM runs WHERE job = ?1",
            [job],
            |r| {
                Ok(JobTotals {
                    last_success_at: r.get(0)?,
                    runs: r.get(1)?,
                    failures: r.get(2)?,
                    skips: r.get(3)?,
                    retries: r.get(4)?,
                    bytes_read: r.get(5)?,
                    bytes_uploaded: r.get(6)?,
                    ..Default::default()
                })
            },
        )?;
        t.last_run = self
            .conn
            .query_row(
                "SELECT id, job, trigger, scheduled_for, started_at, ended_at, duration_ms, outcome, snapshot,
                        bytes_read, bytes_new, bytes_uploaded, retries, error
                 FROM runs WHERE job = ?1 AND outcome NOT IN ('skipped', 'running') ORDER BY id DESC LIMIT 1",
                [job],
                run_row,
            )
            .optional()?;
        t.lock_extensions = self.conn.query_row(
            "SELECT count(*) FROM events WHERE kind = 'lock-extended' AND job = ?1",
            [job],
            |r| r.get(0),
        )?;
        Ok(t)
    }

    pub fn event(&self, kind: &str, job: Option<&str>, detail: &str) -> Result<()> {
        insert_event(&self.conn, kind, job, detail)
    }
}

fn run_row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        job: r.get(1)?,
        trigger: r.get(2)?,
        scheduled_for: r.get(3)?,
        started_at: r.get(4)?,
        ended_at: r.get(5)?,
        duration_ms: r.get(6)?,
        outcome: r.get(7)?,
        snapshot: r.get(8)?,
        bytes_read: r.get(9)?,
        bytes_new: r.get(10)?,
        bytes_uploaded: r.get(11)?,
        retries: r.get(12)?,
        error: r.get(13)?,
    })
}

/// An audit row, on the connection or inside the caller's transaction.
/// Inserts a pack row and its chunks (a chunk already stored elsewhere keeps its first
/// location). Returns the pack's row id.
fn insert_pack(tx: &rusqlite::Transaction, pack: &StoredPack) -> Result<i64> {
    tx.execute(
        "INSERT INTO packs (hash, version, size, uploaded_at, lock_mode, retain_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            pack.hash,
            pack.version,
            pack.size,
            crate::time::now_secs(),
            pack.lock.map(|l| l.mode.as_str()),
            pack.lock.map(|l| l.until)
        ],
    )?;
    let pack_id = tx.last_insert_rowid();
    let mut st = tx.prepare_cached(
        // A chunk stored again because its pack was found damaged moves to the new pack.
        "INSERT INTO chunks (id, pack, offset, length, raw_length, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET pack = excluded.pack, offset = excluded.offset, length = excluded.length,
           raw_length = excluded.raw_length, flags = excluded.flags
         WHERE (SELECT damaged FROM packs WHERE id = chunks.pack) IS NOT NULL",
    )?;
    for b in pack.blobs {
        st.execute(params![&b.id.0[..], pack_id, b.offset, b.length, b.raw_length, b.flags])?;
    }
    Ok(pack_id)
}

fn insert_event(conn: &Connection, kind: &str, job: Option<&str>, detail: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO events (at, kind, job, detail) VALUES (?1, ?2, ?3, ?4)",
        params![crate::time::now_secs(), kind, job, detail],
    )?;
    Ok(())
}

/// The audit row of a lock extension.
fn lock_event(tx: &rusqlite::Transaction, job: &str, what: &str, lock: Retention) -> Result<()> {
    let detail = format!("{what} locked {} until {}", lock.mode.as_str(), crate::time::format_utc(lock.until));
    insert_event(tx, "lock-extended", Some(job), &detail)
}

fn lock_from(mode: Option<String>, until: Option<i64>) -> Option<Retention> {
    Some(Retention { mode: LockMode::parse(mode.as_deref()?)?, until: until? })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_catalog() -> (Catalog, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("coffer-cat-{}", crate::hex::random(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("catalog.sqlite");
        (Catalog::open(&path).unwrap(), path)
    }

    fn blob(n: u8) -> BlobEntry {
        BlobEntry { id: ChunkId([n; 32]), offset: u64::from(n) * 10, length: 10, raw_length: 20, flags: 1 }
    }

    #[test]
    fn run_history_of_an_older_catalog_survives_the_migration() {
        let dir = std::env::temp_dir().join(format!("coffer-cat-{}", crate::hex::random(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("catalog.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO runs (job, started_at, ended_at, outcome, bytes_read, error) VALUES ('a', 10, 20, 'failed', 5, 'boom')",
                [],
            )
            .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        let runs = cat.runs(Some("a"), 10).unwrap();
        assert_eq!(runs.len(), 1);
        let r = &runs[0];
        assert_eq!(
            (r.trigger.as_str(), r.outcome.as_str(), r.bytes_read, r.error.as_deref()),
            ("manual", "failed", 5, Some("boom"))
        );
        // The new outcomes are accepted; a stale `running` row is closed by the next start.
        cat.record_skip("a", 30, "busy").unwrap();
        let stale = cat.start_run("a", Trigger::Schedule, Some(40)).unwrap();
        cat.start_run("a", Trigger::CatchUp, None).unwrap();
        let rows = cat.runs(Some("a"), 10).unwrap();
        assert_eq!(rows.iter().find(|r| r.id == stale).unwrap().outcome, RunOutcome::Interrupted);
        assert_eq!(rows.iter().filter(|r| r.outcome == RunOutcome::Skipped).count(), 1);
        let totals = cat.job_totals("a").unwrap();
        assert_eq!((totals.failures, totals.skips, totals.runs), (1, 1, 2));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn packs_and_chunks_survive_reopen() {
        let (mut cat, path) = temp_catalog();
        let blobs = [blob(1), blob(2)];
        let id = cat
            .add_pack(&StoredPack { hash: "ab12", version: Some("v1"), size: 100, blobs: &blobs, lock: None })
            .unwrap();
        drop(cat);
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(cat.chunk_pack(&ChunkId([2; 32])).unwrap(), Some(id));
        assert_eq!(cat.chunk_pack(&ChunkId([3; 32])).unwrap(), None);
        let loc = cat.chunk_location(&ChunkId([2; 32])).unwrap().unwrap();
        assert_eq!((loc.pack_hash.as_str(), loc.pack_version.as_deref(), loc.offset), ("ab12", Some("v1"), 20));
    }

    #[test]
    fn a_failed_pack_transaction_leaves_no_chunk() {
        let (mut cat, _) = temp_catalog();
        let blobs = [blob(1)];
        cat.add_pack(&StoredPack { hash: "same", version: None, size: 1, blobs: &blobs, lock: None }).unwrap();
        // Same hash again violates UNIQUE: the whole transaction must roll back.
        let other = [blob(9)];
        assert!(cat.add_pack(&StoredPack { hash: "same", version: None, size: 1, blobs: &other, lock: None }).is_err());
        assert_eq!(cat.chunk_pack(&ChunkId([9; 32])).unwrap(), None);
    }

    #[test]
    fn file_cache_is_replaced_per_snapshot() {
        let (mut cat, _) = temp_catalog();
        let f = CachedFile {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            inode: 4,
            chunks: vec![ChunkId([7; 32])],
            content_type: None,
        };
        let snap = |id: &str| SnapshotRow {
            id: id.into(),
            job: "j".into(),
            host: "h".into(),
            created_at: 1,
            state: "complete".into(),
            record_version: None,
            source: "path /x".into(),
            files: 1,
            bytes: 1,
            bytes_new: 0,
            bytes_uploaded: 0,
            errors: 0,
            retain_until: None,
            lock_mode: None,
            contents: None,
        };
        cat.complete_snapshot(&snap("s1"), &HashSet::new(), vec![Ok((b"a".to_vec(), f.clone()))], |_| true, None)
            .unwrap();
        assert_eq!(cat.cached_file("j", b"a").unwrap(), Some(f.clone()));
        // `a` unchanged (no row given, kept), `b` new; then `a` gone.
        cat.complete_snapshot(&snap("s2"), &HashSet::new(), vec![Ok((b"b".to_vec(), f.clone()))], |_| true, None)
            .unwrap();
        assert_eq!(cat.cached_file("j", b"a").unwrap(), Some(f.clone()));
        cat.complete_snapshot(&snap("s3"), &HashSet::new(), std::iter::empty(), |p| p == b"b", None).unwrap();
        assert_eq!(cat.cached_file("j", b"a").unwrap(), None);
        assert_eq!(cat.cached_file("j", b"b").unwrap(), Some(f.clone()));
        assert_eq!(cat.find_snapshot("j", "latest").unwrap().id, "s3");
        assert_eq!(cat.find_snapshot("j", "s1").unwrap().id, "s1");
        assert!(cat.find_snapshot("j", "s").is_err());
    }
}
