//! Child processes coffer runs (hooks, a command source, git). Each leads its own
//! process group, so that a timeout kills whatever it started too and nothing it left
//! behind can hold its pipes open; its output is drained on threads so that it never
//! blocks on a full pipe.
//!
//! A child gets a clean environment: coffer's own holds the target's credentials (and,
//! for `coffer prune`, the privileged ones, and a bucket source's), which a database dump
//! or a notification hook has no business seeing. It inherits only [`INHERITED`], then
//! what its job names (`env`, `env_passthrough`), then what coffer sets for it.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines of output kept for messages.
const TAIL_LINES: usize = 20;

/// What every child inherits from coffer's environment.
pub const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// The environment a job gives its children beyond [`INHERITED`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildEnv {
    /// Set to these values (`env = { PGHOST = "db" }`).
    pub set: Vec<(String, String)>,
    /// Passed on from coffer's environment, if set (`env_passthrough = ["PGPASSWORD"]`).
    pub passthrough: Vec<String>,
}

impl ChildEnv {
    /// Clears `cmd`'s environment, then gives it the allowed variables and `extra`.
    pub fn apply(&self, cmd: &mut Command, extra: &[(&str, &str)]) {
        cmd.env_clear();
        for name in INHERITED.iter().copied().chain(self.passthrough.iter().map(String::as_str)) {
            if let Some(v) = crate::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        cmd.envs(self.set.iter().map(|(k, v)| (k, v)));
        cmd.envs(extra.iter().copied());
    }
}

/// Starts `cmd` in its own process group, stdin closed, stdout and stderr piped, with
/// the environment `env` allows plus `extra`.
pub fn spawn(cmd: &mut Command, env: &ChildEnv, extra: &[(&str, &str)]) -> std::io::Result<Child> {
    env.apply(cmd, extra);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).spawn()
}

/// Reads a pipe to its end on a thread, logging each line under `label` if given; the
/// last lines come back joined by ` / `.
pub fn tail(pipe: impl Read + Send + 'static, label: Option<String>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = std::collections::VecDeque::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(label) = &label {
                tracing::info!("{label}: {line}");
            }
            if kept.len() == TAIL_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        }
        Vec::from(kept).join(" / ")
    })
}

/// Kills a child's whole process group once `timeout` has passed, unless finished first.
pub struct Deadline {
    finished: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
}

impl Deadline {
    pub fn start(child: &Child, timeout: Duration) -> Deadline {
        let (finished, fired) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (pid, done, hit) = (child.id(), finished.clone(), fired.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + timeout;
            while !done.load(Ordering::Relaxed) {
                if Instant::now() >= end {
                    hit.store(true, Ordering::Relaxed);
                    kill_group(pid);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Deadline { finished, fired }
    }

    /// Stops watching (the child was waited for); whether the timeout killed it.
    pub fn finish(&self) -> bool {
        self.finished.store(true, Ordering::Relaxed);
        self.fired.load(Ordering::Relaxed)
    }
}

/// Kills a child and everything in its process group.
pub fn kill_group(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
}
