//! Restore: read a snapshot back, verifying everything on the way.
//!
//! Every pack is checked against its content hash before it is decrypted, every chunk
//! against its keyed hash after; objects are read by the version id the catalog
//! recorded. Files are written to a temporary name and renamed, so a file either appears
//! whole or not at all. A file whose data cannot be verified is named, skipped, and makes
//! the restore fail at the end; the rest is still restored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Context, Result, anyhow, bail};

use crate::ChunkId;
use crate::catalog::{Catalog, ChunkLoc, SnapshotRow};
use crate::config::Config;
use crate::format::entry::{Entry, EntryReader, Kind, safe_relative};
use crate::format::repo::RepoRecord;
use crate::format::snapshot::{self, SnapshotRecord};
use crate::format::{REPO_KEY, pack};
use crate::keys::{Identity, RepoSecret};
use crate::progress::{Counters, ProgressLine};
use crate::target::Target;

pub struct Options {
    pub job: String,
    pub snapshot: String,
    pub to: PathBuf,
    pub subpath: Option<String>,
    pub identity: PathBuf,
    pub overwrite: bool,
    /// Draw a progress line on a terminal.
    pub progress: bool,
}

#[derive(Default)]
pub struct Summary {
    pub snapshot_id: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Paths that could not be restored, with the reason.
    pub failures: Vec<String>,
    /// What the snapshot's source contained beyond its files (git refs, ...).
    pub contents: Option<crate::source::Contents>,
    /// Content types of restored bucket objects, by path.
    pub content_types: std::collections::HashMap<String, String>,
}

/// Recently used decoded packs kept for chunks shared between files.
const PACK_CACHE_BYTES: usize = 48 << 20;

pub fn run(cfg: &Config, opts: &Options) -> Result<Summary> {
    let (catalog, repo) = Catalog::open_repo(cfg)?;
    let snap = catalog.find_snapshot(&opts.job, &opts.snapshot)?;
    let identity = Arc::new(Identity::load(&opts.identity)?);
    let target = Target::open(&cfg.target)?;
    let runtime = crate::target::runtime()?;

    let record_bytes = runtime.block_on(target.get(REPO_KEY, repo.record_version.as_deref()))?;
    let (_, secret) = RepoRecord::open(&record_bytes, &identity)?;
    let record = read_record(&runtime, &target, &snap, &secret, &identity)?;

    let subpath = match &opts.subpath {
        Some(p) => {
            let p = p.trim_matches('/');
            if !safe_relative(p.as_bytes()) {
                bail!("--path `{p}` must be a relative path inside the snapshot, without `..`");
            }
            Some(p.as_bytes().to_vec())
        }
        None => None,
    };
    prepare_target_dir(&opts.to, opts.overwrite)?;

    let fetch = |schedule| Fetch {
        target: target.clone(),
        identity: identity.clone(),
        runtime: runtime.handle().clone(),
        schedule,
        state: Mutex::new(FetchState::default()),
        wake: Condvar::new(),
    };
    let counters = Arc::new(Counters::default());
    let _progress = ProgressLine::start(counters.clone(), opts.progress, crate::progress::restore_line);
    let mut r = Restorer { counters, catalog, secret, packs: Packs::start(fetch(Vec::new()), HashMap::new()) };
    let tmp = cfg.state_dir.join("tmp");
    crate::fsutil::create_private_dir(&tmp)?;
    let entries_path = tmp.join(format!("restore-{}-{}", snap.id, crate::hex::random(6)));
    let result = r.load_entries(&record, &entries_path).and_then(|()| {
        let schedule = r.schedule(&entries_path, subpath.as_deref())?;
        r.packs = Packs::start(fetch(schedule.packs), schedule.uses);
        r.write_tree(&record, &entries_path, &opts.to, subpath.as_deref())
    });
    drop(r.packs);
    let _ = std::fs::remove_file(&entries_path);
    let mut summary = result?;
    summary.snapshot_id = snap.id.clone();
    summary.contents = snap.contents.clone();
    let detail = format!("snapshot {} to {} ({} failures)", snap.id, opts.to.display(), summary.failures.len());
    let _ = r.catalog.event("restore", Some(&opts.job), &detail);
    Ok(summary)
}

fn read_record(
    runtime: &tokio::runtime::Runtime,
    target: &Target,
    snap: &SnapshotRow,
    secret: &RepoSecret,
    identity: &Identity,
) -> Result<SnapshotRecord> {
    let key = crate::format::snapshot_key(&snap.job, &snap.id);
    let object = runtime.block_on(target.get(&key, snap.record_version.as_deref()))?;
    snapshot::open(&object, &key, secret, identity).with_context(|| format!("snapshot record {key}"))
}

fn prepare_target_dir(to: &Path, overwrite: bool) -> Result<()> {
    match std::fs::read_dir(to) {
        Ok(mut rd) => {
            if rd.next().is_some() && !overwrite {
                bail!("restore target {} is not empty; choose an empty directory or pass --overwrite", to.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(to).with_context(|| format!("cannot create restore target {}", to.display()))
        }
        Err(e) => Err(anyhow!(e).context(format!("restore target {}", to.display()))),
    }
}

struct Restorer {
    counters: Arc<Counters>,
    catalog: Catalog,
    secret: RepoSecret,
    packs: Packs,
}

impl Restorer {
    /// Writes the snapshot's entry stream to a local file: it can be larger than memory.
    fn load_entries(&mut self, record: &SnapshotRecord, entries_path: &Path) -> Result<()> {
        let mut out = BufWriter::new(File::create(entries_path)?);
        for id in &record.tree {
            let data = self.chunk(id).map_err(|e| anyhow!("the snapshot's file list cannot be read: {e:#}"))?;
            out.write_all(&data)?;
        }
        out.flush()?;
        Ok(())
    }

    /// The packs the selected files need, in the order they will first be needed, and
    /// for each pack the positions (in the sequence of chunk reads) of every use.
    fn schedule(&self, entries_path: &Path, sub: Option<&[u8]>) -> Result<Schedule> {
        let mut schedule = Schedule::default();
        let mut position = 0u64;
        for entry in EntryReader::new(BufReader::new(File::open(entries_path)?))? {
            let entry = entry?;
            if entry.kind != Kind::File || !selected(&entry.path, sub) {
                continue;
            }
            for id in &entry.chunks {
                // A chunk missing from the catalog is reported when its file is written.
                if let Some(loc) = self.catalog.chunk_location(id)? {
                    let uses = schedule.uses.entry(loc.pack_hash.clone()).or_default();
                    if uses.is_empty() {
                        schedule.packs.push((loc.pack_hash, loc.pack_version));
                    }
                    uses.push_back(position);
                }
                position += 1;
            }
        }
        Ok(schedule)
    }

    /// Restores the selected entries in order. Packs arrive decoded from the prefetchers;
    /// a small pool decompresses and verifies chunks while this thread writes them, in
    /// order, to files opened under temporary names.
    fn write_tree(
        &mut self,
        record: &SnapshotRecord,
        entries_path: &Path,
        to: &Path,
        sub: Option<&[u8]>,
    ) -> Result<Summary> {
        let mut summary = Summary::default();
        let mut dirs: Vec<(PathBuf, Entry)> = Vec::new();
        let mut matched = false;
        let (job_tx, job_rx) = sync_channel::<DecodeJob>(PIPELINE_DEPTH);
        let job_rx = Mutex::new(job_rx);
        let mut writer = InOrderWriter { counters: self.counters.clone(), ..Default::default() };
        let secret = self.secret.clone();
        std::thread::scope(|scope| -> Result<()> {
            let job_tx = job_tx; // dropped when the walk ends, which stops the pool
            for _ in 0..DECODERS {
                let (rx, secret) = (&job_rx, &secret);
                scope.spawn(move || {
                    while let Ok(job) = rx.lock().map_err(|_| ()).and_then(|r| r.recv().map_err(|_| ())) {
                        let _ = job.reply.send(decode_chunk(secret, &job));
                    }
                });
            }
            for entry in EntryReader::new(BufReader::new(File::open(entries_path)?))? {
                let entry = entry?;
                if !safe_relative(&entry.path) {
                    bail!(
                        "the snapshot holds an unsafe path {:?}; refusing to restore it",
                        String::from_utf8_lossy(&entry.path)
                    );
                }
                if !selected(&entry.path, sub) {
                    continue;
                }
                matched = true;
                let dest = to.join(OsStr::from_bytes(&entry.path));
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
                }
                match entry.kind {
                    Kind::Dir => {
                        match std::fs::create_dir(&dest) {
                            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                                return Err(anyhow!(e).context(format!("cannot create {}", dest.display())));
                            }
                            _ => {}
                        }
                        summary.dirs += 1;
                        dirs.push((dest, entry));
                    }
                    Kind::Symlink => {
                        let target = entry.target.as_deref().ok_or_else(|| anyhow!("symlink without a target"))?;
                        if dest.symlink_metadata().is_ok() {
                            std::fs::remove_file(&dest)
                                .with_context(|| format!("cannot replace {}", dest.display()))?;
                        }
                        std::os::unix::fs::symlink(OsStr::from_bytes(target), &dest)
                            .with_context(|| format!("cannot create symlink {}", dest.display()))?;
                        set_owner_and_time(&dest, &entry)?;
                        summary.symlinks += 1;
                    }
                    Kind::File => {
                        summary.files += 1;
                        summary.bytes += entry.size;
                        if let Some(ct) = &entry.content_type {
                            summary.content_types.insert(String::from_utf8_lossy(&entry.path).into_owned(), ct.clone());
                        }
                        let chunks = entry.chunks.clone();
                        writer.open(dest, entry);
                        for id in chunks {
                            let step = match self.locate(&id) {
                                Ok((loc, plain)) => {
                                    let size = loc.raw_length as usize;
                                    writer.queued_bytes += size;
                                    let (reply, rx) = sync_channel(1);
                                    job_tx
                                        .send(DecodeJob { id, loc, plain, reply })
                                        .map_err(|_| anyhow!("the restore pool stopped"))?;
                                    Step::Chunk(rx, size)
                                }
                                Err(e) => Step::Failed(e),
                            };
                            writer.push(step);
                        }
                        writer.push(Step::Close);
                    }
                }
            }
            writer.finish();
            Ok(())
        })?;
        summary.files -= writer.failures.len() as u64;
        summary.failures = writer.failures;
        if !matched && sub.is_some() {
            bail!("no path `{}` in snapshot {}", String::from_utf8_lossy(sub.unwrap_or_default()), record.id);
        }
        // Directory modes and times last, deepest first: writing inside changes them.
        for (dest, entry) in dirs.iter().rev() {
            std::fs::set_permissions(dest, std::fs::Permissions::from_mode(entry.mode))?;
            set_owner_and_time(dest, entry)?;
        }
        sync_filesystem(to);
        Ok(summary)
    }

    /// A chunk's location and its decoded pack.
    fn locate(&mut self, id: &ChunkId) -> Result<(ChunkLoc, Arc<Vec<u8>>)> {
        let loc = self.catalog.chunk_location(id)?.ok_or_else(|| anyhow!("chunk {id} is not in the catalog"))?;
        let plain = self.packs.get(&loc.pack_hash, loc.pack_version.as_deref())?;
        Ok((loc, plain))
    }

    /// A chunk's plaintext, verified (for the entry stream, before the pool exists).
    fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>> {
        let (loc, plain) = self.locate(id)?;
        decode_chunk(&self.secret, &DecodeJob { id: *id, loc, plain, reply: sync_channel(1).0 })
    }
}

/// What a restore will read: packs in order of first need, and when each is used.
#[derive(Default)]
struct Schedule {
    packs: Vec<(String, Option<String>)>,
    uses: HashMap<String, VecDeque<u64>>,
}

/// Chunks being decoded ahead of the writer, and threads decoding them.
const PIPELINE_DEPTH: usize = 16;
const PIPELINE_BYTES: usize = 24 << 20;
const DECODERS: usize = 2;

struct DecodeJob {
    id: ChunkId,
    loc: ChunkLoc,
    plain: Arc<Vec<u8>>,
    reply: std::sync::mpsc::SyncSender<Result<Vec<u8>>>,
}

/// Decompresses a chunk out of its pack and checks it against its keyed hash.
fn decode_chunk(secret: &RepoSecret, job: &DecodeJob) -> Result<Vec<u8>> {
    let loc = &job.loc;
    let blob = pack::BlobEntry {
        id: job.id,
        offset: loc.offset,
        length: loc.length,
        raw_length: loc.raw_length,
        flags: loc.flags,
    };
    pack::verified_blob(&job.plain, &blob, secret)
        .with_context(|| format!("pack {}", crate::format::pack_key(&loc.pack_hash)))
}

/// One step of writing files in order.
enum Step {
    /// A chunk being decoded, and its size.
    Chunk(std::sync::mpsc::Receiver<Result<Vec<u8>>>, usize),
    Failed(anyhow::Error),
    Close,
}

/// A file being restored: written under a temporary name, renamed when complete.
struct OpenFile {
    dest: PathBuf,
    tmp: PathBuf,
    entry: Entry,
    out: Option<BufWriter<File>>,
    written: u64,
    error: Option<anyhow::Error>,
}

/// Applies steps in order, a bounded number behind the producer.
#[derive(Default)]
struct InOrderWriter {
    files: VecDeque<OpenFile>,
    steps: VecDeque<Step>,
    /// Plaintext bytes of the chunks in `steps`: bounds memory, as chunks vary 512 KiB–8 MiB.
    queued_bytes: usize,
    failures: Vec<String>,
    counters: Arc<Counters>,
}

impl InOrderWriter {
    fn open(&mut self, dest: PathBuf, entry: Entry) {
        self.counters.set_current(&String::from_utf8_lossy(&entry.path));
        let tmp = crate::fsutil::temp_path(&dest);
        let (out, error) = match File::create(&tmp) {
            Ok(f) => (Some(BufWriter::with_capacity(1 << 20, f)), None),
            Err(e) => (None, Some(anyhow!(e).context(format!("cannot create {}", tmp.display())))),
        };
        self.files.push_back(OpenFile { dest, tmp, entry, out, written: 0, error });
    }

    fn push(&mut self, step: Step) {
        self.steps.push_back(step);
        while self.steps.len() > PIPELINE_DEPTH || self.queued_bytes > PIPELINE_BYTES {
            self.advance();
        }
    }

    fn finish(&mut self) {
        while !self.steps.is_empty() {
            self.advance();
        }
    }

    fn advance(&mut self) {
        let Some(step) = self.steps.pop_front() else { return };
        let result = match step {
            Step::Close => {
                if let Some(f) = self.files.pop_front() {
                    self.close(f);
                }
                return;
            }
            Step::Failed(e) => Err(e),
            Step::Chunk(rx, size) => {
                self.queued_bytes -= size;
                rx.recv().unwrap_or_else(|_| Err(anyhow!("a decoder stopped")))
            }
        };
        let Some(f) = self.files.front_mut() else { return };
        if f.error.is_some() {
            return;
        }
        let written = result.and_then(|data| {
            f.written += data.len() as u64;
            f.out.as_mut().map_or(Ok(()), |o| o.write_all(&data)).map_err(anyhow::Error::from)
        });
        if let Err(e) = written {
            f.error = Some(e);
        }
    }

    fn close(&mut self, mut f: OpenFile) {
        let result = match f.error.take() {
            Some(e) => Err(e),
            None => finish_file(&mut f),
        };
        if result.is_ok() {
            Counters::add(&self.counters.files, 1);
            Counters::add(&self.counters.bytes, f.written);
        }
        if let Err(e) = result {
            let _ = std::fs::remove_file(&f.tmp);
            let msg = format!("{}: {e:#}", String::from_utf8_lossy(&f.entry.path));
            tracing::error!("{msg}");
            self.failures.push(msg);
        }
    }
}

/// Checks the size, applies mode and times, and renames the file into place.
fn finish_file(f: &mut OpenFile) -> Result<()> {
    if f.written != f.entry.size {
        bail!("restored {} bytes but the snapshot recorded {}", f.written, f.entry.size);
    }
    let out = f.out.take().ok_or_else(|| anyhow!("file was not open"))?;
    let file = out.into_inner().map_err(|e| anyhow!("write failed: {e}"))?;
    file.set_permissions(std::fs::Permissions::from_mode(f.entry.mode))?;
    drop(file);
    set_owner_and_time(&f.tmp, &f.entry)?;
    if f.dest.is_dir() {
        std::fs::remove_dir_all(&f.dest)?;
    }
    std::fs::rename(&f.tmp, &f.dest)?;
    Ok(())
}

/// Decoded packs for the restorer. Packs are fetched, checked and decrypted ahead of need
/// by a few threads, in the order the snapshot will need them, while the restorer writes
/// files; a few recently used ones stay cached for chunks shared between files.
struct Packs {
    shared: Arc<Fetch>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Schedule position of each pack.
    index: HashMap<String, usize>,
    cache: VecDeque<(String, Arc<Vec<u8>>)>,
    cached_bytes: usize,
    /// Packs found unreadable, with why (never fetched twice).
    bad: HashMap<String, String>,
    /// For each pack, the positions of the chunk reads it still has to serve.
    uses: HashMap<String, VecDeque<u64>>,
    /// Packs fetched a second time because they had left the cache.
    refetched: usize,
}

struct Fetch {
    target: Target,
    identity: Arc<Identity>,
    runtime: tokio::runtime::Handle,
    /// Packs in order of first need: (hash, version).
    schedule: Vec<(String, Option<String>)>,
    state: Mutex<FetchState>,
    wake: Condvar,
}

#[derive(Default)]
struct FetchState {
    /// Next schedule position to fetch.
    next: usize,
    /// Furthest position the restorer has asked for; fetchers stay within a window of it.
    wanted: usize,
    ready: HashMap<usize, Result<Arc<Vec<u8>>, String>>,
    taken: HashSet<usize>,
    stop: bool,
}

/// Packs decoded ahead of the restorer (each holds up to a pack in memory).
const PREFETCH_WINDOW: usize = 1;
const FETCH_THREADS: usize = 2;

impl Fetch {
    /// Fetches a pack by version, checks its content hash, decrypts it.
    fn fetch(&self, hash: &str, version: Option<&str>) -> Result<Vec<u8>, String> {
        let key = crate::format::pack_key(hash);
        let ct = self.runtime.block_on(self.target.get(&key, version)).map_err(|e| format!("{e:#}"))?;
        pack::open(&ct, hash, &self.identity).map_err(|e| e.to_string())
    }

    fn worker(&self) {
        loop {
            let i = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if st.stop || st.next >= self.schedule.len() {
                        return;
                    }
                    if st.next <= st.wanted + PREFETCH_WINDOW {
                        break;
                    }
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.next += 1;
                st.next - 1
            };
            let (hash, version) = &self.schedule[i];
            let result = self.fetch(hash, version.as_deref()).map(Arc::new);
            self.state.lock().unwrap_or_else(|p| p.into_inner()).ready.insert(i, result);
            self.wake.notify_all();
        }
    }
}

impl Packs {
    fn start(fetch: Fetch, uses: HashMap<String, VecDeque<u64>>) -> Packs {
        let index = fetch.schedule.iter().enumerate().map(|(i, (h, _))| (h.clone(), i)).collect();
        let shared = Arc::new(fetch);
        let threads = (0..FETCH_THREADS)
            .map(|_| {
                let f = shared.clone();
                std::thread::spawn(move || f.worker())
            })
            .collect();
        Packs {
            shared,
            threads,
            index,
            cache: VecDeque::new(),
            cached_bytes: 0,
            bad: HashMap::new(),
            uses,
            refetched: 0,
        }
    }

    /// A pack's plaintext, verified.
    fn get(&mut self, hash: &str, version: Option<&str>) -> Result<Arc<Vec<u8>>> {
        let key = crate::format::pack_key(hash);
        if let Some(u) = self.uses.get_mut(hash) {
            u.pop_front();
        }
        if let Some(pos) = self.cache.iter().position(|(h, _)| h == hash) {
            let hit = self.cache.remove(pos).expect("position is in range");
            let plain = hit.1.clone();
            self.cache.push_back(hit);
            return Ok(plain);
        }
        if let Some(why) = self.bad.get(hash) {
            bail!("pack {key}: {why}");
        }
        let result = match self.index.get(hash) {
            Some(&i) => self.wait_for(i).unwrap_or_else(|| {
                self.refetched += 1;
                self.shared.fetch(hash, version).map(Arc::new)
            }),
            None => self.shared.fetch(hash, version).map(Arc::new),
        };
        let plain = result.map_err(|why| {
            self.bad.insert(hash.to_string(), why.clone());
            anyhow!("pack {key}: {why}")
        })?;
        self.cached_bytes += plain.len();
        self.cache.push_back((hash.to_string(), plain.clone()));
        // Over budget: drop the pack whose next use is furthest away (never, first): with the
        // whole sequence of reads known, this is the optimal choice (Belady's).
        while self.cached_bytes > PACK_CACHE_BYTES && self.cache.len() > 1 {
            let next_use = |h: &String| self.uses.get(h).and_then(|u| u.front().copied()).unwrap_or(u64::MAX);
            let victim = (0..self.cache.len()).max_by_key(|&i| next_use(&self.cache[i].0)).unwrap_or(0);
            if let Some((_, old)) = self.cache.remove(victim) {
                self.cached_bytes -= old.len();
            }
        }
        Ok(plain)
    }

    /// The prefetched result for schedule position `i`, or `None` if it was already taken
    /// (then the caller fetches it again itself).
    fn wait_for(&self, i: usize) -> Option<Result<Arc<Vec<u8>>, String>> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.taken.contains(&i) {
            return None;
        }
        if i > st.wanted {
            st.wanted = i;
            self.shared.wake.notify_all();
        }
        loop {
            if let Some(r) = st.ready.remove(&i) {
                st.taken.insert(i);
                return Some(r);
            }
            st = self.shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Packs {
    fn drop(&mut self) {
        if !self.index.is_empty() {
            tracing::debug!(packs = self.index.len(), refetched = self.refetched, "restore pack reads");
        }
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether `path` is `sub` or inside it (everything, without `--path`).
fn selected(path: &[u8], sub: Option<&[u8]>) -> bool {
    match sub {
        None => true,
        Some(sub) => path == sub || (path.starts_with(sub) && path.get(sub.len()) == Some(&b'/')),
    }
}

/// Restores owner (when running as root) and modification time, without following links.
fn set_owner_and_time(path: &Path, e: &Entry) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: plain syscalls on a NUL-terminated path we own; no memory is shared.
    unsafe {
        if libc::geteuid() == 0 && libc::lchown(c.as_ptr(), e.uid, e.gid) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot chown {}", path.display()));
        }
        let t = libc::timespec {
            tv_sec: e.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: e.mtime_ns.rem_euclid(1_000_000_000),
        };
        let times = [t, t];
        if libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot set times of {}", path.display()));
        }
    }
    Ok(())
}

/// One flush of everything written, instead of an fsync per file.
fn sync_filesystem(dir: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(d) = File::open(dir) {
        // SAFETY: syncfs on a descriptor we own.
        unsafe { libc::syncfs(d.as_raw_fd()) };
    }
}
