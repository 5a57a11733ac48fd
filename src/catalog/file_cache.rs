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
    pub content_type: Option<String>,
    /// Its extended attributes; `None` where the row does not say (read them again).
    pub xattrs: Option<Vec<crate::format::entry::Xattr>>,
    /// What the tripwire kept of its content (`src/tripwire/traits.rs`); `None`: unknown.
    pub traits: Option<u16>,
}

impl Catalog {
    pub fn cached_file(&self, job: &str, path: &[u8]) -> Result<Option<CachedFile>> {
        let mut st = self.conn.prepare_cached(
            "SELECT size, mtime_ns, ctime_ns, inode, chunks, content_type, xattrs, traits FROM file_cache
             WHERE job = ?1 AND path = ?2",
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
                    // A value that does not parse is as good as none: read them again.
                    xattrs: r.get::<_, Option<String>>(6)?.and_then(|j| serde_json::from_str(&j).ok()),
                    // Out of range is as good as unknown.
                    traits: r.get::<_, Option<i64>>(7)?.and_then(|t| u16::try_from(t).ok()),
                })
            })
            .optional()?)
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
}
