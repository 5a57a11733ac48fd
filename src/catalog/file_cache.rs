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
}

impl Catalog {
    pub fn cached_file(&self, job: &str, path: &[u8]) -> Result<Option<CachedFile>> {
        let mut st = self.conn.prepare_cached(
            "SELECT size, mtime_ns, ctime_ns, inode, chunks, content_type, xattrs FROM file_cache
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
                })
            })
            .optional()?)
    }
}
