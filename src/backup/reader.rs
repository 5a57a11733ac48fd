//! The reader stage: walks the source, reuses unchanged files' chunk lists from the
//! file cache, chunks and hashes the rest, and hands the chunks the repository does not
//! hold to the compressors; every file it puts into the snapshot is shown to the run's
//! [`Observer`]s (`src/observer.rs`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::BufWriter;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use crate::catalog::{CacheBatch, CachedFile, Catalog};
use crate::chunk_id::ChunkId;
use crate::chunker::{ChunkError, Chunker};
use crate::format::entry::{Entry, EntryReader, EntryWriter, Kind};
use crate::format::snapshot::{EntryError, SnapshotStats};
use crate::keys::RepoSecret;
use crate::observer::{Change, Observer};
use crate::progress::Counters;
use crate::source::Input;
use crate::source::path::{self as path_source, Excludes, Found};
use crate::tripwire::tally::path_key;

/// Chunking of the entry stream (fixed: changing it would stop metadata dedup).
pub(super) const ENTRY_STREAM_CHUNKS: crate::chunker::ChunkerParams =
    crate::chunker::ChunkerParams { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

/// A run stopped at a checkpoint by a shutdown: every pack it sent and the server
/// acknowledged is in the catalog, and the next run goes on from there.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by shutdown; the packs stored so far are kept and the next run resumes")]
pub struct Interrupted;

/// A chunk not stored before, on its way to a compressor.
pub(super) struct NewChunk {
    pub(super) id: ChunkId,
    pub(super) data: Vec<u8>,
}

/// Chunks this run sent for storage, until the reader's view of the catalog shows them
/// in `chunks`: their packs committed and indexed ([`Catalog::index_chunks`]).
#[derive(Default)]
pub(super) struct InFlight {
    /// Each chunk, and the upload generation that committed its pack (`None`: not yet).
    pub(super) chunks: std::collections::HashMap<ChunkId, Option<u64>>,
    /// Packs committed so far.
    pub(super) generation: u64,
    /// Packs committed when the uploader last indexed their chunks.
    pub(super) indexed: u64,
}

impl InFlight {
    /// Chunks committed but not indexed after which the uploader indexes them. They
    /// stay here until then, in at most 13 MiB; the fewer indexings a run
    /// makes, the fewer times each page of `chunks` is written.
    pub(super) const INDEX_EVERY: usize = 1 << 17;
}

/// The reader's view of the catalog: one read transaction, so that a lookup costs a
/// B-tree search instead of a lock and a WAL check (which made a backup with nothing new
/// mostly SQLite locking). It is renewed every few thousand lookups or every second;
/// then the chunks indexed before the renewal leave `InFlight`, as the view now shows
/// them. So memory stays flat: `InFlight` holds at most [`InFlight::INDEX_EVERY`] chunks
/// and a few packs' more.
#[derive(Default)]
pub(super) struct View {
    pub(super) open: bool,
    pub(super) lookups: u32,
    pub(super) since: Option<Instant>,
}

impl View {
    const LOOKUPS: u32 = 4096;
    const AGE: std::time::Duration = std::time::Duration::from_secs(1);

    pub(super) fn renew(&mut self, catalog: &Catalog, pending: &Mutex<InFlight>) -> Result<()> {
        self.lookups += 1;
        if self.open && self.lookups < Self::LOOKUPS && self.since.is_some_and(|t| t.elapsed() < Self::AGE) {
            return Ok(());
        }
        // Everything indexed up to now is visible to a transaction begun after this.
        let indexed = lock(pending).indexed;
        if self.open {
            catalog.end_read()?;
        }
        catalog.begin_read()?;
        (self.open, self.lookups, self.since) = (true, 0, Some(Instant::now()));
        lock(pending).chunks.retain(|_, g| g.is_none_or(|g| g > indexed));
        Ok(())
    }
}

/// What the reader hands back once the walk is done.
pub(super) struct ReadOutput {
    pub(super) tree: Vec<ChunkId>,
    pub(super) referenced: HashSet<i64>,
    pub(super) errors: Vec<EntryError>,
    pub(super) stats: SnapshotStats,
    pub(super) paths: Paths,
}

/// The files of the snapshot in the order they were read, for updating the file cache:
/// how many, which of them keep their row as it is (a bit each: a million files take
/// 125 KiB), and how many had no row. Which paths the snapshot holds is read back from
/// the entry stream, and only when a file may be gone ([`FileSet`]).
#[derive(Default)]
pub(super) struct Paths {
    pub(super) count: u64,
    kept: Vec<u64>,
    pub(super) kept_count: u64,
    /// Files in the snapshot that had no row in the file cache.
    pub(super) fresh: u64,
    /// Whether the last file looked up had no row.
    pub(super) no_row: bool,
    /// Whether the last file reused had its chunks looked up one by one: its row is
    /// written again, naming their packs, so that the next run need not.
    pub(super) looked_up: bool,
}

impl Paths {
    fn push(&mut self, keeps_row: bool) {
        let (word, bit) = ((self.count / 64) as usize, self.count % 64);
        if word == self.kept.len() {
            self.kept.push(0);
        }
        self.kept[word] |= u64::from(keeps_row) << bit;
        self.kept_count += u64::from(keeps_row);
        self.count += 1;
    }

    /// Whether the `i`-th file keeps its row as it is.
    pub(super) fn keeps_row(&self, i: u64) -> bool {
        self.kept.get((i / 64) as usize).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
}

/// The paths of a snapshot's files, as 64-bit hashes in order: read from the entry
/// stream when the file cache may hold files the snapshot lacks (8 bytes a file, and
/// only then).
pub(super) struct FileSet(Vec<u64>);

impl FileSet {
    pub(super) fn read(entries_path: &Path) -> Result<FileSet> {
        let entries = EntryReader::new(std::io::BufReader::new(File::open(entries_path)?))?;
        let mut hashes = Vec::new();
        for e in entries {
            let e = e?;
            if e.kind == Kind::File {
                hashes.push(path_key(&e.path));
            }
        }
        hashes.sort_unstable();
        Ok(FileSet(hashes))
    }

    pub(super) fn contains(&self, path: &[u8]) -> bool {
        self.0.binary_search(&path_key(path)).is_ok()
    }
}

/// The file set of `entries_path`, read the first time it is asked for.
pub(super) struct LazyFileSet<'a> {
    pub(super) entries_path: &'a Path,
    pub(super) set: std::cell::OnceCell<FileSet>,
}

impl LazyFileSet<'_> {
    pub(super) fn get(&self) -> Result<&FileSet> {
        if let Some(set) = self.set.get() {
            return Ok(set);
        }
        let set = FileSet::read(self.entries_path)?;
        Ok(self.set.get_or_init(|| set))
    }
}

/// The reader stage: walks the source, reuses unchanged files' chunk lists, chunks and
/// hashes the rest, and sends chunks the repository does not hold to the compressors.
pub(super) struct Reader {
    pub(super) catalog: Catalog,
    pub(super) secret: RepoSecret,
    pub(super) chunker: Chunker,
    /// Smaller chunks for the entry stream: a changed file then costs ~64 KiB of new
    /// metadata instead of ~1 MiB.
    pub(super) entry_chunker: Chunker,
    pub(super) job: String,
    /// Chunks sent for storage in this run and not yet in the catalog. The uploader removes
    /// a pack's chunks after committing it, so this holds at most a few packs' worth and
    /// memory stays flat however much new data a run stores.
    pub(super) pending: Arc<Mutex<InFlight>>,
    /// The reader's view of the catalog: one read transaction, renewed now and then.
    pub(super) view: View,
    pub(super) paths: Paths,
    /// Stored packs (catalog row ids) this snapshot uses.
    pub(super) referenced: HashSet<i64>,
    pub(super) chunk_tx: SyncSender<Vec<NewChunk>>,
    /// Where new chunks' buffers come from (the packer gives them back).
    pub(super) buffers: Arc<crate::buffers::Buffers>,
    /// New chunks not yet handed to the compressors: small files are one chunk each, and
    /// handing each over alone costs more in wake-ups than compressing it.
    pub(super) batch: Batch,
    pub(super) counters: Arc<Counters>,
    pub(super) errors: Vec<EntryError>,
    pub(super) stats: SnapshotStats,
    /// Set when a later stage failed: stop walking.
    pub(super) abort: Arc<AtomicBool>,
    /// Set by a shutdown: stop walking and let the later stages store what they hold.
    pub(super) stop: Arc<AtomicBool>,
    /// The run's per-file steps.
    pub(super) observers: Vec<Box<dyn Observer>>,
    /// The file cache's row of the file being read, when it had one and it changed.
    pub(super) previous: Option<CachedFile>,
    /// The file cache, read a batch of rows at a time.
    pub(super) cache: CacheBatch,
    /// The catalog's packs when the run began: a cached row naming only these (and none
    /// skipped) needs no lookup per chunk.
    pub(super) known_packs: HashSet<i64>,
}

impl Reader {
    /// Reads everything, writes the entry stream, and returns the entry stream's chunks.
    pub(super) fn read_all(&mut self, input: Input, entries_path: &Path) -> Result<Vec<ChunkId>> {
        let file = File::create(entries_path).with_context(|| format!("cannot write {}", entries_path.display()))?;
        let mut writer = EntryWriter::new(BufWriter::new(file))?;
        match input {
            Input::Tree { roots } => {
                let t0 = Instant::now();
                let mut made = HashSet::new();
                for root in &roots {
                    self.dirs_above(root, &mut made, &mut writer)?;
                    self.walk(&root.path, &root.under, &root.excludes, &mut writer)?;
                }
                tracing::debug!(secs = t0.elapsed().as_secs_f64(), "walked");
            }
            Input::Stream { name, data } => {
                let e = self.stream(name, data)?;
                writer.write(&e).context("cannot write the entry stream")?;
            }
            Input::Objects { bucket, objects } => self.objects(&bucket, &objects, &mut writer)?,
        }
        let file = writer.into_inner().into_inner().map_err(|e| anyhow!("cannot write the entry stream: {e}"))?;
        drop(file);
        // The entry stream is stored like file data, so unchanged metadata dedups.
        let mut tree = Vec::new();
        let input = File::open(entries_path)?;
        let bytes_read = Counters::get(&self.counters.bytes_read);
        let result = self.chunk_into(input, &mut tree, true);
        self.counters.bytes_read.store(bytes_read, Ordering::Relaxed);
        result.map_err(|e| anyhow!("cannot store the entry stream: {e}"))?;
        self.batch.flush(&self.chunk_tx)?;
        Ok(tree)
    }

    /// One file made of a stream's bytes, owned by the user coffer runs as.
    pub(super) fn stream(&mut self, name: String, data: impl std::io::Read) -> Result<Entry> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut e = Entry::synthetic(name.into_bytes(), Kind::File, 0o600, now.as_nanos() as i64);
        e.size = self.chunk_into(data, &mut e.chunks, false).map_err(|e| match e {
            ChunkError::Read(err) => anyhow!("cannot read the command's output: {err}"),
            ChunkError::Sink(err) => err,
        })?;
        self.count_file(&e, false, false);
        Ok(e)
    }

    /// A file that goes into the snapshot, in the stats and the progress line, and shown
    /// to the observers. `reused`: not read; `keeps_row`: its cache row stays as it is.
    pub(super) fn count_file(&mut self, e: &Entry, reused: bool, keeps_row: bool) {
        let size = e.size;
        let previous = self.previous.take();
        let change = match (reused, &previous) {
            (true, _) => Change::Unchanged,
            (false, Some(row)) => Change::Modified(row),
            (false, None) => Change::Added,
        };
        for observer in &mut self.observers {
            observer.file(e, change);
        }
        self.paths.push(keeps_row);
        self.paths.fresh += u64::from(std::mem::take(&mut self.paths.no_row));
        self.stats.files += 1;
        self.stats.bytes += size;
        Counters::add(&self.counters.files, 1);
        Counters::add(&self.counters.bytes, size);
    }

    /// A bucket's objects as files under their keys (or escaped names, for keys that are
    /// not file paths), with the directories their paths imply. An object whose size and
    /// ETag are unchanged is not downloaded.
    pub(super) fn objects<W: std::io::Write>(
        &mut self,
        bucket: &crate::source::bucket::Bucket,
        objects: &[crate::source::bucket::Object],
        writer: &mut EntryWriter<W>,
    ) -> Result<()> {
        use crate::source::bucket::{StreamReader, escaped_path, etag_fingerprint};
        let mut dirs: HashSet<String> = HashSet::new();
        let mut files: HashSet<String> = HashSet::new();
        for meta in objects {
            if self.abort.load(Ordering::Relaxed) {
                bail!("the backup pipeline stopped");
            }
            if self.stop.load(Ordering::Relaxed) {
                return Err(Interrupted.into());
            }
            let key = &meta.key;
            // A key clashes when an object sits where it needs a directory, or when other
            // keys already made it a directory (`a` and `a/b` are both objects).
            let clashes = key.match_indices('/').any(|(i, _)| files.contains(&key[..i])) || dirs.contains(key);
            let escaped = escaped_path(key, clashes);
            let path = escaped.clone().unwrap_or_else(|| key.clone());
            let mtime_ns = meta.last_modified_ns;
            for (i, _) in path.match_indices('/') {
                let dir = &path[..i];
                if !dirs.contains(dir) {
                    dirs.insert(dir.to_string());
                    self.stats.dirs += 1;
                    let e = Entry::synthetic(dir.as_bytes().to_vec(), Kind::Dir, 0o755, mtime_ns);
                    writer.write(&e).context("cannot write the entry stream")?;
                }
            }
            let mut e = Entry::synthetic(path.as_bytes().to_vec(), Kind::File, 0o644, mtime_ns);
            e.key = escaped.map(|_| key.clone());
            (e.ino, e.size) = (etag_fingerprint(meta.etag.as_deref()), meta.size);
            self.counters.set_current(key.as_bytes());
            let cached = self.unchanged(&e, crate::source::bucket::unchanged)?;
            let reused = cached.is_some();
            let keeps_row = reused && !std::mem::take(&mut self.paths.looked_up);
            if let Some(cached) = cached {
                e.chunks = cached.chunks;
                e.content_type = cached.content_type;
                Counters::add(&self.counters.unchanged, 1);
            } else {
                let opened = crate::runtime::block_on(bucket.open_object(meta));
                let result = opened.map_err(ChunkError::Sink).and_then(|(stream, content_type)| {
                    e.content_type = content_type;
                    self.chunk_into(StreamReader::new(stream), &mut e.chunks, false)
                });
                match result {
                    Ok(n) => e.size = n,
                    Err(ChunkError::Read(err)) => {
                        self.problem(Path::new(key), format!("cannot read: {err}"));
                        continue;
                    }
                    Err(ChunkError::Sink(err)) if err.is::<Interrupted>() => return Err(err),
                    Err(ChunkError::Sink(err)) if self.abort.load(Ordering::Relaxed) => return Err(err),
                    Err(ChunkError::Sink(err)) => {
                        self.problem(Path::new(key), format!("cannot read: {err:#}"));
                        continue;
                    }
                }
            }
            files.insert(path);
            self.count_file(&e, reused, keeps_row);
            writer.write(&e).context("cannot write the entry stream")?;
        }
        Ok(())
    }

    /// The directories a tree is stored under (`etc` for `/etc`; `var`, `var/lib` and
    /// `var/lib/pg` for `/var/lib/pg`), each once, with the metadata of the directory it
    /// names, so that a restore recreates the layout.
    pub(super) fn dirs_above<W: std::io::Write>(
        &mut self,
        root: &path_source::TreeRoot,
        made: &mut HashSet<PathBuf>,
        writer: &mut EntryWriter<W>,
    ) -> Result<()> {
        let mut stored = PathBuf::new();
        for part in root.under.iter() {
            stored.push(part);
            if !made.insert(stored.clone()) {
                continue;
            }
            let real = Path::new("/").join(&stored);
            let meta = std::fs::metadata(&real).with_context(|| format!("cannot stat {}", real.display()))?;
            let mut e = Entry::synthetic(stored.as_os_str().as_bytes().to_vec(), Kind::Dir, 0, 0);
            use std::os::unix::fs::MetadataExt;
            (e.mode, e.uid, e.gid) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
            e.mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
            self.stats.dirs += 1;
            writer.write(&e).context("cannot write the entry stream")?;
        }
        Ok(())
    }

    /// Walks a directory tree into the entry stream, its entries named `under/…`.
    pub(super) fn walk<W: std::io::Write>(
        &mut self,
        root: &Path,
        under: &Path,
        excludes: &Excludes,
        writer: &mut EntryWriter<W>,
    ) -> Result<()> {
        let mut problems = Vec::new();
        path_source::walk(
            root,
            under,
            excludes,
            |found| {
                let entry = match found {
                    Found::Dir(e) => {
                        self.stats.dirs += 1;
                        Some(e)
                    }
                    Found::Symlink(e) => {
                        self.stats.symlinks += 1;
                        Some(e)
                    }
                    Found::File(e, opener) => self.file(e, &opener)?,
                };
                if let Some(e) = entry {
                    writer.write(&e).context("cannot write the entry stream")?;
                }
                Ok(())
            },
            |rel, error| problems.push((rel.to_path_buf(), error)),
        )?;
        for (rel, error) in problems {
            self.problem(&rel, error);
        }
        Ok(())
    }

    pub(super) fn problem(&mut self, rel: &Path, error: String) {
        tracing::warn!(path = %rel.display(), "{error}");
        self.errors.push(EntryError { path: rel.to_string_lossy().into_owned(), error });
    }

    /// One regular file: its entry with chunk ids, or `None` if it could not be read.
    pub(super) fn file(&mut self, mut e: Entry, opener: &crate::source::path::Opener) -> Result<Option<Entry>> {
        if self.abort.load(Ordering::Relaxed) {
            bail!("the backup pipeline stopped");
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(Interrupted.into());
        }
        self.counters.set_current(&e.path);
        let cached = self.unchanged(&e, path_source::unchanged)?;
        let reused = cached.is_some();
        let mut keeps_row = reused && !std::mem::take(&mut self.paths.looked_up);
        if let Some(cached) = cached {
            e.chunks = cached.chunks;
            // Attributes change the file's ctime: unchanged, it has the cached ones.
            e.xattrs = match cached.xattrs {
                Some(x) => x,
                // A row from before attributes were kept: read them, and rewrite the row.
                None => {
                    keeps_row = false;
                    opener.xattrs().unwrap_or_else(|err| {
                        let rel = Path::new(OsStr::from_bytes(&e.path));
                        self.problem(rel, format!("cannot read extended attributes: {err}"));
                        Vec::new()
                    })
                }
            };
            Counters::add(&self.counters.unchanged, 1);
        } else {
            let mut chunks = Vec::new();
            let mut xattrs = Ok(Vec::new());
            let result = opener.open().map_err(ChunkError::Read).and_then(|f| {
                xattrs = crate::xattr::of_fd(&f);
                self.chunk_into(f, &mut chunks, false)
            });
            match xattrs {
                Ok(x) => e.xattrs = x,
                Err(err) => self
                    .problem(Path::new(OsStr::from_bytes(&e.path)), format!("cannot read extended attributes: {err}")),
            }
            match result {
                Ok(n) => {
                    e.size = n;
                    e.chunks = chunks;
                }
                Err(ChunkError::Read(err)) => {
                    self.problem(Path::new(OsStr::from_bytes(&e.path)), format!("cannot read: {err}"));
                    return Ok(None);
                }
                Err(ChunkError::Sink(err)) => return Err(err),
            }
        }
        self.count_file(&e, reused, keeps_row);
        Ok(Some(e))
    }

    /// The fast path: the same file as in the last snapshot (`same` compares its identity
    /// with the cached one) with every chunk still stored → reuse the chunk list (and
    /// content type) without reading it.
    pub(super) fn unchanged(
        &mut self,
        e: &Entry,
        same: impl Fn(&CachedFile, &Entry) -> bool,
    ) -> Result<Option<CachedFile>> {
        (self.paths.no_row, self.paths.looked_up) = (false, false);
        self.previous = None;
        self.view.renew(&self.catalog, &self.pending)?;
        let Some(c) = self.catalog.cached_file_in(&mut self.cache, &self.job, &e.path)? else {
            self.paths.no_row = true;
            return Ok(None);
        };
        if !same(&c, e) {
            self.previous = Some(c);
            return Ok(None);
        }
        if self.catalog.cached_packs_usable(&c, &self.known_packs) {
            self.referenced.extend(c.packs.iter().flatten());
            return Ok(Some(c));
        }
        // The catalog is input too: its chunks must still be stored, outside damaged
        // packs, and add up to the size it claims; otherwise the file is read again.
        // (A chunk this run is storing has no length in the catalog yet: then the sizes
        // are not compared.)
        let mut packs = Vec::with_capacity(c.chunks.len());
        let (mut size, mut pending, mut missing) = (0u64, false, false);
        for id in &c.chunks {
            if lock(&self.pending).chunks.contains_key(id) {
                pending = true;
                continue;
            }
            self.view.renew(&self.catalog, &self.pending)?;
            match self.catalog.chunk_pack_and_size(id)? {
                Some((p, len)) => {
                    packs.push(p);
                    size += len;
                }
                None => {
                    missing = true;
                    break;
                }
            }
        }
        if missing {
            self.previous = Some(c);
            return Ok(None);
        }
        if !pending && size != c.size {
            tracing::warn!(path = %String::from_utf8_lossy(&e.path), "the catalog's cached chunk list does not add up to the file's size; reading it again");
            self.previous = Some(c);
            return Ok(None);
        }
        self.referenced.extend(packs);
        self.paths.looked_up = true;
        Ok(Some(c))
    }

    /// Chunks `input` (file data, or the entry stream when `entries`), appending chunk ids.
    pub(super) fn chunk_into<R: std::io::Read>(
        &mut self,
        input: R,
        ids: &mut Vec<ChunkId>,
        entries: bool,
    ) -> Result<u64, ChunkError> {
        let Reader {
            chunker,
            entry_chunker,
            secret,
            pending,
            view,
            referenced,
            catalog,
            chunk_tx,
            buffers,
            batch,
            counters,
            stop,
            observers,
            ..
        } = self;
        let chunker = if entries { entry_chunker } else { chunker };
        let mut offset = 0u64;
        chunker.chunk_stream(input, |data| {
            if !entries {
                if stop.load(Ordering::Relaxed) {
                    return Err(Interrupted.into());
                }
                observers.iter_mut().for_each(|o| o.chunk(offset, data));
                offset += data.len() as u64;
            }
            Counters::add(&counters.bytes_read, data.len() as u64);
            let id = secret.chunk_id(data);
            ids.push(id);
            // Pending first: a chunk leaves `pending` only once the reader's view of the
            // catalog shows its pack.
            if lock(pending).chunks.contains_key(&id) {
                return Ok(());
            }
            view.renew(catalog, pending)?;
            if let Some(pack) = catalog.chunk_pack(&id)? {
                referenced.insert(pack);
                return Ok(());
            }
            lock(pending).chunks.insert(id, None);
            Counters::add(&counters.bytes_new, data.len() as u64);
            batch.push(NewChunk { id, data: buffers.copy_of(data) }, chunk_tx)
        })
    }
}

/// New chunks for the compressors, handed over a batch at a time.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) chunks: Vec<NewChunk>,
    pub(super) bytes: usize,
}

impl Batch {
    const BYTES: usize = 1 << 20;
    const CHUNKS: usize = 64;

    pub(super) fn push(&mut self, chunk: NewChunk, tx: &SyncSender<Vec<NewChunk>>) -> Result<()> {
        self.bytes += chunk.data.len();
        self.chunks.push(chunk);
        if self.bytes >= Self::BYTES || self.chunks.len() >= Self::CHUNKS {
            self.flush(tx)?;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self, tx: &SyncSender<Vec<NewChunk>>) -> Result<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        tx.send(std::mem::take(&mut self.chunks)).map_err(|_| anyhow!("the backup pipeline stopped"))
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the stages
/// report their own panics when joined).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
