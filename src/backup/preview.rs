//! `backup --dry-run`: what a run now would read, from a walk of the source and the
//! catalog's file cache, without reading a file or writing anything. On a first backup
//! it is the estimate of the whole read.

use anyhow::Result;

use crate::catalog::Catalog;
use crate::config::{Config, Job};
use crate::format::entry::Entry;
use crate::source::path::{Found, unchanged, walk};

/// Why a file would be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// Not in the last snapshot.
    New,
    /// Its size, times or inode differ from the last snapshot's.
    Changed,
}

/// What the walk found, summed up.
#[derive(Debug, Default, serde::Serialize)]
pub struct WouldRead {
    pub files: u64,
    pub bytes: u64,
    /// Files the run would take from the last snapshot without reading them.
    pub unchanged_files: u64,
    pub unchanged_bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Paths the walk could not read (the run would name them too).
    pub problems: Vec<String>,
}

/// Walks the job's source as a run would, telling `each` every file it would read and
/// why. `None` for a source that cannot be walked ahead of its run (git, a command, a
/// bucket).
pub fn would_read(
    cfg: &Config,
    job: &Job,
    catalog: &Catalog,
    mut each: impl FnMut(&Entry, Reason) -> Result<()>,
) -> Result<Option<WouldRead>> {
    let Some(trees) = job.source.trees(&super::context(cfg, job)) else { return Ok(None) };
    let mut read = WouldRead::default();
    for tree in trees? {
        let mut problems = Vec::new();
        let visit = |found: Found| -> Result<()> {
            match found {
                Found::Dir(_) => read.dirs += 1,
                Found::Symlink(_) => read.symlinks += 1,
                Found::File(e, _) => match catalog.cached_file(&job.name, &e.path)? {
                    Some(c) if unchanged(&c, &e) => {
                        (read.unchanged_files, read.unchanged_bytes) =
                            (read.unchanged_files + 1, read.unchanged_bytes + e.size)
                    }
                    cached => {
                        (read.files, read.bytes) = (read.files + 1, read.bytes + e.size);
                        each(&e, if cached.is_some() { Reason::Changed } else { Reason::New })?;
                    }
                },
            }
            Ok(())
        };
        walk(&tree.path, &tree.under, &tree.excludes, visit, |rel, why| {
            problems.push(format!("{}: {why}", rel.display()))
        })?;
        read.problems.extend(problems);
    }
    Ok(Some(read))
}
