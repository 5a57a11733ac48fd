//! `/metrics`: the daemon's state in the Prometheus text format (version 0.0.4).
//!
//! A backup job is the label `coffer_job`: `job` and `instance` belong to Prometheus,
//! which would rename ours to `exported_job`. Units are suffixes and counters end in
//! `_total`, as Prometheus's naming rules say.
//!
//! Everything about jobs is read from the catalog at scrape time (run history, snapshots,
//! locks), so the numbers are the ones `coffer runs` and `coffer status` show, and they
//! survive restarts. The daemon adds what only it knows: what is running, when each job
//! fires next, refused requests, reloads.

use std::fmt::Write;

use crate::catalog::{Catalog, JobTotals, RunRow};
use crate::config::Config;
use crate::run_outcome::RunOutcome;
use crate::status::JobStatus;

/// The label naming a backup job.
const JOB_LABEL: &str = "coffer_job";

/// What the running daemon knows that the catalog does not.
pub struct Live {
    pub started_at: i64,
    pub running: Vec<String>,
    /// Next fire time per scheduled job.
    pub next_runs: Vec<(String, i64)>,
    pub unauthorized_requests: u64,
    pub reloads: u64,
    pub failed_reloads: u64,
    /// Whether the last SIGHUP reload was taken (true before any).
    pub last_reload_ok: bool,
}

/// The exposition text.
pub fn render(cfg: &Config, live: &Live) -> String {
    let mut m = Exposition::default();
    m.family("coffer_build_info", "gauge", "coffer's version.");
    m.sample("coffer_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    m.family("coffer_daemon_start_time_seconds", "gauge", "When the daemon started (unix time).");
    m.sample("coffer_daemon_start_time_seconds", &[], live.started_at as f64);
    m.family("coffer_http_unauthorized_requests_total", "counter", "Requests refused for a missing or wrong token.");
    m.sample("coffer_http_unauthorized_requests_total", &[], live.unauthorized_requests as f64);
    m.family("coffer_config_reloads_total", "counter", "SIGHUP reloads, by result.");
    m.sample("coffer_config_reloads_total", &[("result", "success")], live.reloads as f64);
    m.sample("coffer_config_reloads_total", &[("result", "failure")], live.failed_reloads as f64);
    m.family(
        "coffer_config_last_reload_successful",
        "gauge",
        "0 while the daemon runs an older config because the last reload was refused.",
    );
    m.sample("coffer_config_last_reload_successful", &[], f64::from(u8::from(live.last_reload_ok)));
    m.family("process_start_time_seconds", "gauge", "When the process started (unix time).");
    m.sample("process_start_time_seconds", &[], live.started_at as f64);
    process_metrics(&mut m);

    let catalog = Catalog::open_existing(&cfg.state_dir);
    m.family("coffer_catalog_up", "gauge", "Whether the catalog could be read for this scrape.");
    m.sample("coffer_catalog_up", &[], f64::from(u8::from(catalog.is_ok())));
    let status = catalog.as_ref().ok().map(|_| crate::status::run(cfg, &crate::status::Options::local()));
    m.family("coffer_status", "gauge", "The retention status check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.");
    let level = match &status {
        Some(Ok(report)) => report.status.exit_code(),
        _ => crate::status::UNKNOWN,
    };
    m.sample("coffer_status", &[], f64::from(level));
    if let (Ok(catalog), Some(status)) = (&catalog, &status) {
        job_metrics(&mut m, cfg, catalog, status.as_ref().ok(), live);
    }
    if let (Ok(catalog), Some(scrub)) = (&catalog, &cfg.scrub) {
        scrub_metrics(&mut m, cfg, scrub, catalog, live);
    }
    m.out
}

/// The scrub's: when it last ran and what it found, what it read, how far behind its
/// period each target is, and how many of its fire times passed without a completed one.
fn scrub_metrics(m: &mut Exposition, cfg: &Config, scrub: &crate::config::ScrubConfig, catalog: &Catalog, live: &Live) {
    let Ok(totals) = catalog.job_totals(crate::scrub::JOB) else { return };
    let now = crate::time::now_secs();
    // Declared before the first scrub too, with no sample until there is one.
    m.family("coffer_scrub_last_run_timestamp_seconds", "gauge", "When the last scrub ended.");
    if let Some(last) = &totals.last_run {
        m.sample("coffer_scrub_last_run_timestamp_seconds", &[], last.ended_at.unwrap_or(last.started_at) as f64);
    }
    m.family("coffer_scrub_last_run_findings", "gauge", "What the last scrub found wrong (see `coffer runs @scrub`).");
    if let Some(last) = &totals.last_run {
        m.sample("coffer_scrub_last_run_findings", &[], last.findings as f64);
    }
    m.family("coffer_scrub_read_bytes_total", "counter", "Bytes of packs the scrub read back.");
    m.sample("coffer_scrub_read_bytes_total", &[], totals.bytes_read as f64);
    m.family("coffer_scrub_failures_total", "counter", "Scrubs that could not check a target.");
    m.sample("coffer_scrub_failures_total", &[], totals.failures as f64);
    // From the last scrub that checked every target (or the daemon's start), with an
    // hour's grace for the scrub itself to run.
    let since = totals.last_success_at.unwrap_or(live.started_at);
    let missed = crate::status::missed(&scrub.schedule, cfg.daemon.zone, 3600, since, now);
    m.family("coffer_scrub_missed_fire_times", "gauge", "Scrub fire times past with no scrub completed since.");
    m.sample("coffer_scrub_missed_fire_times", &[], f64::from(missed));
    m.family("coffer_scrub_packs_behind", "gauge", "Packs on a target the scrub has not read within its period.");
    let period = scrub.period.as_secs() as i64;
    for t in catalog.targets().unwrap_or_default() {
        if let Ok(n) = catalog.packs_unscrubbed_since(t.id, now - period) {
            m.sample("coffer_scrub_packs_behind", &[("target", &t.name)], n as f64);
        }
    }
}

/// What one job's samples are read from.
struct JobRow<'a> {
    name: &'a str,
    totals: JobTotals,
    status: Option<&'a JobStatus>,
    /// Fire times past (with grace) since the newest snapshot, or since the first run.
    missed: Option<u32>,
    running: bool,
    /// Suspicious runs nobody acknowledged.
    anomalies: u64,
}

/// A job's samples in one family: extra labels (or none) and the value.
type Samples = Vec<(String, f64)>;

/// A per-job family: name, type, help, and how its samples are read from a job.
type Family = (&'static str, &'static str, &'static str, fn(&JobRow) -> Samples);

fn one(v: Option<f64>) -> Samples {
    v.map(|v| vec![(String::new(), v)]).unwrap_or_default()
}

/// A figure of the job's last run, where it has one.
fn last(r: &JobRow, f: fn(&RunRow) -> f64) -> Samples {
    one(r.totals.last_run.as_ref().map(f))
}

/// A figure per target of the job (label `target`).
fn on_targets(r: &JobRow, f: fn(&crate::status::JobOnTarget) -> f64) -> Samples {
    let targets = r.status.map(|j| j.targets.as_slice()).unwrap_or_default();
    targets.iter().map(|t| (format!(",target=\"{}\"", escape(&t.target)), f(t))).collect()
}

fn job_metrics(
    m: &mut Exposition,
    cfg: &Config,
    catalog: &Catalog,
    status: Option<&crate::status::Report>,
    live: &Live,
) {
    let rows = job_rows(cfg, catalog, status, live);
    for (name, kind, help, samples) in JOB_FAMILIES {
        m.family(name, kind, help);
        for row in &rows {
            for (extra, v) in samples(row) {
                let _ = writeln!(m.out, "{name}{{{JOB_LABEL}=\"{}\"{extra}}} {}", escape(row.name), number(v));
            }
        }
    }
    m.family("coffer_job_next_run_timestamp_seconds", "gauge", "When the job fires next.");
    for (job, at) in &live.next_runs {
        m.sample("coffer_job_next_run_timestamp_seconds", &[(JOB_LABEL, job)], *at as f64);
    }
}

/// Each configured job's figures, from the catalog and the status check.
fn job_rows<'a>(
    cfg: &'a Config,
    catalog: &Catalog,
    status: Option<&'a crate::status::Report>,
    live: &Live,
) -> Vec<JobRow<'a>> {
    let now = crate::time::now_secs();
    cfg.jobs
        .iter()
        .filter_map(|job| {
            let status = status.and_then(|r| r.jobs.iter().find(|j| j.name == job.name));
            // A job that never ran counts its fire times from the daemon's start.
            let missed = status
                .and_then(|j| j.missed_fire_times)
                .or_else(|| status.and(crate::status::missed_fire_times(cfg, job, live.started_at, now)));
            Some(JobRow {
                name: &job.name,
                totals: catalog.job_totals(&job.name).ok()?,
                status,
                missed,
                running: live.running.contains(&job.name),
                anomalies: catalog.anomalies(Some(&job.name), true).ok()?.len() as u64,
            })
        })
        .collect()
}

/// The per-job families, in the order they are exposed.
const JOB_FAMILIES: [Family; 22] = [
    ("coffer_job_last_success_timestamp_seconds", "gauge", "When a run of the job last read every path.", |r| {
        one(r.totals.last_success_at.map(|t| t as f64))
    }),
    (
        "coffer_job_last_snapshot_timestamp_seconds",
        "gauge",
        "When the job last made a snapshot (every path read, or some not: partial).",
        |r| one(r.totals.last_snapshot_at.map(|t| t as f64)),
    ),
    ("coffer_job_last_run_timestamp_seconds", "gauge", "When the job's last run ended.", |r| {
        last(r, |l| l.ended_at.unwrap_or(l.started_at) as f64)
    }),
    ("coffer_job_last_run_duration_seconds", "gauge", "How long the job's last run took.", |r| {
        last(r, |l| l.duration_ms.unwrap_or(0) as f64 / 1000.0)
    }),
    ("coffer_job_last_run_outcome", "gauge", "1 for the outcome of the job's last run.", |r| {
        let Some(l) = &r.totals.last_run else { return Vec::new() };
        RunOutcome::ENDED.iter().map(|o| (format!(",outcome=\"{o}\""), f64::from(u8::from(l.outcome == *o)))).collect()
    }),
    ("coffer_job_last_run_read_bytes", "gauge", "Bytes the last run read from the source.", |r| {
        last(r, |l| l.bytes_read as f64)
    }),
    ("coffer_job_last_run_uploaded_bytes", "gauge", "Bytes the last run uploaded.", |r| {
        last(r, |l| l.bytes_uploaded as f64)
    }),
    ("coffer_job_runs_total", "counter", "Runs started (not counting skips).", |r| one(Some(r.totals.runs as f64))),
    ("coffer_job_failures_total", "counter", "Runs that failed.", |r| one(Some(r.totals.failures as f64))),
    ("coffer_job_skipped_runs_total", "counter", "Fire times skipped because the job was still running.", |r| {
        one(Some(r.totals.skips as f64))
    }),
    ("coffer_job_target_retries_total", "counter", "Transient target failures retried.", |r| {
        one(Some(r.totals.retries as f64))
    }),
    ("coffer_job_read_bytes_total", "counter", "Bytes read from the source, all runs.", |r| {
        one(Some(r.totals.bytes_read as f64))
    }),
    ("coffer_job_uploaded_bytes_total", "counter", "Bytes uploaded to the target, all runs.", |r| {
        one(Some(r.totals.bytes_uploaded as f64))
    }),
    ("coffer_job_lock_extensions_total", "counter", "Object Lock extensions of reused objects.", |r| {
        one(Some(r.totals.lock_extensions as f64))
    }),
    ("coffer_job_snapshots", "gauge", "Live snapshots (not past their retain-until).", |r| {
        one(r.status.map(|j| j.live_snapshots as f64))
    }),
    (
        "coffer_job_newest_snapshot_protected_until_timestamp_seconds",
        "gauge",
        "Until when the job's newest snapshot is fully locked on its best target.",
        |r| one(r.status.and_then(|j| j.newest_protected_until).map(|t| t as f64)),
    ),
    (
        "coffer_job_missed_fire_times",
        "gauge",
        "Fire times past (with grace) with no newer snapshot: 0 in steady state.",
        |r| one(r.missed.map(f64::from)),
    ),
    ("coffer_job_protection_gaps", "gauge", "Live snapshots needing an object locked too briefly.", |r| {
        one(r.status.map(|j| j.gaps.len() as f64))
    }),
    ("coffer_job_running", "gauge", "1 while the job runs.", |r| one(Some(f64::from(u8::from(r.running))))),
    (
        "coffer_job_anomalous_changes",
        "gauge",
        "Runs the tripwire found suspicious (anomalous change) that nobody acknowledged; prune is frozen for the job meanwhile.",
        |r| one(Some(r.anomalies as f64)),
    ),
    ("coffer_job_target_snapshots", "gauge", "Live snapshots of the job each target holds.", |r| {
        on_targets(r, |t| t.live_snapshots as f64)
    }),
    (
        "coffer_job_target_lag_snapshots",
        "gauge",
        "The job's newest snapshots a target lacks (the next backup copies them to it).",
        |r| on_targets(r, |t| t.lag as f64),
    ),
];

/// The standard process metrics, from /proc.
fn process_metrics(m: &mut Exposition) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name (which may hold spaces), counted from field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        m.family("process_cpu_seconds_total", "counter", "User and system CPU time spent.");
        m.sample("process_cpu_seconds_total", &[], (utime + stime) / ticks.max(1) as f64);
    }
    if let Some(rss) = field(24) {
        m.family("process_resident_memory_bytes", "gauge", "Resident memory size.");
        m.sample("process_resident_memory_bytes", &[], rss * page.max(1) as f64);
    }
    if let Some(vsize) = field(23) {
        m.family("process_virtual_memory_bytes", "gauge", "Virtual memory size.");
        m.sample("process_virtual_memory_bytes", &[], vsize);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        m.family("process_open_fds", "gauge", "Open file descriptors.");
        m.sample("process_open_fds", &[], fds.count() as f64);
    }
    if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        m.family("process_max_fds", "gauge", "The limit on open file descriptors.");
        m.sample("process_max_fds", &[], limit as f64);
    }
}

#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        let _ = writeln!(self.out, "{name}{labels} {}", number(value));
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Integers without a fraction, so timestamps and byte counts read exactly.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_formatted_and_escaped() {
        let mut m = Exposition::default();
        m.family("x_total", "counter", "Things.");
        m.sample("x_total", &[("job", "a\"b\\c")], 3.0);
        m.sample("x_total", &[], 0.25);
        assert_eq!(
            m.out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{job=\"a\\\"b\\\\c\"} 3\nx_total 0.25\n"
        );
    }
}
