//! `coffer daemon`: runs each task (every job's backup, the scrub) on its schedule, for months, unattended.
//!
//! - One daemon per state directory (a lock file).
//! - A fire time that passed while the daemon was down is made up once at start
//!   (`catch_up`), as is a run a shutdown interrupted; a new job is backed up at once.
//! - A job is never run twice at once: a fire time that comes while it runs (or waits for
//!   a slot under `max_concurrent_jobs`) is recorded as skipped.
//! - Jobs run on their own threads through the same code path as `coffer backup`.
//! - SIGTERM/SIGINT: stop scheduling, let running jobs reach a checkpoint (the packs in
//!   flight are stored and recorded, the snapshot is left for the next start), exit 0; a
//!   second signal, or `shutdown_timeout`, exits at once (the catalog stays true anyway).
//! - SIGHUP: reload the config; one that does not validate is logged and ignored.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::catalog::{Catalog, RunStart, Trigger};
use crate::config::Config;
use crate::run_outcome::RunOutcome;
use crate::task::tasks;

/// The scheduler wakes at least this often, so `/health` can tell it is alive.
const MAX_SLEEP: Duration = Duration::from_secs(15);
/// `/health` fails when the scheduler has not woken for this long.
const HEALTH_STALE_SECS: i64 = 120;

pub fn run(config_file: &Path) -> Result<ExitCode> {
    let cfg = Config::load(config_file)?;
    cfg.state().create()?;
    let _lock = cfg.state().daemon_lock()?;
    // Refuse to start half-configured: what would fail at the first fire time fails now.
    let problems = crate::preflight::check(&cfg);
    if !problems.is_empty() {
        bail!("the daemon does not start; `coffer check-config` finds:\n  {}", problems.join("\n  "));
    }
    for w in crate::preflight::warnings(&cfg) {
        tracing::warn!("{w}; its runs fail until it is there");
    }
    Catalog::open_repo(&cfg.state_dir)?;
    let token = read_token(&cfg)?;
    let shared = Arc::new(Shared {
        config_file: config_file.to_path_buf(),
        cfg: RwLock::new(Arc::new(cfg)),
        token: RwLock::new(token),
        started_at: crate::time::now_secs(),
        last_tick: AtomicI64::new(crate::time::now_secs()),
        running: Mutex::new(Vec::new()),
        next_runs: Mutex::new(Vec::new()),
        unauthorized: AtomicU64::new(0),
        refused_log: crate::http::Throttled::new("refused HTTP requests without the right bearer token"),
        reloads: AtomicU64::new(0),
        failed_reloads: AtomicU64::new(0),
        last_reload_ok: AtomicBool::new(true),
        last_reload_error: Mutex::new(None),
        preflight: Mutex::new(Vec::new()),
        stop: Arc::new(AtomicBool::new(false)),
    });
    crate::runtime::block_on(async {
        let listen = shared.config().http.listen;
        if let Some(addr) = listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (http.listen)"))?;
            tracing::info!(%addr, "serving /metrics and /health");
            tokio::spawn(crate::http::serve(listener, shared.clone()));
        }
        Scheduler::new(shared).run().await
    })
}

/// What the scheduler, the job threads and the HTTP endpoint share.
struct Shared {
    config_file: PathBuf,
    cfg: RwLock<Arc<Config>>,
    token: RwLock<Option<String>>,
    started_at: i64,
    last_tick: AtomicI64,
    running: Mutex<Vec<String>>,
    next_runs: Mutex<Vec<(String, i64)>>,
    unauthorized: AtomicU64,
    /// Refused requests come in floods: one log line a minute says how many.
    refused_log: crate::http::Throttled,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
    last_reload_ok: AtomicBool,
    /// Why the last reload was refused (the old config stays in force), until one is taken.
    last_reload_error: Mutex<Option<String>>,
    /// What the last preflight found (at start: nothing, or the daemon would not run; a
    /// reload refused for a problem keeps it here).
    preflight: Mutex<Vec<String>>,
    /// Set on shutdown; running backups watch it.
    stop: Arc<AtomicBool>,
}

impl Shared {
    fn config(&self) -> Arc<Config> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl crate::http::Handler for Shared {
    fn metrics(&self) -> String {
        let live = crate::metrics::Live {
            started_at: self.started_at,
            running: lock(&self.running).clone(),
            next_runs: lock(&self.next_runs).clone(),
            unauthorized_requests: self.unauthorized.load(Ordering::Relaxed),
            reloads: self.reloads.load(Ordering::Relaxed),
            failed_reloads: self.failed_reloads.load(Ordering::Relaxed),
            last_reload_ok: self.last_reload_ok.load(Ordering::Relaxed),
        };
        crate::metrics::render(&self.config(), &live)
    }

    fn health(&self, detail: bool) -> (bool, String) {
        let age = crate::time::now_secs() - self.last_tick.load(Ordering::Relaxed);
        let ok = age < HEALTH_STALE_SECS && !self.stop.load(Ordering::Relaxed);
        let running = lock(&self.running).clone();
        let refused = lock(&self.last_reload_error).clone();
        // A refused reload leaves the daemon running its old config: degraded, not down
        // (a liveness probe must not restart it into the config it refused).
        let status = match (ok, &refused) {
            (false, _) => "unhealthy",
            (true, Some(_)) => "degraded",
            (true, None) => "ok",
        };
        if !detail {
            return (ok, format!("{}\n", serde_json::json!({ "status": status })));
        }
        let body = serde_json::json!({
            "status": status,
            "scheduler_last_tick_secs_ago": age,
            "running": running,
            "preflight": lock(&self.preflight).clone(),
            "last_reload_error": refused,
        });
        (ok, format!("{body}\n"))
    }

    fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
        self.refused_log.note("the metric coffer_http_unauthorized_requests_total counts them all");
    }
}

/// The bearer token from `http.token_file`: a private file, long enough to guess at no rate.
fn read_token(cfg: &Config) -> Result<Option<String>> {
    let Some(path) = &cfg.http.token_file else { return Ok(None) };
    crate::keys::check_private(path)?;
    let token = crate::fsutil::read_small(path, "token file", crate::keys::MAX_KEY_FILE)?;
    let token = String::from_utf8_lossy(&token).trim().to_string();
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("token file {}: expected one token of at least 16 characters, no spaces", path.display());
    }
    Ok(Some(token))
}

/// When a scheduled job fires next.
struct Slot {
    /// The fire time (unix seconds).
    fire: i64,
    /// The fire time plus this firing's jitter, in milliseconds.
    due_ms: i64,
}

/// A run waiting for a free slot.
struct Queued {
    job: String,
    trigger: Trigger,
    scheduled_for: Option<i64>,
}

struct Scheduler {
    shared: Arc<Shared>,
    slots: HashMap<String, Slot>,
    queue: VecDeque<Queued>,
    done_tx: mpsc::UnboundedSender<String>,
    done_rx: mpsc::UnboundedReceiver<String>,
}

impl Scheduler {
    fn new(shared: Arc<Shared>) -> Scheduler {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Scheduler { shared, slots: HashMap::new(), queue: VecDeque::new(), done_tx, done_rx }
    }

    async fn run(mut self) -> Result<ExitCode> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let cfg = self.shared.config();
        tracing::info!(
            config = %self.shared.config_file.display(),
            jobs = cfg.jobs.iter().filter(|j| j.schedule.is_some()).count(),
            "coffer daemon started"
        );
        self.catch_up(&cfg)?;
        self.plan(&cfg, &HashMap::new());
        loop {
            self.shared.last_tick.store(crate::time::now_secs(), Ordering::Relaxed);
            self.fire_due();
            self.start_ready();
            let sleep = self.until_next_due();
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                Some(job) = self.done_rx.recv() => self.finished(&job),
                _ = hup.recv() => self.reload(),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        self.shutdown(&mut term, &mut int).await
    }

    /// At start: one run for each job whose fire time passed while the daemon was down,
    /// whose last run a shutdown interrupted, or that never ran.
    fn catch_up(&mut self, cfg: &Config) -> Result<()> {
        let catalog = Catalog::open_existing(&cfg.state_dir)?;
        let now = crate::time::now_secs();
        for task in tasks(cfg).iter().filter(|t| t.catches_up()) {
            let Some((schedule, _)) = task.schedule() else { continue };
            let why = match catalog.last_run(task.name())? {
                None => Some("the job has never run"),
                Some((_, RunOutcome::Interrupted)) => Some("its last run was interrupted"),
                Some((last, _)) => schedule
                    .next_after(last, cfg.daemon.zone)
                    .filter(|&f| f <= now)
                    .map(|_| "a fire time passed while the daemon was down"),
            };
            if let Some(why) = why {
                tracing::info!(job = %task.name(), "catching up once: {why}");
                self.queue.push_back(Queued {
                    job: task.name().to_string(),
                    trigger: Trigger::CatchUp,
                    scheduled_for: None,
                });
            }
        }
        Ok(())
    }

    /// The next fire time of every scheduled job; jobs whose schedule did not change keep
    /// the one they had.
    fn plan(&mut self, cfg: &Config, previous: &HashMap<String, String>) {
        let now = crate::time::now_secs();
        let mut slots = HashMap::new();
        for task in tasks(cfg) {
            let (name, Some((schedule, jitter))) = (task.name(), task.schedule()) else { continue };
            let kept = previous.get(name).filter(|text| **text == schedule.text).and_then(|_| self.slots.remove(name));
            let slot = kept.or_else(|| {
                let fire = schedule.next_after(now, cfg.daemon.zone)?;
                Some(Slot { fire, due_ms: with_jitter(fire, jitter) })
            });
            match slot {
                Some(s) => {
                    slots.insert(name.to_string(), s);
                }
                None => tracing::warn!(job = %name, schedule = %schedule.text, "the schedule never fires again"),
            }
        }
        self.slots = slots;
        self.publish_next_runs();
    }

    fn publish_next_runs(&self) {
        let mut next: Vec<(String, i64)> = self.slots.iter().map(|(j, s)| (j.clone(), s.fire)).collect();
        next.sort();
        *lock(&self.shared.next_runs) = next;
    }

    /// Queues every job whose fire time has come, or records the skip when it is still
    /// running or waiting.
    fn fire_due(&mut self) {
        let cfg = self.shared.config();
        let now_ms = now_millis();
        let due: Vec<String> = self.slots.iter().filter(|(_, s)| s.due_ms <= now_ms).map(|(j, _)| j.clone()).collect();
        let tasks = tasks(&cfg);
        for name in due {
            let Some(task) = tasks.iter().find(|t| t.name() == name) else { continue };
            let Some((schedule, jitter)) = task.schedule() else { continue };
            let fire = self.slots[&name].fire;
            let busy = if lock(&self.shared.running).contains(&name) {
                Some("the previous run was still going")
            } else if self.queue.iter().any(|q| q.job == name) {
                Some("the previous run was still waiting for a free slot (max_concurrent_jobs)")
            } else {
                None
            };
            match busy {
                Some(why) => {
                    tracing::warn!(job = %name, fire = %crate::time::format_utc(fire), "skipped: {why}");
                    let skipped = RunStart {
                        job: &name,
                        kind: task.kind(),
                        trigger: Trigger::Schedule,
                        scheduled_for: Some(fire),
                    };
                    if let Err(e) = Catalog::open_existing(&cfg.state_dir).and_then(|c| c.record_skip(&skipped, why)) {
                        tracing::error!(job = %name, "cannot record the skip: {e:#}");
                    }
                }
                None => self.queue.push_back(Queued {
                    job: name.clone(),
                    trigger: Trigger::Schedule,
                    scheduled_for: Some(fire),
                }),
            }
            // From now on, not from the fire time: after a suspend or a long stall the
            // backlog is not replayed.
            let after = fire.max(now_ms / 1000);
            match schedule.next_after(after, cfg.daemon.zone) {
                Some(next) => {
                    self.slots.insert(name, Slot { fire: next, due_ms: with_jitter(next, jitter) });
                }
                None => {
                    self.slots.remove(&name);
                }
            }
        }
        self.publish_next_runs();
    }

    /// Starts queued runs while there is a free slot.
    fn start_ready(&mut self) {
        let cfg = self.shared.config();
        while lock(&self.shared.running).len() < cfg.daemon.max_concurrent_jobs {
            let Some(q) = self.queue.pop_front() else { break };
            let Some(task) = tasks(&cfg).into_iter().find(|t| t.name() == q.job) else { continue };
            lock(&self.shared.running).push(q.job.clone());
            let (cfg, done, stop) = (cfg.clone(), self.done_tx.clone(), self.shared.stop.clone());
            let finished = Finished { job: q.job.clone(), done };
            let (name, trigger, scheduled_for) = (q.job.clone(), q.trigger, q.scheduled_for);
            let spawned = std::thread::Builder::new().name(format!("job-{}", q.job)).spawn(move || {
                let _finished = finished;
                // The run's outcome and error are in the run history and the log.
                let ended = task.run(&cfg, trigger, scheduled_for, stop);
                if let Err(e) = ended {
                    tracing::debug!(job = %name, "run ended: {e:#}");
                }
            });
            if let Err(e) = spawned {
                tracing::error!(job = %q.job, "cannot start a thread for the job: {e}");
                lock(&self.shared.running).retain(|j| *j != q.job);
            }
        }
    }

    fn finished(&mut self, job: &str) {
        tracing::debug!(job, "job thread ended");
        let mut running = lock(&self.shared.running);
        if let Some(i) = running.iter().position(|j| j == job) {
            running.remove(i);
        }
    }

    fn until_next_due(&self) -> Duration {
        let now = now_millis();
        let next = self.slots.values().map(|s| s.due_ms).min().unwrap_or(i64::MAX);
        Duration::from_millis(next.saturating_sub(now).max(0) as u64).min(MAX_SLEEP)
    }

    /// SIGHUP: a new config replaces the old one only if it validates and keeps the same
    /// state directory and target. Running jobs finish with the config they started with.
    fn reload(&mut self) {
        let old = self.shared.config();
        let checked = Config::load(&self.shared.config_file).map_err(anyhow::Error::from).and_then(|new| {
            let urls = |c: &Config| c.targets.iter().map(|t| (t.name.clone(), t.url.clone())).collect::<Vec<_>>();
            if new.state_dir != old.state_dir || urls(&new) != urls(&old) {
                bail!("state_dir and the targets cannot change while the daemon runs; restart it");
            }
            let token = read_token(&new)?;
            let problems = crate::preflight::check(&new);
            *lock(&self.shared.preflight) = problems.clone();
            if !problems.is_empty() {
                bail!("`coffer check-config` finds: {}", problems.join("; "));
            }
            Ok((new, token))
        });
        match checked {
            Ok((new, token)) => {
                if new.http.listen != old.http.listen {
                    tracing::warn!("http.listen changed: it takes effect when the daemon restarts");
                }
                let previous: HashMap<String, String> = tasks(&old)
                    .iter()
                    .filter_map(|t| Some((t.name().to_string(), t.schedule()?.0.text.clone())))
                    .collect();
                *self.shared.token.write().unwrap_or_else(|p| p.into_inner()) = token;
                let new = Arc::new(new);
                *self.shared.cfg.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
                self.plan(&new, &previous);
                self.shared.reloads.fetch_add(1, Ordering::Relaxed);
                self.shared.last_reload_ok.store(true, Ordering::Relaxed);
                *lock(&self.shared.last_reload_error) = None;
                tracing::info!(jobs = new.jobs.len(), "configuration reloaded");
            }
            Err(e) => {
                self.shared.failed_reloads.fetch_add(1, Ordering::Relaxed);
                self.shared.last_reload_ok.store(false, Ordering::Relaxed);
                *lock(&self.shared.last_reload_error) = Some(format!("{e:#}"));
                tracing::error!("configuration not reloaded, the old one stays in force: {e:#}");
            }
        }
    }

    /// Stops scheduling and waits for running jobs to reach a checkpoint.
    async fn shutdown(
        mut self,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> Result<ExitCode> {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.queue.clear();
        let timeout = self.shared.config().daemon.shutdown_timeout;
        let running = lock(&self.shared.running).clone();
        if running.is_empty() {
            tracing::info!("shutting down");
            return Ok(ExitCode::SUCCESS);
        }
        // One line per job: a log field is a scalar, never a list written as a string.
        for job in &running {
            tracing::info!(job = %job, timeout_secs = timeout.as_secs(), "shutting down: letting the job reach a checkpoint");
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while !lock(&self.shared.running).is_empty() {
            tokio::select! {
                Some(job) = self.done_rx.recv() => self.finished(&job),
                _ = tokio::time::sleep_until(deadline) => {
                    for job in lock(&self.shared.running).iter() {
                        tracing::error!(job = %job, "shutdown_timeout reached; exiting without waiting for the job (the next start resumes it)");
                    }
                    return Ok(ExitCode::FAILURE);
                }
                _ = term.recv() => return Ok(second_signal()),
                _ = int.recv() => return Ok(second_signal()),
            }
        }
        tracing::info!("running jobs stopped at a checkpoint; shutting down");
        Ok(ExitCode::SUCCESS)
    }
}

/// Tells the scheduler that a job's thread ended, when the thread drops it: also when
/// the run panicked, so that the job is never left `running` until a restart.
struct Finished {
    job: String,
    done: mpsc::UnboundedSender<String>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.done.send(std::mem::take(&mut self.job));
    }
}

fn second_signal() -> ExitCode {
    tracing::warn!("second signal: exiting at once (the next start resumes)");
    ExitCode::FAILURE
}

/// The moment a firing is due: its fire time plus a random delay up to `jitter`.
fn with_jitter(fire: i64, jitter: Duration) -> i64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let max = jitter.as_millis() as u64;
    fire * 1000 + if max == 0 { 0 } else { (u64::from_le_bytes(b) % max) as i64 }
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_thread_that_panics_still_frees_its_job() {
        let (done, mut rx) = mpsc::unbounded_channel();
        let finished = Finished { job: "nightly".into(), done };
        let thread = std::thread::spawn(move || {
            let _finished = finished;
            panic!("a bug in a run");
        });
        assert!(thread.join().is_err());
        assert_eq!(rx.try_recv().ok().as_deref(), Some("nightly"));
    }
}
