//! The incremental fast path: each job's files as its last snapshot stored them.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub chunks: Vec<ChunkId>,
    /// The pack of each chunk when the row was written; `None` where the row does not
    /// say (look the chunks up).
    pub packs: Option<Vec<i64>>,
    pub content_type: Option<String>,
    /// Its extended attributes; `None` where the row does not say (read them again).
    pub xattrs: Option<Vec<crate::format::entry::Xattr>>,
    /// What the tripwire kept of its content (`src/tripwire/traits.rs`); `None`: unknown.
    pub traits: Option<u16>,
}

const COLUMNS: &str = "size, mtime_ns, ctime_ns, inode, chunks, packs, content_type, xattrs, traits, packs_check";

/// A row of `COLUMNS`, read as input: what does not parse is as good as unknown.
fn cached_file(r: &rusqlite::Row, from: usize) -> rusqlite::Result<CachedFile> {
    let blob = r.get_ref(from + 4)?.as_blob()?;
    let size = r.get(from)?;
    let check = r.get_ref(from + 9)?.as_blob_or_null().ok().flatten();
    // Packs are trusted only with the check they were written with.
    let packs = match r.get_ref(from + 5)? {
        rusqlite::types::ValueRef::Blob(b) if check == Some(&packs_check(size, blob, b)[..]) => Some(b),
        _ => None,
    };
    Ok(CachedFile {
        size,
        mtime_ns: r.get(from + 1)?,
        ctime_ns: r.get(from + 2)?,
        inode: r.get(from + 3)?,
        chunks: blob.chunks_exact(32).map(|c| ChunkId(c.try_into().unwrap_or([0; 32]))).collect(),
        packs: packs
            .map(|p| p.chunks_exact(4).map(|p| i64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]]))).collect()),
        content_type: r.get(from + 6)?,
        xattrs: match r.get_ref(from + 7)?.as_str_or_null()? {
            // What nearly every row holds, without the parser.
            Some("[]") => Some(Vec::new()),
            other => other.and_then(|j| serde_json::from_str(j).ok()),
        },
        traits: r.get::<_, Option<i64>>(from + 8)?.and_then(|t| u16::try_from(t).ok()),
    })
}

/// The check of a row's size, chunk ids and packs column.
pub(super) fn packs_check(size: u64, chunks: &[u8], packs: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes()).update(&(chunks.len() as u64).to_le_bytes()).update(chunks).update(packs);
    h.finalize().as_bytes()[..16].try_into().expect("16 bytes")
}

/// The packs column of a row: each pack's row id in 4 bytes (one that does not fit is
/// written as 0, which no pack has, so the row's chunks are looked up).
pub(super) fn packs_column(packs: &[i64]) -> Vec<u8> {
    packs.iter().flat_map(|p| u32::try_from(*p).unwrap_or(0).to_le_bytes()).collect()
}

/// The file cache read a batch of rows at a time, for a walk: it asks for one
/// directory's files in name order, which are neighbours in the table, so one query
/// serves a few hundred lookups instead of one each.
#[derive(Default)]
pub struct CacheBatch {
    rows: Vec<(Vec<u8>, CachedFile)>,
    /// The paths the rows cover: from the one asked for to the last row (to the end
    /// of the table when the batch is not full).
    from: Option<Vec<u8>>,
    to: Option<Vec<u8>>,
}

impl CacheBatch {
    const ROWS: usize = 256;

    fn covers(&self, path: &[u8]) -> bool {
        self.from.as_deref().is_some_and(|from| from <= path) && self.to.as_deref().is_none_or(|to| path <= to)
    }
}

impl Catalog {
    pub fn cached_file(&self, job: &str, path: &[u8]) -> Result<Option<CachedFile>> {
        let mut st =
            self.conn.prepare_cached(&format!("SELECT {COLUMNS} FROM file_cache WHERE job = ?1 AND path = ?2"))?;
        Ok(st.query_row(params![job, path], |r| cached_file(r, 0)).optional()?)
    }

    /// As [`Catalog::cached_file`], through `batch`.
    pub fn cached_file_in(&self, batch: &mut CacheBatch, job: &str, path: &[u8]) -> Result<Option<CachedFile>> {
        if !batch.covers(path) {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT path, {COLUMNS} FROM file_cache WHERE job = ?1 AND path >= ?2 ORDER BY path LIMIT ?3"
            ))?;
            let rows = st.query_map(params![job, path, CacheBatch::ROWS], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, cached_file(r, 1)?))
            })?;
            batch.rows = rows.collect::<rusqlite::Result<_>>()?;
            batch.from = Some(path.to_vec());
            batch.to = match batch.rows.len() == CacheBatch::ROWS {
                true => batch.rows.last().map(|(p, _)| p.clone()),
                false => None,
            };
        }
        Ok(match batch.rows.binary_search_by(|(p, _)| p.as_slice().cmp(path)) {
            Ok(i) => Some(batch.rows[i].1.clone()),
            Err(_) => None,
        })
    }

    /// The tripwire's traits of a file of the job's last snapshot, if it has them.
    pub fn cached_traits(&self, job: &str, path: &[u8]) -> Result<Option<u16>> {
        let mut st = self.conn.prepare_cached("SELECT traits FROM file_cache WHERE job = ?1 AND path = ?2")?;
        let traits: Option<Option<i64>> = st.query_row(params![job, path], |r| r.get(0)).optional()?;
        Ok(traits.flatten().and_then(|t| u16::try_from(t).ok()))
    }

    /// Calls `each` with the path of every file of the job's last snapshot, and returns
    /// how many there are.
    pub fn each_cached_path(&self, job: &str, mut each: impl FnMut(&[u8])) -> Result<u64> {
        let mut st = self.conn.prepare("SELECT path FROM file_cache WHERE job = ?1")?;
        let mut rows = st.query([job])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            each(row.get_ref(0)?.as_blob()?);
            n += 1;
        }
        Ok(n)
    }

    /// Whether every chunk of a cached file is stored, by the packs its row names: each
    /// still in the catalog (a pack's chunks leave it only with it) and not skipped.
    /// `known`: the catalog's packs when the run began (a row names no later one).
    pub fn cached_packs_usable(&self, file: &CachedFile, known: &HashSet<i64>) -> bool {
        let skipped = self.skipped.borrow();
        file.packs.as_ref().is_some_and(|packs| {
            packs.len() == file.chunks.len() && packs.iter().all(|p| known.contains(p) && !skipped.contains(p))
        })
    }

    /// Every pack's row id.
    pub fn pack_ids(&self) -> Result<HashSet<i64>> {
        let mut st = self.conn.prepare("SELECT id FROM packs")?;
        Ok(st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }
}
