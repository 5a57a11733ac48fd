//! A command's output as a source (a database dump): its stdout is streamed into the
//! pipeline as one file, never held in memory or written to disk first.
//!
//! The command runs without a shell unless the config says `shell = true`; stderr goes to
//! the log, and its tail into the error. A non-zero exit or the timeout fails the run, so
//! a half-made dump is never part of a complete snapshot.

use std::process::{Child, ChildStdout, Command};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::format::contents::{CommandState, Contents};
use crate::process::Deadline;
use crate::source::{Input, JobContext, Prepared, Resolve, Source};

pub const KIND: super::Kind =
    super::Kind { key: "command", form: "`{ command = [\"program\", \"arg\"], file = \"name\" }`", parse };

/// `source = { command = ["pg_dump", "app"], file = "app.dump" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSource {
    /// The program and its arguments (with `shell`, one script for `sh -c`).
    pub argv: Vec<String>,
    /// The name of the file its output becomes in the snapshot.
    pub file: String,
    pub shell: bool,
    pub timeout: Duration,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    command: Vec<String>,
    file: Option<String>,
    #[serde(default)]
    shell: bool,
    timeout: Option<String>,
}

fn parse(table: toml::Table, _: &Resolve<'_>) -> Result<Arc<dyn Source>, String> {
    let raw: Raw = super::table(table, "command")?;
    let argv = raw.command;
    if argv.first().is_none_or(|a| a.is_empty()) {
        return Err("`command`: expected a program and its arguments, like [\"pg_dump\", \"-Fc\", \"app\"]".into());
    }
    if raw.shell && argv.len() != 1 {
        return Err("with `shell = true`, `command` is one script: [\"pg_dump app | gzip\"]".into());
    }
    let file = raw.file.ok_or("a command source needs `file`, the name its output gets in the snapshot")?;
    if file.is_empty() || file.contains('/') || file == "." || file == ".." {
        return Err(format!("`file`: `{file}` must be a plain file name"));
    }
    let timeout =
        crate::time::parse_duration(raw.timeout.as_deref().unwrap_or("6h")).map_err(|e| format!("`timeout`: {e}"))?;
    Ok(Arc::new(CommandSource { argv, file, shell: raw.shell, timeout }))
}

impl CommandSource {
    /// The program as messages and snapshots name it.
    pub fn program(&self) -> String {
        if self.shell { "sh -c".into() } else { self.argv[0].clone() }
    }
}

impl std::fmt::Display for CommandSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command {} > {}", self.program(), self.file)
    }
}

impl Source for CommandSource {
    fn check(&self) -> Vec<String> {
        let program = if self.shell { "sh" } else { &self.argv[0] };
        match super::findable(program) {
            true => Vec::new(),
            false => vec![format!("command `{program}` is not found (PATH, or not executable)")],
        }
    }

    fn prepare(&self, job: &JobContext) -> Result<Prepared> {
        let (running, data) = start(self, job.name, job.env)?;
        let contents = Contents::Command(CommandState { program: self.program(), file: self.file.clone(), bytes: 0 });
        let input = Input::Stream { name: self.file.clone(), data };
        Ok(Prepared { input, contents: Some(contents), errors: Vec::new(), command: Some(running) })
    }
}

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
