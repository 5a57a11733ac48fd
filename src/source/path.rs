//! A directory tree as a source: a depth-first walk in bytewise name order (so two walks
//! of the same tree give the same entry stream), with exclude patterns.
//!
//! Regular files, directories and symlinks are backed up; sockets, FIFOs and device
//! nodes are skipped with a warning. A directory or file that cannot be read is
//! reported to the caller and the walk goes on.
//!
//! Other users write in the tree while it is walked, and one may swap a file for a
//! symlink to a file only root can read, hoping coffer stores it under her name. So what
//! is read is exactly what was walked: directories are walked through descriptors
//! (`openat` with `O_NOFOLLOW | O_DIRECTORY`, never a path), each entry is `lstat`ed
//! relative to its directory, and a file is opened relative to it with `O_NOFOLLOW`,
//! non-blocking (a FIFO swapped in cannot hang the run) and `O_NOATIME` where permitted;
//! its device, inode and type must be the ones the walk saw, or it is skipped and named.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::catalog::CachedFile;
use crate::format::entry::{Entry, Kind};
use crate::source::{JobContext, Prepared, Resolve, Source};

pub const KIND: super::Kind =
    super::Kind { key: "path", form: "`{ path = \"/dir\" }` or `{ path = [\"/etc\", \"/srv\"] }`", parse };

/// `source = { path = "/dir" }`: the tree is the snapshot. Or several, `{ path = ["/etc",
/// "/srv"] }`: each is stored under its own path (`etc/…`, `srv/…`, with the directories
/// above it), and restores to the same layout under `--to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSource {
    pub roots: Vec<PathBuf>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    path: OneOrMany,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

fn parse(table: toml::Table, resolve: &Resolve<'_>) -> Result<Arc<dyn Source>, String> {
    let raw: Raw = super::table(table, "path")?;
    let mut roots: Vec<PathBuf> = match raw.path {
        OneOrMany::One(p) => vec![resolve(&p)],
        OneOrMany::Many(list) if list.is_empty() => return Err("`path` names no directory".into()),
        OneOrMany::Many(list) => list.iter().map(|p| resolve(p)).collect(),
    };
    roots.sort();
    for pair in roots.windows(2) {
        if pair[1].starts_with(&pair[0]) {
            return Err(format!("`{}` is inside `{}`: name each tree once", pair[1].display(), pair[0].display()));
        }
    }
    Ok(Arc::new(PathSource { roots }))
}

impl std::fmt::Display for PathSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        write!(f, "path {}", roots.join(" "))
    }
}

impl Source for PathSource {
    fn trees(&self, job: &JobContext) -> Option<Result<Vec<TreeRoot>>> {
        Some(self.prepare(job).map(|p| match p.input {
            super::Input::Tree { roots } => roots,
            _ => Vec::new(),
        }))
    }

    fn unavailable(&self) -> Vec<String> {
        let described = |root: &PathBuf, e: std::io::Error| {
            format!("source directory {}: {} ({})", root.display(), e, crate::fsutil::owner_of(root))
        };
        self.roots
            .iter()
            .filter_map(|root| match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => std::fs::read_dir(root).err().map(|e| described(root, e)),
                Ok(_) => Some(format!("source directory {} is not a directory", root.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(format!("source directory {} does not exist", root.display()))
                }
                Err(e) => Some(described(root, e)),
            })
            .collect()
    }

    fn stored_path(&self, path: &Path) -> Option<Vec<u8>> {
        use std::path::Component;
        if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return None;
        }
        let root = self.roots.iter().find(|r| path.starts_with(r) && path != r.as_path())?;
        // As `prepare` names entries: one tree at the snapshot's root, several under their paths.
        let stored = match self.roots.len() > 1 {
            true => path.strip_prefix("/").ok()?,
            false => path.strip_prefix(root).ok()?,
        };
        Some(stored.as_os_str().as_encoded_bytes().to_vec())
    }

    fn prepare(&self, job: &JobContext) -> Result<Prepared> {
        let several = self.roots.len() > 1;
        let mut trees = Vec::new();
        for root in &self.roots {
            if !root.is_dir() {
                anyhow::bail!(
                    "source directory {} of job `{}` does not exist or is not a directory",
                    root.display(),
                    job.name
                );
            }
            let device = match job.one_file_system {
                true => Some(std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(root)?)),
                false => None,
            };
            let excludes =
                Excludes::new(job.exclude)?.with_markers(job.exclude_if_present, job.exclude_caches).on_device(device);
            // One tree is the snapshot; several are each stored under their own path.
            let under = match several {
                true => root.strip_prefix("/").unwrap_or(root).to_path_buf(),
                false => PathBuf::new(),
            };
            trees.push(TreeRoot { path: root.clone(), under, excludes });
        }
        Ok(Prepared::trees(trees))
    }
}

/// A directory tree to walk, and the path its contents are stored under (empty: at the
/// snapshot's root).
pub struct TreeRoot {
    pub path: PathBuf,
    pub under: PathBuf,
    pub excludes: Excludes,
}

/// The fast path's test for a file: the same size, mtime, ctime and inode as cached.
pub fn unchanged(c: &CachedFile, e: &Entry) -> bool {
    (c.size, c.mtime_ns, c.ctime_ns, c.inode) == (e.size, e.mtime_ns, e.ctime_ns, e.ino)
}

/// What the walk found at one path.
pub enum Found {
    Dir(Entry),
    /// A regular file: its entry (chunks still empty) and how to open it.
    File(Entry, Opener),
    Symlink(Entry),
}

/// A walked file, to be opened later exactly as walked.
pub struct Opener {
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    dev: u64,
    ino: u64,
}

impl Opener {
    /// The file's extended attributes, without opening it (for a file the backup does
    /// not read again, whose attributes the catalog does not hold).
    pub fn xattrs(&self) -> std::io::Result<Vec<crate::format::entry::Xattr>> {
        crate::xattr::at(self.dir.as_fd(), &self.name)
    }

    /// Opens the file relative to its directory without following a symlink, and only
    /// if it is still the regular file the walk saw.
    pub fn open(&self) -> std::io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        // O_NOATIME needs the file's owner or CAP_FOWNER; without them, open without it.
        let fd = match rustix::fs::openat(&*self.dir, self.name.as_slice(), flags | OFlags::NOATIME, Mode::empty()) {
            Err(rustix::io::Errno::PERM) => rustix::fs::openat(&*self.dir, self.name.as_slice(), flags, Mode::empty()),
            r => r,
        }
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => std::io::Error::other("became a symlink after the walk saw a file: skipped"),
            e => e.into(),
        })?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || (st.st_dev, st.st_ino) != (self.dev, self.ino)
        {
            return Err(std::io::Error::other("was replaced by another file after the walk saw it: skipped"));
        }
        Ok(fd.into())
    }
}

/// Exclude patterns: a pattern with a `/` matches the path relative to the source root,
/// one without matches any single name (like `.gitignore`).
pub struct Excludes {
    by_name: GlobSet,
    by_path: GlobSet,
    /// A directory holding one of these names is left out whole (`exclude_if_present`).
    markers: Vec<Vec<u8>>,
    /// A directory with a valid `CACHEDIR.TAG` is left out whole (`exclude_caches`).
    caches: bool,
    /// With `one_file_system`, the root's device: a directory on another one (a mount
    /// point) is kept, empty, and not entered.
    device: Option<u64>,
}

/// The first bytes of a valid `CACHEDIR.TAG` (<https://bford.info/cachedir/>).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

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
        Ok(Excludes {
            by_name: by_name.build()?,
            by_path: by_path.build()?,
            markers: Vec::new(),
            caches: false,
            device: None,
        })
    }

    /// Also leaves out directories that hold one of `markers`, or (with `caches`) a valid
    /// `CACHEDIR.TAG`.
    pub fn with_markers(mut self, markers: &[String], caches: bool) -> Excludes {
        self.markers = markers.iter().map(|m| m.as_bytes().to_vec()).collect();
        self.caches = caches;
        self
    }

    /// Stays on `device` (the root's): mount points are kept as empty directories.
    pub fn on_device(mut self, device: Option<u64>) -> Excludes {
        self.device = device;
        self
    }

    /// Why the directory `name` in `parent` is left out whole, if it is: looked at through
    /// descriptors, never following a symlink.
    fn marked(&self, parent: &OwnedFd, name: &[u8]) -> Option<String> {
        if self.markers.is_empty() && !self.caches {
            return None;
        }
        let dir = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()).ok()?;
        let present = |m: &[u8]| rustix::fs::statat(&dir, m, AtFlags::SYMLINK_NOFOLLOW).is_ok();
        if let Some(m) = self.markers.iter().find(|m| present(m)) {
            return Some(format!("holds {}", String::from_utf8_lossy(m)));
        }
        if !self.caches {
            return None;
        }
        // Non-blocking: a FIFO planted under this name must not hang the walk.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let tag = rustix::fs::openat(&dir, "CACHEDIR.TAG", flags, Mode::empty()).ok()?;
        let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
        let n = rustix::io::read(&tag, &mut head).ok()?;
        (head[..n] == *CACHEDIR_SIGNATURE).then(|| "is a cache directory (CACHEDIR.TAG)".to_string())
    }

    fn excluded(&self, rel: &Path, name: &std::ffi::OsStr) -> bool {
        // An empty set still copies the path into a match candidate: skip it.
        (!self.by_name.is_empty() && self.by_name.is_match(Path::new(name)))
            || (!self.by_path.is_empty() && self.by_path.is_match(rel))
    }
}

/// A directory still to walk: its parent's descriptor, its name, and what the walk saw.
struct Pending {
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
    rel: PathBuf,
    dev: u64,
    ino: u64,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Walks `root`, calling `visit` for every entry in order and `problem` for every path
/// that could not be read (the path relative to the root, and why).
///
/// The listing and `lstat`s run on a thread of their own, a few directories ahead of
/// `visit`: a run with no change spends about as long in the catalog as in the
/// kernel, and the two then overlap. If `visit` fails, the walk stops.
/// Walks `root`, naming each entry `under/` its path in the tree (excludes still match
/// paths within the tree).
pub fn walk(
    root: &Path,
    under: &Path,
    excludes: &Excludes,
    mut visit: impl FnMut(Found) -> Result<()>,
    problem: impl FnMut(&Path, String) + Send,
) -> Result<()> {
    // The root is the configured path: a symlink there is the administrator's choice.
    let root_fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(std::io::Error::from)
        .with_context(|| format!("source {} is not a directory that can be opened", root.display()))?;
    // A few batches ahead: each holds one directory's entries (or 256 of them), so the
    // descriptors held by entries in flight stay few.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Found>>(8);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("walk".into())
            .spawn_scoped(scope, move || list_tree(root_fd, under, excludes, tx, problem))
            .context("cannot start the walk thread")?;
        for batch in rx {
            for found in batch {
                visit(found)?;
            }
        }
        Ok(())
    })
}

/// The walk proper: lists and `lstat`s depth-first, sending each directory's entries in
/// order. Ends when the tree is done or the receiver is gone.
fn list_tree(
    root_fd: OwnedFd,
    under: &Path,
    excludes: &Excludes,
    tx: std::sync::mpsc::SyncSender<Vec<Found>>,
    mut problem: impl FnMut(&Path, String),
) {
    const BATCH: usize = 256;
    let mut current = Some((Arc::new(root_fd), PathBuf::new()));
    // Directories still to list; children pushed in reverse order so they pop sorted.
    let mut stack: Vec<Pending> = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let (dir, rel_dir) = match current.take() {
            Some(d) => d,
            None => {
                let Some(p) = stack.pop() else { break };
                match open_dir(&p) {
                    Ok(fd) => (Arc::new(fd), p.rel),
                    Err(e) => {
                        problem(&under.join(&p.rel), format!("cannot list directory: {e}"));
                        continue;
                    }
                }
            }
        };
        let mut names: Vec<Vec<u8>> = Vec::new();
        let listed = rustix::fs::Dir::read_from(&*dir).and_then(|entries| {
            for e in entries {
                let name = e?.file_name().to_bytes().to_vec();
                if name != b"." && name != b".." {
                    names.push(name);
                }
            }
            Ok(())
        });
        if let Err(e) = listed {
            problem(&under.join(&rel_dir), format!("cannot list directory: {}", std::io::Error::from(e)));
            continue;
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let os_name = OsStr::from_bytes(&name);
            let rel = rel_dir.join(os_name);
            if excludes.excluded(&rel, os_name) {
                continue;
            }
            let st = match rustix::fs::statat(&*dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    problem(&under.join(&rel), format!("cannot stat: {}", std::io::Error::from(e)));
                    continue;
                }
            };
            let stored = under.join(&rel);
            let mut entry = entry_from(&stored, &st);
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory if let Some(why) = excludes.marked(&dir, &name) => {
                    tracing::info!(path = %stored.display(), "left out: the directory {why}");
                }
                FileType::Directory => {
                    entry.kind = Kind::Dir;
                    entry.size = 0;
                    match crate::xattr::at(dir.as_fd(), &name) {
                        Ok(x) => entry.xattrs = x,
                        Err(e) => problem(&stored, format!("cannot read extended attributes: {e}")),
                    }
                    batch.push(Found::Dir(entry));
                    if excludes.device.is_some_and(|d| d != st.st_dev) {
                        tracing::info!(path = %stored.display(), "not entered: another file system (one_file_system)");
                    } else {
                        subdirs.push(Pending { parent: dir.clone(), name, rel, dev: st.st_dev, ino: st.st_ino });
                    }
                }
                FileType::RegularFile => {
                    let opener = Opener { dir: dir.clone(), name, dev: st.st_dev, ino: st.st_ino };
                    batch.push(Found::File(entry, opener));
                }
                FileType::Symlink => match rustix::fs::readlinkat(&*dir, name.as_slice(), Vec::new()) {
                    Ok(t) => {
                        entry.kind = Kind::Symlink;
                        entry.target = Some(t.into_bytes());
                        batch.push(Found::Symlink(entry));
                    }
                    Err(e) => problem(&stored, format!("cannot read link: {}", std::io::Error::from(e))),
                },
                _ => tracing::warn!(path = %stored.display(), "skipping special file (socket, FIFO or device)"),
            }
            if batch.len() == BATCH && tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).is_err() {
                return;
            }
        }
        if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).is_err() {
            return;
        }
        stack.extend(subdirs.into_iter().rev());
    }
}

/// Opens a directory the walk saw, through its parent, refusing a symlink or another
/// directory swapped into its place.
fn open_dir(p: &Pending) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::openat(&*p.parent, p.name.as_slice(), DIR_FLAGS, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            std::io::Error::other("became a symlink or a file after the walk saw a directory: skipped")
        }
        e => e.into(),
    })?;
    let st = rustix::fs::fstat(&fd)?;
    if (st.st_dev, st.st_ino) != (p.dev, p.ino) {
        return Err(std::io::Error::other("was replaced by another directory after the walk saw it: skipped"));
    }
    Ok(fd)
}

fn entry_from(rel: &Path, st: &rustix::fs::Stat) -> Entry {
    Entry {
        path: rel.as_os_str().as_bytes().to_vec(),
        kind: Kind::File,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
        ino: st.st_ino,
        size: st.st_size as u64,
        target: None,
        content_type: None,
        key: None,
        chunks: Vec::new(),
        xattrs: Vec::new(),
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
            Path::new(""),
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
