//! The catalog: a SQLite database (WAL) in the state directory that records what the
//! target holds. It is only ever told about an object after the server acknowledged it,
//! and every change that spans rows is one transaction, so it can never claim a chunk is
//! stored when it is not. Schema: `migrations/*.sql`, applied in order by `user_version`.

mod expiry;
mod file_cache;
mod keysets;
mod packs;
mod recovery;
mod repo;
mod runs;
mod snapshots;
mod stats;
mod targets;
mod tripwire;

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, params};

use crate::chunk_id::ChunkId;
use crate::chunker::ChunkerParams;
use crate::format::pack::BlobEntry;
use crate::fsutil::owner_of;
use crate::run_outcome::RunOutcome;
use crate::store::{LockMode, Retention};

pub use file_cache::{CacheBatch, CachedFile};
pub use keysets::KeySetRow;
pub use packs::{ChunkLoc, PackLock, PackRow, StoredPack};
pub use repo::{NewTarget, RepoRow};
pub use runs::{JobTotals, RunKind, RunReport, RunRow, RunStart, Trigger};
pub use snapshots::{Filter, SnapshotRow, SnapshotState};
pub use stats::{OnTarget, Stored};
pub use targets::{StoredCopy, TargetId, TargetRow, ensure_same_url};
pub use tripwire::JudgedRun;

/// Stores an enum with `as_str` and `parse` as its text in a column. The catalog is
/// input too: a text the enum does not know is an error, not a guess.
macro_rules! text_column {
    ($t:ty, $what:literal) => {
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $t {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let text = value.as_str()?;
                <$t>::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(format!(concat!("unknown ", $what, " `{}`"), text).into())
                })
            }
        }
    };
}
pub(crate) use text_column;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_locks.sql"),
    include_str!("../../migrations/0003_runs.sql"),
    include_str!("../../migrations/0004_contents.sql"),
    include_str!("../../migrations/0005_damaged.sql"),
    include_str!("../../migrations/0006_damaged_index.sql"),
    include_str!("../../migrations/0007_targets.sql"),
    include_str!("../../migrations/0008_xattrs.sql"),
    include_str!("../../migrations/0009_pin.sql"),
    include_str!("../../migrations/0010_keysets.sql"),
    include_str!("../../migrations/0011_scrub.sql"),
    include_str!("../../migrations/0012_run_kind.sql"),
    include_str!("../../migrations/0013_tripwire.sql"),
    include_str!("../../migrations/0014_tags.sql"),
    include_str!("../../migrations/0015_cache_packs.sql"),
    include_str!("../../migrations/0016_unindexed.sql"),
];

pub struct Catalog {
    conn: Connection,
    /// The packs the dedup lookup skips, as of the last read transaction begun: found
    /// damaged, or encrypted to a key set that lacks a key backups encrypt to now. Kept
    /// in memory instead of asked per chunk (few or none in steady state).
    skipped: std::cell::RefCell<HashSet<i64>>,
}

/// An audit row, on the connection or inside the caller's transaction.
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

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog> {
        let ctx = || format!("catalog {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::state_dir::StateDir(dir).secure()?;
        }
        let conn = Connection::open(path).with_context(ctx)?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).with_context(ctx)?;
        conn.pragma_update(None, "journal_mode", "WAL").with_context(ctx)?;
        conn.pragma_update(None, "synchronous", "FULL").with_context(ctx)?;
        conn.pragma_update(None, "foreign_keys", "ON").with_context(ctx)?;
        // Reads through a bounded memory map instead of a read syscall per page: a backup
        // looks up every new chunk. Memory-mapped pages are the page cache's, yet they
        // count in the process's RSS, once per connection (a backup holds three). On a
        // million small files, 64 MiB cost 80 MiB more RSS than 16 MiB, for no speed.
        conn.pragma_update(None, "mmap_size", 16 << 20).with_context(ctx)?;
        let mut cat = Catalog { conn, skipped: Default::default() };
        cat.migrate().with_context(ctx)?;
        cat.load_skipped().with_context(ctx)?;
        Ok(cat)
    }

    /// The catalog of an initialised state directory, with a hint when there is none.
    pub fn open_existing(state_dir: &Path) -> Result<Catalog> {
        let path = crate::state_dir::StateDir(state_dir).catalog();
        match std::fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("state directory {} holds no catalog; run `coffer init` first", state_dir.display())
            }
            // Made by another user (`init` as root, the daemon as a service user): say so.
            Err(e) => bail!("state directory {}: {e} ({})", state_dir.display(), owner_of(state_dir)),
        }
        let rw = rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK;
        if rustix::fs::access(&path, rw).is_err() {
            bail!("permission denied: catalog {} ({})", path.display(), owner_of(&path));
        }
        Catalog::open(&path)
    }

    /// The catalog and repository of an initialised state directory.
    pub fn open_repo(state_dir: &Path) -> Result<(Catalog, RepoRow)> {
        let catalog = Catalog::open_existing(state_dir)?;
        let repo = catalog.repo()?.with_context(|| {
            format!("the catalog in {} has no repository; run `coffer init` first", state_dir.display())
        })?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete snapshot of job `j`, empty.
    pub(super) fn snapshot_row(id: &str, retain_until: Option<i64>) -> SnapshotRow {
        SnapshotRow {
            id: id.into(),
            job: "j".into(),
            host: "h".into(),
            created_at: 1,
            state: SnapshotState::Complete,
            source: "path /x".into(),
            files: 0,
            bytes: 0,
            bytes_new: 0,
            bytes_uploaded: 0,
            errors: 0,
            retain_until,
            contents: None,
            keyset: 0,
            tags: vec![],
        }
    }

    pub(super) fn temp_catalog() -> (Catalog, std::path::PathBuf) {
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
        cat.record_skip(&RunStart::backup("a", Trigger::Schedule, Some(30)), "busy").unwrap();
        let stale = cat.start_run(&RunStart::backup("a", Trigger::Schedule, Some(40))).unwrap();
        cat.start_run(&RunStart::backup("a", Trigger::CatchUp, None)).unwrap();
        let rows = cat.runs(Some("a"), 10).unwrap();
        assert_eq!(rows.iter().find(|r| r.id == stale).unwrap().outcome, RunOutcome::Interrupted);
        assert_eq!(rows.iter().filter(|r| r.outcome == RunOutcome::Skipped).count(), 1);
        let totals = cat.job_totals("a").unwrap();
        assert_eq!((totals.failures, totals.skips, totals.runs), (1, 1, 2));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_single_target_catalog_becomes_the_default_target_with_every_version_and_lock() {
        let dir = std::env::temp_dir().join(format!("coffer-cat-{}", crate::hex::random(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("catalog.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..6] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            conn.execute_batch(
                "INSERT INTO repo (id, repo_id, target_url, record_version, chunk_min, chunk_avg, chunk_max, created_at,
                                   record_lock_mode, record_retain_until) VALUES (1, 'r', 's3://b/p', 'rv', 1, 2, 4, 5,
                                   'COMPLIANCE', 100);
                 INSERT INTO packs (id, hash, version, size, uploaded_at, lock_mode, retain_until)
                     VALUES (7, 'ab', 'pv', 10, 6, 'COMPLIANCE', 200);
                 INSERT INTO snapshots (seq, id, job, host, created_at, state, record_version, source, files, bytes,
                                        bytes_new, bytes_uploaded, errors, retain_until, lock_mode)
                     VALUES (1, 's1', 'j', 'h', 7, 'complete', 'sv', 'path /x', 1, 1, 1, 1, 0, 300, 'COMPLIANCE');
                 INSERT INTO runs (job, started_at, outcome) VALUES ('j', 1, 'success');",
            )
            .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        let targets = cat.targets().unwrap();
        assert_eq!(targets.len(), 1);
        let t = &targets[0];
        assert_eq!((t.name.as_str(), t.url.as_str()), ("default", "s3://b/p"));
        let record = t.record.clone().unwrap();
        assert_eq!((record.version.as_deref(), record.lock.map(|l| l.until)), (Some("rv"), Some(100)));
        let pack = cat.pack_copy(t.id, 7).unwrap().unwrap();
        assert_eq!((pack.version.as_deref(), pack.lock.map(|l| l.until)), (Some("pv"), Some(200)));
        let (held_by, copy) = cat.snapshot_holders("s1").unwrap().remove(0);
        assert_eq!((held_by, copy.version.as_deref()), (t.id, Some("sv")));
        assert_eq!(copy.lock.map(|l| (l.mode, l.until)), Some((LockMode::Compliance, 300)));
        assert_eq!(cat.runs(Some("j"), 10).unwrap().len(), 1, "the run history survives");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn packs_and_chunks_survive_reopen() {
        let (mut cat, path) = temp_catalog();
        let blobs = [blob(1), blob(2)];
        let (a, b) = (cat.add_target("a", "file:///a").unwrap(), cat.add_target("b", "file:///b").unwrap());
        let copies = [(a, StoredCopy { version: Some("v1".into()), lock: None })];
        let id =
            cat.add_pack(&StoredPack { hash: "ab12", size: 100, keyset: 0, blobs: &blobs, copies: &copies }).unwrap();
        cat.index_chunks().unwrap();
        drop(cat);
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(cat.chunk_pack(&ChunkId([2; 32])).unwrap(), Some(id));
        assert_eq!(cat.chunk_pack(&ChunkId([3; 32])).unwrap(), None);
        let loc = cat.chunk_location(a, &ChunkId([2; 32]), None).unwrap().unwrap();
        assert_eq!((loc.pack_hash.as_str(), loc.pack_version.as_deref(), loc.offset), ("ab12", Some("v1"), 20));
        // Another target's copy has its own version; one without a copy has none.
        assert_eq!(cat.chunk_location(b, &ChunkId([2; 32]), None).unwrap().unwrap().pack_version, None);
        cat.add_pack_copy(b, id, &StoredCopy { version: Some("v2".into()), lock: None }).unwrap();
        assert_eq!(
            cat.chunk_location(b, &ChunkId([2; 32]), None).unwrap().unwrap().pack_version.as_deref(),
            Some("v2")
        );
        assert_eq!(cat.pack_holders(id).unwrap().len(), 2);
        // Pruned from one target, the pack stays for the other; from both, it goes.
        cat.remove_pack(a, id, "ab12").unwrap();
        assert_eq!(cat.chunk_pack(&ChunkId([2; 32])).unwrap(), Some(id));
        cat.remove_pack(b, id, "ab12").unwrap();
        assert_eq!(cat.chunk_pack(&ChunkId([2; 32])).unwrap(), None);
    }

    #[test]
    fn unindexed_chunks_are_found_once_indexed_and_a_damaged_list_is_named() {
        let (mut cat, _) = temp_catalog();
        let (first, second) = ([blob(5), blob(1)], [blob(3)]);
        let p1 = cat.add_pack(&StoredPack { hash: "p1", size: 9, keyset: 0, blobs: &first, copies: &[] });
        let p2 = cat.add_pack(&StoredPack { hash: "p2", size: 9, keyset: 0, blobs: &second, copies: &[] });
        let (p1, p2) = (p1.unwrap(), p2.unwrap());
        // Recorded, not yet where the dedup lookup looks; the pack's own list is there.
        assert_eq!(cat.chunk_pack(&ChunkId([1; 32])).unwrap(), None);
        assert_eq!(cat.pack_chunks(p1).unwrap(), first.to_vec());
        assert_eq!(cat.index_chunks().unwrap(), 3);
        assert_eq!(cat.chunk_pack(&ChunkId([1; 32])).unwrap(), Some(p1));
        assert_eq!(cat.chunk_pack(&ChunkId([3; 32])).unwrap(), Some(p2));
        let mut listed = cat.pack_chunks(p1).unwrap();
        listed.sort_by_key(|b| b.offset);
        assert_eq!(listed, [blob(1), blob(5)], "indexed, the pack's list is the same");
        assert_eq!(cat.index_chunks().unwrap(), 0, "nothing is indexed twice");

        // A list cut short: every reader of it names the pack, and nothing moves.
        let p3 = cat.add_pack(&StoredPack { hash: "p3", size: 9, keyset: 0, blobs: &[blob(7)], copies: &[] });
        let p3 = p3.unwrap();
        cat.conn.execute("UPDATE unindexed SET blobs = substr(blobs, 2) WHERE pack = ?1", [p3]).unwrap();
        for e in [cat.index_chunks().unwrap_err(), cat.pack_chunks(p3).unwrap_err()] {
            assert!(e.to_string().contains(&format!("pack row {p3} is damaged")), "{e:#}");
        }
        assert_eq!(cat.chunk_pack(&ChunkId([7; 32])).unwrap(), None);
    }

    #[test]
    fn a_failed_pack_transaction_leaves_no_chunk() {
        let (mut cat, _) = temp_catalog();
        let blobs = [blob(1)];
        cat.add_pack(&StoredPack { hash: "same", size: 1, keyset: 0, blobs: &blobs, copies: &[] }).unwrap();
        // Same hash again violates UNIQUE: the whole transaction must roll back.
        let other = [blob(9)];
        assert!(cat.add_pack(&StoredPack { hash: "same", size: 1, keyset: 0, blobs: &other, copies: &[] }).is_err());
        cat.index_chunks().unwrap();
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
            packs: None,
            content_type: None,
            xattrs: Some(vec![crate::format::entry::Xattr { name: b"user.a".to_vec(), value: vec![0, 255] }]),
            traits: Some(0x4101),
        };
        // A snapshot with the rows of `rows` (path, file) and the paths `current` says.
        let complete = |cat: &mut Catalog, id: &str, rows: &[&[u8]], current: fn(&[u8]) -> bool| {
            let snap = SnapshotRow { files: 1, bytes: 1, ..snapshot_row(id, None) };
            let rows = rows.iter().map(|p| Ok((p.to_vec(), f.clone())));
            cat.complete_snapshot(&snap, &[], &HashSet::new(), rows, |p| Ok(current(p)), None).unwrap();
        };
        // Written, a row names each chunk's pack (0: in none).
        let written = CachedFile { packs: Some(vec![0]), ..f.clone() };
        complete(&mut cat, "s1", &[b"a"], |_| true);
        assert_eq!(cat.cached_file("j", b"a").unwrap(), Some(written.clone()));
        // `a` unchanged (no row given, kept), `b` new; then `a` gone.
        complete(&mut cat, "s2", &[b"b"], |_| true);
        assert_eq!(cat.cached_file("j", b"a").unwrap(), Some(written.clone()));
        complete(&mut cat, "s3", &[], |p| p == b"b");
        assert_eq!(cat.cached_file("j", b"a").unwrap(), None);
        assert_eq!(cat.cached_file("j", b"b").unwrap(), Some(written.clone()));
        assert_eq!(cat.find_snapshot("j", "latest").unwrap().id, "s3");
        assert_eq!(cat.find_snapshot("j", "s1").unwrap().id, "s1");
        assert!(cat.find_snapshot("j", "s").is_err());
        // Chunks in two packs and in none, out of id order and repeated: each gets its own.
        let p1 = cat.add_pack(&StoredPack { hash: "p1", size: 1, keyset: 0, blobs: &[blob(7)], copies: &[] }).unwrap();
        let p2 = cat.add_pack(&StoredPack { hash: "p2", size: 1, keyset: 0, blobs: &[blob(3)], copies: &[] }).unwrap();
        cat.index_chunks().unwrap();
        let ids = [9, 7, 3, 7].map(|n| ChunkId([n; 32])).to_vec();
        let mixed = CachedFile { chunks: ids, ..f.clone() };
        let snap = SnapshotRow { files: 2, bytes: 1, ..snapshot_row("s4", None) };
        let rows = [(b"b".to_vec(), f.clone()), (b"c".to_vec(), mixed.clone())].map(Ok);
        cat.complete_snapshot(&snap, &[], &HashSet::new(), rows, |_| Ok(true), None).unwrap();
        assert_eq!(cat.cached_file("j", b"b").unwrap().unwrap().packs, Some(vec![p1]));
        assert_eq!(cat.cached_file("j", b"c").unwrap().unwrap().packs, Some(vec![0, p1, p2, p1]));
    }

    #[test]
    fn the_file_cache_read_in_batches_answers_as_row_by_row() {
        let (mut cat, _) = temp_catalog();
        let f = |n: u64| CachedFile {
            size: n,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: n,
            chunks: vec![ChunkId([n as u8; 32])],
            packs: None,
            content_type: None,
            xattrs: Some(Vec::new()),
            traits: None,
        };
        // A directory of files with a subdirectory between them, as a walk meets them:
        // the subdirectory's files come after the directory's own.
        let mut walk: Vec<Vec<u8>> = (0..600).map(|i| format!("d/f{i:03}").into_bytes()).collect();
        walk.insert(300, b"d/f2990-gone".to_vec());
        walk.extend((0..300).map(|i| format!("d/f150/x{i:03}").into_bytes()));
        let rows: Vec<Result<(Vec<u8>, CachedFile)>> = (walk.iter().enumerate())
            .filter(|(_, p)| !p.ends_with(b"gone"))
            .map(|(n, p)| Ok((p.clone(), f(n as u64))))
            .collect();
        let snap = SnapshotRow { files: rows.len() as u64, ..snapshot_row("s1", None) };
        cat.complete_snapshot(&snap, &[], &HashSet::new(), rows, |_| Ok(true), None).unwrap();
        let mut batch = CacheBatch::default();
        for path in walk.iter().chain([&b"e/after".to_vec(), &b"a/before".to_vec()]) {
            let one = cat.cached_file("j", path).unwrap();
            assert_eq!(cat.cached_file_in(&mut batch, "j", path).unwrap(), one, "{}", String::from_utf8_lossy(path));
            assert_eq!(one.is_some(), !path.ends_with(b"gone") && path.starts_with(b"d/"));
        }
    }

    #[test]
    fn tags_pick_snapshots_and_a_row_that_does_not_read_has_none() {
        let (mut cat, _) = temp_catalog();
        let tagged = |id: &str, tags: &[&str]| SnapshotRow {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..snapshot_row(id, None)
        };
        for snap in [tagged("s1", &["db", "weekly"]), tagged("s2", &[]), tagged("s3", &["weekly"])] {
            cat.complete_snapshot(&snap, &[], &HashSet::new(), std::iter::empty(), |_| Ok(true), None).unwrap();
        }
        let filter = |tags: &[&str]| Filter { tags: tags.iter().map(|t| t.to_string()).collect(), host: None };
        assert_eq!(cat.find_snapshot_where("j", "latest", &filter(&["weekly"])).unwrap().id, "s3");
        assert_eq!(cat.find_snapshot_where("j", "latest", &filter(&["weekly", "db"])).unwrap().id, "s1");
        let e = cat.find_snapshot_where("j", "latest", &filter(&["monthly"])).unwrap_err().to_string();
        assert!(e.contains("with tag monthly"), "{e}");
        assert!(cat.find_snapshot_where("j", "s2", &filter(&["db"])).is_err(), "a prefix is picked among the tagged");
        let elsewhere = Filter { host: Some("elsewhere".into()), ..Filter::default() };
        assert!(cat.find_snapshot_where("j", "latest", &elsewhere).is_err());
        cat.conn.execute("UPDATE snapshots SET tags = 'not json' WHERE id = 's1'", []).unwrap();
        assert!(cat.snapshots(Some("j")).unwrap()[0].tags.is_empty());
    }
}
