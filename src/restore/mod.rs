//! Restore: read a snapshot back, verifying everything on the way, into a directory
//! that even a forged snapshot cannot make it write outside of (or, for a bucket
//! source, back into a bucket).
//!
//! Every pack is checked against its content hash before it is decrypted, every chunk
//! against its keyed hash after; objects are read by the version id the catalog
//! recorded. Before anything is written, the whole entry stream is checked: entries
//! that would escape the destination or write through the snapshot's own symlinks are
//! named and skipped ([`crate::format::entry_check`]). The file-system layer ([`dest`])
//! confines every operation beneath `--to` and follows no symlink, whatever the stream
//! says. Files appear under their final name only when complete; one that cannot be
//! restored and verified is named and skipped, and the restore fails at the end.

mod dest;
mod packs;
mod plan;
pub mod tree;
mod write;

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};

use crate::config::Config;
use crate::format::entry::{Entry, EntryReader, Kind, safe_relative};
use crate::repo::{Repo, Restorer};

use crate::keys::{Identity, RepoSecret};
use crate::progress::{Counters, ProgressLine};

use dest::{Dest, Meta};
use packs::Packs;
use plan::{Plan, Selected, Selection};
use write::{FileTask, Job, Pool};

/// Where a restore writes.
pub enum Destination {
    Dir(PathBuf),
    /// A bucket source's objects back into a bucket, under their keys.
    Bucket(crate::source::bucket::Bucket),
}

pub struct Options {
    pub job: String,
    pub snapshot: String,
    pub to: Destination,
    /// `--path`s, as typed (with or without the source root).
    pub paths: Vec<String>,
    /// `--include` and `--exclude` globs.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub identity: PathBuf,
    /// Read from this target (else the first that holds the snapshot and answers).
    pub target: Option<String>,
    /// Which snapshots `latest` or a prefix may pick (`--tag`, `--host`).
    pub filter: crate::catalog::Filter,
    pub overwrite: bool,
    /// Draw a progress line on a terminal.
    pub progress: bool,
}

/// `restore --dry-run`: called with each entry a restore would write, in stream order;
/// only the snapshot's file list is read, and nothing is written.
pub type Listing<'a> = &'a mut dyn FnMut(&Entry) -> Result<()>;

#[derive(Default, serde::Serialize)]
pub struct Summary {
    #[serde(rename = "snapshot")]
    pub snapshot_id: String,
    /// `--dry-run`: what would be written; only the file list was read, nothing written.
    pub dry_run: bool,
    /// The target the snapshot was read from.
    pub target: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries the snapshot holds that a restore refuses (it may be forged).
    pub refused: u64,
    /// Paths that could not be restored, with the reason.
    pub failures: Vec<String>,
    /// What the snapshot's source contained beyond its files (git refs, ...).
    pub contents: Option<crate::format::contents::Contents>,
    /// Packs found damaged, marked in the catalog, so that the next backup stores their
    /// chunks again.
    pub damaged_packs: Vec<DamagedPack>,
}

/// A pack whose bytes are not what its hash says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedPack {
    /// Its hash (the object key names it).
    pub pack: String,
    pub why: String,
}

/// Writer threads: one per core (at least two, so that one writes while another waits
/// on the file system), measured no faster with more on two cores.
fn writers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

pub fn run(cfg: &Config, opts: &Options, dry_run: Option<Listing>) -> Result<Summary> {
    let repo = Repo::open(cfg)?;
    let snap = repo.catalog.find_snapshot_where(&opts.job, &opts.snapshot, &opts.filter)?;
    let repo = repo.unlock(Arc::new(Identity::load(&opts.identity)?), opts.target.as_deref(), Some(&snap))?;
    tracing::info!(target = %repo.read_target().name, snapshot = %snap.id, "restoring");
    let record = repo.snapshot_record(&snap)?;
    let Repo { catalog, .. } = &repo;
    let target = repo.read_target();
    let mut paths = Vec::new();
    for typed in &opts.paths {
        let p = inside(&snap.source, typed);
        if !p.is_empty() && !safe_relative(&p) {
            bail!("--path `{typed}` must be a path inside the snapshot, without `..`");
        }
        paths.extend(Some(p).filter(|p| !p.is_empty()));
    }
    let globs = |typed: &[String]| -> Vec<String> {
        typed.iter().map(|g| String::from_utf8_lossy(&inside(&snap.source, g)).into_owned()).collect()
    };
    let selection = Selection::new(paths, &globs(&opts.include), &globs(&opts.exclude))?;

    let made_with = catalog.snapshot_pack_ids(&snap.id)?;
    // The entry stream goes to a private file: it can be larger than memory.
    let entries_path = cfg.state().scratch(&format!("restore-{}", snap.id))?;
    let _cleanup = crate::fsutil::RemoveOnDrop(entries_path.clone());
    {
        let mut reader = tree::ChunkReader::new(&repo, Some(&made_with));
        let mut out = BufWriter::new(File::create_new(&entries_path)?);
        std::io::copy(&mut reader.stream(&record.tree), &mut out)
            .map_err(|e| anyhow!("the snapshot's file list cannot be read: {e}"))?;
        out.flush()?;
    }

    tracing::debug!("entry stream read");
    let files = (entries_path.as_path(), cfg.state());
    let mut plan = catalog.reading(|c| Plan::make(files, &selection, c, (target.id, &made_with), &cfg.limits))?;
    if selection.narrows() && !plan.matched {
        let asked = [("path", &opts.paths), ("include", &opts.include), ("exclude", &opts.exclude)];
        let asked = asked.iter().flat_map(|(flag, v)| v.iter().map(move |x| format!("--{flag} `{x}`")));
        bail!("no entry of snapshot {} matches {}", record.id, asked.collect::<Vec<_>>().join(" "));
    }
    tracing::debug!(packs = plan.packs.len(), chunks = plan.locs.len(), "planned");
    let mut refusals = Vec::new();
    if plan.refused.total > 0 {
        tracing::error!(
            "snapshot {} holds {} entries that a restore refuses; it may be forged (`coffer verify --read-data` \
             reports it). They are skipped, nothing is written outside {}:",
            snap.id,
            plan.refused.total,
            match &opts.to {
                Destination::Dir(p) => p.display().to_string(),
                Destination::Bucket(b) => b.url.clone(),
            }
        );
        for (path, why) in &plan.refused.named {
            let msg = format!("{}: refused: {why}", show(path));
            tracing::error!("  {msg}");
            refusals.push(msg);
        }
        let more = plan.refused.total - plan.refused.named.len() as u64;
        if more > 0 {
            refusals.push(format!("… and {more} more refused entries"));
        }
    }

    let mut summary = match dry_run {
        Some(listing) => list(&entries_path, &plan, &selection, listing)?,
        None => write(&repo, &entries_path, &mut plan, &selection, opts)?,
    };
    summary.refused = plan.refused.total;
    refusals.append(&mut summary.failures);
    summary.failures = refusals;
    summary.snapshot_id = snap.id.clone();
    summary.target = target.name.clone();
    summary.contents = snap.contents.clone();
    if summary.dry_run {
        return Ok(summary);
    }
    for DamagedPack { pack, why } in &summary.damaged_packs {
        catalog.mark_damaged(pack, why)?;
    }
    // Packs encrypted to other keys than this identity (written before it was added):
    // say which keys restore this snapshot.
    if summary.failures.iter().any(|f| f.contains(OTHER_KEYS)) {
        summary.failures.push(format!("snapshot {} can be restored whole with: {}", snap.id, repo.readers(&snap.id)?));
    }
    let detail = format!("snapshot {} ({} failures, {} refused)", snap.id, summary.failures.len(), summary.refused);
    let _ = catalog.event("restore", Some(&opts.job), &detail);
    Ok(summary)
}

/// The entries a restore would write, told to `listing` and counted.
fn list(entries_path: &Path, plan: &Plan, selection: &Selection, listing: Listing) -> Result<Summary> {
    let mut summary = Summary { dry_run: true, ..Summary::default() };
    for found in selected(entries_path, plan, selection)? {
        let (entry, _, _) = found?;
        match entry.kind {
            Kind::File => (summary.files, summary.bytes) = (summary.files + 1, summary.bytes + entry.size),
            Kind::Dir => summary.dirs += 1,
            Kind::Symlink => summary.symlinks += 1,
        }
        listing(&entry)?;
    }
    Ok(summary)
}

/// The restore itself: the packs read, the entries written.
fn write(
    repo: &Repo<Restorer>,
    entries_path: &Path,
    plan: &mut Plan,
    selection: &Selection,
    opts: &Options,
) -> Result<Summary> {
    let target = repo.read_target();
    let counters = Arc::new(Counters::default());
    let _progress = ProgressLine::start(
        counters.clone(),
        opts.progress,
        crate::progress::restore_line(plan.files.count, plan.bytes),
    );
    let packs = Packs::start(target.clone(), repo.identity().clone(), plan.packs.clone());
    let secret = repo.secret().clone();
    let files = std::mem::take(&mut plan.files);
    let walk = Walk { entries_path, plan, files, selection, packs, secret, counters };
    match &opts.to {
        Destination::Dir(to) => walk.write_tree(to, opts.overwrite),
        Destination::Bucket(bucket) => walk.upload(bucket),
    }
}

/// The entries to restore, in stream order, with how each is selected and where its
/// line is in the entries file.
fn selected<'a>(
    entries_path: &Path,
    plan: &'a Plan,
    selection: &'a Selection,
) -> Result<impl Iterator<Item = Result<(Entry, Selected, Line)>> + 'a> {
    let mut reader = EntryReader::new(BufReader::new(File::open(entries_path)?))?;
    let mut i = 0u64;
    Ok(std::iter::from_fn(move || {
        let offset = reader.offset();
        let entry = reader.next()?;
        let line = Line { offset, len: (reader.offset() - offset) as u32 };
        i += 1;
        Some((i - 1, entry, line))
    })
    .filter_map(move |(i, entry, line)| match entry {
        Err(e) => Some(Err(e.into())),
        Ok(_) if plan.refused_at.contains(&i) => None,
        Ok(e) if selection.selects(&e.path) => Some(Ok((e, Selected::Yes, line))),
        Ok(e) if e.kind == Kind::Dir && plan.ancestors.contains(&e.path) => Some(Ok((e, Selected::Ancestor, line))),
        Ok(_) => None,
    }))
}

/// The entry of a line read back from the entries file, newline included.
fn line_entry(line: &[u8]) -> Result<Entry> {
    Ok(crate::format::entry::parse_line(line.strip_suffix(b"\n").unwrap_or(line))?)
}

/// How a pack this identity cannot open is named (`packs.rs`).
pub const OTHER_KEYS: &str = "this identity is not one of the keys the pack is encrypted to";

/// The write pass over the entry stream, as planned.
struct Walk<'a> {
    entries_path: &'a Path,
    plan: &'a Plan,
    /// The plan's files, read once.
    files: plan::FileList,
    selection: &'a Selection,
    packs: Packs,
    secret: RepoSecret,
    counters: Arc<Counters>,
}

/// Where an entry's line is in the entries file.
#[derive(Clone, Copy)]
struct Line {
    offset: u64,
    len: u32,
}

impl<'a> Walk<'a> {
    /// The entries to restore, in stream order, with how each is selected and where its
    /// line is in the entries file.
    fn entries(&self) -> Result<impl Iterator<Item = Result<(Entry, Selected, Line)>> + 'a> {
        selected(self.entries_path, self.plan, self.selection)
    }

    /// The entry whose line is at `line` in the entries file.
    fn entry_at(&self, file: &File, line: Line) -> Result<Entry> {
        use std::os::unix::fs::FileExt;
        let mut text = vec![0; line.len as usize];
        file.read_exact_at(&mut text, line.offset)?;
        line_entry(&text)
    }

    /// The selected files' entries, in the planned order, each with its chunk reads.
    fn files(&mut self) -> Result<impl Iterator<Item = Result<(Entry, std::ops::Range<usize>)>> + use<>> {
        use std::io::{Read, Seek, SeekFrom};
        // Through a buffer: the planned order mostly follows the stream's, so most lines
        // are the next ones, and a read per file would be a system call per file.
        let mut file = BufReader::with_capacity(1 << 16, File::open(self.entries_path)?);
        let (mut at, mut line) = (0u64, Vec::new());
        Ok(self.files.read()?.map(move |f| {
            let f = f?;
            if f.offset != at {
                file.seek(SeekFrom::Start(f.offset))?;
            }
            // Where the reader is, once the line is read (unknown if it is not).
            at = u64::MAX;
            line.resize(f.len as usize, 0);
            file.read_exact(&mut line)?;
            at = f.offset + f.len;
            let entry = line_entry(&line)?;
            let reads = f.first..f.first + entry.chunks.len();
            Ok((entry, reads))
        }))
    }

    /// Into a directory: first the directories, then the files by the writer pool, then
    /// the symlinks (so that nothing is ever written through one), then the
    /// directories' own metadata, deepest first.
    fn write_tree(mut self, to: &Path, overwrite: bool) -> Result<Summary> {
        let started = std::time::Instant::now();
        let dest = Arc::new(Dest::open(to, overwrite)?);
        let mut summary = Summary::default();
        let mut parents = Parents { dest: &dest, last: None };
        // Each directory's depth and line: its metadata (extended attributes, which a
        // forged list can make large) stays on disk until the end.
        let mut dirs: Vec<(u32, Line)> = Vec::new();
        for item in self.entries()? {
            let (entry, selected, line) = item?;
            if entry.kind != Kind::Dir {
                continue;
            }
            let (parent, name) = split(&entry.path);
            match parents.get(parent).and_then(|p| dest.make_dir(p.as_fd(), name)) {
                Ok(()) => {
                    summary.dirs += u64::from(selected == Selected::Yes);
                    dirs.push((entry.path.iter().filter(|&&b| b == b'/').count() as u32, line));
                }
                Err(e) => summary.failures.push(failure(&entry.path, "cannot create the directory", e)),
            }
        }

        let mut pool = Pool::start(dest.clone(), self.secret.clone(), self.counters.clone(), writers());
        for item in self.files()? {
            let (entry, reads) = item?;
            let (parent, name) = split(&entry.path);
            let parent = match parents.get(parent) {
                Ok(p) => p,
                Err(e) => {
                    summary.failures.push(failure(&entry.path, "cannot open its directory", e));
                    continue;
                }
            };
            self.counters.set_current(&entry.path);
            let task = FileTask::new(parent, name, &entry);
            if reads.is_empty() {
                pool.send(Job::Empty(task));
                continue;
            }
            let mut offset = 0u64;
            for (id, position) in entry.chunks.iter().zip(reads) {
                let (loc, next_use) = self.plan.locs[position];
                let task = task.clone();
                pool.send(match loc {
                    None => Job::Failed { task, why: format!("chunk {id} is not in the catalog") },
                    Some(l) => match self.packs.get(l.pack, next_use) {
                        Ok(pack) => {
                            let at = offset;
                            offset += u64::from(l.raw_length);
                            Job::Chunk { task, offset: at, blob: write::blob(*id, &l), pack }
                        }
                        Err(why) => Job::Failed { task, why: format!("pack {}: {why}", self.packs.key(l.pack)) },
                    },
                });
            }
        }
        let done = pool.finish();
        tracing::debug!(secs = started.elapsed().as_secs_f64(), "files written");
        summary.files = done.files;
        summary.bytes = done.bytes;
        summary.failures.extend(done.failures);

        for item in self.entries()? {
            let (entry, _, _) = item?;
            let Some(target) = entry.target.as_deref().filter(|_| entry.kind == Kind::Symlink) else { continue };
            let (parent, name) = split(&entry.path);
            match parents.get(parent).and_then(|p| dest.symlink(p.as_fd(), name, target, &Meta::from(&entry))) {
                Ok(()) => summary.symlinks += 1,
                Err(e) => summary.failures.push(failure(&entry.path, "cannot create the symlink", e)),
            }
        }
        drop(parents);
        dirs.sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
        let file = File::open(self.entries_path)?;
        for (_, line) in dirs {
            let entry = self.entry_at(&file, line)?;
            if let Err(e) = dest.finish_dir(&entry.path, &Meta::from(&entry)) {
                summary.failures.push(failure(&entry.path, "cannot set the directory's owner, mode or times", e));
            }
        }
        tracing::debug!(secs = started.elapsed().as_secs_f64(), "metadata set");
        dest.sync();
        tracing::debug!(secs = started.elapsed().as_secs_f64(), "synced");
        summary.damaged_packs = self.packs.damaged();
        Ok(summary)
    }

    /// Into a bucket: each file entry becomes the object under its key, its bytes from
    /// the snapshot (never from a local file). Directories are implied by the keys; a
    /// symlink is not an object and is not uploaded.
    fn upload(mut self, bucket: &crate::source::bucket::Bucket) -> Result<Summary> {
        let mut summary = Summary::default();
        for item in self.entries()? {
            let (entry, _, _) = item?;
            if entry.kind == Kind::Symlink {
                summary.failures.push(format!("{}: a symlink, not an object: not uploaded", show(&entry.path)));
            }
        }
        for item in self.files()? {
            let (entry, reads) = item?;
            self.counters.set_current(&entry.path);
            match self.upload_one(bucket, &entry, reads) {
                Ok(()) => {
                    summary.files += 1;
                    summary.bytes += entry.size;
                    Counters::add(&self.counters.files, 1);
                }
                Err(e) => {
                    let msg = format!("{}: {e:#}", show(&entry.path));
                    tracing::error!("{msg}");
                    summary.failures.push(msg);
                }
            }
        }
        summary.damaged_packs = self.packs.damaged();
        Ok(summary)
    }

    fn upload_one(
        &mut self,
        bucket: &crate::source::bucket::Bucket,
        entry: &Entry,
        reads: std::ops::Range<usize>,
    ) -> Result<()> {
        let key = match &entry.key {
            Some(key) => key.as_str(),
            None => std::str::from_utf8(&entry.path).map_err(|_| anyhow!("the name is not UTF-8: no object key"))?,
        };
        let mut upload = bucket.writer(key, entry.content_type.as_deref())?;
        let mut written = 0u64;
        for (id, position) in entry.chunks.iter().zip(reads) {
            let (loc, next_use) = self.plan.locs[position];
            let loc = loc.ok_or_else(|| anyhow!("chunk {id} is not in the catalog"))?;
            let pack = self
                .packs
                .get(loc.pack, next_use)
                .map_err(|why| anyhow!("pack {}: {why}", self.packs.key(loc.pack)))?;
            let data = crate::format::pack::verified_blob(&pack, &write::blob(*id, &loc), &self.secret)?;
            written += data.len() as u64;
            Counters::add(&self.counters.bytes, data.len() as u64);
            crate::runtime::block_on(upload.put(bytes::Bytes::from(data)))?;
        }
        if written != entry.size {
            crate::runtime::block_on(upload.abort());
            bail!("restored {written} bytes but the snapshot recorded {}", entry.size);
        }
        crate::runtime::block_on(upload.finish())
    }
}

/// The parent directory's descriptor, kept while consecutive entries share it.
struct Parents<'a> {
    dest: &'a Dest,
    last: Option<(Vec<u8>, Arc<OwnedFd>)>,
}

impl Parents<'_> {
    fn get(&mut self, path: &[u8]) -> std::io::Result<Arc<OwnedFd>> {
        if let Some((p, fd)) = &self.last
            && p == path
        {
            return Ok(fd.clone());
        }
        let fd = Arc::new(self.dest.dir(path)?);
        self.last = Some((path.to_vec(), fd.clone()));
        Ok(fd)
    }
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn show(path: &[u8]) -> String {
    crate::escape::printable(path)
}

fn failure(path: &[u8], what: &str, e: std::io::Error) -> String {
    let msg = format!("{}: {what}: {e}", show(path));
    tracing::error!("{msg}");
    msg
}

/// A path the user typed, as a path inside a snapshot of `source`: without leading or
/// trailing `/`, and without the source root's own path when it starts with it (so that
/// `/srv/www/index.html` and `index.html` both name a file of `path /srv/www`).
pub fn inside(source: &str, typed: &str) -> Vec<u8> {
    let root = source.strip_prefix("path ").map(|r| r.trim_end_matches('/')).filter(|r| r.starts_with('/'));
    let typed = match root.and_then(|r| typed.strip_prefix(r)) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => typed,
    };
    typed.trim_matches('/').as_bytes().to_vec()
}

#[cfg(test)]
mod inside_tests {
    use super::*;

    #[test]
    fn typed_paths_are_read_with_or_without_the_source_root() {
        assert_eq!(inside("path /srv/www", "/srv/www/a/index.html"), b"a/index.html");
        assert_eq!(inside("path /srv/www", "a/index.html/"), b"a/index.html");
        assert_eq!(inside("path /srv/www", "/srv/www"), b"");
        assert_eq!(inside("path /srv/www", "/srv/wwwx/a"), b"srv/wwwx/a");
        assert_eq!(inside("command pg_dump", "/dump.sql"), b"dump.sql");
    }
}
