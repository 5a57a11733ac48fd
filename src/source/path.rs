//! A directory tree as a source: a depth-first walk in bytewise name order (so two walks
//! of the same tree give the same entry stream), with exclude patterns.
//!
//! Regular files, directories and symlinks are backed up; sockets, FIFOs and device
//! nodes are skipped with a warning. A directory or file that cannot be read is
//! reported to the caller and the walk goes on.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::format::entry::{Entry, Kind};

/// What the walk found at one path.
pub enum Found {
    Dir(Entry),
    /// A regular file: its entry (chunks still empty) and where to read it.
    File(Entry, PathBuf),
    Symlink(Entry),
}

/// Exclude patterns: a pattern with a `/` matches the path relative to the source root,
/// one without matches any single name (like `.gitignore`).
pub struct Excludes {
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for p in patterns {
            let trimmed = p.trim_start_matches('/').trim_end_matches('/');
            let glob = GlobBuilder::new(trimmed)
                .literal_separator(true)
                .build()
                .with_context(|| format!("bad exclude pattern `{p}`"))?;
            if p.trim_end_matches('/').contains('/') {
                by_path.add(glob)
            } else {
                by_name.add(glob)
            };
        }
        Ok(Excludes { by_name: by_name.build()?, by_path: by_path.build()? })
    }

    fn excluded(&self, rel: &Path, name: &std::ffi::OsStr) -> bool {
        self.by_name.is_match(Path::new(name)) || self.by_path.is_match(rel)
    }
}

/// Walks `root`, calling `visit` for every entry in order and `problem` for every path
/// that could not be read (the path relative to the root, and why).
pub fn walk(
    root: &Path,
    excludes: &Excludes,
    mut visit: impl FnMut(Found) -> Result<()>,
    mut problem: impl FnMut(&Path, String),
) -> Result<()> {
    let meta = std::fs::metadata(root).with_context(|| format!("source directory {}", root.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("source {} is not a directory", root.display());
    }
    // Stack of (absolute path, relative path) still to list; children pushed in reverse
    // order so they pop in sorted order.
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(root.to_path_buf(), PathBuf::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let mut names: Vec<std::ffi::OsString> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                problem(&rel_dir, format!("cannot list directory: {e}"));
                continue;
            }
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut subdirs = Vec::new();
        for name in names {
            let abs = dir.join(&name);
            let rel = rel_dir.join(&name);
            if excludes.excluded(&rel, &name) {
                continue;
            }
            let m = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    problem(&rel, format!("cannot stat: {e}"));
                    continue;
                }
            };
            let ft = m.file_type();
            let mut entry = entry_from(&rel, &m);
            if ft.is_dir() {
                entry.kind = Kind::Dir;
                entry.size = 0;
                visit(Found::Dir(entry))?;
                subdirs.push((abs, rel));
            } else if ft.is_file() {
                visit(Found::File(entry, abs))?;
            } else if ft.is_symlink() {
                match std::fs::read_link(&abs) {
                    Ok(t) => {
                        entry.kind = Kind::Symlink;
                        entry.target = Some(t.as_os_str().as_bytes().to_vec());
                        visit(Found::Symlink(entry))?;
                    }
                    Err(e) => problem(&rel, format!("cannot read link: {e}")),
                }
            } else {
                tracing::warn!(path = %rel.display(), "skipping special file (socket, FIFO or device)");
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

fn entry_from(rel: &Path, m: &std::fs::Metadata) -> Entry {
    Entry {
        path: rel.as_os_str().as_bytes().to_vec(),
        kind: Kind::File,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ino: m.ino(),
        size: m.size(),
        target: None,
        content_type: None,
        chunks: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_is_sorted_and_excludes_apply() {
        let root = std::env::temp_dir().join(format!("coffer-walk-{}", crate::hex::random(6)));
        for d in ["b/c", "a", "cache/x", "keep/cache"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["b/c/f.txt", "b/z.tmp", "a/1", "cache/x/y", "keep/cache/k", "top"] {
            std::fs::write(root.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("top", root.join("link")).unwrap();
        let ex = Excludes::new(&["*.tmp".into(), "/cache".into(), "keep/cache/k".into()]).unwrap();
        let mut seen = Vec::new();
        walk(
            &root,
            &ex,
            |f| {
                let (kind, e) = match f {
                    Found::Dir(e) => ("d", e),
                    Found::File(e, _) => ("f", e),
                    Found::Symlink(e) => ("l", e),
                };
                seen.push(format!("{kind} {}", String::from_utf8_lossy(&e.path)));
                Ok(())
            },
            |p, e| panic!("{}: {e}", p.display()),
        )
        .unwrap();
        // "/cache" has a slash, so it is a root-relative path pattern; keep/cache stays.
        assert_eq!(seen, ["d a", "d b", "d keep", "l link", "f top", "f a/1", "d b/c", "f b/c/f.txt", "d keep/cache"]);
    }
}
