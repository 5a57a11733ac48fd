//! `coffer status`: the retention status check, for people and for monitoring.
//!
//! For every job: how many snapshots are live (not past their retain-until), how old the
//! newest is, and the **protected-until horizon**: the earliest date to which every live
//! snapshot is fully locked (its record and every pack it needs). A snapshot whose objects
//! are locked less long than it must be kept has a **protection gap**. By default the
//! check trusts the locks the catalog recorded when the server acknowledged them;
//! `--remote` asks the server for the lock of every needed object version (or a sample).
//!
//! Exit codes (Nagios): 0 OK; 1 WARNING (an unprotected or GOVERNANCE target, a job with
//! no live snapshot); 2 CRITICAL (a protection gap, or a lock the server cannot confirm);
//! 3 UNKNOWN (the check itself failed: no catalog, target unreachable, ...).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use serde::Serialize;

use crate::catalog::{Catalog, PackLock, SnapshotRow};
use crate::config::Config;
use crate::inventory::{Finding, Inventory, Layout};
use crate::target::{Protection, Target};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    #[default]
    Ok,
    Warning,
    Critical,
}

impl Level {
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

/// The whole report; `--json` prints exactly this (documented in the README).
#[derive(Debug, Serialize)]
pub struct Report {
    pub status: Level,
    pub checked_at: i64,
    pub target: TargetStatus,
    pub jobs: Vec<JobStatus>,
    /// Every reason the status is not OK, one sentence each.
    pub problems: Vec<String>,
    /// With `--remote` on a versioned target: what on the target coffer did not write
    /// (delete markers, overwrites, unknown keys, forged snapshot records).
    pub tampering: Vec<Finding>,
}

#[derive(Debug, Serialize)]
pub struct TargetStatus {
    pub url: String,
    pub protection: Protection,
    /// Locks read from the server (`--remote`) rather than from the catalog.
    pub remote_checked: bool,
    /// Object versions whose lock was read from the server.
    pub objects_checked: usize,
}

#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub name: String,
    pub live_snapshots: usize,
    pub newest_snapshot: Option<String>,
    pub newest_age_secs: Option<i64>,
    /// The earliest date to which every live snapshot is fully locked (None: nothing
    /// locked, or no live snapshot).
    pub protected_until: Option<i64>,
    pub gaps: Vec<Gap>,
    /// The job's schedule, when it has one.
    pub schedule: Option<String>,
    /// The fire time by which the next snapshot was due (with grace), when it has passed.
    pub overdue_since: Option<i64>,
}

/// A live snapshot that needs an object locked less long than the snapshot is kept.
#[derive(Debug, Serialize)]
pub struct Gap {
    pub snapshot: String,
    pub retain_until: Option<i64>,
    /// Object keys locked too briefly (or not at all), with their lock end.
    pub objects: Vec<GapObject>,
}

#[derive(Debug, Serialize)]
pub struct GapObject {
    pub key: String,
    pub locked_until: Option<i64>,
}

pub struct Options {
    pub remote: bool,
    /// With `remote`: check only this many packs, chosen at random.
    pub sample: Option<usize>,
}

/// Why the status is not OK, collected as the check goes.
#[derive(Default)]
struct Findings {
    level: Level,
    problems: Vec<String>,
}

impl Findings {
    fn raise(&mut self, level: Level, problem: String) {
        self.level = self.level.max(level);
        self.problems.push(problem);
    }
}

/// Where the lock of each object comes from: the catalog, or the server (`--remote`).
struct Locks<'a> {
    /// Only with `--remote`.
    runtime: Option<tokio::runtime::Runtime>,
    /// The target, when its locks are read from the server.
    target: Option<&'a Target>,
    /// Packs to ask the server about (all, or the `--sample`); records are always asked.
    remote_packs: Option<HashSet<i64>>,
    asked: HashMap<String, Option<i64>>,
    /// Locks the server reports lower than recorded.
    lowered: Vec<Finding>,
}

impl Locks<'_> {
    /// The lock end of one object version: from the server where it is asked, else as
    /// recorded. `None`: not locked (or the server could not tell).
    fn until(
        &mut self,
        key: &str,
        version: Option<&str>,
        recorded: Option<i64>,
        pack: Option<i64>,
        f: &mut Findings,
    ) -> Option<i64> {
        let (Some(target), Some(runtime)) = (self.target, &self.runtime) else { return recorded };
        if let (Some(id), Some(chosen)) = (pack, &self.remote_packs)
            && !chosen.contains(&id)
        {
            return recorded;
        }
        let id = format!("{key}@{}", version.unwrap_or(""));
        if let Some(known) = self.asked.get(&id) {
            return *known;
        }
        let until = match runtime.block_on(target.lock_of(key, version)) {
            Ok(r) => r.map(|r| r.until),
            Err(e) => {
                f.raise(Level::Critical, format!("cannot read the lock of {key} from the server: {e:#}"));
                None
            }
        };
        if let (Some(server), Some(recorded)) = (until, recorded)
            && server < recorded
        {
            let finding = Finding::LowerLock { key: key.to_string(), recorded, server };
            f.raise(Level::Critical, format!("tampering: {finding}"));
            self.lowered.push(finding);
        }
        self.asked.insert(id, until);
        until
    }
}

pub fn run(cfg: &Config, opts: &Options) -> Result<Report> {
    let crate::repo::Repo { catalog, row: repo, target, runtime, .. } = crate::repo::Repo::open(cfg)?;
    let now = crate::time::now_secs();
    let mut f = Findings::default();
    let protection = target.protection();
    let locked = target.locks();
    match protection {
        Protection::Unprotected => f.raise(
            Level::Warning,
            format!(
                "target {} is UNPROTECTED: nothing stops its credentials from deleting the backups",
                cfg.target.url
            ),
        ),
        Protection::Governance => f.raise(
            Level::Warning,
            "locks are in GOVERNANCE mode: users with s3:BypassGovernanceRetention can remove them".into(),
        ),
        Protection::Compliance => {}
    }
    if let Some(why) = &repo.unprotected {
        f.raise(Level::Warning, format!("init was told to accept an unprotected target: {why}"));
    }
    if opts.remote && !locked {
        f.raise(Level::Warning, "--remote: the target keeps no locks to read".into());
    }

    let live = live_snapshots(cfg, &catalog, now)?;
    let mut locks = Locks {
        runtime: opts.remote.then_some(runtime),
        target: (opts.remote && target.locks()).then_some(&target),
        remote_packs: opts.sample.filter(|_| opts.remote).map(|n| sample_packs(&live, n)),
        asked: HashMap::new(),
        lowered: Vec::new(),
    };
    let mut jobs = Vec::new();
    for (job, snaps) in &live {
        jobs.push(job_status(cfg, job, snaps, now, locked, &catalog, &mut locks, &mut f)?);
    }
    // Every restore needs the repository record: it must outlive every live snapshot.
    let longest_needed = live.iter().flat_map(|(_, v)| v.iter().map(|(s, _)| s.retain_until.unwrap_or(i64::MAX))).max();
    if locked {
        let recorded = repo.record_lock.map(|l| l.until);
        let until = locks.until(crate::format::REPO_KEY, repo.record_version.as_deref(), recorded, None, &mut f);
        if let Some(needed) = longest_needed
            && until.is_none_or(|u| u < needed)
        {
            f.raise(
                Level::Critical,
                format!(
                    "{} is locked until {}, before the last live snapshot expires",
                    crate::format::REPO_KEY,
                    until.map(crate::time::format_utc).unwrap_or_else(|| "never".into())
                ),
            );
        }
    }
    let mut tampering = std::mem::take(&mut locks.lowered);
    if let (Some(runtime), true) = (&locks.runtime, locked) {
        tampering.extend(tamper_findings(cfg, &catalog, &target, runtime, &mut f)?);
    }
    Ok(Report {
        tampering,
        status: f.level,
        checked_at: now,
        target: TargetStatus {
            url: cfg.target.url.clone(),
            protection,
            remote_checked: locks.target.is_some(),
            objects_checked: locks.asked.len(),
        },
        jobs,
        problems: f.problems,
    })
}

/// A job's live snapshots, oldest first, each with the packs it needs.
type Live<'a> = Vec<(&'a crate::config::Job, Vec<(SnapshotRow, Vec<PackLock>)>)>;

/// The live snapshots of every job: complete, and not past their retain-until.
fn live_snapshots<'a>(cfg: &'a Config, catalog: &Catalog, now: i64) -> Result<Live<'a>> {
    let mut live = Vec::new();
    for job in &cfg.jobs {
        let mut with_packs = Vec::new();
        for s in catalog.snapshots(Some(&job.name))? {
            if s.state == crate::catalog::SnapshotState::Complete && s.retain_until.is_none_or(|u| u > now) {
                let packs = catalog.snapshot_packs(&s.id)?;
                with_packs.push((s, packs));
            }
        }
        live.push((job, with_packs));
    }
    Ok(live)
}

/// `n` of the packs live snapshots need, chosen at random (`--remote --sample N`).
fn sample_packs(live: &Live, n: usize) -> HashSet<i64> {
    let all: HashSet<i64> = live.iter().flat_map(|(_, v)| v.iter().flat_map(|(_, p)| p.iter().map(|p| p.id))).collect();
    let mut all: Vec<i64> = all.into_iter().collect();
    shuffle(&mut all);
    all.truncate(n);
    all.into_iter().collect()
}

/// One job's line: its newest snapshot and age, whether it is overdue, how long all it
/// needs is locked, and the snapshots that need an object locked too briefly (a gap).
#[allow(clippy::too_many_arguments)]
fn job_status(
    cfg: &Config,
    job: &crate::config::Job,
    snaps: &[(SnapshotRow, Vec<PackLock>)],
    now: i64,
    locked: bool,
    catalog: &Catalog,
    locks: &mut Locks,
    f: &mut Findings,
) -> Result<JobStatus> {
    let newest = snaps.last().map(|(s, _)| s);
    let mut status = JobStatus {
        name: job.name.clone(),
        live_snapshots: snaps.len(),
        newest_snapshot: newest.map(|s| s.id.clone()),
        newest_age_secs: newest.map(|s| now - s.created_at),
        protected_until: None,
        gaps: Vec::new(),
        schedule: job.schedule.as_ref().map(|s| s.text.clone()),
        overdue_since: None,
    };
    match newest {
        None => f.raise(Level::Warning, format!("job {}: no live snapshot", job.name)),
        Some(newest) => status.overdue_since = freshness(cfg, job, newest.created_at, now, f),
    }
    let mut horizon: Option<Option<i64>> = None;
    for (snap, packs) in snaps {
        let needed = snap.retain_until.unwrap_or(i64::MAX);
        let record_key = crate::format::snapshot_key(&snap.job, &snap.id);
        let record_lock = snap.lock_mode.as_ref().and(snap.retain_until);
        let mut objects =
            vec![(record_key.clone(), locks.until(&record_key, snap.record_version.as_deref(), record_lock, None, f))];
        for p in packs {
            let key = crate::format::pack_key(&p.hash);
            let until = locks.until(&key, p.version.as_deref(), p.lock.map(|l| l.until), Some(p.id), f);
            if locks.target.is_some()
                && locks.asked.contains_key(&format!("{key}@{}", p.version.as_deref().unwrap_or("")))
            {
                catalog.confirm_pack(p.id)?;
            }
            objects.push((key, until));
        }
        // Fully locked until the earliest lock end among everything it needs.
        let fully: Option<i64> = objects.iter().map(|(_, u)| *u).try_fold(i64::MAX, |acc, u| u.map(|u| acc.min(u)));
        horizon = Some(match horizon {
            None => fully,
            Some(h) => h.zip(fully).map(|(a, b)| a.min(b)),
        });
        let short: Vec<GapObject> = objects
            .into_iter()
            .filter(|(_, u)| u.is_none_or(|u| u < needed))
            .map(|(key, locked_until)| GapObject { key, locked_until })
            .collect();
        if locked && !short.is_empty() {
            let list: Vec<String> = short
                .iter()
                .map(|o| {
                    let until = o.locked_until.map(crate::time::format_utc).unwrap_or_else(|| "never".into());
                    format!("{} locked until {until}", o.key)
                })
                .collect();
            f.raise(
                Level::Critical,
                format!(
                    "job {}: snapshot {} (kept until {}) has a protection gap: {}",
                    job.name,
                    snap.id,
                    snap.retain_until.map(crate::time::format_utc).unwrap_or_else(|| "forever".into()),
                    list.join(", ")
                ),
            );
            status.gaps.push(Gap { snapshot: snap.id.clone(), retain_until: snap.retain_until, objects: short });
        }
    }
    status.protected_until = if locked { horizon.flatten() } else { None };
    Ok(status)
}

/// Lists every object version and compares it with the catalog: each recorded key must
/// have only its recorded version (identical retries aside) and no delete marker; keys
/// the catalog does not know must be coffer's, and a snapshot record among them must
/// carry a valid MAC. Every finding is CRITICAL.
fn tamper_findings(
    cfg: &Config,
    catalog: &Catalog,
    target: &Target,
    runtime: &tokio::runtime::Runtime,
    f: &mut Findings,
) -> Result<Vec<Finding>> {
    let inventory = runtime.block_on(Inventory::read(target))?;
    let recorded = catalog.recorded_objects()?;
    let secret = crate::keys::RepoSecret::load(&cfg.repo_secret_file);
    let mut found = Vec::new();
    let mut duplicates = 0;
    for (key, versions) in &inventory.keys {
        let layout = crate::inventory::layout(key);
        if layout == Layout::Unknown {
            continue;
        }
        // A key the catalog does not know is judged against its oldest version.
        let oldest = versions.versions.first();
        let genuine = match recorded.get(key) {
            Some(version) => version.clone(),
            None => oldest.and_then(|v| v.id.clone()),
        };
        found.extend(inventory.findings_for(key, genuine.as_deref(), &mut duplicates));
        if let (None, Layout::Snapshot { .. }, Some(oldest)) = (recorded.get(key), &layout, oldest) {
            let object = runtime.block_on(target.get(key, oldest.id.as_deref()))?;
            match &secret {
                Ok(secret) => match crate::format::snapshot::verify_mac(&object, key, secret) {
                    Ok(()) => f.raise(
                        Level::Warning,
                        format!(
                            "{key}: an authentic snapshot record the catalog does not know (another state \
                             directory writes to this repository, or a run stopped before recording it)"
                        ),
                    ),
                    Err(e) => found.push(Finding::ForgedRecord {
                        key: key.clone(),
                        version: oldest.id.clone().unwrap_or_default(),
                        why: e.to_string(),
                    }),
                },
                Err(e) => f.raise(Level::Warning, format!("{key} is not in the catalog and cannot be checked: {e:#}")),
            }
        }
    }
    found.extend(inventory.unknown_keys());
    for finding in &found {
        f.raise(Level::Critical, format!("tampering: {finding}"));
    }
    Ok(found)
}

/// Judges a scheduled job by its newest snapshot: one missed fire time (past its grace)
/// is WARNING, two are CRITICAL. Returns when the first missed one was due.
fn freshness(cfg: &Config, job: &crate::config::Job, newest: i64, now: i64, f: &mut Findings) -> Option<i64> {
    let schedule = job.schedule.as_ref()?;
    let slack = (job.grace + job.jitter).as_secs() as i64;
    let first = schedule.next_after(newest, cfg.daemon.zone)?;
    if now <= first + slack {
        return None;
    }
    let second = schedule.next_after(first, cfg.daemon.zone);
    let (level, missed) = match second {
        Some(second) if now > second + slack => (Level::Critical, "two scheduled snapshots are"),
        _ => (Level::Warning, "a scheduled snapshot is"),
    };
    f.raise(
        level,
        format!(
            "job {}: {missed} missing: the newest is from {} and the one due at {} (schedule `{}`, grace {}s) has not come",
            job.name,
            crate::time::format_utc(newest),
            crate::time::format_utc(first),
            schedule.text,
            slack
        ),
    );
    Some(first + slack)
}

/// Fisher-Yates with the OS random source (for `--sample` and `verify --subset`).
pub fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        let j = (u64::from_le_bytes(b) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}
