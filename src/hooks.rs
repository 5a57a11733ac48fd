//! Notifications: a command run after a job, so that failures reach people without
//! coffer knowing about mail, chat or paging.
//!
//! The command is an argv list run without a shell, with `COFFER_JOB`, `COFFER_OUTCOME`
//! (success, partial, degraded, suspicious or failed), `COFFER_ERROR` and `COFFER_SNAPSHOT` in a clean
//! environment (`process::ChildEnv`: never coffer's credentials).
//! It is killed after the job's `hook_timeout`. A hook that fails is logged; it never
//! changes the outcome of the backup.

use std::process::Command;
use std::time::Duration;

use crate::config::Job;
use crate::run_outcome::RunOutcome;

/// Runs `on_success` (outcome success) or `on_failure` (any other: partial, degraded,
/// suspicious, failed), if configured.
pub fn after_run(job: &Job, outcome: RunOutcome, snapshot: Option<&str>, error: Option<&str>) {
    let hook = if outcome == RunOutcome::Success { &job.hooks.on_success } else { &job.hooks.on_failure };
    let Some(argv) = hook else { return };
    let env = [
        ("COFFER_JOB", job.name.as_str()),
        ("COFFER_OUTCOME", outcome.as_str()),
        ("COFFER_ERROR", error.unwrap_or("")),
        ("COFFER_SNAPSHOT", snapshot.unwrap_or("")),
    ];
    match run(argv, &job.env, &env, job.hooks.timeout) {
        Ok(()) => tracing::info!(job = %job.name, hook = %argv[0], "hook ran"),
        Err(e) => tracing::warn!(job = %job.name, hook = %argv[0], "hook failed: {e}"),
    }
}

fn run(
    argv: &[String],
    job_env: &crate::process::ChildEnv,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), String> {
    let mut child = crate::process::spawn(Command::new(&argv[0]).args(&argv[1..]), job_env, env)
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let out = crate::process::tail(child.stdout.take().expect("piped"), Some(format!("hook {}", argv[0])));
    let err = crate::process::tail(child.stderr.take().expect("piped"), None);
    let deadline = crate::process::Deadline::start(&child, timeout);
    let status = child.wait().map_err(|e| e.to_string());
    let timed_out = deadline.finish();
    let (_, err) = (out.join(), err.join().unwrap_or_default());
    if timed_out {
        return Err(format!("killed after the hook timeout of {timeout:?}"));
    }
    match status? {
        s if s.success() => Ok(()),
        s => Err(format!("{s}; stderr: {err}")),
    }
}
