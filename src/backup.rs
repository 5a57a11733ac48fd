//! One backup run: source → chunker → keyed hash → dedup → zstd → packs → age → upload
//! → catalog, then the snapshot record.
//!
//! Stages are threads joined by bounded channels, so memory stays flat whatever the
//! size of the data: the reader (walk, chunk, hash, dedup), compressors (one per core),
//! the packer (which seals and encrypts ~16 MiB packs) and the uploader (async, a few
//! puts at once). A pack enters the catalog only after the server acknowledged it, in
//! one transaction with its chunks; the snapshot is recorded only after every pack it
//! needs is in. A run that dies at any point leaves a catalog that is true, and the next
//! run skips every chunk that was acknowledged.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use tokio::task::JoinSet;

use crate::catalog::{CachedFile, Catalog, RunReport, SnapshotRow, StoredPack, Trigger};
use crate::catalog::{Copy, TargetId};
use crate::chunk_id::ChunkId;
use crate::chunker::{ChunkError, Chunker};
use crate::config::{Config, Job};
use crate::format::contents::Contents;
use crate::format::entry::{Entry, EntryReader, EntryWriter, Kind};
use crate::format::pack::{BlobEntry, FLAG_ZSTD, PackBuilder};
use crate::format::snapshot::{self, EntryError, SnapshotRecord, SnapshotStats};
use crate::keys::RepoSecret;
use crate::progress::{Counters, ProgressLine};
use crate::replicate::{Copied, Copier};
use crate::retry::{GiveUp, Retry};
use crate::run_outcome::RunOutcome;
use crate::source::path::{self as path_source, Excludes, Found};
use crate::source::{Input, Prepared};
use crate::store::Target;

/// Chunking of the entry stream (fixed: changing it would stop metadata dedup).
const ENTRY_STREAM_CHUNKS: crate::chunker::ChunkerParams =
    crate::chunker::ChunkerParams { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

const DAY: i64 = 86_400;

pub struct Options {
    pub progress: bool,
    pub trigger: Trigger,
    /// The fire time this run is for, when the schedule started it.
    pub scheduled_for: Option<i64>,
    /// Set by a shutdown: stop reading, store what is in flight, and return `Interrupted`.
    pub stop: Option<Arc<AtomicBool>>,
}

/// A run stopped at a checkpoint by a shutdown: every pack it sent and the server
/// acknowledged is in the catalog, and the next run goes on from there.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by shutdown; the packs stored so far are kept and the next run resumes")]
pub struct Interrupted;

/// How a run ended.
pub fn outcome(result: &Result<Summary>) -> RunOutcome {
    match result {
        Ok(s) => s.outcome(),
        Err(e) if e.is::<Interrupted>() || matches!(e.downcast_ref(), Some(GiveUp::Stopped { .. })) => {
            RunOutcome::Interrupted
        }
        Err(_) => RunOutcome::Failed,
    }
}

/// What a finished run reports to its caller (`backup --json` prints it).
#[derive(serde::Serialize)]
pub struct Summary {
    pub snapshot_id: String,
    /// Each of the job's targets: how it protects the snapshot, or why it lags.
    pub targets: Vec<TargetSummary>,
    /// What was copied to targets that lagged (catch-up), from the others.
    pub copied: crate::replicate::Copied,
    /// Older snapshots a lagging target still lacks: no target holds them intact.
    pub not_copied: Vec<String>,
    /// Until when the snapshot is kept, and which rule says so.
    pub kept_until: i64,
    pub because: String,
    pub stats: SnapshotStats,
    pub unchanged_files: u64,
    pub errors: Vec<EntryError>,
}

impl Summary {
    /// `degraded` when a target lacks the snapshot, else `partial` when paths could not be
    /// read, else `success`.
    pub fn outcome(&self) -> RunOutcome {
        if self.targets.iter().any(|t| t.lagging.is_some()) {
            RunOutcome::Degraded
        } else if !self.errors.is_empty() {
            RunOutcome::Partial
        } else {
            RunOutcome::Success
        }
    }
}

/// One target's part in a run.
#[derive(serde::Serialize)]
pub struct TargetSummary {
    pub name: String,
    /// COMPLIANCE, GOVERNANCE or UNPROTECTED.
    pub protection: crate::store::Protection,
    /// Until when the snapshot's objects are locked there, where the target locks.
    pub locked_until: Option<i64>,
    /// Why the target does not hold the snapshot (`None`: it does).
    pub lagging: Option<String>,
}

/// The targets that stopped answering during a run, with why; the run goes on with the
/// others, and the next run catches these up.
#[derive(Default)]
struct Down(Mutex<std::collections::BTreeMap<TargetId, String>>);

impl Down {
    fn mark(&self, target: &Target, why: &anyhow::Error) {
        if let std::collections::btree_map::Entry::Vacant(e) = lock(&self.0).entry(target.id) {
            tracing::warn!(target = %target.name, "target failed; the run goes on without it: {why:#}");
            e.insert(format!("{why:#}"));
        }
    }

    /// A target that is not this repository any more: an error, not an outage.
    fn refuse(&self, target: &Target, why: String) {
        tracing::error!(target = %target.name, "target refused; the run goes on without it: {why}");
        lock(&self.0).insert(target.id, why);
    }

    fn is_down(&self, id: TargetId) -> bool {
        lock(&self.0).contains_key(&id)
    }

    fn ids(&self) -> HashSet<TargetId> {
        lock(&self.0).keys().copied().collect()
    }

    fn why(&self, id: TargetId) -> Option<String> {
        lock(&self.0).get(&id).cloned()
    }
}

/// A chunk not stored before, on its way to a compressor.
struct NewChunk {
    id: ChunkId,
    data: Vec<u8>,
}

/// A chunk as it will be stored in a pack.
struct Blob {
    id: ChunkId,
    stored: Vec<u8>,
    raw_length: u32,
    flags: u8,
}

/// An encrypted pack ready to upload.
struct SealedPack {
    hash: String,
    ciphertext: Bytes,
    blobs: Vec<BlobEntry>,
}

/// Everything a run needs, opened and checked before any data moves.
type Repo = crate::repo::Repo<crate::repo::Host>;

/// How long a snapshot of `job` made at `created` is kept: decided from the catalog's
/// own history (a record that appears on the target from elsewhere never counts).
pub fn retention_at(catalog: &Catalog, job: &Job, created: i64) -> Result<crate::retention::Decision> {
    let previous = catalog.latest_complete(&job.name)?.map(|s| s.created_at);
    Ok(crate::retention::decide(created, job.lock_days, &job.keep, previous))
}

/// Runs one backup of `job`. Whatever stops it, from its first step on, is a recorded
/// run: a failure before the run could start (the job's lock, the catalog, a target, the
/// repository secret) too, logged at ERROR and told to the `on_failure` hook.
pub fn run(cfg: &Config, job: &Job, opts: &Options) -> Result<Summary> {
    let retries = std::cell::RefCell::new(Vec::new());
    let retry_for = |t: &crate::config::TargetConfig| {
        let retry = Retry::new(t.retry_budget, opts.stop.clone());
        retries.borrow_mut().push(retry.clone());
        retry
    };
    let begun = cfg
        .state()
        .job_lock(&job.name)
        .and_then(|lock| Ok((lock, crate::repo::Repo::open_with(cfg, retry_for)?.host(cfg)?)));
    let (_lock, mut repo) = match begun {
        Ok(begun) => begun,
        Err(e) => return Err(failed_to_start(cfg, job, opts, e)),
    };
    let retries = retries.into_inner();
    let retried = || retries.iter().map(Retry::retries).sum::<u64>();
    let run_id = repo.catalog.start_run(&job.name, opts.trigger, opts.scheduled_for)?;
    tracing::info!(job = %job.name, trigger = opts.trigger.as_str(), "backup started");
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let expected = repo.catalog.latest_complete(&job.name)?.map(|s| s.bytes);
    let result = {
        let _progress = ProgressLine::start(counters.clone(), opts.progress, crate::progress::backup_line(expected));
        contained(|| run_pipeline(cfg, job, &mut repo, &counters, opts.stop.clone()))
    };
    let outcome = outcome(&result);
    let error = match &result {
        Ok(s) if !s.errors.is_empty() => Some(format!("{} paths could not be read", s.errors.len())),
        // A run that rode out an outage says so, so that the outage is seen.
        Ok(s) if s.targets.iter().any(|t| t.lagging.is_some()) => Some(
            s.targets
                .iter()
                .filter_map(|t| {
                    Some(format!("target `{}` does not hold the snapshot: {}", t.name, t.lagging.as_ref()?))
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Ok(s) if !s.not_copied.is_empty() => Some(s.not_copied.join("; ")),
        Ok(_) => retries
            .iter()
            .find_map(Retry::last_error)
            .map(|e| format!("{} transient target failures retried; last: {e}", retried())),
        Err(e) => Some(format!("{e:#}")),
    };
    let report = RunReport {
        outcome,
        snapshot: result.as_ref().ok().map(|s| s.snapshot_id.clone()),
        bytes_read: Counters::get(&counters.bytes_read),
        bytes_new: Counters::get(&counters.bytes_new),
        bytes_uploaded: Counters::get(&counters.bytes_uploaded),
        duration_ms: started.elapsed().as_millis() as u64,
        retries: retried(),
        error: error.clone(),
        findings: 0,
    };
    // Record the outcome if the catalog still takes writes; a failed run's own error wins.
    let recorded = repo.catalog.finish_run(run_id, &report);
    match &error {
        None => tracing::info!(
            job = %job.name,
            outcome = outcome.as_str(),
            snapshot = report.snapshot.as_deref().unwrap_or(""),
            bytes_uploaded = report.bytes_uploaded,
            "backup finished"
        ),
        // A failed run is an error in the log; a partial one, or one that rode out an
        // outage, a warning.
        Some(e) if outcome == RunOutcome::Failed => {
            tracing::error!(job = %job.name, outcome = outcome.as_str(), retries = report.retries, "backup finished: {e}")
        }
        Some(e) => {
            tracing::warn!(job = %job.name, outcome = outcome.as_str(), retries = report.retries, "backup finished: {e}")
        }
    }
    if outcome != RunOutcome::Interrupted {
        crate::hooks::after_run(job, outcome, report.snapshot.as_deref(), error.as_deref());
    }
    if result.is_ok() {
        recorded?;
    }
    result
}

/// A run that could not start: recorded as failed ([`Catalog::record_failure`]), logged
/// at ERROR, told to the hook. Returns the error.
fn failed_to_start(cfg: &Config, job: &Job, opts: &Options, e: anyhow::Error) -> anyhow::Error {
    // Another process running this job is a skip: its run is the one that counts.
    if e.is::<crate::fsutil::Held>() {
        tracing::warn!(job = %job.name, "skipped: {e:#}");
        let when = opts.scheduled_for.unwrap_or_else(crate::time::now_secs);
        if let Err(why) =
            Catalog::open_existing(&cfg.state_dir).and_then(|c| c.record_skip(&job.name, when, &format!("{e:#}")))
        {
            tracing::error!(job = %job.name, "the skip cannot be recorded in the catalog: {why:#}");
        }
        return e;
    }
    let error = format!("the run could not start: {e:#}");
    tracing::error!(job = %job.name, outcome = "failed", "backup finished: {error}");
    Catalog::record_failure(&cfg.state_dir, &job.name, opts.trigger, opts.scheduled_for, &error);
    crate::hooks::after_run(job, RunOutcome::Failed, None, Some(&error));
    e
}

/// Runs `f`, turning a panic into an error: a bug met in one run ends it as `failed`,
/// recorded and told to the hooks, instead of leaving it `running`.
fn contained<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
            (Some(s), _) => s.to_string(),
            (_, Some(s)) => s.clone(),
            _ => String::new(),
        };
        Err(anyhow!("internal error (a bug in coffer; please report it): {what}"))
    })
}

fn run_pipeline(
    cfg: &Config,
    job: &Job,
    repo: &mut Repo,
    counters: &Arc<Counters>,
    stop: Option<Arc<AtomicBool>>,
) -> Result<Summary> {
    for id in repo.catalog.forget_expired(crate::time::now_secs())? {
        tracing::info!(snapshot = %id, "snapshot passed its retain-until: forgotten (prune deletes what only it needed)");
    }
    let started = Instant::now();
    let created_ns = crate::time::now_ns();
    let created = created_ns.div_euclid(1_000_000_000);
    // How long this snapshot is kept, decided now from the catalog's own history.
    // Everything it writes is locked at least that long; new packs a while longer, so that
    // the next snapshots reusing them need no extension.
    let decision = retention_at(&repo.catalog, job, created)?;
    let retain_until = decision.retain_until;
    let entries_path = cfg.state().scratch(&format!("entries-{}", job.name))?;
    let _cleanup = crate::fsutil::RemoveOnDrop(entries_path.clone());

    let fleet = Fleet {
        targets: repo.targets.iter().filter(|t| job.targets.contains(&t.name)).cloned().collect(),
        down: Down::default(),
    };
    fleet.probe(repo)?;
    // Snapshots are encrypted to the config's recipients: they must be the repository's.
    if let Some(why) = crate::keyring::drift(cfg, &repo.catalog)? {
        bail!(why);
    }
    let (mut copied, not_copied) = fleet.catch_up(repo, &job.name);

    let state = cfg.state();
    let source = crate::source::JobContext {
        name: &job.name,
        exclude: &job.exclude,
        exclude_if_present: &job.exclude_if_present,
        exclude_caches: job.exclude_caches,
        one_file_system: job.one_file_system,
        env: &job.env,
        state,
    };
    let mut prepared = job.source.prepare(&source)?;
    let mut contents = prepared.contents.take();
    let pack_until = retain_until + crate::config::EXTENSION_SLACK_DAYS * DAY;
    let keyset = repo.catalog.current_keyset()?.map_or(0, |s| s.seq);
    let pipeline = Pipeline { targets: &fleet.targets, down: &fleet.down, pack_until, keyset };
    let (mut reader, uploaded) = store(cfg, job, repo, counters, stop, prepared, &entries_path, &pipeline)?;
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "read and stored");
    if let Some(Contents::Command(c)) = &mut contents {
        c.bytes = reader.stats.bytes;
    }

    let mut stats = reader.stats.clone();
    stats.bytes_read = Counters::get(&counters.bytes_read);
    stats.bytes_new = Counters::get(&counters.bytes_new);
    stats.bytes_uploaded = Counters::get(&counters.bytes_uploaded);
    stats.packs_uploaded = Counters::get(&counters.packs);
    stats.duration_ms = started.elapsed().as_millis() as u64;

    let mut needed = reader.referenced.clone();
    needed.extend(&uploaded);
    stats.lock_extensions += fleet.make_ready(repo, &needed, (pack_until, retain_until), &job.name, &mut copied);

    let id = crate::hex::random(8);
    let record = SnapshotRecord {
        format: snapshot::VERSION,
        id: id.clone(),
        job: job.name.clone(),
        host: hostname(),
        created,
        created_ns: Some(created_ns),
        source: job.source.to_string(),
        tree: std::mem::take(&mut reader.tree),
        stats: stats.clone(),
        errors: reader.errors.clone(),
        retain_until: Some(retain_until),
        contents,
        keyset: Some(keyset),
    };
    let key = crate::format::snapshot_key(&job.name, &id);
    let object = Bytes::from(snapshot::seal(&record, &key, &cfg.recipients, repo.secret())?);
    let copies = fleet.put_record(&key, object, retain_until)?;
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "snapshot record stored");
    let row = SnapshotRow::from_record(&record);
    complete(&mut repo.catalog, &row, &copies, &reader, uploaded, &entries_path)?;
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "catalog updated");
    Ok(Summary {
        snapshot_id: id,
        targets: fleet.summaries(retain_until),
        copied,
        not_copied,
        kept_until: retain_until,
        because: decision.because,
        stats,
        unchanged_files: Counters::get(&counters.unchanged),
        errors: reader.errors,
    })
}

/// A run's targets, and those that stopped answering during it.
struct Fleet {
    targets: Vec<Target>,
    down: Down,
}

impl Fleet {
    /// Before anything is written, every target must answer within [`crate::pin::DEADLINE`],
    /// and each that the catalog says holds the repository record must still hold the
    /// pinned one: one bounded read per target and run. A target that does not answer in
    /// time, holds nothing (an unmounted disk, a wrong bucket or prefix) or holds another
    /// record is named and left out of the run; with none left, the run fails. A catalog
    /// made before records were pinned pins what the targets hold, if they agree.
    fn probe(&self, repo: &mut Repo) -> Result<()> {
        let records = repo.catalog.targets()?;
        let mut read = Vec::new();
        for t in &self.targets {
            // A target new here is only asked whether it answers: catch-up gives it the record.
            let held = records.iter().find(|r| r.id == t.id).and_then(|r| r.record.clone());
            let version = held.as_ref().and_then(|c| c.version.as_deref());
            let ask = async {
                match &held {
                    Some(_) => crate::pin::read(t, version).await.map(Some),
                    None => t.size_of(crate::format::REPO_KEY, None).await.map(|_| None),
                }
            };
            match crate::runtime::block_on(async { tokio::time::timeout(crate::pin::DEADLINE, ask).await }) {
                Ok(Ok(Some(bytes))) => read.push((t, bytes)),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => self.down.mark(t, &e.context("cannot read the repository record")),
                Err(_) => self.down.mark(t, &anyhow!("it did not answer within {:?}", crate::pin::DEADLINE)),
            }
        }
        let pin = match repo.row.pin.clone() {
            Some(pin) => pin,
            None => pin_on_first_use(repo, &read)?,
        };
        // A catalog made before key sets learns set 0 from the record.
        if let Some((_, Some(record))) = read.iter().find(|(_, b)| b.as_deref().is_some_and(|b| pin.holds(b))) {
            crate::keyring::learn_first_set(&repo.catalog, record)?;
        }
        for (t, bytes) in read {
            if let Some(why) = crate::pin::refusal(t, pin.judge(bytes.as_deref())) {
                repo.catalog.event("target-refused", None, &why)?;
                self.down.refuse(t, why);
            }
        }
        if self.up().next().is_none() {
            bail!("no target of the job can be written to: {}", down_reasons(&self.targets, &self.down));
        }
        Ok(())
    }

    /// Targets that lag (down during an earlier run, or new) first get what they miss,
    /// copied from the others; one that fails now is left out of this run.
    /// Returns what was copied, and the lagging snapshots no target holds intact.
    fn catch_up(&self, repo: &Repo, job: &str) -> (Copied, Vec<String>) {
        let mut copier = Copier { repo, skip: HashSet::new(), copied: Copied::default() };
        let mut skipped = Vec::new();
        for t in &self.targets {
            if self.down.is_down(t.id) {
                continue;
            }
            copier.skip = self.down.ids();
            match copier.catch_up(t, job) {
                Ok(not_copied) => skipped.extend(not_copied),
                Err(e) => self.down.mark(t, &e.context(format!("catching up target `{}` failed", t.name))),
            }
        }
        (copier.copied, skipped)
    }

    /// The targets still answering.
    fn up(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(|t| !self.down.is_down(t.id))
    }

    /// On each target, a snapshot is complete only when everything it needs is there and
    /// locked long enough: reused packs a target lacks are copied to it from another
    /// (locked until `until.0`), and short locks extended (for `until.1`). Returns the
    /// number of lock extensions.
    fn make_ready(&self, repo: &Repo, needed: &HashSet<i64>, until: (i64, i64), job: &str, copied: &mut Copied) -> u64 {
        let (pack_until, retain_until) = until;
        let mut copier = Copier { repo, skip: HashSet::new(), copied: *copied };
        let mut extensions = 0;
        for t in self.up() {
            copier.skip = self.down.ids();
            let ready = copier
                .packs(t, needed, pack_until)
                .and_then(|()| crate::replicate::extend_locks(repo, t, needed, retain_until, job));
            match ready {
                Ok(n) => extensions += n,
                Err(e) => self.down.mark(t, &e),
            }
        }
        *copied = copier.copied;
        extensions
    }

    /// Puts the sealed snapshot record on each target still answering; its copies, or
    /// an error when no target stored it.
    fn put_record(&self, key: &str, object: Bytes, retain_until: i64) -> Result<Vec<(TargetId, Copy)>> {
        let mut copies = Vec::new();
        for t in self.up() {
            match crate::runtime::block_on(t.put_new(key, object.clone(), retain_until)) {
                Ok(version) => copies.push((t.id, Copy { version, lock: t.lock_until(retain_until) })),
                Err(e) => self.down.mark(t, &e),
            }
        }
        if copies.is_empty() {
            bail!("no target stored the snapshot: {}", down_reasons(&self.targets, &self.down));
        }
        Ok(copies)
    }

    fn summaries(&self, retain_until: i64) -> Vec<TargetSummary> {
        let summary = |t: &Target| TargetSummary {
            name: t.name.clone(),
            protection: t.protection(),
            locked_until: t.lock_until(retain_until).map(|l| l.until),
            lagging: self.down.why(t.id),
        };
        self.targets.iter().map(summary).collect()
    }
}

/// Pins the repository record of a catalog made before records were pinned: what the
/// targets that answered hold, if they all hold the same record.
fn pin_on_first_use(repo: &mut Repo, read: &[(&Target, Option<Bytes>)]) -> Result<crate::pin::Pin> {
    let held: Vec<(&Target, &Bytes)> = read.iter().filter_map(|(t, b)| Some((*t, b.as_ref()?))).collect();
    let Some((_, first)) = held.first() else {
        bail!("no target holds the repository record ({}), so coffer cannot pin it", crate::format::REPO_KEY);
    };
    if let Some((other, _)) = held.iter().find(|(_, b)| b != first) {
        bail!(
            "the targets hold different repository records (target `{}` and target `{}`); coffer pins none and \
             writes nowhere until they agree: see `coffer verify`",
            held[0].0.name,
            other.name
        );
    }
    let pin = crate::pin::Pin::of(first, repo.secret());
    repo.catalog.set_pin(&pin)?;
    tracing::info!(fingerprint = %pin.fingerprint, "repository record pinned; keep the fingerprint beside the identity");
    repo.row.pin = Some(pin.clone());
    Ok(pin)
}

/// "target `a`: why; target `b`: why", for the targets that failed.
fn down_reasons(targets: &[Target], down: &Down) -> String {
    let reasons = targets.iter().filter_map(|t| Some(format!("target `{}`: {}", t.name, down.why(t.id)?)));
    reasons.collect::<Vec<_>>().join("; ")
}

/// Where the pipeline's packs go: the run's targets (less those that fail), locked until
/// `pack_until`.
struct Pipeline<'a> {
    targets: &'a [Target],
    down: &'a Down,
    pack_until: i64,
    /// The key set packs are encrypted to (the config's recipients).
    keyset: u32,
}

/// Reads the source through the pipeline (reader → compressors → packer → uploader)
/// until every new chunk is stored and its pack recorded, writing the entry stream to
/// `entries_path`. Returns what the reader saw, and the packs uploaded.
#[allow(clippy::too_many_arguments)]
fn store(
    cfg: &Config,
    job: &Job,
    repo: &mut Repo,
    counters: &Arc<Counters>,
    stop: Option<Arc<AtomicBool>>,
    prepared: Prepared,
    entries_path: &Path,
    pipeline: &Pipeline,
) -> Result<(ReadOutput, HashSet<i64>)> {
    let Prepared { input, errors: source_errors, command, .. } = prepared;
    let abort = Arc::new(AtomicBool::new(false));
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let (chunk_tx, chunk_rx) = sync_channel::<Vec<NewChunk>>(2 * workers);
    let (pack_tx, mut pack_rx) = tokio::sync::mpsc::channel::<SealedPack>(1);

    let pending = Arc::new(Mutex::new(InFlight::default()));
    let buffers = Arc::new(crate::buffers::Buffers::for_chunks());
    let pack_buffers = Arc::new(crate::buffers::Buffers::for_packs(cfg.pack_size as usize));
    // Reader: its own catalog connection (WAL lets it read while the uploader writes).
    let reader = {
        let reader_catalog = Catalog::open(&cfg.state().catalog())?;
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
            stop: stop.unwrap_or_default(),
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

    let middle = Middle::start(cfg, pipeline.keyset, workers, chunk_rx, pack_tx, buffers, pack_buffers.clone())?;

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
    drop(pack_rx); // unblocks the packer if the upload stopped early

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
struct Middle {
    compressors: Vec<std::thread::JoinHandle<Result<()>>>,
    packer: std::thread::JoinHandle<Result<()>>,
}

impl Middle {
    fn start(
        cfg: &Config,
        keyset: u32,
        workers: usize,
        chunk_rx: Receiver<Vec<NewChunk>>,
        pack_tx: tokio::sync::mpsc::Sender<SealedPack>,
        buffers: Arc<crate::buffers::Buffers>,
        pack_buffers: Arc<crate::buffers::Buffers>,
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
            .spawn(move || pack_loop(blob_rx, pack_tx, &recipients, keyset, pack_size, &buffers, &pack_buffers))?;
        Ok(Middle { compressors, packer })
    }

    /// Waits for both stages: a compressor's error first, then the packer's result.
    fn join(self) -> Result<Result<()>> {
        for c in self.compressors {
            c.join().map_err(|_| anyhow!("a compressor thread panicked"))??;
        }
        self.packer.join().map_err(|_| anyhow!("the packer thread panicked"))
    }
}

/// Records the snapshot complete, with the packs it needs and the job's new file cache,
/// in one transaction. The cache rows of files read again come from the entry stream.
fn complete(
    catalog: &mut Catalog,
    row: &SnapshotRow,
    copies: &[(TargetId, Copy)],
    reader: &ReadOutput,
    uploaded: HashSet<i64>,
    entries_path: &Path,
) -> Result<()> {
    let mut packs = reader.referenced.clone();
    packs.extend(uploaded);
    let paths = &reader.paths;
    // Every file reused unchanged: no row to write, so the entry stream need not be read.
    let entries = match paths.reused.len() < paths.files.len() {
        true => Some(EntryReader::new(BufReader::new(File::open(entries_path)?))?),
        false => None,
    };
    let cache = entries.into_iter().flatten().filter_map(|e| match e {
        Ok(e) if e.kind == Kind::File && !paths.reused.contains(&path_hash(&e.path)) => Some(Ok((
            e.path,
            CachedFile {
                size: e.size,
                mtime_ns: e.mtime_ns,
                ctime_ns: e.ctime_ns,
                inode: e.ino,
                chunks: e.chunks,
                content_type: e.content_type,
                xattrs: Some(e.xattrs),
            },
        ))),
        Ok(_) => None,
        Err(err) => Some(Err(anyhow!(err))),
    });
    let counts = Some((paths.files.len() as u64, paths.fresh));
    catalog.complete_snapshot(row, copies, &packs, cache, |p| paths.files.contains(&path_hash(p)), counts)?;
    Ok(())
}

/// Chunks this run sent for storage, until the reader's view of the catalog shows them.
#[derive(Default)]
struct InFlight {
    /// Each chunk, and the upload generation that committed its pack (`None`: not yet).
    chunks: std::collections::HashMap<ChunkId, Option<u64>>,
    /// Packs committed so far.
    generation: u64,
}

/// The reader's view of the catalog: one read transaction, so that a lookup costs a
/// B-tree search instead of a lock and a WAL check (which made a backup with nothing new
/// mostly SQLite locking). It is renewed every few thousand lookups or every second;
/// then the chunks committed before the renewal leave `InFlight`, as the view now shows
/// them. So memory stays flat: `InFlight` holds at most a few packs' chunks.
#[derive(Default)]
struct View {
    open: bool,
    lookups: u32,
    since: Option<Instant>,
}

impl View {
    const LOOKUPS: u32 = 4096;
    const AGE: std::time::Duration = std::time::Duration::from_secs(1);

    fn renew(&mut self, catalog: &Catalog, pending: &Mutex<InFlight>) -> Result<()> {
        self.lookups += 1;
        if self.open && self.lookups < Self::LOOKUPS && self.since.is_some_and(|t| t.elapsed() < Self::AGE) {
            return Ok(());
        }
        // Everything committed up to now is visible to a transaction begun after this.
        let committed = lock(pending).generation;
        if self.open {
            catalog.end_read()?;
        }
        catalog.begin_read()?;
        (self.open, self.lookups, self.since) = (true, 0, Some(Instant::now()));
        lock(pending).chunks.retain(|_, g| g.is_none_or(|g| g > committed));
        Ok(())
    }
}

/// What the reader hands back once the walk is done.
struct ReadOutput {
    tree: Vec<ChunkId>,
    referenced: HashSet<i64>,
    errors: Vec<EntryError>,
    stats: SnapshotStats,
    paths: Paths,
}

/// The files of the snapshot, and those reused unchanged from the file cache, by a
/// 128-bit hash of their path (16 bytes a file), for updating the file cache.
#[derive(Default)]
struct Paths {
    files: PathSet,
    reused: PathSet,
    /// Files in the snapshot that had no row in the file cache.
    fresh: u64,
    /// Whether the last file looked up had no row.
    no_row: bool,
}

/// Path hashes are blake3 output already: their low 64 bits index a set as they are.
type PathSet = HashSet<u128, std::hash::BuildHasherDefault<Low64>>;

#[derive(Default)]
struct Low64(u64);

impl std::hash::Hasher for Low64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

fn path_hash(path: &[u8]) -> u128 {
    u128::from_le_bytes(blake3::hash(path).as_bytes()[..16].try_into().expect("16 bytes"))
}

/// The reader stage: walks the source, reuses unchanged files' chunk lists, chunks and
/// hashes the rest, and sends chunks the repository does not hold to the compressors.
struct Reader {
    catalog: Catalog,
    secret: RepoSecret,
    chunker: Chunker,
    /// Smaller chunks for the entry stream: a changed file then costs ~64 KiB of new
    /// metadata instead of ~1 MiB.
    entry_chunker: Chunker,
    job: String,
    /// Chunks sent for storage in this run and not yet in the catalog. The uploader removes
    /// a pack's chunks after committing it, so this holds at most a few packs' worth and
    /// memory stays flat however much new data a run stores.
    pending: Arc<Mutex<InFlight>>,
    /// The reader's view of the catalog: one read transaction, renewed now and then.
    view: View,
    paths: Paths,
    /// Stored packs (catalog row ids) this snapshot uses.
    referenced: HashSet<i64>,
    chunk_tx: SyncSender<Vec<NewChunk>>,
    /// Where new chunks' buffers come from (the packer gives them back).
    buffers: Arc<crate::buffers::Buffers>,
    /// New chunks not yet handed to the compressors: small files are one chunk each, and
    /// handing each over alone costs more in wake-ups than compressing it.
    batch: Batch,
    counters: Arc<Counters>,
    errors: Vec<EntryError>,
    stats: SnapshotStats,
    /// Set when a later stage failed: stop walking.
    abort: Arc<AtomicBool>,
    /// Set by a shutdown: stop walking and let the later stages store what they hold.
    stop: Arc<AtomicBool>,
}

impl Reader {
    /// Reads everything, writes the entry stream, and returns the entry stream's chunks.
    fn read_all(&mut self, input: Input, entries_path: &Path) -> Result<Vec<ChunkId>> {
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
    fn stream(&mut self, name: String, data: impl std::io::Read) -> Result<Entry> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut e = Entry::synthetic(name.into_bytes(), Kind::File, 0o600, now.as_nanos() as i64);
        e.size = self.chunk_into(data, &mut e.chunks, false).map_err(|e| match e {
            ChunkError::Read(err) => anyhow!("cannot read the command's output: {err}"),
            ChunkError::Sink(err) => err,
        })?;
        self.count_file(path_hash(&e.path), e.size);
        Ok(e)
    }

    /// A file that goes into the snapshot, in the stats and the progress line.
    /// `hash` is the [`path_hash`] of its path.
    fn count_file(&mut self, hash: u128, size: u64) {
        self.paths.files.insert(hash);
        self.paths.fresh += u64::from(std::mem::take(&mut self.paths.no_row));
        self.stats.files += 1;
        self.stats.bytes += size;
        Counters::add(&self.counters.files, 1);
        Counters::add(&self.counters.bytes, size);
    }

    /// A bucket's objects as files under their keys (or escaped names, for keys that are
    /// not file paths), with the directories their paths imply. An object whose size and
    /// ETag are unchanged is not downloaded.
    fn objects<W: std::io::Write>(
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
            let hash = path_hash(&e.path);
            if let Some(cached) = self.unchanged(&e, hash, crate::source::bucket::unchanged)? {
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
            self.count_file(hash, e.size);
            writer.write(&e).context("cannot write the entry stream")?;
        }
        Ok(())
    }

    /// The directories a tree is stored under (`etc` for `/etc`; `var`, `var/lib` and
    /// `var/lib/pg` for `/var/lib/pg`), each once, with the metadata of the directory it
    /// names, so that a restore recreates the layout.
    fn dirs_above<W: std::io::Write>(
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
    fn walk<W: std::io::Write>(
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

    fn problem(&mut self, rel: &Path, error: String) {
        tracing::warn!(path = %rel.display(), "{error}");
        self.errors.push(EntryError { path: rel.to_string_lossy().into_owned(), error });
    }

    /// One regular file: its entry with chunk ids, or `None` if it could not be read.
    fn file(&mut self, mut e: Entry, opener: &crate::source::path::Opener) -> Result<Option<Entry>> {
        if self.abort.load(Ordering::Relaxed) {
            bail!("the backup pipeline stopped");
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(Interrupted.into());
        }
        self.counters.set_current(&e.path);
        let hash = path_hash(&e.path);
        if let Some(cached) = self.unchanged(&e, hash, path_source::unchanged)? {
            e.chunks = cached.chunks;
            // Attributes change the file's ctime: unchanged, it has the cached ones.
            e.xattrs = match cached.xattrs {
                Some(x) => x,
                // A row from before attributes were kept: read them, and rewrite the row.
                None => {
                    self.paths.reused.remove(&hash);
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
        self.count_file(hash, e.size);
        Ok(Some(e))
    }

    /// The fast path: the same file as in the last snapshot (`same` compares its identity
    /// with the cached one) with every chunk still stored → reuse the chunk list (and
    /// content type) without reading it.
    fn unchanged(
        &mut self,
        e: &Entry,
        hash: u128,
        same: impl Fn(&CachedFile, &Entry) -> bool,
    ) -> Result<Option<CachedFile>> {
        self.paths.no_row = false;
        self.view.renew(&self.catalog, &self.pending)?;
        let Some(c) = self.catalog.cached_file(&self.job, &e.path)? else {
            self.paths.no_row = true;
            return Ok(None);
        };
        if !same(&c, e) {
            return Ok(None);
        }
        // The catalog is input too: its chunks must still be stored, outside damaged
        // packs, and add up to the size it claims; otherwise the file is read again.
        // (A chunk this run is storing has no length in the catalog yet: then the sizes
        // are not compared.)
        let mut packs = Vec::with_capacity(c.chunks.len());
        let (mut size, mut pending) = (0u64, false);
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
                None => return Ok(None),
            }
        }
        if !pending && size != c.size {
            tracing::warn!(path = %String::from_utf8_lossy(&e.path), "the catalog's cached chunk list does not add up to the file's size; reading it again");
            return Ok(None);
        }
        self.paths.reused.insert(hash);
        self.referenced.extend(packs);
        Ok(Some(c))
    }

    /// Chunks `input` (file data, or the entry stream when `entries`), appending chunk ids.
    fn chunk_into<R: std::io::Read>(
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
            ..
        } = self;
        let chunker = if entries { entry_chunker } else { chunker };
        chunker.chunk_stream(input, |data| {
            if !entries && stop.load(Ordering::Relaxed) {
                return Err(Interrupted.into());
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
struct Batch {
    chunks: Vec<NewChunk>,
    bytes: usize,
}

impl Batch {
    const BYTES: usize = 1 << 20;
    const CHUNKS: usize = 64;

    fn push(&mut self, chunk: NewChunk, tx: &SyncSender<Vec<NewChunk>>) -> Result<()> {
        self.bytes += chunk.data.len();
        self.chunks.push(chunk);
        if self.bytes >= Self::BYTES || self.chunks.len() >= Self::CHUNKS {
            self.flush(tx)?;
        }
        Ok(())
    }

    fn flush(&mut self, tx: &SyncSender<Vec<NewChunk>>) -> Result<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        tx.send(std::mem::take(&mut self.chunks)).map_err(|_| anyhow!("the backup pipeline stopped"))
    }
}

fn compress_loop(
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

fn pack_loop(
    rx: Receiver<Vec<Blob>>,
    tx: tokio::sync::mpsc::Sender<SealedPack>,
    recipients: &[crate::keys::Recipient],
    keyset: u32,
    pack_size: usize,
    buffers: &crate::buffers::Buffers,
    pack_buffers: &crate::buffers::Buffers,
) -> Result<()> {
    // A pack's plaintext buffer serves the next pack once sealed, and the uploader gives
    // ciphertext buffers back: a fresh one would be a fresh mapping, every page faulted
    // in again.
    let seal = |builder: PackBuilder| -> Result<(SealedPack, Vec<u8>)> {
        let (plain, blobs) = builder.finish(keyset);
        let mut ciphertext = pack_buffers.empty(plain.len() + (64 << 10));
        crate::keys::encrypt_into(recipients, &plain, &mut ciphertext)?;
        let hash = crate::format::pack_id(&ciphertext);
        Ok((SealedPack { hash, ciphertext: Bytes::from(ciphertext), blobs }, plain))
    };
    let mut builder = PackBuilder::with_buffer(Vec::with_capacity(pack_size + pack_size / 4));
    for blob in rx.into_iter().flatten() {
        builder.add(blob.id, &blob.stored, blob.raw_length, blob.flags);
        buffers.give_back(blob.stored);
        if builder.len() >= pack_size {
            let (sealed, plain) = seal(std::mem::take(&mut builder))?;
            builder = PackBuilder::with_buffer(plain);
            if tx.blocking_send(sealed).is_err() {
                return Ok(()); // the uploader stopped; it reports why
            }
        }
    }
    if !builder.is_empty() {
        let _ = tx.blocking_send(seal(builder)?.0);
    }
    Ok(())
}

/// Uploads packs a few at a time, each to every target still answering (each target
/// with its own limit of concurrent puts), and records each pack in the catalog once
/// acknowledged, with the copies that were. A target that fails is left out from then
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
    let concurrency = pipeline.targets.iter().map(|t| t.upload_concurrency).max().unwrap_or(1);
    let pack_until = pipeline.pack_until;
    let mut in_flight = JoinSet::new();
    let mut stored = HashSet::new();
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
                        Ok(version) => copies.push((target.id, Copy { version, lock: target.lock_until(pack_until) })),
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
                Counters::add(&counters.bytes_uploaded, size);
                Counters::add(&counters.packs, 1);
                if let Ok(buffer) = pack.ciphertext.try_into_mut() {
                    pack_buffers.give_back(buffer.into());
                }
            }
        }
    }
    Ok(stored)
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the stages
/// report their own panics when joined).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_run_becomes_its_error() {
        let r: Result<()> = contained(|| {
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            let _ = v[i];
            Ok(())
        });
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with("internal error") && e.contains("index out of bounds"), "{e}");
        assert_eq!(contained(|| Ok(7)).unwrap(), 7);
    }
}
