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
//!
//! Here: the run (its lifecycle and outcome). Beside it: `fleet.rs`, the run's targets;
//! `pipeline.rs`, the stages after the reader; `reader.rs`, the reader, and the
//! [`Observer`] seam where a per-file step watches the stream.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;

use crate::catalog::{Catalog, RunReport, RunStart, SnapshotRow, Trigger};
use crate::config::{Config, Job};
use crate::format::contents::Contents;
use crate::format::snapshot::{self, EntryError, SnapshotRecord, SnapshotStats};
use crate::progress::{Counters, ProgressLine};
use crate::retry::{GiveUp, Retry};
use crate::run_outcome::{Logged, RunOutcome};

mod fleet;
mod pipeline;
pub mod preview;
mod reader;

pub use crate::observer::{Change, Observer};
pub use fleet::TargetSummary;
use fleet::{Down, Fleet, Repo};
use pipeline::{Pipeline, Watch, complete, run_stages};
pub use reader::Interrupted;
const DAY: i64 = 86_400;

pub struct Options {
    pub progress: bool,
    pub trigger: Trigger,
    /// The fire time this run is for, when the schedule started it.
    pub scheduled_for: Option<i64>,
    /// Set by a shutdown: stop reading, store what is in flight, and return `Interrupted`.
    pub stop: Option<Arc<AtomicBool>>,
    /// Steps shown every file the run puts into its snapshot ([`Observer`]).
    pub observers: Vec<Box<dyn Observer>>,
}

impl Options {
    /// The run of `job` these options begin.
    fn run_start<'a>(&self, job: &'a Job) -> RunStart<'a> {
        RunStart::backup(&job.name, self.trigger, self.scheduled_for)
    }
}

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
    /// The run's id in the history (`coffer runs`).
    pub run: i64,
    #[serde(rename = "snapshot")]
    pub snapshot_id: String,
    /// Each of the job's targets: how it protects the snapshot, or why it lags.
    pub targets: Vec<TargetSummary>,
    /// What was copied to targets that lagged (catch-up), from the others.
    pub copied: crate::replicate::Copied,
    /// Older snapshots a lagging target still lacks: no target holds them intact.
    pub not_copied: Vec<String>,
    /// Until when the snapshot is kept, and which rule says so.
    #[serde(rename = "retain_until")]
    pub kept_until: i64,
    pub because: String,
    pub stats: SnapshotStats,
    pub unchanged_files: u64,
    pub errors: Vec<EntryError>,
    /// The tripwire's word on the run's changes (`None`: it could not judge them, and
    /// `tripwire_error` says why).
    pub tripwire: Option<crate::tripwire::Report>,
    pub tripwire_error: Option<String>,
}

impl Summary {
    /// `suspicious` when the tripwire tripped, else `degraded` when a target lacks the
    /// snapshot, else `partial` when paths could not be read, else `success`.
    pub fn outcome(&self) -> RunOutcome {
        if self.tripwire.as_ref().is_some_and(|t| t.verdict == crate::tripwire::Verdict::Suspicious) {
            RunOutcome::Suspicious
        } else if self.targets.iter().any(|t| t.lagging.is_some()) {
            RunOutcome::Degraded
        } else if !self.errors.is_empty() {
            RunOutcome::Partial
        } else {
            RunOutcome::Success
        }
    }
}

/// How long a snapshot of `job` made at `created` is kept: decided from the catalog's
/// own history (a record that appears on the target from elsewhere never counts).
pub fn retention_at(catalog: &Catalog, job: &Job, created: i64) -> Result<crate::retention::Decision> {
    let previous = catalog.latest_complete(&job.name)?.map(|s| s.created_at);
    Ok(crate::retention::decide(created, job.lock_days, &job.keep, previous))
}

/// Runs one backup of `job`. Whatever stops it, from its first step on, is a recorded
/// run: a failure before the run could start (the job's lock, the catalog, a target, the
/// repository secret) too, logged at ERROR and told to the `on_failure` hook.
pub fn run(cfg: &Config, job: &Job, mut opts: Options) -> Result<Summary> {
    let observers = std::mem::take(&mut opts.observers);
    let opts = &opts;
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
        Err(e) => return Err(Logged(failed_to_start(cfg, job, opts, e)).into()),
    };
    let retries = retries.into_inner();
    let retried = || retries.iter().map(Retry::retries).sum::<u64>();
    let run_id = repo.catalog.start_run(&opts.run_start(job))?;
    tracing::info!(job = %job.name, trigger = opts.trigger.as_str(), "backup started");
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let expected = match repo.catalog.latest_complete(&job.name)? {
        Some(last) => Some(last.bytes),
        // A first backup: a quick walk (a path source's) says how much there is to read,
        // when a progress line will show it.
        None if crate::progress::draws(opts.progress) => {
            let walked = preview::would_read(cfg, job, &repo.catalog, |_, _| Ok(()));
            walked.ok().flatten().map(|w| w.bytes + w.unchanged_bytes)
        }
        None => None,
    };
    let result = {
        let _progress = ProgressLine::start(counters.clone(), opts.progress, crate::progress::backup_line(expected));
        let watch = Watch { counters: counters.clone(), stop: opts.stop.clone(), observers };
        contained(|| run_pipeline(cfg, job, &mut repo, watch, run_id))
    };
    let outcome = outcome(&result);
    let error = match &result {
        Ok(Summary { tripwire: Some(t), .. }) if outcome == RunOutcome::Suspicious => Some(t.summary()),
        Ok(Summary { tripwire_error: Some(e), .. }) => Some(format!("the tripwire could not judge this run: {e}")),
        Ok(s) if !s.errors.is_empty() => {
            // The first few, named, so that `coffer runs` says which.
            let named: Vec<String> = s.errors.iter().take(5).map(|e| format!("{} ({})", e.path, e.error)).collect();
            let more = if s.errors.len() > named.len() { ", …" } else { "" };
            Some(format!("{} paths could not be read: {}{more}", s.errors.len(), named.join(", ")))
        }
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
        // A failed or suspicious run, or one the tripwire could not judge, is an error in
        // the log; a partial one, or one that rode out an outage, a warning.
        Some(e)
            if matches!(outcome, RunOutcome::Failed | RunOutcome::Suspicious)
                || result.as_ref().is_ok_and(|s| s.tripwire_error.is_some()) =>
        {
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
    result.map_err(|e| Logged(e).into())
}

/// A run that could not start: recorded as failed ([`Catalog::record_failure`]), logged
/// at ERROR, told to the hook. Returns the error.
fn failed_to_start(cfg: &Config, job: &Job, opts: &Options, e: anyhow::Error) -> anyhow::Error {
    // Another process running this job is a skip: its run is the one that counts.
    if e.is::<crate::fsutil::Held>() {
        tracing::warn!(job = %job.name, "skipped: {e:#}");
        let when = opts.scheduled_for.unwrap_or_else(crate::time::now_secs);
        let skipped = RunStart { scheduled_for: Some(when), ..opts.run_start(job) };
        if let Err(why) =
            Catalog::open_existing(&cfg.state_dir).and_then(|c| c.record_skip(&skipped, &format!("{e:#}")))
        {
            tracing::error!(job = %job.name, "the skip cannot be recorded in the catalog: {why:#}");
        }
        return e;
    }
    let error = format!("the run could not start: {e:#}");
    tracing::error!(job = %job.name, outcome = "failed", "backup finished: {error}");
    Catalog::record_failure(&cfg.state_dir, &opts.run_start(job), &error);
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

fn run_pipeline(cfg: &Config, job: &Job, repo: &mut Repo, mut watch: Watch, run_id: i64) -> Result<Summary> {
    let counters = &watch.counters.clone();
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
    // The files of the last snapshot (the file cache's rows), if there is one.
    let previous = repo.catalog.latest_complete(&job.name)?.map(|s| s.files);
    let tally = job.tripwire.enabled.then(|| crate::tripwire::begin(cfg, job, &repo.catalog, previous.is_none()));
    let tally = tally.transpose()?.inspect(|t| watch.observers.push(Box::new(t.clone())));

    let mut prepared = prepare(cfg, job)?;
    let mut contents = prepared.contents.take();
    let pack_until = retain_until + crate::config::EXTENSION_SLACK_DAYS * DAY;
    let keyset = repo.catalog.current_keyset()?.map_or(0, |s| s.seq);
    let pipeline = Pipeline { targets: &fleet.targets, down: &fleet.down, pack_until, keyset };
    let (mut reader, uploaded) = run_stages(cfg, job, repo, watch, prepared, &entries_path, &pipeline)?;
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "read and stored");
    let files = reader::LazyFileSet { entries_path: &entries_path, set: Default::default() };
    let judged = tally.as_ref().map(|tally| judge_changes(repo, job, tally, &reader.paths, &files, previous));
    let traits = tally.as_ref().map(|t| t.lock().take_traits()).transpose()?.flatten();
    if let Some(Contents::Command(c)) = &mut contents {
        c.bytes = reader.stats.bytes;
    }

    let mut stats = SnapshotStats {
        bytes_read: Counters::get(&counters.bytes_read),
        bytes_new: Counters::get(&counters.bytes_new),
        bytes_uploaded: Counters::get(&counters.bytes_uploaded),
        packs_uploaded: Counters::get(&counters.packs),
        duration_ms: started.elapsed().as_millis() as u64,
        ..reader.stats.clone()
    };

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
        tags: job.tags.clone(),
    };
    let key = crate::format::snapshot_key(&job.name, &id);
    let object = Bytes::from(snapshot::seal(&record, &key, &cfg.recipients, repo.secret())?);
    let copies = fleet.put_record(&key, object, retain_until)?;
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "snapshot record stored");
    let row = SnapshotRow::from_record(&record);
    complete(&mut repo.catalog, &row, &copies, &reader, uploaded, &files, traits)?;
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "catalog updated");
    let (tripwire, tripwire_error) =
        judged.map_or((None, None), |judged| after_judging(repo, &fleet, job, (run_id, &id), judged));
    Ok(Summary {
        run: run_id,
        tripwire,
        tripwire_error,
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

/// Makes the job's source ready to read (fetches mirrors, starts the command, lists the
/// bucket).
fn prepare(cfg: &Config, job: &Job) -> Result<crate::source::Prepared> {
    job.source.prepare(&context(cfg, job))
}

/// What the job's source needs to know of the job.
fn context<'a>(cfg: &'a Config, job: &'a Job) -> crate::source::JobContext<'a> {
    crate::source::JobContext {
        name: &job.name,
        exclude: &job.exclude,
        exclude_if_present: &job.exclude_if_present,
        exclude_caches: job.exclude_caches,
        one_file_system: job.one_file_system,
        env: &job.env,
        state: cfg.state(),
    }
}

/// The tripwire's verdict on the run: every file of the last snapshot that this one lacks
/// is shown to the tally, then its measures are judged against the job's history.
fn judge_changes(
    repo: &Repo,
    job: &Job,
    tally: &crate::tripwire::tally::Shared,
    paths: &reader::Paths,
    files: &reader::LazyFileSet,
    previous: Option<u64>,
) -> Result<crate::tripwire::Report> {
    let mut tally = tally.lock();
    // The files that had a row are the last snapshot's that this one kept.
    let kept = paths.count - paths.fresh;
    if previous.is_some_and(|files| files > kept) {
        let files = files.get()?;
        repo.catalog.each_cached_path(&job.name, |path| {
            if !files.contains(path) {
                tally.gone(path);
            }
        })?;
    }
    if let Some(e) = tally.take_error() {
        anyhow::bail!(e);
    }
    let measures = tally.finish();
    crate::tripwire::judge(&repo.catalog, job, measures, previous.is_none())
}

/// Once the snapshot is complete: keeps the verdict, and on a trip holds the job's last
/// clean snapshots. Returns the report, or why the run was not judged.
fn after_judging(
    repo: &mut Repo,
    fleet: &Fleet,
    job: &Job,
    (run, snapshot): (i64, &str),
    judged: Result<crate::tripwire::Report>,
) -> (Option<crate::tripwire::Report>, Option<String>) {
    let mut report = match judged {
        Ok(report) => report,
        Err(e) => return (None, Some(format!("{e:#}"))),
    };
    if let Err(e) = crate::tripwire::record(&repo.catalog, &job.name, run, snapshot, &report) {
        return (Some(report), Some(format!("{e:#}")));
    }
    if report.verdict == crate::tripwire::Verdict::Suspicious {
        let targets: Vec<&crate::store::Target> = fleet.up().collect();
        match crate::tripwire::hold(repo, &targets, job) {
            Ok((held, until)) => (report.held, report.held_until) = (held, Some(until)),
            Err(e) => report.hold_error = Some(format!("{e:#}")),
        }
    }
    (Some(report), None)
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
