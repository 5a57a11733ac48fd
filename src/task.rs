//! What the daemon schedules: tasks, each a kind of periodic work with a name in the run
//! history, a schedule, and a run. A new periodic task is one type implementing [`Task`]
//! and one line in [`tasks`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Result;

use crate::catalog::{RunKind, Trigger};
use crate::config::{Config, Job};
use crate::schedule::Schedule;

/// One periodic task of the daemon.
pub trait Task: Send + Sync {
    /// Its name in the run history and the metrics (a job's name, or `@scrub`).
    fn name(&self) -> &str;

    fn kind(&self) -> RunKind;

    /// When it fires, and the most a firing is delayed at random; `None`: only on demand.
    fn schedule(&self) -> Option<(&Schedule, Duration)>;

    /// Whether a fire time missed while the daemon was down is made up at start.
    fn catches_up(&self) -> bool {
        false
    }

    /// One run, recorded in the run history whatever happens; `stop` is set by a shutdown.
    fn run(&self, cfg: &Config, trigger: Trigger, scheduled_for: Option<i64>, stop: Arc<AtomicBool>) -> Result<()>;
}

/// Every task the config defines: a backup for each job, and the scrub where `[scrub]`
/// is configured.
pub fn tasks(cfg: &Config) -> Vec<Arc<dyn Task>> {
    let backups = cfg.jobs.iter().map(|job| Arc::new(Backup(job.clone())) as Arc<dyn Task>);
    let scrub = cfg.scrub.iter().map(|s| Arc::new(Scrub(s.schedule.clone())) as Arc<dyn Task>);
    backups.chain(scrub).collect()
}

/// A job's backup.
struct Backup(Job);

impl Task for Backup {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn kind(&self) -> RunKind {
        RunKind::Backup
    }

    fn schedule(&self) -> Option<(&Schedule, Duration)> {
        Some((self.0.schedule.as_ref()?, self.0.jitter))
    }

    fn catches_up(&self) -> bool {
        self.0.catch_up
    }

    fn run(&self, cfg: &Config, trigger: Trigger, scheduled_for: Option<i64>, stop: Arc<AtomicBool>) -> Result<()> {
        let opts =
            crate::backup::Options { progress: false, trigger, scheduled_for, stop: Some(stop), observers: Vec::new() };
        crate::backup::run(cfg, &self.0, opts).map(drop)
    }
}

/// The scrub of every target.
struct Scrub(Schedule);

impl Task for Scrub {
    fn name(&self) -> &str {
        crate::scrub::JOB
    }

    fn kind(&self) -> RunKind {
        RunKind::Scrub
    }

    fn schedule(&self) -> Option<(&Schedule, Duration)> {
        Some((&self.0, Duration::ZERO))
    }

    fn run(&self, cfg: &Config, trigger: Trigger, scheduled_for: Option<i64>, stop: Arc<AtomicBool>) -> Result<()> {
        crate::scrub::run(cfg, &crate::scrub::Options { trigger, scheduled_for, stop: Some(stop) }).map(drop)
    }
}
