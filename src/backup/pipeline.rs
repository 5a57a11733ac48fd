//! The stages after the reader: compressors (one per core), the packer (which seals
//! and encrypts packs) and the uploader (a few puts at once); a pack enters the catalog
//! only after the server acknowledged it.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use tokio::task::JoinSet;

use crate::catalog::{CachedFile, Catalog, SnapshotRow, StoredPack};
use crate::catalog::{StoredCopy, TargetId};
use crate::chunk_id::ChunkId;
use crate::chunker::Chunker;
use crate::config::{Config, Job};
use crate::format::entry::{EntryReader, Kind};
use crate::format::pack::{BlobEntry, FLAG_ZSTD, PackBuilder};
use crate::format::snapshot::SnapshotStats;
use crate::observer::Observer;
use crate::progress::Counters;
use crate::source::Prepared;
use crate::store::Target;

use super::fleet::{Down, Repo, down_reasons};
use super::reader::*;

/// A chunk as it will be stored in a pack.
pub(super) struct Blob {
    pub(super) id: ChunkId,
    pub(super) stored: Vec<u8>,
    pub(super) raw_length: u32,
    pub(super) flags: u8,
}

/// An encrypted pack ready to upload.
pub(super) struct SealedPack {
    pub(super) hash: String,
    pub(super) ciphertext: Bytes,
    pub(super) blobs: Vec<BlobEntry>,
    /// Its place among the sealed packs a run may hold (see [`sealed_slots`]), given back
    /// when the pack is dropped: uploaded, or given up.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// How many sealed packs a run holds at once: one per concurrent upload. A pack's
/// ciphertext is its size in memory, the largest buffer of a backup; one more, sealed
/// ahead of a free upload slot, would save only the sealing (milliseconds against an
/// upload's round trips).
fn sealed_slots(targets: &[Target]) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(packs_in_flight(targets)))
}

/// How many packs upload at once: each goes to every target, so the most any one takes.
fn packs_in_flight(targets: &[Target]) -> usize {
    targets.iter().map(|t| t.upload_concurrency).max().unwrap_or(1)
}

/// Where the pipeline's packs go: the run's targets (less those that fail), locked until
/// `pack_until`.
pub(super) struct Pipeline<'a> {
    pub(super) targets: &'a [Target],
    pub(super) down: &'a Down,
    pub(super) pack_until: i64,
    /// The key set packs are encrypted to (the config's recipients).
    pub(super) keyset: u32,
}

/// What watches a run from outside the pipeline: the progress counters, a shutdown, and
/// the per-file steps.
pub(super) struct Watch {
    pub(super) counters: Arc<Counters>,
    pub(super) stop: Option<Arc<AtomicBool>>,
    pub(super) observers: Vec<Box<dyn Observer>>,
}

/// Reads the source through the pipeline (reader → compressors → packer → uploader)
/// until every new chunk is stored and its pack recorded, writing the entry stream to
/// `entries_path`. Returns what the reader saw, and the packs uploaded.
pub(super) fn run_stages(
    cfg: &Config,
    job: &Job,
    repo: &mut Repo,
    watch: Watch,
    prepared: Prepared,
    entries_path: &Path,
    pipeline: &Pipeline,
) -> Result<(ReadOutput, HashSet<i64>)> {
    let counters = &watch.counters.clone();
    let Prepared { input, errors: source_errors, command, .. } = prepared;
    let abort = Arc::new(AtomicBool::new(false));
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let (chunk_tx, chunk_rx) = sync_channel::<Vec<NewChunk>>(2 * workers);
    let (pack_tx, mut pack_rx) = tokio::sync::mpsc::channel::<SealedPack>(1);

    // Chunks a run stopped before indexing: the dedup lookup finds them from here on.
    repo.catalog.index_chunks()?;
    let pending = Arc::new(Mutex::new(InFlight::default()));
    let buffers = Arc::new(crate::buffers::Buffers::for_chunks());
    let pack_buffers = Arc::new(crate::buffers::Buffers::for_packs(cfg.pack_size as usize));
    // Reader: its own catalog connection (WAL lets it read while the uploader writes).
    let reader = {
        let reader_catalog = Catalog::open(&cfg.state().catalog())?;
        let known_packs = reader_catalog.pack_ids()?;
        let mut r = Reader {
            catalog: reader_catalog,
            secret: repo.secret().clone(),
            chunker: Chunker::new(repo.row.chunker, repo.secret().chunker_seed()),
            entry_chunker: Chunker::new(ENTRY_STREAM_CHUNKS, repo.secret().chunker_seed()),
            job: job.name.clone(),
            pending: pending.clone(),
            view: View::default(),
            paths: Paths::default(),
            referenced: HashSet::new(),
            chunk_tx,
            buffers: buffers.clone(),
            batch: Batch::default(),
            counters: counters.clone(),
            errors: source_errors,
            stats: SnapshotStats::default(),
            abort: abort.clone(),
            stop: watch.stop.unwrap_or_default(),
            observers: watch.observers,
            previous: None,
            cache: Default::default(),
            known_packs,
        };
        let entries_path = entries_path.to_path_buf();
        std::thread::Builder::new().name("reader".into()).spawn(move || {
            let out = r.read_all(input, &entries_path);
            // Dropping the reader closes the chunk queue, which lets the later stages finish.
            out.map(|tree| ReadOutput {
                tree,
                referenced: r.referenced,
                errors: r.errors,
                stats: r.stats,
                paths: r.paths,
            })
        })?
    };

    let slots = sealed_slots(pipeline.targets);
    let packing = Packing { tx: pack_tx, slots: slots.clone(), buffers: pack_buffers.clone() };
    let middle = Middle::start(cfg, pipeline.keyset, workers, chunk_rx, packing, buffers)?;

    let upload = crate::runtime::block_on(upload_loop(
        &mut pack_rx,
        pipeline,
        &mut repo.catalog,
        counters,
        &pending,
        &pack_buffers,
    ));
    if upload.is_err() {
        abort.store(true, Ordering::Relaxed);
    }
    // Unblock the packer if the upload stopped early (waiting for a slot or to send).
    slots.close();
    drop(pack_rx);

    let read = reader.join().map_err(|_| anyhow!("the reader thread panicked"));
    let packed = middle.join()?;
    // A command's output counts only if it exited 0 in time.
    let command_result = match command {
        Some(c) if upload.is_ok() && matches!(read, Ok(Ok(_))) => c.finish(),
        Some(c) => {
            c.kill();
            Ok(())
        }
        None => Ok(()),
    };
    // The first real cause wins over the "pipeline stopped" of the stages it stopped.
    let uploaded = upload?;
    let reader = read??;
    packed?;
    command_result?;
    Ok((reader, uploaded))
}

/// The pipeline's middle stages: compressors (one per core) and the packer, between the
/// reader's chunk queue and the uploader's pack queue.
pub(super) struct Middle {
    pub(super) compressors: Vec<std::thread::JoinHandle<Result<()>>>,
    pub(super) packer: std::thread::JoinHandle<Result<()>>,
}

impl Middle {
    pub(super) fn start(
        cfg: &Config,
        keyset: u32,
        workers: usize,
        chunk_rx: Receiver<Vec<NewChunk>>,
        packing: Packing,
        buffers: Arc<crate::buffers::Buffers>,
    ) -> Result<Middle> {
        let (blob_tx, blob_rx) = sync_channel::<Vec<Blob>>(2 * workers);
        let chunk_rx = Arc::new(Mutex::new(chunk_rx));
        let mut compressors = Vec::new();
        for i in 0..workers {
            let (rx, tx, level, buffers) = (chunk_rx.clone(), blob_tx.clone(), cfg.compression_level, buffers.clone());
            let name = format!("compress-{i}");
            compressors
                .push(std::thread::Builder::new().name(name).spawn(move || compress_loop(&rx, &tx, level, &buffers))?);
        }
        // Only the compressors hold the chunk queue (this one is dropped on return): when
        // they stop, the reader's sends fail instead of blocking.
        drop(blob_tx);
        let (recipients, pack_size) = (cfg.recipients.clone(), cfg.pack_size as usize);
        let packer = std::thread::Builder::new()
            .name("packer".into())
            .spawn(move || pack_loop(blob_rx, &packing, &recipients, keyset, pack_size, &buffers))?;
        Ok(Middle { compressors, packer })
    }

    /// Waits for both stages: a compressor's error first, then the packer's result.
    pub(super) fn join(self) -> Result<Result<()>> {
        for c in self.compressors {
            c.join().map_err(|_| anyhow!("a compressor thread panicked"))??;
        }
        self.packer.join().map_err(|_| anyhow!("the packer thread panicked"))
    }
}

/// Records the snapshot complete, with the packs it needs and the job's new file cache,
/// in one transaction. The cache rows of files read again come from the entry stream.
pub(super) fn complete(
    catalog: &mut Catalog,
    row: &SnapshotRow,
    copies: &[(TargetId, StoredCopy)],
    reader: &ReadOutput,
    uploaded: HashSet<i64>,
    files: &LazyFileSet,
    mut traits: Option<crate::tripwire::tally::TraitsRead>,
) -> Result<()> {
    let mut packs = reader.referenced.clone();
    packs.extend(uploaded);
    let paths = &reader.paths;
    // Every file reused unchanged: no row to write, so the entry stream need not be read.
    let entries = match paths.kept_count < paths.count {
        true => Some(EntryReader::new(BufReader::new(File::open(files.entries_path)?))?),
        false => None,
    };
    // The tripwire's traits of the files read, in the order they were read: the order of
    // these rows.
    let mut read = traits.as_mut().into_iter().flatten().peekable();
    let mut traits_of = |path: &[u8]| {
        let key = crate::tripwire::tally::path_key(path);
        read.next_if(|(k, _)| *k == key).map(|(_, t)| t)
    };
    let mut nth = 0;
    let cache = entries.into_iter().flatten().filter_map(|e| match e {
        Ok(e) if e.kind == Kind::File => {
            nth += 1;
            if paths.keeps_row(nth - 1) {
                return None;
            }
            let traits = traits_of(&e.path);
            Some(Ok((
                e.path,
                CachedFile {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    ctime_ns: e.ctime_ns,
                    inode: e.ino,
                    chunks: e.chunks,
                    packs: None,
                    content_type: e.content_type,
                    xattrs: Some(e.xattrs),
                    traits,
                },
            )))
        }
        Ok(_) => None,
        Err(err) => Some(Err(anyhow!(err))),
    });
    let counts = Some((paths.count, paths.fresh));
    catalog.complete_snapshot(row, copies, &packs, cache, |p| Ok(files.get()?.contains(p)), counts)?;
    if let Some(e) = traits.and_then(|t| t.error) {
        tracing::warn!(
            "the tripwire's traits of some files read could not be read back ({e}); their next change is compared with nothing"
        );
    }
    Ok(())
}

pub(super) fn compress_loop(
    rx: &Mutex<Receiver<Vec<NewChunk>>>,
    tx: &SyncSender<Vec<Blob>>,
    level: i32,
    buffers: &crate::buffers::Buffers,
) -> Result<()> {
    let mut zstd = zstd::bulk::Compressor::new(level)?;
    loop {
        let chunks = match rx.lock().map_err(|_| anyhow!("chunk queue poisoned"))?.recv() {
            Ok(c) => c,
            Err(_) => return Ok(()),
        };
        let mut blobs = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let raw_length = chunk.data.len() as u32;
            let mut compressed = buffers.empty(zstd::zstd_safe::compress_bound(chunk.data.len()));
            zstd.compress_to_buffer(&chunk.data, &mut compressed)?;
            blobs.push(if compressed.len() < chunk.data.len() {
                buffers.give_back(chunk.data);
                Blob { id: chunk.id, stored: compressed, raw_length, flags: FLAG_ZSTD }
            } else {
                buffers.give_back(compressed);
                Blob { id: chunk.id, stored: chunk.data, raw_length, flags: 0 }
            });
        }
        if tx.send(blobs).is_err() {
            return Ok(());
        }
    }
}

/// Where the packer's sealed packs go: the uploader's queue, with a slot each and a
/// ciphertext buffer the uploader gives back.
pub(super) struct Packing {
    pub(super) tx: tokio::sync::mpsc::Sender<SealedPack>,
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    pub(super) buffers: Arc<crate::buffers::Buffers>,
}

pub(super) fn pack_loop(
    rx: Receiver<Vec<Blob>>,
    packing: &Packing,
    recipients: &[crate::keys::Recipient],
    keyset: u32,
    pack_size: usize,
    buffers: &crate::buffers::Buffers,
) -> Result<()> {
    // A pack's plaintext buffer serves the next pack once sealed, and the uploader gives
    // ciphertext buffers back: a fresh one would be a fresh mapping, every page faulted
    // in again. `None`: the uploader stopped (it reports why).
    let seal = |builder: PackBuilder| -> Result<Option<(SealedPack, Vec<u8>)>> {
        let Ok(slot) = crate::runtime::block_on(packing.slots.clone().acquire_owned()) else {
            return Ok(None);
        };
        let (plain, blobs) = builder.finish(keyset);
        let mut ciphertext = packing.buffers.empty(plain.len() + (64 << 10));
        crate::keys::encrypt_into(recipients, &plain, &mut ciphertext)?;
        let hash = crate::format::pack_id(&ciphertext);
        Ok(Some((SealedPack { hash, ciphertext: Bytes::from(ciphertext), blobs, _slot: slot }, plain)))
    };
    let mut builder = PackBuilder::with_buffer(Vec::with_capacity(pack_size + pack_size / 4));
    for blob in rx.into_iter().flatten() {
        builder.add(blob.id, &blob.stored, blob.raw_length, blob.flags);
        buffers.give_back(blob.stored);
        if builder.len() >= pack_size {
            let Some((sealed, plain)) = seal(std::mem::take(&mut builder))? else { return Ok(()) };
            builder = PackBuilder::with_buffer(plain);
            if packing.tx.blocking_send(sealed).is_err() {
                return Ok(());
            }
        }
    }
    if !builder.is_empty()
        && let Some((sealed, _)) = seal(builder)?
    {
        let _ = packing.tx.blocking_send(sealed);
    }
    Ok(())
}

/// Uploads packs a few at a time, each to every target still answering (each target
/// with its own limit of concurrent puts), and records each pack in the catalog once
/// acknowledged, with the copies that were; their chunks are indexed every
/// [`InFlight::INDEX_EVERY`] and at the end. A target that fails is left out from then
/// on; a pack no target stored fails the run. Returns the catalog ids of the packs stored.
async fn upload_loop(
    rx: &mut tokio::sync::mpsc::Receiver<SealedPack>,
    pipeline: &Pipeline<'_>,
    catalog: &mut Catalog,
    counters: &Counters,
    pending: &Mutex<InFlight>,
    pack_buffers: &crate::buffers::Buffers,
) -> Result<HashSet<i64>> {
    let limits: Vec<(Target, Arc<tokio::sync::Semaphore>)> = pipeline
        .targets
        .iter()
        .map(|t| (t.clone(), Arc::new(tokio::sync::Semaphore::new(t.upload_concurrency))))
        .collect();
    let concurrency = packs_in_flight(pipeline.targets);
    let pack_until = pipeline.pack_until;
    let mut in_flight = JoinSet::new();
    let mut stored = HashSet::new();
    let mut unindexed = 0;
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            pack = rx.recv(), if open && in_flight.len() < concurrency => match pack {
                Some(p) => {
                    let live: Vec<_> =
                        limits.iter().filter(|(t, _)| !pipeline.down.is_down(t.id)).cloned().collect();
                    in_flight.spawn(async move {
                        let key = crate::format::pack_key(&p.hash);
                        let puts = live.into_iter().map(|(target, limit)| {
                            let (key, body) = (key.clone(), p.ciphertext.clone());
                            async move {
                                let _permit = limit.acquire_owned().await;
                                let result = target.put_new(&key, body, pack_until).await;
                                (target, result)
                            }
                        });
                        let results = futures::future::join_all(puts).await;
                        (p, results)
                    });
                }
                None => open = false,
            },
            Some(done) = in_flight.join_next() => {
                let (pack, results) = done.map_err(|e| anyhow!("upload task failed: {e}"))?;
                let mut copies = Vec::new();
                for (target, result) in results {
                    match result {
                        Ok(version) => copies.push((target.id, StoredCopy { version, lock: target.lock_until(pack_until) })),
                        Err(e) => pipeline.down.mark(&target, &e),
                    }
                }
                if copies.is_empty() {
                    bail!("no target stored pack {}: {}", pack.hash, down_reasons(pipeline.targets, pipeline.down));
                }
                let size = pack.ciphertext.len() as u64;
                let record = StoredPack { hash: &pack.hash, size, keyset: pipeline.keyset, blobs: &pack.blobs, copies: &copies };
                let id = catalog.add_pack(&record)?;
                stored.insert(id);
                let mut p = lock(pending);
                p.generation += 1;
                let generation = p.generation;
                for b in &pack.blobs {
                    if let Some(g) = p.chunks.get_mut(&b.id) {
                        *g = Some(generation);
                    }
                }
                drop(p);
                unindexed += pack.blobs.len();
                if unindexed >= InFlight::INDEX_EVERY {
                    catalog.index_chunks()?;
                    lock(pending).indexed = generation;
                    unindexed = 0;
                }
                Counters::add(&counters.bytes_uploaded, size);
                Counters::add(&counters.packs, 1);
                if let Ok(buffer) = pack.ciphertext.try_into_mut() {
                    pack_buffers.give_back(buffer.into());
                }
            }
        }
    }
    // The snapshot completes only with every chunk where a restore looks for it.
    catalog.index_chunks()?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A pack's worth of 64 KiB blobs, ids from `seed`.
    fn blobs(seed: u8, pack_size: usize) -> Vec<Blob> {
        (0..pack_size / (64 << 10))
            .map(|i| Blob {
                id: ChunkId(*blake3::hash(&[seed, i as u8]).as_bytes()),
                stored: vec![seed; 64 << 10],
                raw_length: 64 << 10,
                flags: 0,
            })
            .collect()
    }

    #[test]
    fn the_packer_seals_no_pack_while_every_slot_holds_one() {
        let pack_size = 1 << 20;
        let recipient = age::x25519::Identity::generate().to_public();
        let recipients = [crate::keys::Recipient::X25519(recipient)];
        let (blob_tx, blob_rx) = sync_channel::<Vec<Blob>>(8);
        let (pack_tx, mut pack_rx) = tokio::sync::mpsc::channel::<SealedPack>(1);
        let packing = Packing {
            tx: pack_tx,
            slots: Arc::new(tokio::sync::Semaphore::new(1)),
            buffers: Arc::new(crate::buffers::Buffers::for_packs(pack_size)),
        };
        let packer = std::thread::spawn(move || {
            let buffers = crate::buffers::Buffers::for_chunks();
            pack_loop(blob_rx, &packing, &recipients, 1, pack_size, &buffers)
        });
        for seed in 0..3 {
            blob_tx.send(blobs(seed, pack_size)).unwrap();
        }
        drop(blob_tx);
        let first = pack_rx.blocking_recv().expect("the first pack");
        // The uploader holds the first pack (its only slot): the packer has two more
        // packs' blobs, and must not seal one.
        std::thread::sleep(Duration::from_millis(300));
        assert!(pack_rx.try_recv().is_err(), "a second pack was sealed while the only slot was held");
        drop(first);
        let mut hashes = HashSet::new();
        while let Some(p) = pack_rx.blocking_recv() {
            hashes.insert(p.hash);
        }
        assert_eq!(hashes.len(), 2, "the other two packs follow, one at a time");
        packer.join().unwrap().unwrap();
    }
}
