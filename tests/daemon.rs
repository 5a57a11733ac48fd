//! The daemon, run as the real binary: schedules, catch-up, shutdown at a checkpoint, an
//! S3 outage, `/metrics` and its token, SIGHUP, hooks, status freshness, and no secret in
//! any log line.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A running `coffer daemon` whose log (JSON lines, debug level) goes to a file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(setup: &Setup, name: &str) -> Daemon {
        let log = setup.dir.path(&format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child =
            setup.cmd(&["daemon", "--log-format", "json", "-vv"]).stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Daemon { child, log }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the daemon to exit, failing after `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(t0.elapsed() < limit, "the daemon did not exit within {limit:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(60))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every log line is one JSON object, and no field in it is a list written as a
    /// string (`"[\"a\", \"b\"]"`, what a Debug-formatted Vec becomes).
    fn log_lines(&self) -> Vec<Value> {
        let line = |l: &str| -> Value {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
            for (field, value) in v.as_object().unwrap() {
                let listed = value.as_str().and_then(|s| serde_json::from_str::<Value>(s).ok());
                assert!(!listed.is_some_and(|x| x.is_array()), "field `{field}` is a list in a string: {l}");
            }
            v
        };
        self.log_text().lines().map(line).collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A GET on the daemon's endpoint: (status, body); `None` while nothing listens.
fn http_get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `coffer runs --json`, oldest first.
fn runs(setup: &Setup) -> Vec<Value> {
    let out = setup.ok(&["runs", "--json", "-n", "1000"]);
    let mut v = json_lines(&out);
    v.reverse();
    v
}

fn runs_of<'a>(runs: &'a [Value], job: &str, outcome: Option<&str>) -> Vec<&'a Value> {
    runs.iter().filter(|r| r["job"] == job && outcome.is_none_or(|o| r["outcome"] == o)).collect()
}

/// A setup whose config gets `daemon_extra` appended (after the job: further keys of
/// it, more jobs, `[daemon]`, `[http]`).
fn daemon_setup(name: &str, target: Target, src: &Path, daemon_extra: &str) -> Setup {
    Setup::with_extra(name, target, src, daemon_extra)
}

fn small_source(scratch: &Scratch) -> PathBuf {
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "hello\n".repeat(1000)).unwrap();
    std::fs::write(src.join("b.bin"), Rng(5).mixed(1 << 20)).unwrap();
    src
}

/// Test 7 of the issue, for every daemon test: no secret (the S3 secret key, the
/// repository secret, the age identity, the HTTP token) in any log line.
fn assert_no_secrets(setup: &Setup, logs: &[&str], extra_secrets: &[&str]) {
    let mut secrets: Vec<String> = extra_secrets.iter().map(|s| s.to_string()).collect();
    if let Ok(k) = std::env::var("AWS_SECRET_ACCESS_KEY") {
        secrets.push(k);
    }
    secrets.push(std::fs::read_to_string(setup.dir.path("state/repo.secret")).unwrap().trim().to_string());
    let identity = std::fs::read_to_string(&setup.identity).unwrap();
    secrets.extend(identity.lines().filter(|l| l.starts_with("AGE-SECRET-KEY-")).map(str::to_string));
    assert!(secrets.len() >= 2);
    for log in logs {
        for s in &secrets {
            assert!(!log.contains(s.as_str()), "a secret appears in the log:\n{log}");
        }
    }
}

#[test]
fn jobs_run_on_schedule_and_a_slow_job_never_overlaps_itself() {
    let scratch = Scratch::new("sched");
    let src = small_source(&scratch);
    let port = free_port();
    // `fast` every 2 s; `slow` every 2 s, but its hook keeps each run busy for 5 s.
    let extra = format!(
        "schedule = \"*/2 * * * * *\"\n\
         [[job]]\nname = \"slow\"\nsource = {{ path = \"{}\" }}\nschedule = \"*/2 * * * * *\"\n\
         on_success = [\"sleep\", \"5\"]\n\
         [daemon]\nmax_concurrent_jobs = 2\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        src.display()
    );
    let setup = daemon_setup("sched", Target::Dir, &src, &extra);
    let mut d = Daemon::start(&setup, "daemon");
    std::thread::sleep(Duration::from_secs(11));
    let status = d.stop();
    assert!(status.success(), "daemon exit {status}; log:\n{}", d.log_text());
    let all = runs(&setup);

    // On time: every scheduled run of `fast` started within a second of its fire time.
    // (On a loaded machine a run may outlast 2 s; its next fire time is then skipped.)
    let fast: Vec<_> = runs_of(&all, "data", None)
        .into_iter()
        .filter(|r| r["trigger"] == "schedule" && r["outcome"] != "skipped")
        .collect();
    assert!(fast.len() >= 2, "expected scheduled runs in 11 s: {all:?}");
    for r in &fast {
        let late = r["started_at"].as_i64().unwrap() - r["scheduled_for"].as_i64().unwrap();
        assert!((0..=1).contains(&late), "run started {late}s after its fire time: {r}");
        assert_eq!(r["outcome"], "success", "{r}");
        assert_eq!(r["scheduled_for"].as_i64().unwrap() % 2, 0, "fires on even seconds: {r}");
    }
    assert!(setup.snapshots().iter().filter(|s| s["job"] == "data").count() >= 3, "catch-up and scheduled runs");

    // Never twice at once: each run of `slow` starts after the previous one ended, and
    // the fire times in between are recorded as skipped.
    let slow: Vec<_> = runs_of(&all, "slow", None).into_iter().filter(|r| r["outcome"] != "skipped").collect();
    assert!(!slow.is_empty());
    for pair in slow.windows(2) {
        assert!(pair[1]["started_at"].as_i64() >= pair[0]["ended_at"].as_i64(), "overlapping runs: {pair:?}");
    }
    let skipped = runs_of(&all, "slow", Some("skipped"));
    assert!(skipped.len() >= 2, "expected skips while `slow` ran: {all:?}");
    assert!(skipped[0]["error"].as_str().unwrap().contains("still going"));

    let lines = d.log_lines();
    assert!(lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("skipped"))));
    assert_no_secrets(&setup, &[&d.log_text()], &[]);
}

#[test]
fn missed_fire_times_are_caught_up_once_and_status_sees_staleness() {
    let scratch = Scratch::new("catchup");
    let src = small_source(&scratch);
    let extra =
        format!("schedule = \"*/4 * * * * *\"\ngrace = \"1s\"\n[http]\nlisten = \"127.0.0.1:{}\"\n", free_port());
    let setup = daemon_setup("catchup", Target::Dir, &src, &extra);
    let mut d = Daemon::start(&setup, "first");
    // A new job runs at once (catch-up of "never ran"), then on its schedule.
    wait_for("two successful runs", Duration::from_secs(30), || {
        (runs_of(&runs(&setup), "data", Some("success")).len() >= 2).then_some(())
    });
    assert!(d.stop().success());
    let before = runs(&setup).len();
    let newest = setup.snapshots().last().unwrap()["created_at"].as_i64().unwrap();

    // Down across at least two fire times: status sees the job as overdue.
    let stopped = now();
    std::thread::sleep(Duration::from_secs(10));
    let out = setup.run(&["status", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "two missed snapshots are CRITICAL: {report}");
    assert!(report["jobs"][0]["overdue_since"].as_i64().unwrap() > newest);
    assert!(report["problems"].to_string().contains("two scheduled snapshots are missing"), "{report}");
    assert_eq!(report["jobs"][0]["schedule"], "*/4 * * * * *");

    let mut d2 = Daemon::start(&setup, "second");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(d2.stop().success());
    let after = runs(&setup);
    let catch_ups: Vec<_> = after[before..].iter().filter(|r| r["trigger"] == "catch-up").collect();
    assert_eq!(catch_ups.len(), 1, "exactly one catch-up run for several missed fire times: {:?}", &after[before..]);
    assert!(catch_ups[0]["started_at"].as_i64().unwrap() <= stopped + 13);
    assert_eq!(catch_ups[0]["outcome"], "success");
    // Fresh again.
    let out = setup.run(&["status", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["jobs"][0]["overdue_since"].is_null(), "{report}");
    assert_no_secrets(&setup, &[&d.log_text(), &d2.log_text()], &[]);
}

#[test]
fn sigterm_stops_at_a_checkpoint_and_the_next_start_resumes() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("sigterm");
    let src = random_parts(&scratch, 21, 10);
    // Daily at 03:00: only the catch-up of a new job runs during the test.
    let extra = format!(
        "schedule = \"0 3 * * *\"\n[daemon]\nshutdown_timeout = \"30s\"\n[http]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    );
    let setup = daemon_setup("sigterm", Target::S3, &src, &extra);
    let mut d = Daemon::start(&setup, "first");
    wait_for("three acknowledged packs", Duration::from_secs(120), || {
        let n = setup.pack_count();
        (n >= 3).then_some(())
    });
    let t0 = Instant::now();
    let status = d.stop();
    assert!(status.success(), "exit {status}; log:\n{}", d.log_text());
    assert!(t0.elapsed() < Duration::from_secs(30));
    // The job it waited for is a field of its own (a scalar, as every log field is).
    let waited = d.log_lines().into_iter().filter(|l| l["message"].as_str().is_some_and(|m| m.contains("checkpoint")));
    assert!(waited.into_iter().any(|l| l["job"] == "data"), "{}", d.log_text());
    setup.integrity_ok();
    assert!(setup.snapshots().is_empty(), "an interrupted run leaves no snapshot");
    let first = runs(&setup);
    assert_eq!(first.last().unwrap()["outcome"], "interrupted", "{first:?}");

    let acknowledged = setup.pack_hashes();
    let stored_before: i64 = setup.stored_raw_bytes();
    // The next start resumes the interrupted run at once.
    let mut d2 = Daemon::start(&setup, "second");
    wait_for("the resumed snapshot", Duration::from_secs(180), || (!setup.snapshots().is_empty()).then_some(()));
    assert!(d2.stop().success());
    let after = setup.pack_hashes();
    assert!(acknowledged.iter().all(|h| after.contains(h)));
    let resumed = runs(&setup).into_iter().rev().find(|r| r["outcome"] == "success").unwrap();
    assert_eq!(resumed["trigger"], "catch-up");
    let new_run = setup.snapshots()[0]["bytes_new"].as_i64().unwrap();
    let stored_after: i64 = setup.stored_raw_bytes();
    assert_eq!(new_run, stored_after - stored_before, "the resumed run re-sent acknowledged chunks");
    assert!(stored_before > 0 && new_run < 10 * PART as i64);
    setup.assert_restores(&src, &scratch.path("out"));
    assert_no_secrets(&setup, &[&d.log_text(), &d2.log_text()], &[]);
}

#[test]
fn an_s3_outage_fails_the_run_cleanly_and_a_later_run_completes() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("outage");
    let src = random_parts(&scratch, 31, 8);
    let (gw_port, http_port) = (free_port(), free_port());
    let gateway = Gateway::start(&format!("outage{gw_port}"), gw_port);
    let extra = format!("schedule = \"*/5 * * * * *\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n");
    let setup = daemon_setup("outage", Target::S3, &src, &extra);
    // The daemon talks to its own gateway of the same cluster, which the test stops.
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let url_line = format!("url = \"{}\"", setup.target_url);
    let config = config
        .replace(&url_line, &format!("{url_line}\nendpoint = \"http://127.0.0.1:{gw_port}\"\nretry_budget = \"8s\""));
    std::fs::write(&setup.config, config).unwrap();

    let mut d = Daemon::start(&setup, "daemon");
    wait_for("two acknowledged packs", Duration::from_secs(120), || {
        let n = setup.pack_count();
        (n >= 2).then_some(())
    });
    gateway.stop();
    let down = Instant::now();
    // The run retries for its budget, then fails and says why.
    let failed = wait_for("a failed run", Duration::from_secs(60), || {
        runs_of(&runs(&setup), "data", Some("failed")).first().map(|r| (*r).clone())
    });
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("retry budget"), "{error}");
    assert!(failed["retries"].as_u64().unwrap() >= 1, "{failed}");
    let (code, metrics) = http_get(http_port, "/metrics", None).unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("coffer_job_failures_total{coffer_job=\"data\"} 1")
            || metrics.contains("coffer_job_failures_total{coffer_job=\"data\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("coffer_job_last_run_outcome{coffer_job=\"data\",outcome=\"failed\"} 1"), "{metrics}");
    setup.integrity_ok();
    assert!(setup.snapshots().is_empty());

    // 20 s later the gateway is back; a later run completes without re-sending.
    let stored_before: i64 = setup.stored_raw_bytes();
    std::thread::sleep(Duration::from_secs(20).saturating_sub(down.elapsed()));
    gateway.start_again();
    wait_for("a snapshot after the outage", Duration::from_secs(180), || (!setup.snapshots().is_empty()).then_some(()));
    assert!(d.stop().success());
    setup.integrity_ok();
    let new_run = setup.snapshots()[0]["bytes_new"].as_i64().unwrap();
    let stored_after: i64 = setup.stored_raw_bytes();
    assert_eq!(new_run, stored_after - stored_before, "the run after the outage re-sent acknowledged chunks");
    // Every pack version the catalog claims is on the server.
    let on_server: Vec<(String, String)> = setup
        .s3_inspect("locks", &[])
        .iter()
        .map(|v| (v["key"].as_str().unwrap().to_string(), v["version"].as_str().unwrap_or("").to_string()))
        .collect();
    let claimed: Vec<(String, String)> = {
        let c = setup.catalog();
        let mut st = c.prepare("SELECT p.hash, c.version FROM packs p JOIN pack_copies c ON c.pack = p.id").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
    };
    for (hash, version) in &claimed {
        assert!(
            on_server.iter().any(|(k, v)| k.ends_with(hash.as_str()) && v == version),
            "the catalog claims pack {hash} version {version}, which the server does not hold"
        );
    }
    setup.assert_restores(&src, &scratch.path("out"));
    let out = setup.ok(&["runs"]);
    assert!(text(&out).contains("retry budget"), "the outage is visible in `coffer runs`");
    assert_no_secrets(&setup, &[&d.log_text()], &[]);
}

#[test]
fn metrics_parse_and_a_token_guards_the_endpoint() {
    let scratch = Scratch::new("metrics");
    let src = small_source(&scratch);
    let port = free_port();
    let token = "s3cr3t-metrics-token-0123456789";
    let token_file = scratch.path("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extra = format!(
        "schedule = \"*/2 * * * * *\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[scrub]\nschedule = \"30 4 * * *\"\n"
    );
    let setup = daemon_setup("metrics", Target::Dir, &src, &extra);
    let mut d = Daemon::start(&setup, "open");
    wait_for("two runs", Duration::from_secs(30), || {
        (runs_of(&runs(&setup), "data", Some("success")).len() >= 2).then_some(())
    });
    let (code, body) = http_get(port, "/metrics", None).unwrap();
    assert_eq!(code, 200);
    // An independent parser (prometheus_client) reads it.
    let parsed = prometheus_parse(&body);
    let value = |name: &str| -> f64 {
        parsed
            .iter()
            .find(|s| s["name"] == name && s["labels"]["coffer_job"].as_str().is_none_or(|j| j == "data"))
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))["value"]
            .as_f64()
            .unwrap()
    };
    let successes = runs_of(&runs(&setup), "data", Some("success")).len() as f64;
    assert!(value("coffer_job_runs_total") >= successes);
    assert!(value("coffer_job_last_success_timestamp_seconds") >= (now() - 10) as f64);
    assert!(value("coffer_job_snapshots") >= 2.0);
    assert_eq!(value("coffer_job_failures_total"), 0.0);
    assert_eq!(value("coffer_job_anomalous_changes"), 0.0, "steady state: no trip");
    assert!(value("coffer_job_read_bytes_total") > 1e6);
    assert!(value("coffer_job_last_snapshot_timestamp_seconds") >= (now() - 10) as f64);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_start_time_seconds") > (now() - 600) as f64);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert_eq!(value("coffer_config_last_reload_successful"), 1.0);
    // Prometheus's own linter finds nothing to say (names, units, _total, help).
    if let Ok(mut lint) =
        Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()
    {
        lint.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = lint.wait_with_output().unwrap();
        assert!(out.status.success() && out.stdout.is_empty(), "promtool check metrics: {}", text(&out));
    }
    // Prometheus owns `job` and `instance`: a series carrying either would be renamed.
    for s in &parsed {
        assert!(s["labels"]["job"].is_null() && s["labels"]["instance"].is_null(), "{s}");
    }
    assert!(value("coffer_job_next_run_timestamp_seconds") >= now() as f64);
    let (code, health) = http_get(port, "/health", None).unwrap();
    assert_eq!((code, health.contains("\"ok\"")), (200, true), "{health}");
    assert_eq!(http_get(port, "/nothing", None).unwrap().0, 404);
    // Nothing here performs an action.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    // The alert rules in deploy/ only name metrics the daemon exports.
    let rules = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts.yml")).unwrap();
    let words = rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    // `coffer_job` is the label naming a backup job; every other `coffer_` word a metric.
    for name in words.filter(|w| w.starts_with("coffer_") && *w != "coffer_job") {
        assert!(body.contains(&format!("# TYPE {name} ")), "deploy/alerts.yml uses {name}, which /metrics lacks");
    }
    assert!(d.stop().success());

    // Listening beyond loopback without a token: refused before starting.
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let open = config.replace(&format!("127.0.0.1:{port}"), &format!("0.0.0.0:{port}"));
    std::fs::write(&setup.config, &open).unwrap();
    let out = setup.run(&["daemon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("token_file"), "{}", text(&out));

    // With a token: requests without it get 401, and are counted. A liveness probe
    // (`/health`, no token) gets the status alone, not what the daemon runs or found.
    let guarded = open.replace("[http]\n", &format!("[http]\ntoken_file = \"{}\"\n", token_file.display()));
    std::fs::write(&setup.config, &guarded).unwrap();
    let mut d = Daemon::start(&setup, "guarded");
    let (code, body) = wait_for("the endpoint", Duration::from_secs(10), || http_get(port, "/health", None));
    assert_eq!((code, body.trim()), (200, r#"{"status":"ok"}"#));
    let (code, body) = http_get(port, "/health", Some(token)).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"preflight\"") && body.contains("\"running\""), "{body}");
    assert_eq!(http_get(port, "/metrics", None).unwrap().0, 401);
    assert_eq!(http_get(port, "/metrics", Some("wrong-token-wrong-token")).unwrap().0, 401);
    assert_eq!(http_get(port, "/health", Some("wrong-token-wrong-token")).unwrap().0, 401);
    let (code, body) = http_get(port, "/metrics", Some(token)).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("coffer_http_unauthorized_requests_total 3"), "{body}");
    assert!(d.stop().success());

    // A token file others can read is refused.
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = setup.run(&["daemon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    assert_no_secrets(&setup, &[&d.log_text(), &text(&out)], &[token]);
}

/// Parses Prometheus text with prometheus_client's parser: one JSON object per sample.
fn prometheus_parse(body: &str) -> Vec<Value> {
    let script = "import json, sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  for f in text_string_to_metric_families(sys.stdin.read()):\n\
                  \x20   for s in f.samples:\n\
                  \x20       print(json.dumps({'name': s.name, 'labels': s.labels, 'value': s.value}))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "prometheus_client refused the exposition: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sighup_reloads_a_valid_config_and_keeps_the_old_one_when_broken() {
    let scratch = Scratch::new("sighup");
    let src = small_source(&scratch);
    let port = free_port();
    let extra = format!("schedule = \"*/2 * * * * *\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let setup = daemon_setup("sighup", Target::Dir, &src, &extra);
    let good = std::fs::read_to_string(&setup.config).unwrap();
    let mut d = Daemon::start(&setup, "daemon");
    wait_for("a run", Duration::from_secs(20), || {
        (!runs_of(&runs(&setup), "data", Some("success")).is_empty()).then_some(())
    });

    // A second daemon on the same state directory is refused.
    let out = setup.run(&["daemon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("another coffer daemon"), "{}", text(&out));

    std::fs::write(&setup.config, good.replace("schedule = \"*/2 * * * * *\"", "schedule = \"every two seconds\""))
        .unwrap();
    d.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    let count = successes(&setup, "data");
    std::thread::sleep(Duration::from_secs(5));
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died on a broken config");
    assert!(successes(&setup, "data") > count, "the old schedule stopped");
    let log = d.log_text();
    assert!(log.contains("configuration not reloaded") && log.contains("job[0].schedule"), "{log}");
    let (_, metrics) = http_get(port, "/metrics", None).unwrap();
    assert!(metrics.contains("coffer_config_last_reload_successful 0"), "the refused reload shows: {metrics}");
    let (code, health) = http_get(port, "/health", None).unwrap();
    assert_eq!(code, 200, "a refused reload keeps the daemon alive: {health}");
    assert!(health.contains("\"degraded\"") && health.contains("job[0].schedule"), "{health}");

    // A config that parses but fails the preflight (an identity beside it) is refused
    // too, and /health says what the preflight found.
    std::fs::write(&setup.config, &good).unwrap();
    let stray = setup.config.parent().unwrap().join("stray-identity.txt");
    std::fs::copy(&setup.identity, &stray).unwrap();
    d.signal(libc::SIGHUP);
    wait_for("the refused reload in /health", Duration::from_secs(10), || {
        http_get(port, "/health", None).filter(|(_, body)| body.contains("stray-identity.txt"))
    });
    std::fs::remove_file(&stray).unwrap();

    // A valid config with a second job is taken.
    let with_job = format!(
        "{good}[[job]]\nname = \"added\"\nsource = {{ path = \"{}\" }}\nschedule = \"*/2 * * * * *\"\n",
        src.display()
    );
    std::fs::write(&setup.config, with_job).unwrap();
    d.signal(libc::SIGHUP);
    wait_for("a run of the added job", Duration::from_secs(20), || {
        (!runs_of(&runs(&setup), "added", Some("success")).is_empty()).then_some(())
    });
    let (_, metrics) = http_get(port, "/metrics", None).unwrap();
    assert!(metrics.contains("coffer_config_reloads_total{result=\"failure\"} 2"), "{metrics}");
    assert!(metrics.contains("coffer_config_reloads_total{result=\"success\"} 1"), "{metrics}");
    assert!(metrics.contains("coffer_config_last_reload_successful 1"), "the last reload was taken: {metrics}");
    assert!(d.stop().success());
    assert_no_secrets(&setup, &[&d.log_text()], &[]);
}

#[test]
fn hooks_receive_the_outcome_and_the_error() {
    let scratch = Scratch::new("hooks");
    let src = small_source(&scratch);
    let record = scratch.path("hook.out");
    let hook = format!(
        "[\"sh\", \"-c\", \"echo \\\"$COFFER_JOB $COFFER_OUTCOME $COFFER_SNAPSHOT | $COFFER_ERROR\\\" >> {}\"]",
        record.display()
    );
    let extra = format!("on_success = {hook}\non_failure = {hook}\n");
    let setup = daemon_setup("hooks", Target::Dir, &src, &extra);
    setup.backup();
    let snapshot = setup.snapshots()[0]["snapshot"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(&src).unwrap();
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<String> = std::fs::read_to_string(&record).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], format!("data success {snapshot} | "));
    assert!(lines[1].starts_with("data failed  | source directory"), "{}", lines[1]);
    // The failure is in the run history too.
    let all = runs(&setup);
    assert_eq!(all.last().unwrap()["outcome"], "failed");
    assert!(all.last().unwrap()["error"].as_str().unwrap().contains("does not exist"));
}

#[test]
fn a_hook_that_hangs_is_killed_after_its_timeout() {
    let scratch = Scratch::new("hookhang");
    let src = small_source(&scratch);
    let setup =
        daemon_setup("hookhang", Target::Dir, &src, "on_success = [\"sleep\", \"600\"]\nhook_timeout = \"1s\"\n");
    let t0 = Instant::now();
    let out = setup.backup();
    assert!(t0.elapsed() < Duration::from_secs(30));
    // The backup itself succeeded; the hook's failure is logged.
    assert!(text(&out).contains("killed after the hook timeout"), "{}", text(&out));
}

#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let scratch = Scratch::new("unit");
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/coffer.service")).unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let path = scratch.path("coffer.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/coffer", BIN)).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    // It exits 0 on unknown keys but prints them: any output is a finding.
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify: {}", text(&out));
    for required in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_DAC_READ_SEARCH",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "ReadWritePaths=/var/lib/coffer",
    ] {
        assert!(unit.contains(required), "the unit lacks {required}");
    }
}

/// Successful runs of `job`, read from the catalog (works while the config is broken).
fn successes(setup: &Setup, job: &str) -> i64 {
    setup
        .catalog()
        .query_row("SELECT count(*) FROM runs WHERE job = ?1 AND outcome = 'success'", [job], |r| r.get(0))
        .unwrap()
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn the_endpoint_holds_under_abuse() {
    let scratch = Scratch::new("abuse");
    let src = small_source(&scratch);
    let port = free_port();
    let token = "abuse-test-token-0123456789abcdef";
    let token_file = scratch.path("token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extra = format!("[http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n", token_file.display());
    let setup = daemon_setup("abuse", Target::Dir, &src, &extra);
    let mut d = Daemon::start(&setup, "abuse");
    wait_for("the endpoint", Duration::from_secs(10), || http_get(port, "/health", Some(token)));

    // Slowloris: hundreds of connections that never finish their request head, each
    // reopened as soon as it is closed, while a scraper with the token asks every 100 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut conns: Vec<TcpStream> = Vec::new();
                let mut opened = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    while conns.len() < 100 {
                        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { break };
                        let _ = s.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ");
                        conns.push(s);
                        opened += 1;
                    }
                    // One more byte each; the server's closed ones fail and are dropped.
                    conns.retain_mut(|s| s.write_all(b"a").is_ok());
                    std::thread::sleep(Duration::from_millis(200));
                }
                opened
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (mut asked, mut answered) = (0, 0);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        asked += 1;
        let ok = (|| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(s, "GET /health HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n").ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            text.starts_with("HTTP/1.1 200").then_some(())
        })();
        answered += ok.is_some() as u32;
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened: u64 = attackers.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("slowloris: {opened} slow connections; the scraper got {answered} of {asked} answers");
    assert!(opened > 400, "the attack did not run: {opened} connections");
    assert!(answered * 100 >= asked * 95, "the scraper got only {answered} of {asked} answers");

    // A flood of requests without the token: all refused, counted, logged once.
    for _ in 0..300 {
        assert_eq!(http_get(port, "/metrics", None).map(|r| r.0), Some(401));
    }
    let (_, body) = http_get(port, "/metrics", Some(token)).unwrap();
    assert!(body.contains("coffer_http_unauthorized_requests_total 300"), "{body}");
    let refused_lines = d.log_text().lines().filter(|l| l.contains("refused HTTP requests")).count();
    assert!(refused_lines <= 1, "{refused_lines} log lines for 300 refused requests");

    // Out of descriptors: accept fails (EMFILE) and must back off, not spin.
    let pid = d.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = format!("--nofile={}:{}", open + 4, open + 4);
    run_ok(Command::new("prlimit").args(["--pid", &pid.to_string(), &limit]));
    let held: Vec<TcpStream> = (0..64).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_seconds(pid) - before;
    drop(held);
    eprintln!("with accept failing: {spent:.2} CPU seconds in 3 s");
    assert!(spent < 0.5, "the accept loop spun: {spent:.2} CPU seconds in 3 s");
    assert!(d.stop().success());
}

/// Whatever stops a scheduled run is a failed run: one that cannot even start (the
/// repository secret made readable by others, so refused) is in the run history with
/// its cause, logged at ERROR and counted in /metrics, with `coffer_status` still there;
/// one whose target was swapped for an empty directory (an unmounted disk) fails before
/// it writes anything there. Both recover when the cause is gone.
#[test]
fn every_failure_of_a_scheduled_run_is_recorded_logged_and_counted() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("failstart");
    let src = small_source(&scratch);
    let port = free_port();
    let extra = format!("schedule = \"*/2 * * * * *\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let setup = daemon_setup("failstart", Target::Dir, &src, &extra);
    let mut d = Daemon::start(&setup, "daemon");
    wait_for("a run", Duration::from_secs(30), || (successes(&setup, "data") > 0).then_some(()));

    let secret = setup.dir.path("state/repo.secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let failed = wait_for("a failed run", Duration::from_secs(30), || {
        let all = runs(&setup);
        runs_of(&all, "data", Some("failed")).first().map(|r| r["error"].as_str().unwrap_or_default().to_string())
    });
    assert!(failed.contains("could not start") && failed.contains("repo.secret"), "{failed}");
    let logged = d
        .log_lines()
        .into_iter()
        .any(|l| l["level"] == "ERROR" && l["message"].as_str().is_some_and(|m| m.contains("repo.secret")));
    assert!(logged, "no ERROR line names the cause:\n{}", d.log_text());
    let (_, metrics) = http_get(port, "/metrics", None).unwrap();
    assert!(metrics.contains("coffer_job_last_run_outcome{coffer_job=\"data\",outcome=\"failed\"} 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("coffer_status ")), "{metrics}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = successes(&setup, "data");
    wait_for("a success again", Duration::from_secs(30), || (successes(&setup, "data") > before).then_some(()));

    // The target's disk "unmounted": an empty directory in its place.
    let target = setup.dir.path("target");
    let mounted = setup.dir.path("target.mounted");
    std::fs::rename(&target, &mounted).unwrap();
    std::fs::create_dir(&target).unwrap();
    let failures = runs_of(&runs(&setup), "data", Some("failed")).len();
    let failed = wait_for("a failed run on the empty target", Duration::from_secs(30), || {
        let all = runs(&setup);
        let f = runs_of(&all, "data", Some("failed"));
        (f.len() > failures).then(|| f.last().unwrap()["error"].as_str().unwrap_or_default().to_string())
    });
    assert!(failed.contains("holds no coffer.repo") && failed.contains("mounted"), "{failed}");
    let written: Vec<_> = std::fs::read_dir(&target).unwrap().collect();
    assert!(written.is_empty(), "a run wrote to the empty target: {written:?}");
    assert!(d.stop().success());
    std::fs::remove_dir(&target).unwrap();
    std::fs::rename(&mounted, &target).unwrap();
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let verify = setup.run(&["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
}
