//! The seam where a per-file step watches a backup: every file the run puts into its
//! snapshot, what the last snapshot knew of it, and the bytes of those it reads. The
//! tripwire (`src/tripwire`) is one such step. Here, below both the backup and its
//! steps, so that neither needs the other's insides.

use crate::catalog::CachedFile;
use crate::format::entry::Entry;

/// A step that watches every file a run puts into its snapshot, beside the others and
/// without changing what is stored: the seam for per-file checks (the tripwire for
/// anomalous change is one). It runs on the reader's thread: keep it cheap.
pub trait Observer: Send {
    /// A file (or a command's output, or a bucket's object) that goes into the snapshot,
    /// its chunk list complete, and what the last snapshot knew of it.
    fn file(&mut self, entry: &Entry, change: Change<'_>);

    /// A chunk of a file that was read (not reused), at `offset` in it (0: the next file
    /// begins), before dedup: what a step that looks at content sees.
    fn chunk(&mut self, _offset: u64, _data: &[u8]) {}
}

/// What the last snapshot knew of a file the run stores.
#[derive(Clone, Copy)]
pub enum Change<'a> {
    /// The same file: reused without reading it.
    Unchanged,
    /// Read again: its row in the file cache (the last snapshot's version).
    Modified(&'a CachedFile),
    /// Not in the last snapshot.
    Added,
}
