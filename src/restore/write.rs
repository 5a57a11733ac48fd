//! Files written in parallel. The restore hands out one job per chunk; a worker
//! decompresses it out of its (already decrypted) pack, checks it against its keyed
//! hash and writes it at its offset in its file. Files need no order: the worker that
//! completes a file's last job gives it owner, mode and times and links it into place.
//! Several writers keep both cores busy and overlap the file system's own waits, which
//! a single writer (like `tar x`) cannot.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::chunk_id::ChunkId;
use crate::format::pack::{self, BlobEntry};
use crate::keys::RepoSecret;
use crate::progress::Counters;

use super::dest::{Dest, Meta, NewFile};

/// Plaintext bytes of chunks handed out and not yet written: bounds memory, as chunks
/// vary from 512 KiB to 8 MiB.
const IN_FLIGHT_BYTES: usize = 32 << 20;
/// Jobs go out in batches (of this many jobs or bytes, whichever comes first): a small
/// file is one job, and handing out each alone costs more in wake-ups than writing it.
const BATCH_JOBS: usize = 64;
const BATCH_BYTES: usize = 4 << 20;
const QUEUE: usize = 8;

/// A file being restored.
pub struct FileTask {
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
    /// Its path in the snapshot, for messages.
    path: Vec<u8>,
    meta: Meta,
    size: u64,
    file: OnceLock<Result<NewFile, String>>,
    /// Jobs not yet done: one per chunk (one `Empty` for an empty file).
    pending: AtomicUsize,
    written: AtomicU64,
    error: Mutex<Option<String>>,
}

impl FileTask {
    pub fn new(parent: Arc<OwnedFd>, name: &[u8], entry: &crate::format::entry::Entry) -> Arc<FileTask> {
        Arc::new(FileTask {
            parent,
            name: name.to_vec(),
            path: entry.path.clone(),
            meta: Meta::from(entry),
            size: entry.size,
            file: OnceLock::new(),
            pending: AtomicUsize::new(entry.chunks.len().max(1)),
            written: AtomicU64::new(0),
            error: Mutex::new(None),
        })
    }

    fn fail(&self, why: String) {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(why);
    }

    fn failed(&self) -> bool {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn file(&self, dest: &Dest) -> Result<&NewFile, String> {
        self.file
            .get_or_init(|| {
                dest.create_file(self.parent.as_fd(), self.meta.mode).map_err(|e| format!("cannot create: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

pub enum Job {
    /// A chunk to decode out of its pack and write at `offset`.
    Chunk { task: Arc<FileTask>, offset: u64, blob: BlobEntry, pack: Arc<Vec<u8>> },
    /// A chunk that cannot be had (not in the catalog, or its pack is unreadable).
    Failed { task: Arc<FileTask>, why: String },
    /// A file without chunks.
    Empty(Arc<FileTask>),
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Job::Chunk { blob, .. } => blob.raw_length as usize,
            _ => 0,
        }
    }
}

/// The writer threads and what they share.
pub struct Pool {
    jobs: Option<SyncSender<Vec<Job>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    batch: Vec<Job>,
    batch_bytes: usize,
}

struct Shared {
    dest: Arc<Dest>,
    secret: RepoSecret,
    counters: Arc<Counters>,
    in_flight: Mutex<InFlight>,
    drained: Condvar,
    done: Mutex<Done>,
}

#[derive(Default)]
struct InFlight {
    bytes: usize,
    /// The restore waits for bytes to drain (so a worker wakes it).
    waiting: bool,
}

/// What the pool restored, and what it could not.
#[derive(Default)]
pub struct Done {
    pub files: u64,
    pub bytes: u64,
    /// Files that failed, with why.
    pub failures: Vec<String>,
}

impl Pool {
    pub fn start(dest: Arc<Dest>, secret: RepoSecret, counters: Arc<Counters>, threads: usize) -> Pool {
        let (tx, rx) = sync_channel::<Vec<Job>>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            dest,
            secret,
            counters,
            in_flight: Mutex::new(InFlight::default()),
            drained: Condvar::new(),
            done: Mutex::new(Done::default()),
        });
        let threads = (0..threads.max(1))
            .map(|i| {
                let (rx, shared) = (rx.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("restore-{i}"))
                    .spawn(move || shared.work(&rx))
                    .expect("a thread can be started")
            })
            .collect();
        Pool { jobs: Some(tx), threads, shared, batch: Vec::new(), batch_bytes: 0 }
    }

    /// Hands out a job (in a batch), waiting while too many bytes are in flight.
    pub fn send(&mut self, job: Job) {
        self.batch_bytes += job.bytes();
        self.batch.push(job);
        if self.batch.len() >= BATCH_JOBS || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut f = self.shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        while f.bytes > IN_FLIGHT_BYTES {
            f.waiting = true;
            f = self.shared.drained.wait(f).unwrap_or_else(|p| p.into_inner());
        }
        f.bytes += std::mem::take(&mut self.batch_bytes);
        drop(f);
        if let Some(tx) = &self.jobs {
            // The workers only stop when the sender is dropped.
            let _ = tx.send(std::mem::take(&mut self.batch));
        }
    }

    /// Waits for every job.
    pub fn finish(mut self) -> Done {
        self.flush();
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        std::mem::take(&mut *self.shared.done.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Shared {
    fn work(&self, rx: &Mutex<Receiver<Vec<Job>>>) {
        loop {
            let batch = match rx.lock().map(|r| r.recv()) {
                Ok(Ok(batch)) => batch,
                _ => return,
            };
            let bytes: usize = batch.iter().map(Job::bytes).sum();
            for job in batch {
                self.run(job);
            }
            let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            f.bytes -= bytes;
            if std::mem::take(&mut f.waiting) {
                self.drained.notify_one();
            }
        }
    }

    fn run(&self, job: Job) {
        let task = match job {
            Job::Chunk { task, offset, blob, pack } => {
                if !task.failed()
                    && let Err(why) = self.write_chunk(&task, offset, &blob, &pack)
                {
                    task.fail(why);
                }
                task
            }
            Job::Failed { task, why } => {
                task.fail(why);
                task
            }
            Job::Empty(task) => task,
        };
        if task.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.complete(&task);
        }
    }

    fn write_chunk(&self, task: &FileTask, offset: u64, blob: &BlobEntry, pack: &[u8]) -> Result<(), String> {
        let f = task.file(&self.dest)?;
        pack::with_verified_blob(pack, blob, &self.secret, |data| {
            f.file.write_all_at(data, offset)?;
            task.written.fetch_add(data.len() as u64, Ordering::Relaxed);
            Counters::add(&self.counters.bytes, data.len() as u64);
            Ok::<_, std::io::Error>(())
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot write: {e}"))
    }

    /// The file's last job is done: it is checked, finished and named, or discarded.
    fn complete(&self, task: &FileTask) {
        let result = match task.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(why) => Err(why),
            None => self.finish(task),
        };
        if let Err(why) = result {
            if let Some(Ok(f)) = task.file.get() {
                self.dest.discard(task.parent.as_fd(), f);
            }
            let msg = format!("{}: {why}", crate::escape::printable(&task.path));
            tracing::error!("{msg}");
            self.done.lock().unwrap_or_else(|p| p.into_inner()).failures.push(msg);
        }
    }

    fn finish(&self, task: &FileTask) -> Result<(), String> {
        let written = task.written.load(Ordering::Relaxed);
        if written != task.size {
            return Err(format!("restored {written} bytes but the snapshot recorded {}", task.size));
        }
        let f = task.file(&self.dest)?;
        self.dest.finish_file(task.parent.as_fd(), &task.name, f, &task.meta).map_err(|e| format!("{e}"))?;
        Counters::add(&self.counters.files, 1);
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        done.files += 1;
        done.bytes += task.size;
        Ok(())
    }
}

/// A blob entry for chunk `id` at a planned location.
pub fn blob(id: ChunkId, loc: &super::plan::Loc) -> BlobEntry {
    BlobEntry { id, offset: loc.offset, length: loc.length, raw_length: loc.raw_length, flags: loc.flags }
}
