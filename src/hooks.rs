//! Notifications: a command run after a job, so that failures reach people without
//! coffer knowing about mail, chat or paging.
//!
//! The command is an argv list run without a shell, with `COFFER_JOB`, `COFFER_OUTCOME`
//! (success, partial or failed), `COFFER_ERROR` and `COFFER_SNAPSHOT` in its environment.
//! It is killed after the job's `hook_timeout`. A hook that fails is logged; it never
//! changes the outcome of the backup.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Job;

/// How much of a hook's output is kept for the log.
const OUTPUT_TAIL: usize = 2048;

/// Runs `on_success` (outcome success) or `on_failure` (partial, failed), if configured.
pub fn after_run(job: &Job, outcome: &str, snapshot: Option<&str>, error: Option<&str>) {
    let hook = if outcome == "success" { &job.hooks.on_success } else { &job.hooks.on_failure };
    let Some(argv) = hook else { return };
    let env = [
        ("COFFER_JOB", job.name.as_str()),
        ("COFFER_OUTCOME", outcome),
        ("COFFER_ERROR", error.unwrap_or("")),
        ("COFFER_SNAPSHOT", snapshot.unwrap_or("")),
    ];
    match run(argv, &env, job.hooks.timeout) {
        Ok(()) => tracing::info!(job = %job.name, hook = %argv[0], "hook ran"),
        Err(e) => tracing::warn!(job = %job.name, hook = %argv[0], "hook failed: {e}"),
    }
}

fn run(argv: &[String], env: &[(&str, &str)], timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    // Drain the output on threads so a chatty hook cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            let start = buf.len().saturating_sub(OUTPUT_TAIL);
            String::from_utf8_lossy(&buf[start..]).trim().to_string()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                // The whole group, so that what the hook started cannot hold its pipes open.
                // SAFETY: kill(2) with the group the child leads.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("killed after the hook timeout of {timeout:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if !out.is_empty() {
        tracing::info!(hook = %argv[0], "hook output: {out}");
    }
    if status.success() { Ok(()) } else { Err(format!("{status}; stderr: {err}")) }
}
