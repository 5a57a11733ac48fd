//! The configuration file: what to back up, where to, and to whom it is encrypted.
//!
//! Parsing is strict (unknown keys are errors) so that a typo never silently turns a
//! setting off. Every error names the file, the key and what was expected. Relative
//! paths are resolved against the directory of the configuration file, so a config and
//! its key files can be moved together.

use std::collections::BTreeSet;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::keys;
use crate::retention::{Keep, Span};
use crate::schedule::{Schedule, Zone};
use crate::store::config::parse_targets;
pub use crate::store::config::{DEFAULT_TARGET, PruneConfig, TargetConfig, credential_vars};

/// Days added to the lock of a new pack beyond the snapshot that writes it, so that later
/// snapshots reusing it need fewer lock extensions.
pub const EXTENSION_SLACK_DAYS: i64 = 7;

/// Default target pack size: large enough to keep request counts (and later lock
/// extensions) low, small enough to hold a few in memory.
pub const DEFAULT_PACK_SIZE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (for messages).
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub recipients: Vec<crate::keys::Recipient>,
    pub repo_secret_file: PathBuf,
    pub compression_level: i32,
    pub pack_size: u64,
    /// Where backups go: one `[target]`, or several `[[target]]`, each with its name.
    pub targets: Vec<TargetConfig>,
    pub jobs: Vec<Job>,
    pub prune: PruneConfig,
    pub daemon: DaemonConfig,
    pub http: HttpConfig,
    /// How much of a snapshot's file list a restorer accepts (`[restore]`).
    pub limits: crate::format::entry::Limits,
    /// The daemon's scrub (`[scrub]`), when it has a schedule.
    pub scrub: Option<ScrubConfig>,
}

/// `[scrub]`: the daemon re-reads what the targets hold, without the identity.
#[derive(Debug, Clone)]
pub struct ScrubConfig {
    pub schedule: crate::schedule::Schedule,
    /// Bytes of packs read per day at most (bandwidth, and the provider's egress).
    pub read_per_day: u64,
    /// Every pack is read at least once in this long, the budget permitting.
    pub period: Duration,
}

/// How `coffer daemon` runs its jobs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The zone schedules are read in.
    pub zone: Zone,
    pub max_concurrent_jobs: usize,
    /// How long SIGTERM waits for running jobs to reach a checkpoint.
    pub shutdown_timeout: Duration,
}

/// The daemon's read-only HTTP endpoint (`/metrics`, `/health`).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `None`: no endpoint.
    pub listen: Option<SocketAddr>,
    /// A file (mode 0600) holding the bearer token every request must carry; required
    /// when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub source: std::sync::Arc<dyn crate::source::Source>,
    pub exclude: Vec<String>,
    /// Directories holding one of these names are left out whole (`.nobackup`).
    pub exclude_if_present: Vec<String>,
    /// Directories with a valid CACHEDIR.TAG are left out whole.
    pub exclude_caches: bool,
    /// Mount points inside a path source are kept as empty directories, not entered.
    pub one_file_system: bool,
    /// Every snapshot of the job, and everything it writes, is locked at least this long.
    pub lock_days: u32,
    /// How long the first snapshot of each day, week, month and year is kept.
    pub keep: Keep,
    /// When the daemon runs the job (`None`: only `coffer backup`).
    pub schedule: Option<Schedule>,
    /// A random delay up to this long after each fire time, to spread load.
    pub jitter: Duration,
    /// Run once at daemon start when a fire time passed while it was down.
    pub catch_up: bool,
    /// How late a scheduled snapshot may be before `status` warns.
    pub grace: Duration,
    pub hooks: Hooks,
    /// What the job's command source and hooks get in their environment.
    pub env: crate::process::ChildEnv,
    /// The names of the targets the job writes to (every target unless it names some).
    pub targets: Vec<String>,
    /// The change-anomaly tripwire (`[job.tripwire]`).
    pub tripwire: TripwireConfig,
    /// Labels every snapshot of the job carries (`backup --tag` adds to them).
    pub tags: Vec<String>,
}

impl Job {
    /// Adds `tags` (`backup --tag`) to the job's own, each checked, none twice.
    pub fn tag(&mut self, tags: &[String]) -> Result<(), String> {
        for t in tags {
            crate::format::snapshot::check_tag(t)?;
            if !self.tags.contains(t) {
                self.tags.push(t.clone());
            }
        }
        match self.tags.len() {
            n if n > crate::format::snapshot::MAX_TAGS => {
                Err(format!("{n} tags; a snapshot carries {} at most", crate::format::snapshot::MAX_TAGS))
            }
            _ => Ok(()),
        }
    }
}

/// `[job.tripwire]`: how a run is judged against the job's own history (`src/tripwire`).
#[derive(Debug, Clone)]
pub struct TripwireConfig {
    pub enabled: bool,
    /// Judged runs in the baseline; with fewer, a run is measured, not judged.
    pub history: u32,
    /// How many clean snapshots a trip holds, and for how many days.
    pub hold: u32,
    pub hold_days: u32,
    /// Files that must never change: their path in the snapshot, and as configured.
    pub canaries: Vec<(Vec<u8>, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTripwire {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_history")]
    history: u32,
    #[serde(default = "default_hold")]
    hold: u32,
    #[serde(default = "default_hold_days")]
    hold_days: u32,
    #[serde(default)]
    canaries: Vec<PathBuf>,
}

impl Default for RawTripwire {
    fn default() -> Self {
        RawTripwire {
            enabled: true,
            history: default_history(),
            hold: default_hold(),
            hold_days: default_hold_days(),
            canaries: Vec::new(),
        }
    }
}

fn default_history() -> u32 {
    5
}
fn default_hold() -> u32 {
    3
}
fn default_hold_days() -> u32 {
    30
}

/// `[job.tripwire]`, its canaries resolved to their paths in the snapshot.
fn parse_tripwire(i: usize, raw: RawTripwire, source: &dyn crate::source::Source) -> Result<TripwireConfig, String> {
    for (key, value, range) in
        [("history", raw.history, 1..=100), ("hold", raw.hold, 1..=100), ("hold_days", raw.hold_days, 1..=3650)]
    {
        if !range.contains(&value) {
            return Err(format!(
                "key `job[{i}].tripwire.{key}`: expected {} to {}, found {value}",
                range.start(),
                range.end()
            ));
        }
    }
    let mut canaries = Vec::new();
    for (k, path) in raw.canaries.iter().enumerate() {
        let stored = source.stored_path(path).ok_or_else(|| {
            format!(
                "key `job[{i}].tripwire.canaries[{k}]`: {} is not a file inside the job's source (an absolute \
                 path under one of its directories, without `..`)",
                crate::escape::printable(path.as_os_str().as_encoded_bytes())
            )
        })?;
        canaries.push((stored, path.display().to_string()));
    }
    Ok(TripwireConfig {
        enabled: raw.enabled,
        history: raw.history,
        hold: raw.hold,
        hold_days: raw.hold_days,
        canaries,
    })
}

/// Commands run after a job (argv, no shell), with `COFFER_JOB`, `COFFER_OUTCOME`,
/// `COFFER_ERROR` and `COFFER_SNAPSHOT` in their environment.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub on_success: Option<Vec<String>>,
    pub on_failure: Option<Vec<String>>,
    pub timeout: Duration,
}

/// A configuration error: names the file and (where known) the key.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

/// `[scrub]`: a schedule, and how much it may read.
fn parse_scrub(raw: RawScrub) -> Result<ScrubConfig, String> {
    let schedule = crate::schedule::Schedule::parse(&raw.schedule).map_err(|e| format!("key `scrub.schedule`: {e}"))?;
    let read_per_day = parse_size(raw.read_per_day.as_deref().unwrap_or("2GiB"))
        .map_err(|e| format!("key `scrub.read_per_day`: {e}"))?;
    let period = duration("scrub.period", &raw.period, "30d")?;
    if period.is_zero() {
        return Err("key `scrub.period`: expected a duration of at least a second".into());
    }
    Ok(ScrubConfig { schedule, read_per_day, period })
}

/// `2GiB`, `500 MiB`, `1TB`, `4096`: a number of bytes, with a binary or decimal unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{text}`: expected a size like `2GiB`"))?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("`{text}`: unknown unit `{other}` (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
    };
    n.checked_mul(unit).filter(|&b| b > 0).ok_or_else(|| format!("`{text}`: expected a size above 0"))
}

/// `[restore]`: each bound at least 1 (MiB or KiB), the defaults where unset.
fn parse_limits(raw: RawRestore) -> Result<crate::format::entry::Limits, String> {
    let mut limits = crate::format::entry::Limits::default();
    let positive = |key: &str, v: u64, max: u64| match (1..=max).contains(&v) {
        true => Ok(v),
        false => Err(format!("key `restore.{key}`: expected 1 to {max}, found {v}")),
    };
    if let Some(m) = raw.max_file_list_mib {
        limits.file_list = positive("max_file_list_mib", m, 1 << 30)? << 20;
    }
    if let Some(k) = raw.max_xattr_kib {
        limits.xattrs = positive("max_xattr_kib", k, 1 << 20)? << 10;
    }
    Ok(limits)
}

/// The furthest any object is locked ahead by these jobs, in days, and which job needs it:
/// a snapshot is kept (and locked) the longest of its `lock_days` and the spans of the
/// periods it keeps (a month counted as 31 days), or `tripwire.hold_days` after a trip;
/// new packs and extended locks last the extension slack longer; plus a day for clocks.
fn lock_days_needed(jobs: &[Job]) -> (u32, String) {
    let span_days = |s: crate::retention::Span| match s {
        crate::retention::Span::Days(d) => d,
        crate::retention::Span::Months(m) => m * 31,
    };
    let mut most = (30 + EXTENSION_SLACK_DAYS as u32 + 1, "the repository record's default lock".to_string());
    for job in jobs {
        let k = &job.keep;
        let longest = [k.daily, k.weekly, k.monthly, k.yearly].into_iter().flatten().map(span_days).max().unwrap_or(0);
        let held = if job.tripwire.enabled { job.tripwire.hold_days } else { 0 };
        let days = job.lock_days.max(longest).max(held) + EXTENSION_SLACK_DAYS as u32 + 1;
        if days > most.0 {
            most = (
                days,
                format!(
                    "job `{}`: lock_days, keep and tripwire.hold_days, plus {EXTENSION_SLACK_DAYS} days of slack",
                    job.name
                ),
            );
        }
    }
    most
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: PathBuf,
    recipients: Vec<String>,
    repo_secret_file: PathBuf,
    #[serde(default = "default_level")]
    compression_level: i32,
    #[serde(default)]
    pack_size_mib: Option<u64>,
    #[serde(default)]
    max_lock_days: Option<u32>,
    /// One table (`[target]`) or an array of them (`[[target]]`).
    target: toml::Value,
    #[serde(default, rename = "job")]
    jobs: Vec<RawJob>,
    #[serde(default)]
    prune: PruneConfig,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    restore: RawRestore,
    #[serde(default)]
    scrub: Option<RawScrub>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScrub {
    schedule: String,
    read_per_day: Option<String>,
    period: Option<String>,
}

/// `[restore]`: bounds on what a snapshot's file list may make a restorer read.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRestore {
    max_file_list_mib: Option<u64>,
    max_xattr_kib: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    timezone: Option<String>,
    max_concurrent_jobs: Option<usize>,
    shutdown_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    source: toml::Table,
    #[serde(default)]
    exclude: Vec<String>,
    /// A file of further exclude patterns, one per line (`#` comments, blank lines).
    exclude_from: Option<PathBuf>,
    #[serde(default)]
    exclude_if_present: Vec<String>,
    #[serde(default)]
    exclude_caches: bool,
    #[serde(default)]
    one_file_system: bool,
    #[serde(default = "default_lock_days")]
    lock_days: u32,
    #[serde(default)]
    keep: RawKeep,
    schedule: Option<String>,
    jitter: Option<String>,
    #[serde(default = "default_true")]
    catch_up: bool,
    grace: Option<String>,
    on_success: Option<Vec<String>>,
    on_failure: Option<Vec<String>>,
    hook_timeout: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    env_passthrough: Vec<String>,
    targets: Option<Vec<String>>,
    #[serde(default)]
    tripwire: RawTripwire,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeep {
    daily: Option<String>,
    weekly: Option<String>,
    monthly: Option<String>,
    yearly: Option<String>,
}

fn default_level() -> i32 {
    2
}
fn default_lock_days() -> u32 {
    30
}
fn default_true() -> bool {
    true
}

/// One `[[job]]` table (`i` is its index, for the error's key), its name already
/// checked; errors name the key.
fn parse_job(
    i: usize,
    j: RawJob,
    resolve: &dyn Fn(&Path) -> PathBuf,
    credential_vars: &[&str],
    target_names: &[&str],
) -> Result<Job, String> {
    let duration = |key: &str, v: &Option<String>, default: &str| {
        crate::time::parse_duration(v.as_deref().unwrap_or(default)).map_err(|e| format!("key `{key}`: {e}"))
    };
    let source = crate::source::parse(j.source, resolve).map_err(|e| format!("key `job[{i}].source`: {e}"))?;
    let mut exclude = j.exclude;
    if let Some(file) = &j.exclude_from {
        let file = resolve(file);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("key `job[{i}].exclude_from`: cannot read {}: {e}", file.display()))?;
        let lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        exclude.extend(lines.map(String::from));
    }
    for (k, name) in j.exclude_if_present.iter().enumerate() {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!("key `job[{i}].exclude_if_present[{k}]`: `{name}` must be a plain file name"));
        }
    }
    for (k, pattern) in exclude.iter().enumerate() {
        if let Err(e) = globset::Glob::new(pattern) {
            return Err(format!("key `job[{i}].exclude[{k}]`: bad glob `{pattern}`: {e}"));
        }
    }
    if !(1..=36_500).contains(&j.lock_days) {
        return Err(format!("key `job[{i}].lock_days`: expected 1 to 36500, found {}", j.lock_days));
    }
    let span = |key: &str, v: &Option<String>| -> Result<Option<Span>, String> {
        v.as_deref().map(Span::parse).transpose().map_err(|e| format!("key `job[{i}].keep.{key}`: {e}"))
    };
    let keep = Keep {
        daily: span("daily", &j.keep.daily)?,
        weekly: span("weekly", &j.keep.weekly)?,
        monthly: span("monthly", &j.keep.monthly)?,
        yearly: span("yearly", &j.keep.yearly)?,
    };
    let schedule =
        j.schedule.as_deref().map(Schedule::parse).transpose().map_err(|e| format!("key `job[{i}].schedule`: {e}"))?;
    for (key, hook) in [("on_success", &j.on_success), ("on_failure", &j.on_failure)] {
        if hook.as_ref().is_some_and(|argv| argv.first().is_none_or(|c| c.is_empty())) {
            return Err(format!(
                "key `job[{i}].{key}`: expected a command and its arguments, like [\"/usr/local/bin/notify\", \"--urgent\"]"
            ));
        }
    }
    let hooks = Hooks {
        on_success: j.on_success,
        on_failure: j.on_failure,
        timeout: duration(&format!("job[{i}].hook_timeout"), &j.hook_timeout, "60s")?,
    };
    let env = child_env(j.env, j.env_passthrough, &*source, credential_vars)
        .map_err(|e| format!("key `job[{i}].env`: {e}"))?;
    let targets = match j.targets {
        None => target_names.iter().map(|n| n.to_string()).collect(),
        Some(named) if named.is_empty() => return Err(format!("key `job[{i}].targets`: names no target")),
        Some(named) => {
            for (k, name) in named.iter().enumerate() {
                if !target_names.contains(&name.as_str()) {
                    return Err(format!(
                        "key `job[{i}].targets[{k}]`: no target named `{name}` (targets: {})",
                        target_names.join(", ")
                    ));
                }
            }
            named
        }
    };
    let tripwire = parse_tripwire(i, j.tripwire, &*source)?;
    let tags = j.tags;
    let mut job = Job {
        tripwire,
        tags: Vec::new(),
        name: j.name,
        source,
        exclude,
        exclude_if_present: j.exclude_if_present,
        exclude_caches: j.exclude_caches,
        one_file_system: j.one_file_system,
        lock_days: j.lock_days,
        keep,
        schedule,
        jitter: duration(&format!("job[{i}].jitter"), &j.jitter, "0s")?,
        catch_up: j.catch_up,
        grace: duration(&format!("job[{i}].grace"), &j.grace, "1h")?,
        hooks,
        env,
        targets,
    };
    job.tag(&tags).map_err(|e| format!("key `job[{i}].tags`: {e}"))?;
    Ok(job)
}

/// A duration setting, `default` when absent; the error names the key.
fn duration(key: &str, v: &Option<String>, default: &str) -> Result<Duration, String> {
    crate::time::parse_duration(v.as_deref().unwrap_or(default)).map_err(|e| format!("key `{key}`: {e}"))
}

/// `[daemon]`.
fn parse_daemon(d: RawDaemon) -> Result<DaemonConfig, String> {
    let zone = match &d.timezone {
        None => Zone::Local,
        Some(name) => Zone::parse(name).map_err(|e| format!("key `daemon.timezone`: {e}"))?,
    };
    let max_concurrent_jobs = d.max_concurrent_jobs.unwrap_or(1);
    if !(1..=16).contains(&max_concurrent_jobs) {
        return Err(format!("key `daemon.max_concurrent_jobs`: expected 1 to 16, found {max_concurrent_jobs}"));
    }
    Ok(DaemonConfig {
        zone,
        max_concurrent_jobs,
        shutdown_timeout: duration("daemon.shutdown_timeout", &d.shutdown_timeout, "60s")?,
    })
}

/// The recipients every object is encrypted to: public keys only (age, ssh-ed25519, or
/// an age plugin's).
fn parse_recipients(raw: &[String]) -> Result<Vec<crate::keys::Recipient>, String> {
    if raw.is_empty() {
        return Err("key `recipients`: expected at least one age public key (age1…); \
                    create one with `coffer keygen`"
            .into());
    }
    let mut recipients = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        if r.starts_with("AGE-SECRET-KEY-") {
            return Err(format!(
                "key `recipients[{i}]`: this is an age SECRET key; the backup host must hold only \
                 public recipients (age1…). Keep the identity offline."
            ));
        }
        let parsed = keys::parse_recipient(r).map_err(|e| format!("key `recipients[{i}]`: `{r}`: {e:#}"))?;
        recipients.push(parsed);
    }
    Ok(recipients)
}

/// A job's child environment, refusing what would hand its children coffer's
/// credentials: the target's (the standard AWS variables), prune's, and the job's bucket
/// source's. A value in `env` is in the config file, so it must not be a secret either:
/// names that look like one must come through `env_passthrough`.
fn child_env(
    set: std::collections::BTreeMap<String, String>,
    passthrough: Vec<String>,
    source: &dyn crate::source::Source,
    credential_vars: &[&str],
) -> Result<crate::process::ChildEnv, String> {
    let mut forbidden: Vec<&str> = credential_vars.to_vec();
    forbidden.extend(source.secret_vars());
    let valid = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    for name in set.keys().chain(&passthrough) {
        if !valid(name) {
            return Err(format!("`{name}` is not an environment variable name"));
        }
        if forbidden.contains(&name.as_str()) {
            return Err(format!("`{name}` holds credentials of coffer's; its children never get them"));
        }
    }
    for name in set.keys() {
        let upper = name.to_ascii_uppercase();
        if ["PASSWORD", "SECRET", "TOKEN", "PASSPHRASE"].iter().any(|w| upper.contains(w)) {
            return Err(format!(
                "`{name}` looks like a secret, which never goes in the config file: name it in `env_passthrough` \
                 and set it in coffer's environment"
            ));
        }
    }
    Ok(crate::process::ChildEnv { set: set.into_iter().collect(), passthrough })
}

/// Where the daemon serves `/metrics` unless the config says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { file: file.to_path_buf(), message };
        let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(file, &text)
    }

    /// Parses configuration text; `file` is used for messages and to resolve relative paths.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { file: file.to_path_buf(), message: with_line(text, message) };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(describe_toml_error(text, &e)))?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
        };

        let recipients = parse_recipients(&raw.recipients).map_err(err)?;
        if !(1..=22).contains(&raw.compression_level) {
            return Err(err(format!(
                "key `compression_level`: expected a zstd level from 1 to 22, found {}",
                raw.compression_level
            )));
        }
        let pack_size = match raw.pack_size_mib {
            None => DEFAULT_PACK_SIZE,
            Some(m) if (1..=1024).contains(&m) => m * 1024 * 1024,
            Some(m) => {
                return Err(err(format!("key `pack_size_mib`: expected 1 to 1024, found {m}")));
            }
        };

        let targets = parse_targets(raw.target, &raw.prune).map_err(err)?;
        let daemon = parse_daemon(raw.daemon).map_err(err)?;
        let credential_vars = credential_vars(&targets, &raw.prune);
        let credential_vars: Vec<&str> = credential_vars.iter().map(String::as_str).collect();
        let target_names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        let http = parse_http(raw.http, &resolve).map_err(err)?;
        let limits = parse_limits(raw.restore).map_err(err)?;
        let scrub = raw.scrub.map(parse_scrub).transpose().map_err(err)?;

        let mut names = BTreeSet::new();
        let mut jobs = Vec::new();
        for (i, j) in raw.jobs.into_iter().enumerate() {
            if !valid_job_name(&j.name) {
                return Err(err(format!(
                    "key `job[{i}].name`: `{}` is not a valid job name (letters, digits, `.`, `_`, `-`; at most 64)",
                    j.name
                )));
            }
            if !names.insert(j.name.clone()) {
                return Err(err(format!("key `job[{i}].name`: job `{}` is defined twice", j.name)));
            }
            jobs.push(parse_job(i, j, &resolve, &credential_vars, &target_names).map_err(err)?);
        }

        let needed = lock_days_needed(&jobs);
        let max_lock_days = match raw.max_lock_days {
            None => needed.0,
            Some(n) if n >= needed.0 && n <= 36_500 * 2 => n,
            Some(n) => {
                return Err(err(format!(
                    "key `max_lock_days`: {n} is {}; the jobs need {} days ({})",
                    if n < needed.0 { "too short" } else { "out of range" },
                    needed.0,
                    needed.1
                )));
            }
        };
        let targets = targets.into_iter().map(|t| TargetConfig { max_lock_days, ..t }).collect();

        Ok(Config {
            file: file.to_path_buf(),
            state_dir: resolve(&raw.state_dir),
            recipients,
            repo_secret_file: resolve(&raw.repo_secret_file),
            compression_level: raw.compression_level,
            pack_size,
            targets,
            jobs,
            prune: raw.prune,
            daemon,
            http,
            limits,
            scrub,
        })
    }

    pub fn job(&self, name: &str) -> anyhow::Result<&Job> {
        self.jobs.iter().find(|j| j.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.jobs.iter().map(|j| j.name.as_str()).collect();
            anyhow::anyhow!(
                "no job `{name}` in {} (jobs: {})",
                self.file.display(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )
        })
    }

    /// The targets `job` writes to, in config order.
    pub fn targets_of(&self, job: &Job) -> Vec<&TargetConfig> {
        self.targets.iter().filter(|t| job.targets.contains(&t.name)).collect()
    }

    /// The target named `name`, or an error listing the names.
    pub fn target(&self, name: &str) -> anyhow::Result<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
            anyhow::anyhow!("no target `{name}` in {} (targets: {})", self.file.display(), known.join(", "))
        })
    }

    /// The state directory's files ([`StateDir`](crate::state_dir::StateDir)).
    pub fn state(&self) -> crate::state_dir::StateDir<'_> {
        crate::state_dir::StateDir(&self.state_dir)
    }
}

/// `[http]`: a loopback address by default; any other address only with a token.
fn parse_http(raw: RawHttp, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<HttpConfig, String> {
    let token_file = raw.token_file.as_deref().map(resolve);
    let listen = match raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN) {
        "off" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|_| {
            format!(
                "key `http.listen`: expected an address and port like \"{DEFAULT_LISTEN}\", or \"off\"; found `{text}`"
            )
        })?),
    };
    if let Some(addr) = listen
        && !addr.ip().is_loopback()
        && token_file.is_none()
    {
        return Err(format!(
            "key `http.listen`: {addr} is reachable from other hosts; set `http.token_file` (a 0600 file \
             holding a bearer token) or listen on 127.0.0.1"
        ));
    }
    Ok(HttpConfig { listen, token_file })
}

pub fn valid_job_name(name: &str) -> bool {
    crate::store::config::valid_name(name)
}

/// A message about a key (`key `job[0].source`: …`), checked after parsing and so
/// without a position of its own, with the line the key is on; for an unknown field,
/// the field's own line.
fn with_line(text: &str, message: String) -> String {
    let Some(path) = message.strip_prefix("key `").and_then(|m| m.split('`').next()) else { return message };
    let unknown = message.split("unknown field `").nth(1).and_then(|f| f.split('`').next());
    let found =
        unknown.and_then(|field| key_offset(text, &format!("{path}.{field}"))).or_else(|| key_offset(text, path));
    match found {
        Some(offset) => format!("line {}: {message}", text[..offset.min(text.len())].matches('\n').count() + 1),
        None => message,
    }
}

/// Where the key at `path` (`job[0].tripwire.canaries[1]`) is written in `text`.
fn key_offset(text: &str, path: &str) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let (mut table, mut offset) = (root.get_ref(), None);
    for segment in path.split('.') {
        let mut parts = segment.split('[');
        let name = parts.next()?;
        let (key, mut value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        offset = Some(key.span().start);
        for index in parts {
            value = value.get_ref().as_array()?.get(index.strip_suffix(']')?.parse::<usize>().ok()?)?;
            offset = Some(value.span().start);
        }
        match value.get_ref().as_table() {
            Some(t) => table = t,
            None => break,
        }
    }
    offset
}

/// toml's own messages already carry line, column and the key; add the line itself.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}: {msg} (at `{src}`)")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LockMode;

    const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/coffer/coffer.toml"), text)
    }

    fn minimal(extra: &str) -> String {
        format!(
            "state_dir = \"state\"\nrecipients = [\"{RECIPIENT}\"]\nrepo_secret_file = \"repo.secret\"\n\
             [target]\nurl = \"file:///tmp/t\"\n{extra}"
        )
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let c = parse(&minimal("[[job]]\nname = \"docs\"\nsource = { path = \"docs\" }\n")).unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/coffer/state"));
        assert_eq!(c.jobs[0].source.to_string(), "path /etc/coffer/docs");
        assert_eq!(c.pack_size, DEFAULT_PACK_SIZE);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse(&minimal("[[job]]\nname = \"docs\"\nsorce = { path = \"x\" }\n")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("/etc/coffer/coffer.toml"), "{m}");
        assert!(m.contains("sorce") && m.contains("line 8"), "{m}");
    }

    #[test]
    fn several_targets_each_have_a_name_and_their_own_credentials() {
        let head =
            format!("state_dir = \"state\"\nrecipients = [\"{RECIPIENT}\"]\nrepo_secret_file = \"repo.secret\"\n");
        let two = format!(
            "{head}[[target]]\nname = \"ceph\"\nurl = \"s3://a/p\"\naccess_key_id_env = \"CEPH_ID\"\n\
             secret_access_key_env = \"CEPH_SECRET\"\nupload_concurrency = 4\n\
             [[target]]\nname = \"aws-eu\"\nurl = \"s3://b\"\nlock_mode = \"governance\"\n"
        );
        let job = |extra: &str| format!("{two}[[job]]\nname = \"a\"\nsource = {{ path = \"/x\" }}\n{extra}");
        let c = parse(&job("")).unwrap();
        let names: Vec<&str> = c.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["ceph", "aws-eu"]);
        let vars = c.targets[0].options.credential_vars();
        assert_eq!(vars[..2], ["CEPH_ID", "CEPH_SECRET"], "the target's own credential variables");
        assert_eq!((c.targets[0].upload_concurrency, c.targets[1].lock_mode), (4, Some(LockMode::Governance)));
        assert_eq!(c.jobs[0].targets, ["ceph", "aws-eu"], "a job goes to every target unless it names some");
        let c = parse(&job("targets = [\"aws-eu\"]\n")).unwrap();
        assert_eq!(c.targets_of(&c.jobs[0]).len(), 1);
        // A single [target] is `default`.
        assert_eq!(parse(&minimal("")).unwrap().targets[0].name, DEFAULT_TARGET);

        let err = |text: String| parse(&text).unwrap_err().to_string();
        assert!(err(job("targets = [\"b2\"]\n")).contains("no target named `b2` (targets: ceph, aws-eu)"));
        assert!(err(job("targets = []\n")).contains("names no target"));
        assert!(err(job("env_passthrough = [\"CEPH_SECRET\"]\n")).contains("holds credentials of coffer's"));
        let unnamed = two.replace("name = \"aws-eu\"\n", "");
        assert!(err(unnamed).contains("key `target[1].name`: each of several targets needs a name"));
        let twice = two.replace("aws-eu", "ceph");
        assert!(err(twice).contains("target `ceph` is defined twice"));
        let half = two.replace("secret_access_key_env = \"CEPH_SECRET\"\n", "");
        assert!(err(half).contains("go together"));
        let typo = two.replace("upload_concurrency", "upload_concurency");
        assert!(err(typo).contains("key `target[0]`: unknown field `upload_concurency`"));
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../config/coffer.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.jobs[0].exclude.len(), 3);
        let options = format!("{:?}", c.targets[0].options);
        assert!(options.contains("Some(\"https://s3.eu-central-2.wasabisys.com\")"), "{options}");
        assert_eq!(c.targets[0].lock_mode, Some(LockMode::Compliance));
        assert_eq!(c.jobs[0].lock_days, 30);
        assert_eq!(c.jobs[0].keep.monthly, Some(Span::Months(13)));
        assert_eq!(c.jobs[0].schedule.as_ref().unwrap().text, "15 2 * * *");
        assert_eq!(c.jobs[0].jitter, Duration::from_secs(600));
        assert_eq!(c.daemon.zone, Zone::parse("Europe/Berlin").unwrap());
        assert_eq!(c.http.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        assert_eq!(c.targets[0].retry_budget, Duration::from_secs(900));
    }

    #[test]
    fn every_source_kind_parses() {
        let job = |src: &str| {
            parse(&minimal(&format!("[[job]]\nname = \"a\"\nsource = {src}\n"))).map(|c| c.jobs[0].source.clone())
        };
        let git = job("{ git = [\"https://u:pw@h/a.git\", \"/srv/b\"], ssh_key_file = \"k\" }").unwrap();
        assert_eq!(
            format!("{git:?}"),
            "GitSource { repos: [\"https://u:pw@h/a.git\", \"/srv/b\"], ssh_key_file: Some(\"/etc/coffer/k\"), \
             password_env: None }"
        );
        assert_eq!(git.to_string(), "git https://u:***@h/a.git /srv/b");
        let c = job("{ command = [\"pg_dump\", \"app\"], file = \"app.dump\" }").unwrap();
        assert_eq!(
            format!("{c:?}"),
            "CommandSource { argv: [\"pg_dump\", \"app\"], file: \"app.dump\", shell: false, timeout: 21600s }"
        );
        let b = job("{ bucket = \"s3://b/p\", region = \"eu\" }").unwrap();
        assert_eq!(b.to_string(), "bucket s3://b/p");
        assert!(format!("{b:?}").contains("region: Some(\"eu\")"));
        let az = job("{ azure = \"az://acct/c/p\", access_key_env = \"AZ_KEY\" }").unwrap();
        assert_eq!((az.to_string().as_str(), az.secret_vars()), ("bucket az://acct/c/p", vec!["AZ_KEY"]));
        for (src, needle) in [
            ("{ path = \"x\", git = \"y\" }", "expected"),
            ("{ git = [] }", "git"),
            ("{ git = [\"a/x.git\", \"b/x\"] }", "x.git"),
            ("{ command = [\"x\"] }", "file"),
            ("{ command = [\"x\"], file = \"../x\" }", "plain file name"),
            ("{ command = [\"a\", \"b\"], file = \"x\", shell = true }", "one script"),
            ("{ bucket = \"http://x\" }", "s3://"),
            ("{ bucket = \"s3://b\", access_key_id_env = \"A\" }", "go together"),
            ("{ path = \"x\", endpoint = \"e\" }", "a path source: unknown field `endpoint`"),
            ("{ git = \"u\", file = \"e\" }", "a git source: unknown field `file`"),
            ("{ azure = \"az://acct\" }", "az://account/container"),
        ] {
            let m = job(src).unwrap_err().to_string();
            assert!(m.contains("job[0].source") && m.contains(needle), "{src}: {m}");
        }
    }

    #[test]
    fn daemon_defaults_are_safe() {
        let c = parse(&minimal("[[job]]\nname = \"a\"\nsource = { path = \"x\" }\n")).unwrap();
        assert_eq!(c.http.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        assert!(c.http.listen.unwrap().ip().is_loopback());
        assert_eq!((c.daemon.max_concurrent_jobs, c.daemon.zone), (1, Zone::Local));
        assert!(c.jobs[0].schedule.is_none() && c.jobs[0].catch_up);
        let open = minimal("[http]\nlisten = \"0.0.0.0:9477\"\ntoken_file = \"t\"\n");
        assert_eq!(parse(&open).unwrap().http.token_file, Some(PathBuf::from("/etc/coffer/t")));
        assert_eq!(parse(&minimal("[http]\nlisten = \"off\"\n")).unwrap().http.listen, None);
    }

    #[test]
    fn sizes_are_read_with_their_units() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("500 MB"), Ok(500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("2 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("0GiB").is_err() && parse_size("GiB").is_err());
        let text = minimal("").replacen("[target]", "[scrub]\nschedule = \"0 4 * * *\"\n[target]", 1);
        let scrub = parse(&text).unwrap().scrub.unwrap();
        assert_eq!((scrub.read_per_day, scrub.period.as_secs()), (2 << 30, 30 * 86_400));
        let bad =
            minimal("").replacen("[target]", "[scrub]\nschedule = \"0 4 * * *\"\nread_per_day = \"lots\"\n[target]", 1);
        assert!(parse(&bad).unwrap_err().to_string().contains("scrub.read_per_day"));
    }

    #[test]
    fn the_lock_horizon_is_what_the_jobs_need_or_more() {
        let job = "[[job]]\nname = \"a\"\nsource = { path = \"x\" }\nlock_days = 30\n\
                   keep = { daily = \"7d\", yearly = \"7y\" }\n";
        let c = parse(&minimal(job)).unwrap();
        // 7 years of months at 31 days, the slack, a day.
        assert_eq!(c.targets[0].max_lock_days, 84 * 31 + 7 + 1);
        let text = minimal(job).replacen("[target]", "max_lock_days = 100\n[target]", 1);
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("max_lock_days") && e.contains("too short") && e.contains("job `a`"), "{e}");
        let text = minimal(job).replacen("[target]", "max_lock_days = 3000\n[target]", 1);
        assert_eq!(parse(&text).unwrap().targets[0].max_lock_days, 3000);
    }

    #[test]
    fn secret_key_as_recipient_is_refused() {
        let text = minimal("").replace(RECIPIENT, "AGE-SECRET-KEY-1QQQ");
        assert!(parse(&text).unwrap_err().to_string().contains("SECRET key"));
    }

    /// A kind reads its own keys of a `[target]` table, strictly: what belongs to another
    /// kind, a typo, half a credential pair or a value of the wrong type is named.
    #[test]
    fn a_kinds_own_keys_are_read_by_that_kind_alone() {
        let s3 = |extra: &str| minimal(extra).replace("file:///tmp/t", "s3://bucket/prefix");
        let cases = [
            (minimal("endpoint = \"http://127.0.0.1:1\"\n"), "unknown field `endpoint`"),
            (minimal("instance_role = true\n"), "unknown field `instance_role`"),
            (s3("endpiont = \"http://x\"\n"), "unknown field `endpiont`"),
            (s3("access_key_id_env = \"ID\"\n"), "go together"),
            (s3("endpoint = 7\n"), "invalid type"),
            (s3("region = [\"\\u001b[2J\"]\n"), "invalid type"),
        ];
        for (text, needle) in cases {
            let m = parse(&text).unwrap_err().to_string();
            assert!(m.contains("key `target`") && m.contains(needle), "expected `{needle}` in: {m}");
        }
        let ok = parse(&s3("endpoint = \"http://x\"\nregion = \"eu\"\ninstance_role = true\n")).unwrap();
        assert!(ok.targets[0].options.missing_credentials("default", "s3://bucket/prefix").is_none());
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (minimal("").replace("file:///tmp/t", "ftp://x"), "target.url"),
            (minimal("").replace(RECIPIENT, "age1nope"), "recipients[0]"),
            (minimal("[[job]]\nname = \"a/b\"\nsource = { path = \"x\" }\n"), "job[0].name"),
            (minimal("[[job]]\nname = \"a\"\nsource = {}\n"), "job[0].source"),
            (minimal("[[job]]\nname = \"a\"\nsource = { path = \"x\" }\nexclude = [\"a[\"]\n"), "job[0].exclude[0]"),
            (format!("compression_level = 40\n{}", minimal("")), "compression_level"),
            (minimal("lock_mode = \"legal-hold\"\n"), "target.lock_mode"),
            (
                minimal("[[job]]\nname = \"a\"\nsource = { path = \"x\" }\nkeep = { daily = \"7 days\" }\n"),
                "job[0].keep.daily",
            ),
            (minimal("[[job]]\nname = \"a\"\nsource = { path = \"x\" }\nkeep = { hourly = \"7d\" }\n"), "hourly"),
            (minimal("[[job]]\nname = \"a\"\nsource = { path = \"x\" }\nlock_days = 0\n"), "job[0].lock_days"),
            (minimal("[[job]]\nname = \"a\"\nsource = { path = \"x\" }\nschedule = \"daily\"\n"), "job[0].schedule"),
            (minimal("[[job]]\nname = \"a\"\nsource = { path = \"x\" }\njitter = \"5 min\"\n"), "job[0].jitter"),
            (minimal("[[job]]\nname = \"a\"\nsource = { path = \"x\" }\non_failure = []\n"), "job[0].on_failure"),
            (minimal("retry_budget = \"forever\"\n"), "target.retry_budget"),
            (minimal("[daemon]\ntimezone = \"Berlin\"\n"), "daemon.timezone"),
            (minimal("[daemon]\nmax_concurrent_jobs = 0\n"), "daemon.max_concurrent_jobs"),
            (minimal("[http]\nlisten = \"0.0.0.0:9477\"\n"), "http.listen"),
            (minimal("[http]\nlisten = \"localhost\"\n"), "http.listen"),
        ];
        for (text, key) in cases {
            let m = parse(&text).unwrap_err().to_string();
            assert!(m.contains(key), "expected `{key}` in: {m}");
        }
    }
}
