//! A command's output as a source (a database dump): its stdout is streamed into the
//! pipeline as one file, never held in memory or written to disk first.
//!
//! The command runs without a shell unless the config says `shell = true`; stderr goes to
//! the log, and its tail into the error. A non-zero exit or the timeout fails the run, so
//! a half-made dump is never part of a complete snapshot.

use std::process::{Child, ChildStdout, Command};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::CommandSource;
use crate::process::Deadline;

/// A started command whose stdout the reader consumes.
pub struct Running {
    child: Child,
    stderr: JoinHandle<String>,
    deadline: Deadline,
    program: String,
    timeout: Duration,
}

pub fn start(src: &CommandSource, job: &str, env: &crate::process::ChildEnv) -> Result<(Running, ChildStdout)> {
    let mut c = if src.shell {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&src.argv[0]);
        c
    } else {
        let mut c = Command::new(&src.argv[0]);
        c.args(&src.argv[1..]);
        c
    };
    let program = src.program();
    let mut child = crate::process::spawn(&mut c, env, &[]).with_context(|| format!("cannot start `{program}`"))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = crate::process::tail(child.stderr.take().expect("piped"), Some(format!("job {job}: command stderr")));
    let deadline = Deadline::start(&child, src.timeout);
    Ok((Running { child, stderr, deadline, program, timeout: src.timeout }, stdout))
}

impl Running {
    /// Waits for the command (its stdout was read to the end, or abandoned) and fails
    /// unless it exited 0 in time.
    pub fn finish(mut self) -> Result<()> {
        let status = self.child.wait().context("cannot wait for the command")?;
        let timed_out = self.deadline.finish();
        let tail = self.stderr.join().unwrap_or_default();
        if timed_out {
            bail!("command `{}` was killed after its timeout of {:?}; stderr: {tail}", self.program, self.timeout);
        }
        if !status.success() {
            bail!("command `{}` failed ({status}); stderr: {tail}", self.program);
        }
        Ok(())
    }

    /// Stops a command whose output is no longer wanted (the run failed).
    pub fn kill(self) {
        crate::process::kill_group(self.child.id());
        let _ = self.finish();
    }
}
