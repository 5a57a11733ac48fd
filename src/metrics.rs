//! `/metrics`: the daemon's state in the Prometheus text format (version 0.0.4).
//!
//! Everything about jobs is read from the catalog at scrape time (run history, snapshots,
//! locks), so the numbers are the ones `coffer runs` and `coffer status` show, and they
//! survive restarts. The daemon adds what only it knows: what is running, when each job
//! fires next, refused requests, reloads.

use std::fmt::Write;

use crate::catalog::Catalog;
use crate::config::Config;

/// What the running daemon knows that the catalog does not.
pub struct Live {
    pub started_at: i64,
    pub running: Vec<String>,
    /// Next fire time per scheduled job.
    pub next_runs: Vec<(String, i64)>,
    pub unauthorized_requests: u64,
    pub reloads: u64,
    pub failed_reloads: u64,
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
    process_metrics(&mut m);

    let catalog = Catalog::open_existing(cfg);
    m.family("coffer_catalog_up", "gauge", "Whether the catalog could be read for this scrape.");
    m.sample("coffer_catalog_up", &[], f64::from(u8::from(catalog.is_ok())));
    if let Ok(catalog) = catalog {
        job_metrics(&mut m, cfg, &catalog, live);
    }
    m.out
}

fn job_metrics(m: &mut Exposition, cfg: &Config, catalog: &Catalog, live: &Live) {
    let status = crate::status::run(cfg, &crate::status::Options { remote: false, sample: None });
    if let Ok(report) = &status {
        m.family("coffer_status", "gauge", "The retention status check: 0 OK, 1 WARNING, 2 CRITICAL.");
        m.sample("coffer_status", &[], f64::from(report.status.exit_code()));
    }
    let families: [(&str, &str, &str); 17] = [
        ("coffer_job_last_success_timestamp_seconds", "gauge", "When the job last finished with a snapshot."),
        ("coffer_job_last_run_timestamp_seconds", "gauge", "When the job's last run ended."),
        ("coffer_job_last_run_duration_seconds", "gauge", "How long the job's last run took."),
        ("coffer_job_last_run_outcome", "gauge", "1 for the outcome of the job's last run."),
        ("coffer_job_last_run_bytes_read", "gauge", "Bytes the last run read from the source."),
        ("coffer_job_last_run_bytes_uploaded", "gauge", "Bytes the last run uploaded."),
        ("coffer_job_runs_total", "counter", "Runs started (not counting skips)."),
        ("coffer_job_failures_total", "counter", "Runs that failed."),
        ("coffer_job_skipped_runs_total", "counter", "Fire times skipped because the job was still running."),
        ("coffer_job_target_retries_total", "counter", "Transient target failures retried."),
        ("coffer_job_bytes_read_total", "counter", "Bytes read from the source, all runs."),
        ("coffer_job_bytes_uploaded_total", "counter", "Bytes uploaded to the target, all runs."),
        ("coffer_job_lock_extensions_total", "counter", "Object Lock extensions of reused objects."),
        ("coffer_job_snapshots", "gauge", "Live snapshots (not past their retain-until)."),
        ("coffer_job_protected_until_timestamp_seconds", "gauge", "Every live snapshot is fully locked until then."),
        ("coffer_job_protection_gaps", "gauge", "Live snapshots needing an object locked too briefly."),
        ("coffer_job_running", "gauge", "1 while the job runs."),
    ];
    let mut rows: Vec<Vec<(String, f64)>> = vec![Vec::new(); families.len()];
    for job in &cfg.jobs {
        let name = job.name.as_str();
        let Ok(t) = catalog.job_totals(name) else { continue };
        let mut put = |i: usize, labels: String, v: f64| rows[i].push((labels, v));
        let l = format!("job=\"{}\"", escape(name));
        if let Some(at) = t.last_success_at {
            put(0, l.clone(), at as f64);
        }
        if let Some(r) = &t.last_run {
            put(1, l.clone(), r.ended_at.unwrap_or(r.started_at) as f64);
            put(2, l.clone(), r.duration_ms.unwrap_or(0) as f64 / 1000.0);
            for outcome in ["success", "partial", "failed", "interrupted"] {
                put(3, format!("{l},outcome=\"{outcome}\""), f64::from(u8::from(r.outcome == outcome)));
            }
            put(4, l.clone(), r.bytes_read as f64);
            put(5, l.clone(), r.bytes_uploaded as f64);
        }
        put(6, l.clone(), t.runs as f64);
        put(7, l.clone(), t.failures as f64);
        put(8, l.clone(), t.skips as f64);
        put(9, l.clone(), t.retries as f64);
        put(10, l.clone(), t.bytes_read as f64);
        put(11, l.clone(), t.bytes_uploaded as f64);
        put(12, l.clone(), t.lock_extensions as f64);
        if let Some(j) = status.as_ref().ok().and_then(|r| r.jobs.iter().find(|j| j.name == name)) {
            put(13, l.clone(), j.live_snapshots as f64);
            if let Some(until) = j.protected_until {
                put(14, l.clone(), until as f64);
            }
            put(15, l.clone(), j.gaps.len() as f64);
        }
        put(16, l, f64::from(u8::from(live.running.iter().any(|r| r == name))));
    }
    for ((name, kind, help), samples) in families.iter().zip(rows) {
        m.family(name, kind, help);
        for (labels, v) in samples {
            let _ = writeln!(m.out, "{name}{{{labels}}} {}", number(v));
        }
    }
    m.family("coffer_job_next_run_timestamp_seconds", "gauge", "When the job fires next.");
    for (job, at) in &live.next_runs {
        m.sample("coffer_job_next_run_timestamp_seconds", &[("job", job)], *at as f64);
    }
}

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
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        m.family("process_open_fds", "gauge", "Open file descriptors.");
        m.sample("process_open_fds", &[], fds.count() as f64);
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
