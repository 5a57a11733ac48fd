//! `coffer check-config` and the daemon's preflight, on the broken setups an operator
//! meets: each problem is named with its cause (owner and mode, the variable to set),
//! and the daemon refuses to start on any.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn check(setup: &Setup) -> Output {
    setup.run(&["check-config"])
}

fn problems(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "expected problems: {}", text(out));
    text(out)
}

fn source(scratch: &Scratch) -> std::path::PathBuf {
    random_parts(scratch, 3, 2)
}

#[test]
fn a_sound_setup_passes_and_each_broken_one_is_named() {
    let scratch = Scratch::new("checkcfg");
    let setup = Setup::new("checkcfg", Target::Dir, &source(&scratch));
    let out = check(&setup);
    assert!(out.status.success() && text(&out).contains("no problem found"), "{}", text(&out));

    // The restorer's identity beside the config.
    let beside = setup.config.parent().unwrap().join("identity-copy.txt");
    std::fs::copy(&setup.identity, &beside).unwrap();
    let p = problems(&check(&setup));
    assert!(p.contains("identity-copy.txt") && p.contains("offline"), "{p}");
    // The daemon refuses to start, saying why.
    let d = setup.run(&["daemon"]);
    assert_eq!(d.status.code(), Some(1));
    assert!(text(&d).contains("does not start") && text(&d).contains("identity-copy.txt"), "{}", text(&d));
    // Under --log-format json, so is every line of it, the fatal one too.
    let d = setup.run(&["--log-format", "json", "daemon"]);
    assert_eq!(d.status.code(), Some(1));
    let stderr = String::from_utf8(d.stderr).unwrap();
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR" && l["message"].as_str().unwrap().contains("identity-copy.txt")),
        "{stderr}"
    );
    // Under systemd (JOURNAL_STREAM set), each line carries its syslog priority.
    let d = setup.cmd(&["daemon"]).env("JOURNAL_STREAM", "8:12345").output().unwrap();
    let stderr = String::from_utf8(d.stderr).unwrap();
    assert!(stderr.starts_with("<3>error: the daemon does not start"), "{stderr}");
    assert!(stderr.lines().all(|l| l.starts_with("<3>")), "a line without its priority: {stderr}");
    std::fs::remove_file(&beside).unwrap();

    // A repository secret others can read.
    let secret = setup.dir.path("state/repo.secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(problems(&check(&setup)).contains("chmod 600"));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A state directory others can read.
    let state = setup.dir.path("state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(problems(&check(&setup)).contains("chmod 700"));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(check(&setup).status.success());
}

#[test]
fn missing_credentials_programs_and_hooks_are_named() {
    let extra = "on_failure = [\"/nonexistent/notify\"]\n";
    let setup = Setup::with_source(
        "checkcfg-creds",
        Target::Dir,
        "{ bucket = \"s3://b/p\", access_key_id_env = \"COFFER_T_KEY\", secret_access_key_env = \"COFFER_T_SECRET\" }",
        extra,
    );
    let p = problems(
        &setup.cmd(&["check-config"]).env_remove("COFFER_T_KEY").env("COFFER_T_SECRET", "x").output().unwrap(),
    );
    assert!(p.contains("COFFER_T_KEY") && !p.contains("COFFER_T_SECRET"), "{p}");
    assert!(p.contains("/nonexistent/notify"), "{p}");

    let config = std::fs::read_to_string(&setup.config).unwrap();
    let dump = config.replace(
        &config[config.find("source = ").unwrap()..config.find("on_failure").unwrap()],
        "source = { command = [\"no-such-dump-tool\", \"app\"], file = \"app.dump\" }\n",
    );
    std::fs::write(&setup.config, dump).unwrap();
    assert!(problems(&check(&setup)).contains("no-such-dump-tool"));
}

#[test]
fn an_s3_target_without_credentials_fails_at_once_naming_the_variables() {
    let scratch = Scratch::new("checkcfg-s3");
    let setup = Setup::new("checkcfg-s3", Target::Dir, &source(&scratch));
    // The same repository's config, pointed at an S3 target on a port nobody serves.
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let s3 = config
        .replace(&setup.target_url, "s3://nobucket/x")
        .replace("[target]\n", "[target]\nendpoint = \"http://127.0.0.1:9\"\n");
    let s3_config = setup.dir.path("s3.toml");
    std::fs::write(&s3_config, s3).unwrap();
    let bare = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&s3_config).args(args);
        for v in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_PROFILE"]
        {
            c.env_remove(v);
        }
        c
    };
    let p = problems(&bare(&["check-config"]).output().unwrap());
    assert!(p.contains("AWS_ACCESS_KEY_ID") && p.contains("instance_role"), "{p}");
    // A command that needs the target says the same within two seconds, instead of
    // asking the instance metadata endpoint for half a minute.
    let dir = setup.dir.path("fresh-state");
    let fresh = std::fs::read_to_string(&s3_config)
        .unwrap()
        .replace("state_dir = \"state\"", &format!("state_dir = \"{}\"", dir.display()));
    std::fs::write(&s3_config, fresh).unwrap();
    let started = Instant::now();
    let out = bare(&["init"]).output().unwrap();
    let took = started.elapsed();
    assert!(!out.status.success());
    assert!(text(&out).contains("AWS_ACCESS_KEY_ID"), "{}", text(&out));
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn another_user_is_told_whose_files_these_are_not_to_run_init() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: needs root and setpriv (util-linux) to run coffer as another user");
        return;
    }
    let scratch = Scratch::new("checkcfg-owner");
    let setup = Setup::new("checkcfg-owner", Target::Dir, &source(&scratch));
    // The config and the scratch directory are readable by the other user; the state
    // directory (0700, root's) is not.
    for dir in [setup.dir.0.as_path(), setup.config.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&setup.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "--config"]).arg(&setup.config).args(args);
        c.output().unwrap()
    };
    let p = problems(&as_nobody(&["check-config"]));
    assert!(p.contains("owned by uid 0") && p.contains("runs as uid 65534"), "{p}");
    assert!(!p.contains("run `coffer init`"), "{p}");
    let out = as_nobody(&["snapshots"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("uid 0") && !text(&out).contains("coffer init"), "{}", text(&out));
}

#[test]
fn remote_asks_the_target_for_the_repository_and_its_lock_configuration() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("checkcfg-remote");
    let setup = Setup::new("checkcfg-remote", Target::S3, &source(&scratch));
    let out = run_ok(&mut setup.cmd(&["check-config", "--remote"]));
    assert!(text(&out).contains("(answering)"), "{}", text(&out));
    // Another prefix of the same bucket holds no repository: the catalog's own check
    // names the mismatch before the target is asked.
    let config = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, config.replace("/coffer\"", "/elsewhere\"")).unwrap();
    let p = problems(&setup.run(&["check-config", "--remote"]));
    assert!(p.contains("elsewhere"), "{p}");
}
