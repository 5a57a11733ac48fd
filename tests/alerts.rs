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
