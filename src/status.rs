//! `coffer status`: the retention status check, for people and for monitoring.
//!
//! For every job: how many snapshots are live (not past their retain-until), how old the
//! newest is, and the **protected-until horizon**: the earliest date to which every live
//! snapshot is fully locked (its record and every pack it needs). A snapshot whose objects
//! are locked less long than it must be kept has a **protection gap**. By default the
//! check trusts the locks the catalog recorded when the server acknowledged them;
//! `--remote` asks the server for the lock of every needed object version (or a sample).
//!
//! With several targets, each is judged on its own: the snapshots it holds, its horizon
//! and gaps, and its **lag** (how many of a job's newest snapshots it misses). A job's
//! horizon counts each snapshot's best-locked copy.
//!
//! Exit codes (Nagios): 0 OK; 1 WARNING (an unprotected or GOVERNANCE target, a job with
//! no live snapshot, a target behind by two snapshots); 2 CRITICAL (a protection gap, a
//! lock the server cannot confirm, a target behind by three or more, an anomalous change
//! the tripwire found that nobody acknowledged); 3 UNKNOWN (the
//! check itself failed: no catalog, target unreachable, ...).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use serde::Serialize;

use crate::catalog::{Catalog, SnapshotRow};
use crate::config::Config;
use crate::inventory::{Finding, Inventory, Layout};
use crate::store::{Protection, Target};

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
    pub targets: Vec<TargetStatus>,
    pub jobs: Vec<JobStatus>,
    /// Every reason the status is not OK, one sentence each.
    pub problems: Vec<String>,
    /// With `--remote` on a versioned target: what on the target coffer did not write
    /// (delete markers, overwrites, unknown keys, forged snapshot records).
    pub tampering: Vec<crate::inventory::Found>,
}

#[derive(Debug, Serialize)]
pub struct TargetStatus {
    #[serde(rename = "target")]
    pub name: String,
    pub url: String,
    pub protection: Protection,
    /// Locks read from the server (`--remote`) rather than from the catalog.
    pub remote_checked: bool,
    /// Object versions whose lock was read from the server.
    pub objects_checked: usize,
}

#[derive(Debug, Serialize)]
pub struct JobStatus {
    #[serde(rename = "job")]
    pub name: String,
    pub live_snapshots: usize,
    pub newest_snapshot: Option<String>,
    pub newest_age_secs: Option<i64>,
    /// The earliest date to which every live snapshot is fully locked on at least one
    /// target (None: nothing locked, or no live snapshot).
    #[serde(rename = "locked_until")]
    pub protected_until: Option<i64>,
    pub gaps: Vec<Gap>,
    /// The job's schedule, when it has one.
    pub schedule: Option<String>,
    /// The fire time by which the next snapshot was due (with grace), when it has passed.
    pub overdue_since: Option<i64>,
    /// Fire times (each past its grace) since the newest live snapshot, or since the
    /// job's first run when it has none: 0 in steady state (scheduled jobs only).
    pub missed_fire_times: Option<u32>,
    /// Until when the newest snapshot is fully locked on its best target: how long
    /// the latest backup stays protected if no other comes.
    #[serde(rename = "newest_locked_until")]
    pub newest_protected_until: Option<i64>,
    /// The job on each of its targets.
    pub targets: Vec<JobOnTarget>,
    /// Runs the tripwire found suspicious that nobody acknowledged (CRITICAL; prune is
    /// frozen for the job meanwhile).
    pub anomalies: Vec<i64>,
}

/// A job's snapshots on one of its targets.
#[derive(Debug, Serialize)]
pub struct JobOnTarget {
    pub target: String,
    /// Live snapshots this target holds.
    pub live_snapshots: usize,
    pub newest_snapshot: Option<String>,
    /// The earliest date to which every live snapshot it holds is fully locked there.
    #[serde(rename = "locked_until")]
    pub protected_until: Option<i64>,
    /// How many of the job's snapshots, newer than the newest it holds, it lacks (the
    /// next backup copies them to it).
    pub lag: usize,
}

/// A live snapshot that needs an object locked less long than the snapshot is kept, on
/// one target.
#[derive(Debug, Serialize)]
pub struct Gap {
    pub target: String,
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

impl Options {
    /// The check from the catalog alone (what `/metrics` shows).
    pub fn local() -> Options {
        Options { remote: false, sample: None }
    }
}

/// The status when the check itself failed (no catalog, bad config): Nagios's UNKNOWN.
pub const UNKNOWN: u8 = 3;

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
struct Locks {
    /// Whether locks are read from the server (`--remote`).
    remote: bool,
    /// Packs to ask the server about (all, or the `--sample`); records are always asked.
    remote_packs: Option<HashSet<i64>>,
    /// Lock ends read from the server, by target, key and version.
    asked: HashMap<String, Option<i64>>,
    /// Locks the server reports lower than recorded.
    lowered: Vec<crate::inventory::Found>,
}

impl Locks {
    /// The lock end of one object version on `target`: from the server where it is
    /// asked, else as recorded. `None`: not locked (or the server could not tell).
    fn until(
        &mut self,
        target: &Target,
        key: &str,
        version: Option<&str>,
        recorded: Option<i64>,
        pack: Option<i64>,
        f: &mut Findings,
    ) -> Option<i64> {
        if !self.remote || !target.locks() {
            return recorded;
        }
        if let (Some(id), Some(chosen)) = (pack, &self.remote_packs)
            && !chosen.contains(&id)
        {
            return recorded;
        }
        let id = Self::id(target, key, version);
        if let Some(known) = self.asked.get(&id) {
            return *known;
        }
        let until = match crate::runtime::block_on(target.lock_of(key, version)) {
            Ok(r) => r.map(|r| r.until),
            Err(e) => {
                let name = &target.name;
                f.raise(
                    Level::Critical,
                    format!("target {name}: cannot read the lock of {key} from the server: {e:#}"),
                );
                None
            }
        };
        let mut found = Vec::new();
        if let (Some(server), Some(recorded)) = (until, recorded)
            && server < recorded
        {
            found.push(Finding::LowerLock { key: key.to_string(), recorded, server });
        }
        match crate::runtime::block_on(crate::audit::object(target, key, version, until)) {
            Ok(more) => found.extend(more),
            Err(e) => f.raise(Level::Critical, format!("target {}: {e:#}", target.name)),
        }
        for finding in found {
            f.raise(Level::Critical, format!("tampering on target {}: {finding}", target.name));
            self.lowered.push(crate::inventory::Found { target: target.name.clone(), finding });
        }
        self.asked.insert(id, until);
        until
    }

    fn id(target: &Target, key: &str, version: Option<&str>) -> String {
        format!("{}:{key}@{}", target.name, version.unwrap_or(""))
    }

    fn was_asked(&self, target: &Target, key: &str, version: Option<&str>) -> bool {
        self.asked.contains_key(&Self::id(target, key, version))
    }
}

pub fn run(cfg: &Config, opts: &Options) -> Result<Report> {
    let repo = crate::repo::Repo::open(cfg)?;
    let catalog = &repo.catalog;
    let now = crate::time::now_secs();
    let mut f = Findings::default();
    let records = catalog.targets()?;
    for target in &repo.targets {
        let name = &target.name;
        match target.protection() {
            Protection::Unprotected => f.raise(
                Level::Warning,
                format!(
                    "target {name} ({}) is UNPROTECTED: nothing stops its credentials from deleting the backups",
                    target.url
                ),
            ),
            Protection::Governance => f.raise(
                Level::Warning,
                format!(
                    "target {name}: locks are in GOVERNANCE mode: users with s3:BypassGovernanceRetention can remove them"
                ),
            ),
            Protection::Compliance => {}
        }
        if let Some(why) = records.iter().find(|r| r.id == target.id).and_then(|r| r.unprotected.as_ref()) {
            f.raise(Level::Warning, format!("target {name}: init was told to accept an unprotected target: {why}"));
        }
    }
    if opts.remote && !repo.targets.iter().any(Target::locks) {
        f.raise(Level::Warning, "--remote: no target keeps locks to read".into());
    }

    let live = live_snapshots(cfg, catalog, now)?;
    let mut locks = Locks {
        remote: opts.remote,
        remote_packs: opts.sample.filter(|_| opts.remote).map(|n| sample_packs(&live, n)),
        asked: HashMap::new(),
        lowered: Vec::new(),
    };
    let mut jobs = Vec::new();
    for (job, snaps) in &live {
        jobs.push(job_status(cfg, &repo, job, snaps, now, &mut locks, &mut f)?);
    }
    let mut targets = Vec::new();
    for target in &repo.targets {
        repo_record_lock(&repo, target, &live, &mut locks, &mut f)?;
        targets.push(TargetStatus {
            name: target.name.clone(),
            url: target.url.clone(),
            protection: target.protection(),
            remote_checked: opts.remote && target.locks(),
            objects_checked: locks.asked.keys().filter(|k| k.starts_with(&format!("{}:", target.name))).count(),
        });
    }
    let mut tampering = std::mem::take(&mut locks.lowered);
    if opts.remote {
        for target in repo.targets.iter().filter(|t| t.locks()) {
            let mut found = tamper_findings(cfg, catalog, target, &mut f)?;
            let settings = crate::runtime::block_on(crate::audit::settings(target))?;
            for finding in &settings {
                f.raise(Level::Critical, format!("target {}: {finding}", target.name));
            }
            found.extend(settings);
            tampering.extend(
                found.into_iter().map(|finding| crate::inventory::Found { target: target.name.clone(), finding }),
            );
        }
    }
    Ok(Report { tampering, status: f.level, checked_at: now, targets, jobs, problems: f.problems })
}

/// Every restore needs the repository record: on each target, it must outlive every
/// live snapshot the target holds.
fn repo_record_lock(
    repo: &crate::repo::Repo,
    target: &Target,
    live: &Live,
    locks: &mut Locks,
    f: &mut Findings,
) -> Result<()> {
    if !target.locks() {
        return Ok(());
    }
    let held = |s: &&Held| s.copies.iter().any(|(t, _)| *t == target.id);
    let longest_needed =
        live.iter().flat_map(|(_, v)| v.iter().filter(held).map(|h| h.row.retain_until.unwrap_or(i64::MAX))).max();
    let Some(needed) = longest_needed else { return Ok(()) };
    // The repository record, and each key-set record there (restores with its keys need it).
    let mut records = vec![(crate::format::REPO_KEY.to_string(), repo.catalog.repo_record(target.id)?)];
    for set in repo.catalog.keysets()?.into_iter().filter(|s| s.seq > 0) {
        // One the target lacks yet is copied to it by the next backup.
        if let Some((_, copy)) = repo.catalog.keyset_holders(set.seq)?.into_iter().find(|(t, _)| *t == target.id) {
            records.push((crate::format::keyset::key(set.seq), Some(copy)));
        }
    }
    for (key, record) in records {
        let recorded = record.as_ref().and_then(|r| r.lock.map(|l| l.until));
        let version = record.as_ref().and_then(|r| r.version.clone());
        let until = locks.until(target, &key, version.as_deref(), recorded, None, f);
        if until.is_none_or(|u| u < needed) {
            f.raise(
                Level::Critical,
                format!(
                    "target {}: {key} is locked until {}, before the last live snapshot expires",
                    target.name,
                    until.map(crate::time::format_utc).unwrap_or_else(|| "never".into())
                ),
            );
        }
    }
    Ok(())
}

/// A live snapshot: its row, the targets holding its record, and the packs it needs.
struct Held {
    row: SnapshotRow,
    copies: Vec<(crate::catalog::TargetId, crate::catalog::StoredCopy)>,
    packs: Vec<i64>,
}

/// A job's live snapshots, oldest first.
type Live<'a> = Vec<(&'a crate::config::Job, Vec<Held>)>;

/// The live snapshots of every job: complete, and not past their retain-until.
fn live_snapshots<'a>(cfg: &'a Config, catalog: &Catalog, now: i64) -> Result<Live<'a>> {
    let mut live = Vec::new();
    for job in &cfg.jobs {
        let mut held = Vec::new();
        for row in catalog.snapshots(Some(&job.name))? {
            if row.is_live(now) {
                let copies = catalog.snapshot_holders(&row.id)?;
                let packs = catalog.snapshot_packs(crate::catalog::TargetId::NONE, &row.id)?;
                held.push(Held { row, copies, packs: packs.into_iter().map(|p| p.id).collect() });
            }
        }
        live.push((job, held));
    }
    Ok(live)
}

/// `n` of the packs live snapshots need, chosen at random (`--remote --sample N`).
fn sample_packs(live: &Live, n: usize) -> HashSet<i64> {
    let all: HashSet<i64> = live.iter().flat_map(|(_, v)| v.iter().flat_map(|h| h.packs.iter().copied())).collect();
    let mut all: Vec<i64> = all.into_iter().collect();
    shuffle(&mut all);
    all.truncate(n);
    all.into_iter().collect()
}

/// One job's line: its newest snapshot and age, whether it is overdue, and on each of
/// its targets how long all it holds is locked, the snapshots that need an object locked
/// too briefly there (a gap), and how far the target lags.
fn job_status(
    cfg: &Config,
    repo: &crate::repo::Repo,
    job: &crate::config::Job,
    snaps: &[Held],
    now: i64,
    locks: &mut Locks,
    f: &mut Findings,
) -> Result<JobStatus> {
    let newest = snaps.last().map(|h| &h.row);
    let mut status = JobStatus {
        name: job.name.clone(),
        live_snapshots: snaps.len(),
        newest_snapshot: newest.map(|s| s.id.clone()),
        newest_age_secs: newest.map(|s| now - s.created_at),
        protected_until: None,
        gaps: Vec::new(),
        schedule: job.schedule.as_ref().map(|s| s.text.clone()),
        overdue_since: None,
        missed_fire_times: None,
        newest_protected_until: None,
        targets: Vec::new(),
        anomalies: Vec::new(),
    };
    for a in repo.catalog.anomalies(Some(&job.name), true)? {
        let signals: Vec<String> = serde_json::from_str::<Vec<crate::tripwire::Signal>>(&a.signals)
            .map(|s| s.into_iter().map(|s| format!("{}: {}", s.name, s.detail)).collect())
            .unwrap_or_else(|_| vec!["(the recorded signals do not read)".into()]);
        f.raise(
            Level::Critical,
            format!(
                "job {}: anomalous change in run {} ({}, snapshot {}): {}; prune is frozen for the job; \
                 `restore latest-clean` restores the newest snapshot before it; `coffer ack {} {} --reason …` \
                 once someone looked",
                job.name,
                a.run,
                crate::time::format_utc(a.at),
                a.snapshot.as_deref().unwrap_or("-"),
                signals.join("; "),
                job.name,
                a.run
            ),
        );
        status.anomalies.push(a.run);
    }
    let since = match newest {
        None => {
            f.raise(Level::Warning, format!("job {}: no live snapshot", job.name));
            repo.catalog.job_totals(&job.name)?.first_run_at
        }
        Some(newest) => {
            status.overdue_since = freshness(cfg, job, newest.created_at, now, f);
            Some(newest.created_at)
        }
    };
    status.missed_fire_times = since.and_then(|since| missed_fire_times(cfg, job, since, now));
    // Each snapshot's best-locked copy, over the targets that hold it.
    let mut best: Vec<Option<i64>> = vec![None; snaps.len()];
    for target in repo.targets.iter().filter(|t| job.targets.contains(&t.name)) {
        let mut on = JobOnTarget {
            target: target.name.clone(),
            live_snapshots: 0,
            newest_snapshot: None,
            protected_until: None,
            lag: 0,
        };
        let mut horizon: Option<Option<i64>> = None;
        for (i, held) in snaps.iter().enumerate() {
            let Some((_, copy)) = held.copies.iter().find(|(t, _)| *t == target.id) else {
                on.lag += 1;
                continue;
            };
            (on.live_snapshots, on.newest_snapshot, on.lag) = (on.live_snapshots + 1, Some(held.row.id.clone()), 0);
            let fully = snapshot_lock(repo, target, held, copy, locks, &mut status, f)?;
            best[i] = best[i].max(fully);
            horizon = Some(match horizon {
                None => fully,
                Some(h) => h.zip(fully).map(|(a, b)| a.min(b)),
            });
        }
        on.protected_until = if target.locks() { horizon.flatten() } else { None };
        lag_level(job, &on, f);
        status.targets.push(on);
    }
    let locked = repo.targets.iter().any(|t| t.locks() && job.targets.contains(&t.name));
    status.newest_protected_until = best.last().copied().flatten().filter(|_| locked);
    status.protected_until = match locked && !best.is_empty() {
        true => best.into_iter().try_fold(i64::MAX, |acc, u| u.map(|u| acc.min(u))),
        false => None,
    };
    Ok(status)
}

/// Raises a target that misses the job's newest snapshots: two is WARNING, three or
/// more CRITICAL (one is the degraded run the next one repairs).
fn lag_level(job: &crate::config::Job, on: &JobOnTarget, f: &mut Findings) {
    let level = match on.lag {
        0 | 1 => return,
        2 => Level::Warning,
        _ => Level::Critical,
    };
    f.raise(
        level,
        format!(
            "job {}: target {} lags: it lacks the {} newest snapshots (the next backup copies them to it)",
            job.name, on.target, on.lag
        ),
    );
}

/// How long one snapshot is fully locked on one target (the earliest lock end among its
/// record and every pack it needs), noting a gap where that is before its retain-until.
fn snapshot_lock(
    repo: &crate::repo::Repo,
    target: &Target,
    held: &Held,
    copy: &crate::catalog::StoredCopy,
    locks: &mut Locks,
    status: &mut JobStatus,
    f: &mut Findings,
) -> Result<Option<i64>> {
    let snap = &held.row;
    let needed = snap.retain_until.unwrap_or(i64::MAX);
    let record_key = crate::format::snapshot_key(&snap.job, &snap.id);
    let recorded = copy.lock.map(|l| l.until);
    let mut objects =
        vec![(record_key.clone(), locks.until(target, &record_key, copy.version.as_deref(), recorded, None, f))];
    for p in repo.catalog.snapshot_packs(target.id, &snap.id)? {
        let key = crate::format::pack_key(&p.hash);
        let until = locks.until(target, &key, p.version.as_deref(), p.lock.map(|l| l.until), Some(p.id), f);
        if locks.remote && locks.was_asked(target, &key, p.version.as_deref()) {
            repo.catalog.confirm_pack(target.id, p.id)?;
        }
        objects.push((key, until));
    }
    let fully: Option<i64> = objects.iter().map(|(_, u)| *u).try_fold(i64::MAX, |acc, u| u.map(|u| acc.min(u)));
    let short: Vec<GapObject> = objects
        .into_iter()
        .filter(|(_, u)| u.is_none_or(|u| u < needed))
        .map(|(key, locked_until)| GapObject { key, locked_until })
        .collect();
    if target.locks() && !short.is_empty() {
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
                "job {}: snapshot {} (kept until {}) has a protection gap on target {}: {}",
                snap.job,
                snap.id,
                snap.retain_until.map(crate::time::format_utc).unwrap_or_else(|| "forever".into()),
                target.name,
                list.join(", ")
            ),
        );
        let gap = Gap {
            target: target.name.clone(),
            snapshot: snap.id.clone(),
            retain_until: snap.retain_until,
            objects: short,
        };
        status.gaps.push(gap);
    }
    Ok(fully)
}

/// Lists every object version and compares it with the catalog: each recorded key must
/// have only its recorded version (identical retries aside) and no delete marker; keys
/// the catalog does not know must be coffer's, and a snapshot record among them must
/// carry a valid MAC. Every finding is CRITICAL.
fn tamper_findings(cfg: &Config, catalog: &Catalog, target: &Target, f: &mut Findings) -> Result<Vec<Finding>> {
    let inventory = crate::runtime::block_on(Inventory::read(target))?;
    let recorded = catalog.recorded_objects(target.id)?;
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
        let record = matches!(layout, Layout::Snapshot { .. } | Layout::KeySet(_));
        if let (None, true, Some(oldest)) = (recorded.get(key), record, oldest) {
            let object =
                crate::runtime::block_on(target.get(key, oldest.id.as_deref(), crate::format::MAX_SNAPSHOT_RECORD))?;
            let authentic = |secret: &crate::keys::RepoSecret| match layout {
                Layout::KeySet(seq) => crate::format::keyset::KeySet::verify(&object, secret)
                    .and_then(|s| if s.seq == seq { Ok(()) } else { Err(crate::format::DecodeError::Mac) }),
                _ => crate::format::snapshot::verify_mac(&object, key, secret),
            };
            match &secret {
                Ok(secret) => match authentic(secret) {
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

/// The most missed fire times counted (a job scheduled every minute and stopped for
/// months needs no exact count).
const MISSED_COUNTED: u32 = 1000;

/// How many of a scheduled job's fire times after `since` are past, each with its
/// `grace` and `jitter`: the job's own measure of staleness (0 in steady state, 1 while
/// a run is late, 2 when one was missed outright). `None` for a job without a schedule.
pub fn missed_fire_times(cfg: &Config, job: &crate::config::Job, since: i64, now: i64) -> Option<u32> {
    let schedule = job.schedule.as_ref()?;
    let slack = (job.grace + job.jitter).as_secs() as i64;
    Some(missed(schedule, cfg.daemon.zone, slack, since, now))
}

/// How many fire times of `schedule` after `since` are past by `slack` at `now`.
pub fn missed(
    schedule: &crate::schedule::Schedule,
    zone: crate::schedule::Zone,
    slack: i64,
    since: i64,
    now: i64,
) -> u32 {
    let (mut missed, mut after) = (0, since);
    while missed < MISSED_COUNTED {
        match schedule.next_after(after, zone) {
            Some(fire) if fire + slack < now => (missed, after) = (missed + 1, fire),
            _ => break,
        }
    }
    missed
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
