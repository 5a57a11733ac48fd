//! The run history and the audit events.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::*;

// Stored as its name (`RunOutcome::as_str`).
super::text_column!(RunOutcome, "run outcome");

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: RunOutcome,
    pub snapshot: Option<String>,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_uploaded: u64,
    pub duration_ms: u64,
    /// Transient target failures that were retried.
    pub retries: u64,
    pub error: Option<String>,
    /// What a scrub found wrong (0 for backups).
    pub findings: u64,
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `coffer backup`.
    Manual,
    /// A fire time of the job's schedule.
    Schedule,
    /// At daemon start, for fire times missed while it was down.
    CatchUp,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
        }
    }
}

/// What a run is of: the kinds of task the daemon schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Backup,
    Scrub,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backup => "backup",
            RunKind::Scrub => "scrub",
        }
    }

    pub fn parse(text: &str) -> Option<RunKind> {
        [RunKind::Backup, RunKind::Scrub].into_iter().find(|k| k.as_str() == text)
    }
}

super::text_column!(RunKind, "run kind");

/// Which run begins: its name in the history (a job's, or `@scrub`), its kind, and why.
#[derive(Debug, Clone, Copy)]
pub struct RunStart<'a> {
    pub job: &'a str,
    pub kind: RunKind,
    pub trigger: Trigger,
    /// The fire time it is for, when a schedule started it.
    pub scheduled_for: Option<i64>,
}

impl<'a> RunStart<'a> {
    pub fn backup(job: &'a str, trigger: Trigger, scheduled_for: Option<i64>) -> RunStart<'a> {
        RunStart { job, kind: RunKind::Backup, trigger, scheduled_for }
    }
}

/// One row of the run history (`coffer runs`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    #[serde(rename = "run")]
    pub id: i64,
    pub job: String,
    pub kind: RunKind,
    pub trigger: String,
    pub scheduled_for: Option<i64>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub duration_ms: Option<u64>,
    pub outcome: RunOutcome,
    pub snapshot: Option<String>,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_uploaded: u64,
    pub retries: u64,
    pub error: Option<String>,
    /// What a scrub found wrong.
    pub findings: u64,
}

/// A job's history summed up, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct JobTotals {
    /// When a run last ended `success` (every path read).
    pub last_success_at: Option<i64>,
    /// When a run last ended with a snapshot (`success`, `partial` or `degraded`).
    pub last_snapshot_at: Option<i64>,
    /// When the job's first run started (skips aside).
    pub first_run_at: Option<i64>,
    /// The newest finished run (not skipped).
    pub last_run: Option<RunRow>,
    pub runs: u64,
    pub failures: u64,
    pub skips: u64,
    pub retries: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub lock_extensions: u64,
}

fn run_row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        job: r.get(1)?,
        trigger: r.get(2)?,
        scheduled_for: r.get(3)?,
        started_at: r.get(4)?,
        ended_at: r.get(5)?,
        duration_ms: r.get(6)?,
        outcome: r.get(7)?,
        snapshot: r.get(8)?,
        bytes_read: r.get(9)?,
        bytes_new: r.get(10)?,
        bytes_uploaded: r.get(11)?,
        retries: r.get(12)?,
        error: r.get(13)?,
        findings: r.get(14)?,
        kind: r.get(15)?,
    })
}

impl Catalog {
    /// Records the start of a run. The caller holds the job's lock, so any other run of
    /// the job still marked running belongs to a process that died: it is closed as
    /// interrupted.
    pub fn start_run(&self, run: &RunStart) -> Result<i64> {
        let (job, now) = (run.job, crate::time::now_secs());
        self.conn.execute(
            "UPDATE runs SET outcome = 'interrupted', ended_at = ?2,
                             error = 'the process ended before this run finished'
             WHERE job = ?1 AND outcome = 'running'",
            params![job, now],
        )?;
        self.conn.execute(
            "INSERT INTO runs (job, kind, trigger, scheduled_for, started_at, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running')",
            params![job, run.kind, run.trigger.as_str(), run.scheduled_for, now],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_run(&self, id: i64, r: &RunReport) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET ended_at = ?2, outcome = ?3, snapshot = ?4, bytes_read = ?5, bytes_new = ?6,
                             bytes_uploaded = ?7, duration_ms = ?8, retries = ?9, error = ?10, findings = ?11
             WHERE id = ?1",
            params![
                id,
                crate::time::now_secs(),
                r.outcome,
                r.snapshot,
                r.bytes_read,
                r.bytes_new,
                r.bytes_uploaded,
                r.duration_ms,
                r.retries,
                r.error,
                r.findings
            ],
        )?;
        Ok(())
    }

    /// A run that failed before it could start (the target, the secret, the catalog, the
    /// preflight): recorded whole in the catalog of `state_dir`, without touching a run in
    /// progress elsewhere, where that catalog opens; else logged at ERROR (the log line is
    /// its record, and `/metrics` shows the catalog down).
    pub fn record_failure(state_dir: &Path, run: &RunStart, error: &str) {
        let (job, now) = (run.job, crate::time::now_secs());
        let recorded = Catalog::open_existing(state_dir).and_then(|c| {
            c.conn.execute(
                "INSERT INTO runs (job, kind, trigger, scheduled_for, started_at, ended_at, duration_ms, outcome, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0, 'failed', ?6)",
                params![job, run.kind, run.trigger.as_str(), run.scheduled_for, now, error],
            )?;
            Ok(())
        });
        if let Err(why) = recorded {
            tracing::error!(job, "the failed run cannot be recorded in the catalog: {why:#}");
        }
    }

    /// A fire time that came while the job was still running (or waiting to run).
    pub fn record_skip(&self, run: &RunStart, why: &str) -> Result<()> {
        let now = crate::time::now_secs();
        self.conn.execute(
            "INSERT INTO runs (job, kind, trigger, scheduled_for, started_at, ended_at, duration_ms, outcome, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0, 'skipped', ?6)",
            params![run.job, run.kind, run.trigger.as_str(), run.scheduled_for, now, why],
        )?;
        Ok(())
    }

    /// The run history, newest first.
    pub fn runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, job, trigger, scheduled_for, started_at, ended_at, duration_ms, outcome, snapshot,
                    bytes_read, bytes_new, bytes_uploaded, retries, error, findings, kind
             FROM runs WHERE ?1 IS NULL OR job = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![job, limit as i64], run_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When the job was last considered, run or skipped (its fire time where it had one),
    /// and how that ended: fire times after it were missed, and so is a run a shutdown
    /// interrupted.
    pub fn last_run(&self, job: &str) -> Result<Option<(i64, RunOutcome)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT max(started_at, coalesce(scheduled_for, 0)), outcome FROM runs WHERE job = ?1
                 ORDER BY id DESC LIMIT 1",
                [job],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The job's history summed up.
    pub fn job_totals(&self, job: &str) -> Result<JobTotals> {
        let mut t = self.conn.query_row(
            "SELECT max(CASE WHEN outcome = 'success' THEN ended_at END),
                    max(CASE WHEN outcome IN ('success', 'partial', 'degraded', 'suspicious') THEN ended_at END),
                    count(CASE WHEN outcome NOT IN ('skipped', 'running') THEN 1 END),
                    count(CASE WHEN outcome = 'failed' THEN 1 END),
                    count(CASE WHEN outcome = 'skipped' THEN 1 END),
                    coalesce(sum(retries), 0), coalesce(sum(bytes_read), 0), coalesce(sum(bytes_uploaded), 0),
                    min(CASE WHEN outcome != 'skipped' THEN started_at END)
             FROM runs WHERE job = ?1",
            [job],
            |r| {
                Ok(JobTotals {
                    last_success_at: r.get(0)?,
                    last_snapshot_at: r.get(1)?,
                    runs: r.get(2)?,
                    failures: r.get(3)?,
                    skips: r.get(4)?,
                    retries: r.get(5)?,
                    bytes_read: r.get(6)?,
                    bytes_uploaded: r.get(7)?,
                    first_run_at: r.get(8)?,
                    ..Default::default()
                })
            },
        )?;
        t.last_run = self
            .conn
            .query_row(
                "SELECT id, job, trigger, scheduled_for, started_at, ended_at, duration_ms, outcome, snapshot,
                        bytes_read, bytes_new, bytes_uploaded, retries, error, findings, kind
                 FROM runs WHERE job = ?1 AND outcome NOT IN ('skipped', 'running') ORDER BY id DESC LIMIT 1",
                [job],
                run_row,
            )
            .optional()?;
        t.lock_extensions = self.conn.query_row(
            "SELECT count(*) FROM events WHERE kind = 'lock-extended' AND job = ?1",
            [job],
            |r| r.get(0),
        )?;
        Ok(t)
    }

    pub fn event(&self, kind: &str, job: Option<&str>, detail: &str) -> Result<()> {
        insert_event(&self.conn, kind, job, detail)
    }
}
