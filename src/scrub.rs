//! The scrub: what the targets hold, checked on a schedule of its own, without the
//! identity (the backup host never has it), so that a lost or changed object is found
//! before a restore needs it, not during one.
//!
//! Each run, on every target: one listing of every version, against which each object
//! the catalog records must be there at its recorded version (a pack at its recorded
//! size), with no delete marker, overwrite or stranger beside it; the bucket's settings
//! ([`crate::audit`]); and a rotating share of the packs read back, least recently read
//! first, each checked against its name (the blake3 hash of its ciphertext), its lock
//! and legal hold asked. The share is bounded by `read_per_day`, so that every pack is
//! read once per `period` when the budget allows, and the provider's egress stays what
//! the config says. A pack that no longer matches its hash is marked damaged: the next
//! backup stores its chunks again, as after `verify --read-data`.
//!
//! A scrub is a run (job [`JOB`]) in the history, the metrics and the hooks' log; it
//! notes each pack as it reads it, so a killed scrub goes on where it stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use serde::Serialize;

use crate::catalog::{RunReport, Trigger};
use crate::config::Config;
use crate::inventory::{Finding, Found, Inventory, Layout};
use crate::repo::Repo;
use crate::run_outcome::RunOutcome;
use crate::store::Target;

/// The run history's name for the scrub: not a valid job name, so no job can have it.
pub const JOB: &str = "@scrub";

/// What one scrub read and found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub targets: Vec<String>,
    pub objects_listed: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    pub findings: Vec<Found>,
    /// Targets that could not be scrubbed, with why.
    pub errors: Vec<String>,
}

pub struct Options {
    pub trigger: Trigger,
    pub scheduled_for: Option<i64>,
    /// Set by a shutdown: stop after the pack being read.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Options {
    fn run_start(&self) -> crate::catalog::RunStart<'static> {
        let (trigger, scheduled_for) = (self.trigger, self.scheduled_for);
        crate::catalog::RunStart { job: JOB, kind: crate::catalog::RunKind::Scrub, trigger, scheduled_for }
    }
}

/// One scrub of every target: recorded as a run, logged, its findings at ERROR. One
/// that cannot start (the catalog, a target's config) is a failed run too.
pub fn run(cfg: &Config, opts: &Options) -> Result<Report> {
    let begun = cfg.state().job_lock(JOB).and_then(|lock| Ok((lock, Repo::open(cfg)?)));
    let (_lock, repo) = match begun {
        Ok(begun) => begun,
        Err(e) if e.is::<crate::fsutil::Held>() => return Err(e),
        Err(e) => {
            let error = format!("the scrub could not start: {e:#}");
            tracing::error!(outcome = "failed", "scrub finished: {error}");
            crate::catalog::Catalog::record_failure(&cfg.state_dir, &opts.run_start(), &error);
            return Err(e);
        }
    };
    let (read_per_day, period) =
        cfg.scrub.as_ref().map_or((2 << 30, 30 * 86_400), |s| (s.read_per_day, s.period.as_secs() as i64));
    let last = repo.catalog.job_totals(JOB)?.last_run.map(|r| r.started_at);
    let run_id = repo.catalog.start_run(&opts.run_start())?;
    let started = std::time::Instant::now();
    // A day's worth of reading per day since the last scrub (an hour at least, a week at most).
    let elapsed = last.map_or(86_400, |t| (crate::time::now_secs() - t).clamp(3600, 7 * 86_400));
    let budget = u64::try_from(u128::from(read_per_day) * elapsed as u128 / 86_400).unwrap_or(u64::MAX);
    tracing::info!(budget, "scrub started");
    let mut report = Report::default();
    for target in &repo.targets {
        report.targets.push(target.name.clone());
        match scrub_target(&repo, target, budget, opts.stop.as_deref(), &mut report) {
            Ok(found) => {
                for finding in found {
                    tracing::error!(target = %target.name, "scrub: {}: {finding}", finding.kind());
                    report.findings.push(Found { target: target.name.clone(), finding });
                }
            }
            Err(e) => {
                tracing::error!(target = %target.name, "scrub failed: {e:#}");
                report.errors.push(format!("target `{}`: {e:#}", target.name));
            }
        }
        let behind = repo.catalog.packs_unscrubbed_since(target.id, crate::time::now_secs() - period)?;
        if behind > 0 {
            tracing::info!(target = %target.name, packs = behind, "packs not read within the scrub period yet");
        }
    }
    let outcome = if report.errors.is_empty() { RunOutcome::Success } else { RunOutcome::Failed };
    let mut said: Vec<String> = report.errors.clone();
    if !report.findings.is_empty() {
        let kinds: Vec<Finding> = report.findings.iter().map(|f| f.finding.clone()).collect();
        said.push(format!("{} findings: {}", kinds.len(), crate::inventory::summarize(&kinds)));
    }
    repo.catalog.finish_run(
        run_id,
        &RunReport {
            outcome,
            snapshot: None,
            bytes_read: report.bytes_read,
            bytes_new: 0,
            bytes_uploaded: 0,
            duration_ms: started.elapsed().as_millis() as u64,
            retries: 0,
            error: (!said.is_empty()).then(|| said.join("; ")),
            findings: report.findings.len() as u64,
        },
    )?;
    let level_error = outcome == RunOutcome::Failed || !report.findings.is_empty();
    match level_error {
        true => tracing::error!(outcome = outcome.as_str(), findings = report.findings.len(), "scrub finished"),
        false => tracing::info!(packs = report.packs_read, bytes = report.bytes_read, "scrub finished"),
    }
    Ok(report)
}

/// Scrubs one target: the listing against the catalog, the bucket's settings, and up to
/// `budget` bytes of packs read back.
fn scrub_target(
    repo: &Repo,
    target: &Target,
    budget: u64,
    stop: Option<&AtomicBool>,
    report: &mut Report,
) -> Result<Vec<Finding>> {
    let inventory = crate::runtime::block_on(Inventory::read(target))?;
    report.objects_listed += inventory.keys.values().map(|k| k.versions.len()).sum::<usize>();
    let recorded = repo.catalog.recorded_objects(target.id)?;
    let mut found = Vec::new();
    let mut duplicates = 0;
    let mut absent = std::collections::HashSet::new();
    let sizes = repo.catalog.undamaged_pack_sizes()?;
    for (key, version) in &recorded {
        let held = inventory
            .keys
            .get(key)
            .and_then(|k| k.versions.iter().find(|v| !inventory.versioned || v.id.is_some() && v.id == *version));
        let size = match crate::inventory::layout(key) {
            Layout::Pack(hash) => match sizes.get(&hash) {
                Some(&size) => Some(size),
                // A pack already found damaged is known (its chunks are stored again elsewhere).
                None => continue,
            },
            _ => None,
        };
        let why = match (held, size) {
            (None, _) => Some("the recorded version is not on the target".to_string()),
            (Some(v), Some(size)) if v.size != size => Some(format!("{} bytes on the target, {size} recorded", v.size)),
            _ => None,
        };
        if let Some(why) = why {
            absent.insert(key.clone());
            found.push(Finding::Unreadable { key: key.clone(), version: version.clone().unwrap_or_default(), why });
        }
        found.extend(inventory.findings_for(key, version.as_deref(), &mut duplicates));
    }
    found.extend(inventory.unknown_keys());
    found.extend(crate::runtime::block_on(crate::audit::settings(target))?);
    for pack in repo.catalog.packs_to_scrub(target.id, budget)? {
        let key = crate::format::pack_key(&pack.hash);
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        if absent.contains(&key) {
            continue;
        }
        let bytes = crate::runtime::block_on(target.get(&key, pack.version.as_deref(), pack.size))?;
        report.packs_read += 1;
        report.bytes_read += bytes.len() as u64;
        if crate::format::pack_id(&bytes) != pack.hash {
            let why = "its content does not match its hash (its name): changed on the target".to_string();
            repo.catalog.mark_damaged(&pack.hash, &format!("scrub of target `{}`: {why}", target.name))?;
            found.push(Finding::Unreadable { key, version: pack.version.unwrap_or_default(), why });
            continue;
        }
        let lock = crate::runtime::block_on(target.lock_of(&key, pack.version.as_deref()))?;
        found.extend(crate::runtime::block_on(crate::audit::object(
            target,
            &key,
            pack.version.as_deref(),
            lock.map(|l| l.until),
        ))?);
        repo.catalog.set_scrubbed(target.id, pack.id)?;
    }
    Ok(found)
}
