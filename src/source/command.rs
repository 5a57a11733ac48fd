//! A command's output as a source (a database dump): its stdout is streamed into the
//! pipeline as one file, never held in memory or written to disk first.
//!
//! The command runs without a shell unless the config says `shell = true`; stderr goes to
//! the log, and its tail into the error. A non-zero exit or the timeout fails the run, so
//! a half-made dump is never part of a complete snapshot.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::CommandSource;

/// How much of stderr is kept for the error message.
const STDERR_TAIL: usize = 20;

/// What a snapshot records of the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandState {
    pub program: String,
    pub file: String,
    pub bytes: u64,
}

/// A started command whose stdout the reader consumes.
pub struct Running {
    child: Child,
    stderr: JoinHandle<Vec<String>>,
    timed_out: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    program: String,
    timeout: Duration,
}

pub fn start(src: &CommandSource, job: &str) -> Result<(Running, ChildStdout)> {
    let mut c = if src.shell {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&src.argv[0]);
        c
    } else {
        let mut c = Command::new(&src.argv[0]);
        c.args(&src.argv[1..]);
        c
    };
    let program = if src.shell { "sh -c".to_string() } else { src.argv[0].clone() };
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start `{program}`"))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let job = job.to_string();
    let stderr = std::thread::spawn(move || {
        let mut tail = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            tracing::info!(job = %job, "command stderr: {line}");
            tail.push(line);
            if tail.len() > STDERR_TAIL {
                tail.remove(0);
            }
        }
        tail
    });
    let (timed_out, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    {
        let (pid, timed_out, done, timeout) = (child.id(), timed_out.clone(), done.clone(), src.timeout);
        std::thread::spawn(move || {
            let deadline = Instant::now() + timeout;
            while !done.load(Ordering::Relaxed) {
                if Instant::now() >= deadline {
                    timed_out.store(true, Ordering::Relaxed);
                    kill_group(pid);
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }
    Ok((Running { child, stderr, timed_out, done, program, timeout: src.timeout }, stdout))
}

impl Running {
    /// Waits for the command (its stdout was read to the end, or abandoned) and fails
    /// unless it exited 0 in time.
    pub fn finish(mut self) -> Result<()> {
        let status = self.child.wait().context("cannot wait for the command")?;
        self.done.store(true, Ordering::Relaxed);
        let tail = self.stderr.join().unwrap_or_default().join(" / ");
        if self.timed_out.load(Ordering::Relaxed) {
            bail!("command `{}` was killed after its timeout of {:?}; stderr: {tail}", self.program, self.timeout);
        }
        if !status.success() {
            bail!("command `{}` failed ({status}); stderr: {tail}", self.program);
        }
        Ok(())
    }

    /// Stops a command whose output is no longer wanted (the run failed).
    pub fn kill(self) {
        kill_group(self.child.id());
        let _ = self.finish();
    }
}

/// Kills the command and whatever it started (it leads its own process group).
fn kill_group(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
}
