//! The change-anomaly tripwire: a run whose changes look like an attack on the source
//! (files encrypted in place, renamed to a new extension, wiped) freezes what must
//! survive, and says so.
//!
//! Locks keep old snapshots from deletion, but not from being outlived: ransomware that
//! works for weeks makes weeks of encrypted snapshots, and can wait for the last clean
//! one's lock to end. So each backup run is measured against the job's own history
//! ([`tally::Measures`]: what was added, modified, deleted and renamed, whether changed
//! files now look random or changed type, new extensions, ransom-note-like files,
//! canaries), and judged by [`RULES`]. Two signals that fire make the run `suspicious`:
//! its snapshot is still stored (and marked), prune is frozen for the job, the locks of
//! its last clean snapshots are extended (within the lock horizon), `status` is CRITICAL
//! and the alert fires until `coffer ack` clears it.
//!
//! It reports "anomalous change", never "ransomware": what it misses and what it
//! mistakes is measured in `tests/tripwire.rs` and stated in the README.

pub mod tally;
pub mod traits;

use anyhow::{Context, Result};

use crate::catalog::{Catalog, JudgedRun};
use crate::config::{Job, TripwireConfig};
use tally::Measures;

/// One signal: which measure, over what, and when it fires.
pub struct Rule {
    pub name: &'static str,
    /// What is counted, for people.
    pub what: &'static str,
    /// It fires at this many (at least), this share of `of` (at least) and more than
    /// twice the highest share in the job's baseline.
    pub min_count: u64,
    pub min_share: f64,
    /// (count, out of).
    pub of: fn(&Measures) -> (u64, u64),
    /// What it names, when it names files.
    pub names: fn(&Measures) -> &[String],
}

fn no_names(_: &Measures) -> &[String] {
    &[]
}

pub const RULES: &[Rule] = &[
    Rule {
        name: "mass change",
        what: "of the previous snapshot's files modified or deleted",
        min_count: 50,
        min_share: 0.30,
        of: |m| (m.modified + m.deleted, m.previous),
        names: no_names,
    },
    Rule {
        name: "scattered deletion",
        what: "of the previous snapshot's files deleted from directories that still hold files",
        min_count: 50,
        min_share: 0.20,
        of: |m| (m.deleted_in_kept_dirs, m.previous),
        names: no_names,
    },
    Rule {
        name: "entropy rose",
        what: "of the changed files whose content had low entropy now look random or encoded",
        min_count: 10,
        min_share: 0.25,
        of: |m| (m.high_entropy, m.low_entropy_before),
        names: no_names,
    },
    Rule {
        name: "type changed",
        what: "of the changed files of a known type changed type or contradict their extension",
        min_count: 10,
        min_share: 0.25,
        of: |m| (m.retyped, m.typed),
        names: no_names,
    },
    Rule {
        name: "rewritten in place",
        what: "of the large modified files were rewritten whole at the same size",
        min_count: 3,
        min_share: 0.50,
        of: |m| (m.rewritten, m.large),
        names: no_names,
    },
    Rule {
        name: "new extensions",
        what: "of the new files have an extension the job never had",
        min_count: 50,
        min_share: 0.50,
        of: |m| (m.new_extension, m.added),
        names: no_names,
    },
    Rule {
        name: "ransom-note-like files",
        what: "copies of one new small file across directories",
        min_count: 10,
        min_share: 0.0,
        of: |m| (m.notes, m.notes),
        names: no_names,
    },
    Rule {
        name: "onion addresses",
        what: "new small text files naming a Tor .onion address",
        min_count: 1,
        min_share: 0.0,
        of: |m| (m.onion, m.onion),
        names: no_names,
    },
    Rule {
        name: "canary",
        what: "canary files changed or gone",
        min_count: 1,
        min_share: 0.0,
        of: |m| (m.canaries.len() as u64, m.canaries.len() as u64),
        names: |m| &m.canaries,
    },
];

/// A signal that fired, with its numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    pub name: String,
    pub count: u64,
    pub of: u64,
    /// The highest share of this measure in the baseline.
    pub baseline: f64,
    /// What it means, with the numbers.
    pub detail: String,
}

/// What the tripwire concluded about a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The job's first snapshot: nothing to compare with.
    First,
    /// Fewer judged runs than `history`: measured and kept, not judged.
    NotEnoughHistory,
    Clean,
    Suspicious,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::First => "first",
            Verdict::NotEnoughHistory => "not-enough-history",
            Verdict::Clean => "clean",
            Verdict::Suspicious => "suspicious",
        }
    }
}

/// The tripwire's word on a run, as `backup --json` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub signals: Vec<Signal>,
    /// Judged runs in the baseline, and how many a verdict needs.
    pub history: usize,
    pub needs: u32,
    pub measures: Measures,
    /// On a trip: the clean snapshots whose locks were extended, and until when.
    pub held: Vec<String>,
    pub held_until: Option<i64>,
    /// What went wrong holding them (the trip stands).
    pub hold_error: Option<String>,
}

impl Report {
    /// One line for people and the run's record.
    pub fn summary(&self) -> String {
        let signals: Vec<String> = self.signals.iter().map(|s| format!("{}: {}", s.name, s.detail)).collect();
        let mut line = format!("anomalous change: {}", signals.join("; "));
        match (&self.held_until, self.held.is_empty()) {
            (Some(until), false) => line.push_str(&format!(
                "; prune frozen for the job; the last {} clean snapshots held until {}",
                self.held.len(),
                crate::time::format_utc(*until)
            )),
            _ => line.push_str("; prune frozen for the job"),
        }
        if let Some(e) = &self.hold_error {
            line.push_str(&format!("; holding the clean snapshots failed: {e}"));
        }
        line
    }
}

/// How much less sensitive a job is after `false_alarms` trips acknowledged as false:
/// ×1.5 each, at most ×4.
pub fn sensitivity(false_alarms: u32) -> f64 {
    1.5f64.powi(false_alarms.min(8) as i32).min(4.0)
}

fn share((count, of): (u64, u64)) -> f64 {
    if of == 0 { 0.0 } else { count as f64 / of as f64 }
}

/// Which rules fire on `m`, against the baseline's measures, at `sensitivity`.
pub fn signals(m: &Measures, baseline: &[Measures], sensitivity: f64) -> Vec<Signal> {
    let mut fired = Vec::new();
    for rule in RULES {
        let (count, of) = (rule.of)(m);
        let now = share((count, of));
        let base = baseline.iter().map(|b| share((rule.of)(b))).fold(0.0, f64::max);
        let min_count = (rule.min_count as f64 * sensitivity).ceil() as u64;
        let min_share = (rule.min_share * sensitivity).min(0.95);
        let usual = rule.min_share > 0.0 && now <= 2.0 * base;
        if count >= min_count && now >= min_share && !usual {
            let detail = match rule.min_share > 0.0 {
                true => format!(
                    "{count} of {of} ({:.0} %) {}; at most {:.0} % in the job's baseline",
                    now * 100.0,
                    rule.what,
                    base * 100.0
                ),
                false => format!("{count} {}", rule.what),
            };
            let names = (rule.names)(m);
            let detail = match names.is_empty() {
                true => detail,
                false => format!("{detail}: {}", names.join(", ")),
            };
            fired.push(Signal { name: rule.name.to_string(), count, of, baseline: base, detail });
        }
    }
    fired
}

/// Judges a run of `job` from its measures (`first`: the job had no snapshot to compare
/// with). A baseline row that does not read is an error naming it.
pub fn judge(catalog: &Catalog, job: &Job, m: Measures, first: bool) -> Result<Report> {
    let cfg = &job.tripwire;
    let rows = catalog.tripwire_baseline(&job.name, cfg.history)?;
    let baseline = rows
        .iter()
        .map(|r| {
            serde_json::from_str::<Measures>(&r.measures)
                .with_context(|| format!("the tripwire's baseline row of run {} in the catalog is unreadable", r.run))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut report = Report {
        verdict: Verdict::First,
        signals: Vec::new(),
        history: baseline.len(),
        needs: cfg.history,
        measures: m,
        held: Vec::new(),
        held_until: None,
        hold_error: None,
    };
    if first {
        return Ok(report);
    }
    if (baseline.len() as u32) < cfg.history {
        report.verdict = Verdict::NotEnoughHistory;
        return Ok(report);
    }
    let sensitivity = sensitivity(catalog.false_alarms(&job.name)?);
    report.signals = signals(&report.measures, &baseline, sensitivity);
    report.verdict = if report.signals.len() >= 2 { Verdict::Suspicious } else { Verdict::Clean };
    Ok(report)
}

/// Records the verdict of run `run` (which stored `snapshot`).
pub fn record(catalog: &Catalog, job: &str, run: i64, snapshot: &str, report: &Report) -> Result<()> {
    catalog.record_judgement(&JudgedRun {
        run,
        job: job.to_string(),
        snapshot: Some(snapshot.to_string()),
        at: crate::time::now_secs(),
        verdict: report.verdict.as_str().to_string(),
        measures: serde_json::to_string(&report.measures)?,
        signals: serde_json::to_string(&report.signals)?,
        acked_at: None,
        ack_reason: None,
        false_alarm: false,
    })
}

/// The extensions of the job's files as its last judged run counted them.
pub fn last_extensions(catalog: &Catalog, job: &str) -> std::collections::HashSet<String> {
    let rows = catalog.tripwire_baseline(job, 1).unwrap_or_default();
    rows.first()
        .and_then(|r| serde_json::from_str::<Measures>(&r.measures).ok())
        .map(|m| m.extensions.into_keys().collect())
        .unwrap_or_default()
}

/// The snapshots a trip of `job` holds: its last `hold` clean complete snapshots before
/// the first suspicious one nobody acknowledged.
pub fn clean_before_trip(catalog: &Catalog, job: &TripwireConfig, name: &str) -> Result<Vec<String>> {
    let suspicious = catalog.suspicious_snapshots()?;
    let open: std::collections::HashSet<String> =
        catalog.anomalies(Some(name), true)?.into_iter().filter_map(|a| a.snapshot).collect();
    // In the order they were made (the catalog's), up to the first trip.
    let snaps = catalog.snapshots(Some(name))?;
    let before = snaps.iter().take_while(|s| !open.contains(&s.id));
    let clean: Vec<&crate::catalog::SnapshotRow> =
        before.filter(|s| s.state == crate::catalog::SnapshotState::Complete && !suspicious.contains(&s.id)).collect();
    let from = clean.len().saturating_sub(job.hold as usize);
    Ok(clean[from..].iter().map(|s| s.id.clone()).collect())
}

/// The tally for a run of `job` (`first`: its first).
pub fn begin(cfg: &crate::config::Config, job: &Job, catalog: &Catalog, first: bool) -> Result<tally::Shared> {
    let canaries = job.tripwire.canaries.iter().cloned().collect();
    let extensions = last_extensions(catalog, &job.name);
    let tally = tally::Tally::new(&job.name, first, &cfg.state_dir, canaries, extensions)?;
    Ok(tally::Shared(std::sync::Arc::new(std::sync::Mutex::new(tally))))
}

/// On a trip: extends the locks of the job's last clean snapshots (records and packs, on
/// each of `targets`) to `hold_days` from now, within every target's lock horizon, and
/// keeps them that long in the catalog. Returns them and until when.
pub fn hold(
    repo: &crate::repo::Repo<crate::repo::Host>,
    targets: &[&crate::store::Target],
    job: &Job,
) -> Result<(Vec<String>, i64)> {
    const DAY: i64 = 86_400;
    let now = crate::time::now_secs();
    let slack = (crate::config::EXTENSION_SLACK_DAYS + 1) * DAY;
    let horizon = targets.iter().filter(|t| t.locks()).map(|t| t.lock_horizon() - slack).min().unwrap_or(i64::MAX);
    let until = (now + i64::from(job.tripwire.hold_days) * DAY).min(horizon);
    let held = clean_before_trip(&repo.catalog, &job.tripwire, &job.name)?;
    for id in &held {
        let row = repo.catalog.find_snapshot(&job.name, id)?;
        if row.retain_until.is_some_and(|r| r >= until) {
            continue;
        }
        let packs = repo.catalog.snapshot_pack_ids(id)?;
        let key = crate::format::snapshot_key(&job.name, id);
        let holders = repo.catalog.snapshot_holders(id)?;
        for t in targets {
            let copy = holders.iter().find(|(tid, _)| *tid == t.id);
            if let Some((_, copy)) = copy {
                crate::runtime::block_on(t.extend_lock(&key, copy.version.as_deref(), until))
                    .with_context(|| format!("cannot extend the lock of {key} on target `{}`", t.name))?;
            }
            crate::replicate::extend_locks(repo, t, &packs, until, &job.name)?;
        }
        repo.catalog.hold_snapshot(id, until, &job.name)?;
    }
    Ok((held, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(f: impl FnOnce(&mut Measures)) -> Measures {
        let mut m = Measures { files: 1000, previous: 1000, ..Default::default() };
        f(&mut m);
        m
    }

    #[test]
    fn a_signal_fires_above_its_floor_and_the_jobs_usual() {
        let encrypted = m(|m| {
            (m.modified, m.low_entropy_before, m.high_entropy) = (900, 800, 790);
        });
        let names = |s: Vec<Signal>| s.into_iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(signals(&encrypted, &[], 1.0)), ["mass change", "entropy rose"]);
        // A job that always changes this much: within its usual.
        let usual = m(|m| m.modified = 600);
        assert_eq!(names(signals(&encrypted, &[usual], 1.0)), ["entropy rose"]);
        // Below the floors: nothing.
        let small = m(|m| (m.modified, m.low_entropy_before, m.high_entropy) = (20, 20, 5));
        assert!(signals(&small, &[], 1.0).is_empty());
        // Less sensitive after false alarms: 400 of 1000 is under 30 % × 1.5².
        let some = m(|m| m.modified = 400);
        assert_eq!(names(signals(&some, &[], 1.0)), ["mass change"]);
        assert!(signals(&some, &[], sensitivity(2)).is_empty());
        assert_eq!(sensitivity(20), 4.0);
    }
}
