//! The alert rules in deploy/ with Prometheus's own tool: `promtool check rules` accepts
//! them, `promtool test rules` makes each fire (deploy/alerts.test.yml), and no rule is
//! left without such a test.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The `alert:` names of a rules file, or the `alertname:` names a test file makes fire.
fn names(text: &str, key: &str, firing_only: bool) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) =
            line.trim().strip_prefix(&format!("- {key}: ")).or(line.trim().strip_prefix(&format!("{key}: ")))
        else {
            continue;
        };
        let fires = lines.get(i + 1).is_some_and(|next| next.trim() == "exp_alerts:");
        if !firing_only || fires {
            out.push(name.trim().to_string());
        }
    }
    out
}

#[test]
fn every_alert_rule_is_valid_and_fires_in_its_unit_test() {
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else { return };
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    run_ok(Command::new(promtool).args(["check", "rules"]).arg(deploy.join("alerts.yml")));
    let out = run_ok(Command::new(promtool).args(["test", "rules"]).arg(deploy.join("alerts.test.yml")));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));

    let rules = names(&std::fs::read_to_string(deploy.join("alerts.yml")).unwrap(), "alert", false);
    let fired = names(&std::fs::read_to_string(deploy.join("alerts.test.yml")).unwrap(), "alertname", true);
    assert!(rules.len() >= 10, "{rules:?}");
    for rule in &rules {
        assert!(fired.contains(rule), "alert {rule} has no test in deploy/alerts.test.yml that makes it fire");
    }
}

#[test]
fn a_broken_rule_fails_its_unit_test() {
    // The test file is not vacuous: with CofferBackupFailing's condition changed to one
    // that cannot hold, promtool reports the missing alert.
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else { return };
    let scratch = Scratch::new("alerts");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(deploy.join("alerts.yml")).unwrap();
    let broken = rules.replace(
        r#"coffer_job_last_run_outcome{outcome="failed"} == 1"#,
        r#"coffer_job_last_run_outcome{outcome="failed"} == 2"#,
    );
    assert_ne!(broken, rules);
    std::fs::write(scratch.path("alerts.yml"), broken).unwrap();
    std::fs::copy(deploy.join("alerts.test.yml"), scratch.path("alerts.test.yml")).unwrap();
    let out = Command::new(promtool).args(["test", "rules"]).arg(scratch.path("alerts.test.yml")).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("CofferBackupFailing"), "{}", text(&out));
}

// ---- timelines: realistic weeks played through the rules ---------------------------------

/// Every series a daemon with these jobs exports, scraped every five minutes, as coffer's own code
/// computes it: retention by `coffer::retention::decide` (lock_days 30 and the README's
/// `keep`), staleness by `coffer::status::missed_fire_times` on the job's cron schedule,
/// protection as the newest snapshot's retain-until (its record is locked until then and
/// every pack it needs at least as long).
struct Timeline {
    cfg: coffer::config::Config,
    /// When someone acknowledges the suspicious runs (`coffer ack`), in hours from START.
    acked_at: Option<usize>,
    /// Series name with labels → one value per scrape (`None`: not scraped).
    series: std::collections::BTreeMap<String, Vec<Option<f64>>>,
    scrapes: usize,
}

/// Prometheus scrapes every five minutes (its lookback is five minutes too).
const SCRAPE: i64 = 300;

/// What happens to a job in a timeline.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    Success,
    Partial,
    Failed,
    /// Stored on every target but `b`, which is down.
    DegradedWithoutB,
    /// Stored, and found suspicious by the tripwire (open until acknowledged).
    Suspicious,
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// Monday 2026-01-05 00:00 UTC: the timelines start on a Monday.
const START: i64 = 1_767_571_200;
/// How long a run takes (it ends inside the fire time's grace).
const RUN_SECS: i64 = 600;

impl Timeline {
    /// Jobs `(name, schedule)` backing up to targets `a` and `b` (both COMPLIANCE).
    fn new(jobs: &[(&str, &str)], days: usize) -> Timeline {
        let (_, recipient) = coffer::keys::new_identity();
        let mut text = format!(
            "state_dir = \"/var/lib/coffer\"\nrecipients = [\"{recipient}\"]\nrepo_secret_file = \"/etc/coffer/secret\"\n\
             [daemon]\ntimezone = \"UTC\"\n\
             [[target]]\nname = \"a\"\nurl = \"s3://a/coffer\"\n[[target]]\nname = \"b\"\nurl = \"s3://b/coffer\"\n"
        );
        for (name, schedule) in jobs {
            text.push_str(&format!(
                "[[job]]\nname = \"{name}\"\nsource = {{ path = \"/srv\" }}\nschedule = \"{schedule}\"\nlock_days = 30\n\
                 keep = {{ daily = \"7d\", weekly = \"5w\", monthly = \"13mo\", yearly = \"7y\" }}\n"
            ));
        }
        let cfg = coffer::config::Config::parse(Path::new("/etc/coffer/coffer.toml"), &text).unwrap();
        Timeline { cfg, acked_at: None, series: Default::default(), scrapes: days * (DAY / SCRAPE) as usize }
    }

    fn set(&mut self, series: String, scrape: usize, value: Option<f64>) {
        let scrapes = self.scrapes;
        self.series.entry(series).or_insert_with(|| vec![None; scrapes])[scrape] = value;
    }

    /// Plays `job` scrape by scrape: at each fire time, `run(day)` says what the run does
    /// (`None`: no run at all, the daemon never reached it). The daemon answers until
    /// `down_from` (an hour), if given.
    fn play(&mut self, job: &str, run: impl Fn(usize) -> Option<Run>, down_from: Option<usize>) {
        let cfg = self.cfg.clone();
        let j = cfg.job(job).unwrap();
        let schedule = j.schedule.as_ref().unwrap();
        let keep = j.keep;
        // (created, retain_until) of each snapshot made so far, and its targets.
        let mut snapshots: Vec<(i64, i64, bool)> = Vec::new();
        let mut last_outcome: Option<Run> = None;
        // Suspicious runs nobody acknowledged yet.
        let mut open = 0;
        let mut fire = schedule.next_after(START - 1, cfg.daemon.zone).unwrap();
        let label = |extra: &str| format!("{{job=\"coffer\",instance=\"backup:9477\",coffer_job=\"{job}\"{extra}}}");
        for hour in 0..self.scrapes {
            let now = START + hour as i64 * SCRAPE;
            // Runs that ended by now.
            while fire + RUN_SECS <= now {
                let day = ((fire - START) / DAY) as usize;
                if let Some(r) = run(day) {
                    last_outcome = Some(r);
                    open += u32::from(r == Run::Suspicious);
                    if r != Run::Failed {
                        let previous = snapshots.last().map(|s| s.0);
                        let d = coffer::retention::decide(fire, j.lock_days, &keep, previous);
                        snapshots.push((fire, d.retain_until, r != Run::DegradedWithoutB));
                    }
                }
                fire = schedule.next_after(fire, cfg.daemon.zone).unwrap();
            }
            if down_from.is_some_and(|d| now >= START + d as i64 * HOUR) {
                self.set("up{job=\"coffer\",instance=\"backup:9477\"}".into(), hour, Some(0.0));
                continue;
            }
            if self.acked_at.is_some_and(|h| now >= START + h as i64 * HOUR) {
                open = 0;
            }
            let live: Vec<&(i64, i64, bool)> = snapshots.iter().filter(|s| s.1 > now).collect();
            let since = live.last().map(|s| s.0).unwrap_or(START);
            let missed = coffer::status::missed_fire_times(&cfg, j, since, now).unwrap();
            // b lacks the snapshots made since it was last reached.
            let lag = snapshots.iter().rev().take_while(|s| !s.2).count();
            let status = match (live.is_empty(), missed, lag) {
                _ if open > 0 => 2,
                (_, 2.., _) | (_, _, 3..) => 2,
                (true, ..) | (_, 1, _) | (_, _, 2) => 1,
                _ => 0,
            };
            let global = |name: &str| format!("{name}{{job=\"coffer\",instance=\"backup:9477\"}}");
            self.set(global("up"), hour, Some(1.0));
            self.set(
                "coffer_build_info{job=\"coffer\",instance=\"backup:9477\",version=\"0.1.0\"}".into(),
                hour,
                Some(1.0),
            );
            self.set(global("coffer_catalog_up"), hour, Some(1.0));
            self.set(global("coffer_config_last_reload_successful"), hour, Some(1.0));
            self.set(global("coffer_http_unauthorized_requests_total"), hour, Some(0.0));
            let old = self.series.get(&global("coffer_status")).and_then(|v| v[hour]).unwrap_or(0.0);
            self.set(global("coffer_status"), hour, Some(old.max(f64::from(status))));
            self.set(format!("coffer_job_snapshots{}", label("")), hour, Some(live.len() as f64));
            self.set(format!("coffer_job_missed_fire_times{}", label("")), hour, Some(f64::from(missed)));
            let next = schedule.next_after(now, cfg.daemon.zone).unwrap();
            // Times as promtool's clock reads them: from 0 at START.
            let at = |t: i64| Some((t - START) as f64);
            self.set(format!("coffer_job_next_run_timestamp_seconds{}", label("")), hour, at(next));
            if let Some(newest) = live.last() {
                let series = format!("coffer_job_newest_snapshot_protected_until_timestamp_seconds{}", label(""));
                self.set(series, hour, at(newest.1));
                let series = format!("coffer_job_last_snapshot_timestamp_seconds{}", label(""));
                self.set(series, hour, at(newest.0 + RUN_SECS));
            }
            self.set(format!("coffer_job_protection_gaps{}", label("")), hour, Some(0.0));
            self.set(format!("coffer_job_anomalous_changes{}", label("")), hour, Some(f64::from(open)));
            self.set(format!("coffer_job_skipped_runs_total{}", label("")), hour, Some(0.0));
            for (target, lag) in [("a", 0), ("b", lag)] {
                let series = format!("coffer_job_target_lag_snapshots{}", label(&format!(",target=\"{target}\"")));
                self.set(series, hour, Some(lag as f64));
            }
            if let Some(outcome) = last_outcome {
                for (name, this) in [
                    ("success", Run::Success),
                    ("partial", Run::Partial),
                    ("failed", Run::Failed),
                    ("degraded", Run::DegradedWithoutB),
                    ("suspicious", Run::Suspicious),
                ] {
                    let series = format!("coffer_job_last_run_outcome{}", label(&format!(",outcome=\"{name}\"")));
                    self.set(series, hour, Some(f64::from(u8::from(outcome == this))));
                }
            }
        }
    }

    /// The promtool test: every series, and for each hour in `checks` the alerts expected
    /// to fire then (every rule not named must be quiet).
    fn test(&self, name: &str, rules: &[String], checks: &[(usize, Vec<Expected>)]) -> String {
        let mut out = format!("  - name: \"{name}\"\n    interval: 5m\n    input_series:\n");
        for (series, values) in &self.series {
            // Runs of one value as promtool writes them: `v` once, `vxN` for N+1 times.
            let mut runs: Vec<(Option<f64>, usize)> = Vec::new();
            for v in values {
                match runs.last_mut() {
                    Some((last, n)) if last == v => *n += 1,
                    _ => runs.push((*v, 1)),
                }
            }
            let v: Vec<String> = runs
                .iter()
                .map(|(v, n)| {
                    let v = v.map_or("_".to_string(), |v| format!("{v}"));
                    if *n == 1 { v } else { format!("{v}x{}", n - 1) }
                })
                .collect();
            out.push_str(&format!("      - series: '{series}'\n        values: '{}'\n", v.join(" ")));
        }
        out.push_str("    alert_rule_test:\n");
        for (hour, firing) in checks {
            for rule in rules {
                out.push_str(&format!("      - eval_time: {hour}h\n        alertname: {rule}\n"));
                let alerts: Vec<&Expected> = firing.iter().filter(|(r, ..)| r == rule).collect();
                if alerts.is_empty() {
                    out.push_str("        exp_alerts: []\n");
                    continue;
                }
                out.push_str("        exp_alerts:\n");
                for (_, labels, summary) in alerts {
                    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
                    out.push_str(&format!("          - exp_labels: {{{}}}\n", l.join(", ")));
                    out.push_str(&format!("            exp_annotations: {{summary: \"{summary}\"}}\n"));
                }
            }
        }
        out
    }
}

/// An alert expected to fire: its rule, labels and summary.
type Expected = (&'static str, Vec<(&'static str, &'static str)>, String);

/// The labels of an alert about `job` on the one daemon.
fn on_job<'a>(severity: &'a str, job: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut l = vec![("severity", severity), ("job", "coffer"), ("instance", "backup:9477"), ("coffer_job", job)];
    l.extend_from_slice(extra);
    l
}

/// Every `alerts.yml` rule at `hours`, all quiet.
fn quiet(hours: impl IntoIterator<Item = usize>) -> Vec<(usize, Vec<Expected>)> {
    hours.into_iter().map(|h| (h, Vec::new())).collect()
}

/// The timelines of `alerts.timeline.test.yml`, as coffer's code computes them.
fn timelines() -> String {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = names(&std::fs::read_to_string(deploy.join("alerts.yml")).unwrap(), "alert", false);
    let mut out = String::from(
        "# Realistic weeks played through alerts.yml: `promtool test rules deploy/alerts.timeline.test.yml`.\n\
         # Generated by tests/alerts.rs from coffer's own retention and schedule code (lock_days = 30, the\n\
         # README's keep, daily runs at 02:15 UTC taking ten minutes); tests/alerts.rs checks that this file\n\
         # is what it generates (`COFFER_WRITE_TIMELINES=1 cargo test --test alerts` writes it again).\n\
         # Hours count from Monday 2026-01-05 00:00 UTC. At every hour checked, every rule not listed is quiet.\n\
         rule_files: [alerts.yml]\nevaluation_interval: 5m\n\ntests:\n",
    );
    out += &healthy(&rules);
    out += &failing(&rules);
    out += &outages(&rules);
    out
}

const DAILY: &str = "15 2 * * *";

/// Steady daily and weekly jobs: no alert at all.
fn healthy(rules: &[String]) -> String {
    let mut out = String::new();

    // 40 days of daily snapshots: no alert at all, ever (checked twice a day).
    let mut t = Timeline::new(&[("home", DAILY)], 40);
    t.play("home", |_| Some(Run::Success), None);
    out += &t.test("40 days of daily snapshots: quiet", rules, &quiet((1..40 * 24).step_by(25)));

    // A weekly job (Sundays 03:15) for five weeks: quiet.
    let mut t = Timeline::new(&[("weekly", "15 3 * * 0")], 35);
    t.play("weekly", |_| Some(Run::Success), None);
    // Its first snapshot is on day 6: until then it has none, and nothing is due yet.
    out += &t.test("a weekly job: quiet", rules, &quiet((1..35 * 24).step_by(25)));

    out
}

/// A job that fails, and one that never ran.
fn failing(rules: &[String]) -> String {
    let mut out = String::new();
    // A daily job whose runs fail from day 5 on. The first failed run (day 5, 02:25) is
    // a warning at once; two missed fire times (day 6, 03:15 with the grace) make it
    // stale by 03:35, and the status CRITICAL.
    let mut t = Timeline::new(&[("db", DAILY)], 9);
    t.play("db", |day| Some(if day < 5 { Run::Success } else { Run::Failed }), None);
    let failing = || {
        let summary = "coffer job db: the last run failed (see `coffer runs db`)".to_string();
        ("CofferBackupFailing", on_job("warning", "db", &[("outcome", "failed")]), summary)
    };
    let stale_by = |n: u32| {
        let summary = format!("coffer job db missed {n} scheduled snapshots (see `coffer runs db`)");
        ("CofferBackupStale", on_job("warning", "db", &[]), summary)
    };
    let stale = stale_by(2);
    let critical = (
        "CofferStatusNotOk",
        vec![("severity", "critical"), ("job", "coffer"), ("instance", "backup:9477")],
        "coffer status is CRITICAL on backup:9477 (run `coffer status` on the host)".to_string(),
    );
    out += &t.test(
        "a job that fails from day 5",
        rules,
        &[
            (5 * 24 + 2, vec![]),
            (5 * 24 + 3, vec![failing()]),
            (6 * 24 + 3, vec![failing()]),
            (6 * 24 + 4, vec![failing(), stale, critical.clone()]),
            (8 * 24 + 12, vec![failing(), stale_by(4), critical]),
        ],
    );

    // A job the daemon never ran: after its first fire time (02:15, with the grace until
    // 03:15) it alerts, a warning.
    let mut t = Timeline::new(&[("new", DAILY)], 2);
    t.play("new", |_| None, None);
    out += &t.test(
        "a job that never ran",
        rules,
        &[
            (2, vec![]),
            (3, vec![]),
            (
                4,
                vec![(
                    "CofferNoSnapshot",
                    on_job("warning", "new", &[]),
                    "coffer job new has no snapshot, and a scheduled one is past due (see `coffer runs new`)".into(),
                )],
            ),
        ],
    );

    out
}

/// A target down for a day, a stopped daemon, a partial run, an anomalous change.
fn outages(rules: &[String]) -> String {
    let mut out = String::new();
    // Target b down for day 3 (its run is degraded): b lags one snapshot from 02:25, a
    // warning six hours on; the next day's run catches it up and the alert ends.
    let mut t = Timeline::new(&[("home", DAILY)], 6);
    t.play("home", |day| Some(if day == 3 { Run::DegradedWithoutB } else { Run::Success }), None);
    let lagging = (
        "CofferTargetLagging",
        on_job("warning", "home", &[("target", "b")]),
        "coffer job home: target b lacks the 1 newest snapshots (see `coffer status`)".to_string(),
    );
    out += &t.test(
        "a target down for a day",
        rules,
        &[(3 * 24 + 6, vec![]), (3 * 24 + 9, vec![lagging.clone()]), (4 * 24 + 1, vec![lagging]), (4 * 24 + 3, vec![])],
    );

    // The daemon stops on day 2 at 12:00: one alert, however many jobs it has.
    let mut t = Timeline::new(&[("home", DAILY), ("db", DAILY)], 4);
    t.play("home", |_| Some(Run::Success), Some(2 * 24 + 12));
    t.play("db", |_| Some(Run::Success), Some(2 * 24 + 12));
    let down = (
        "CofferDaemonDown",
        vec![("severity", "critical"), ("job", "coffer"), ("instance", "backup:9477")],
        "the coffer daemon on backup:9477 does not answer /metrics".to_string(),
    );
    out += &t.test(
        "a stopped daemon",
        rules,
        &[(2 * 24 + 11, vec![]), (2 * 24 + 13, vec![down.clone()]), (3 * 24 + 12, vec![down])],
    );

    // Day 2's run is partial (paths unreadable): a warning an hour on, until a run reads
    // everything again.
    let mut t = Timeline::new(&[("home", DAILY)], 4);
    t.play("home", |day| Some(if day == 2 { Run::Partial } else { Run::Success }), None);
    let partial = (
        "CofferBackupPartial",
        on_job("warning", "home", &[("outcome", "partial")]),
        "coffer job home: the last snapshot misses paths that could not be read (`coffer runs home` names them)"
            .to_string(),
    );
    out += &t.test(
        "a partial run",
        rules,
        &[(2 * 24 + 3, vec![]), (2 * 24 + 4, vec![partial.clone()]), (3 * 24 + 1, vec![partial]), (3 * 24 + 3, vec![])],
    );

    // Day 3's run trips the tripwire (02:25): critical at once, and the status CRITICAL
    // a quarter of an hour on, through the next day's clean run, until someone
    // acknowledges it on day 4 at 09:00.
    let mut t = Timeline::new(&[("home", DAILY)], 6);
    t.acked_at = Some(4 * 24 + 9);
    t.play("home", |day| Some(if day == 3 { Run::Suspicious } else { Run::Success }), None);
    let anomalous = (
        "CofferAnomalousChange",
        on_job("critical", "home", &[]),
        "coffer job home: anomalous change in 1 runs nobody acknowledged; restore `latest-clean` if the source was \
         attacked, then `coffer ack` (see `coffer status`)"
            .to_string(),
    );
    let critical = (
        "CofferStatusNotOk",
        vec![("severity", "critical"), ("job", "coffer"), ("instance", "backup:9477")],
        "coffer status is CRITICAL on backup:9477 (run `coffer status` on the host)".to_string(),
    );
    out += &t.test(
        "an anomalous change, acknowledged the next morning",
        rules,
        &[
            (3 * 24 + 2, vec![]),
            (3 * 24 + 3, vec![anomalous.clone(), critical.clone()]),
            (4 * 24 + 8, vec![anomalous, critical]),
            (4 * 24 + 10, vec![]),
            (5 * 24 + 12, vec![]),
        ],
    );
    out
}

#[test]
fn realistic_weeks_raise_exactly_the_alerts_they_should() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let file = deploy.join("alerts.timeline.test.yml");
    let generated = timelines();
    if std::env::var_os("COFFER_WRITE_TIMELINES").is_some() {
        std::fs::write(&file, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == generated,
        "deploy/alerts.timeline.test.yml is not what tests/alerts.rs generates; run COFFER_WRITE_TIMELINES=1 cargo test --test alerts"
    );
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else { return };
    let out = Command::new(promtool).args(["test", "rules"]).arg(&file).output().unwrap();
    assert!(out.status.success() && text(&out).contains("SUCCESS"), "{}", text(&out));
}

/// The timelines are not vacuous: the staleness rule of before (a fixed 25 hours without
/// a snapshot) fires on the weekly job's quiet weeks, and promtool says so.
#[test]
fn a_fixed_staleness_window_cries_wolf_on_a_weekly_job() {
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else { return };
    let scratch = Scratch::new("alerts-wolf");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(deploy.join("alerts.yml")).unwrap();
    let old = rules.replace(
        "expr: coffer_job_missed_fire_times >= 2",
        "expr: time() - coffer_job_last_snapshot_timestamp_seconds > 25 * 3600",
    );
    assert_ne!(old, rules);
    std::fs::write(scratch.path("alerts.yml"), old).unwrap();
    std::fs::write(scratch.path("timeline.yml"), timelines()).unwrap();
    let out = Command::new(promtool).args(["test", "rules"]).arg(scratch.path("timeline.yml")).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("CofferBackupStale") && text(&out).contains("weekly"), "{}", text(&out));
}
