//! The command line's own contract, against the real binary: a closed pipe, `-q`, usage
//! lines, errors said once and placed on their line, and inputs refused rather than
//! guessed.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

/// Runs `cmd` with standard output a pipe whose reader is already gone.
fn into_closed_pipe(cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer).stderr(Stdio::piped()).output().unwrap()
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let scratch = Scratch::new("closed-pipe");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    let setup = Setup::new("closed-pipe", Target::Dir, &src);
    setup.backup();
    let identity = setup.identity.to_str().unwrap().to_string();
    let runs: [&[&str]; 8] = [
        &["completions", "zsh"],
        &["completions", "fish"],
        &["completions", "bash"],
        &["man"],
        &["man", "restore"],
        &["snapshots"],
        &["runs", "--json"],
        &["ls", "latest", "--job", "data", "--identity", &identity],
    ];
    for args in runs {
        let out = into_closed_pipe(&mut setup.cmd(args));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.is_empty(), "coffer {}: {said}", args.join(" "));
        assert_eq!(out.status.code(), Some(141), "coffer {}", args.join(" "));
    }
}

#[test]
fn check_config_tells_its_problems_under_quiet_and_warns_of_a_missing_source() {
    let scratch = Scratch::new("check-quiet");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let setup = Setup::new("check-quiet", Target::Dir, &src);
    setup.ok(&["check-config"]);

    // A missing source directory: named, but a warning (it may be mounted by the time
    // the job fires, and the daemon must not refuse to start over it).
    std::fs::remove_dir(&src).unwrap();
    let out = setup.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(warned.contains(&format!("warning: job `data`: source directory {} does not exist", src.display())));
    let json = json_lines(&setup.ok(&["check-config", "--json"]));
    assert_eq!(json[0]["warnings"].as_array().unwrap().len(), 1, "{json:?}");

    // A problem: on stderr, so that -q (which silences the summary) still shows it.
    std::fs::remove_file(setup.dir.path("state/repo.secret")).unwrap();
    let out = setup.run(&["-q", "check-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("problem: cannot read a key file"), "{}", text(&out));
}

/// `--remote` asks the target even before `init`: a bucket that is not there is named.
#[test]
fn check_config_remote_asks_the_target_before_init() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("check-remote");
    let recipient = text(&run_ok(Command::new(BIN).args(["keygen", "-o"]).arg(scratch.path("id.txt"))));
    let recipient = recipient.lines().find(|l| l.starts_with("age1")).unwrap().to_string();
    let config = scratch.path("coffer.toml");
    let bucket = format!("never-made-{}", nanos() % 1_000_000_000);
    let job = format!("[[job]]\nname = \"data\"\nsource = {{ path = \"{}\" }}\n", scratch.0.display());
    std::fs::write(&config, config_text(&recipient, &format!("s3://{bucket}/coffer"), &job)).unwrap();
    let out = Command::new(BIN).arg("--config").arg(&config).args(["check-config", "--remote"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out);
    assert!(said.contains("run `coffer init`"), "{said}");
    assert!(said.contains("target default: ") && said.contains(&bucket), "the target was not asked: {said}");
}

#[test]
fn usage_lines_show_config_as_optional() {
    let mut commands: Vec<String> = vec![String::new()];
    commands.extend(coffer::cli::command().get_subcommands().map(|c| c.get_name().to_string()));
    for command in &commands {
        let mut c = Command::new(BIN);
        if !command.is_empty() {
            c.arg(command);
        }
        let help = text(&run_ok(c.arg("--help")));
        let usage = help.lines().find(|l| l.starts_with("Usage:")).unwrap();
        assert!(!usage.contains("--config"), "coffer {command}: {usage}");
        assert!(help.contains("-c, --config <CONFIG>"), "coffer {command} --help lacks --config");
    }
    let page = text(&run_ok(Command::new(BIN).args(["man", "backup"])));
    assert!(page.contains("[\\fB\\-c\\fR|\\fB\\-\\-config\\fR]"), "{page}");
}

/// A run that could not start says why once, in its log line at ERROR, not again as the
/// command's last word.
#[test]
fn an_error_is_said_once() {
    let scratch = Scratch::new("said-once");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let setup = Setup::new("said-once", Target::Dir, &src);
    std::fs::remove_file(setup.dir.path("state/repo.secret")).unwrap();
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(said.matches("cannot read a key file").count(), 1, "{said}");
    assert!(said.contains("ERROR"), "{said}");
}

#[test]
fn config_errors_name_their_line_inside_inline_tables_and_target() {
    let scratch = Scratch::new("config-lines");
    let config = scratch.path("coffer.toml");
    let check = |text: &str, line: usize, needle: &str| {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(BIN).arg("--config").arg(&config).arg("check-config").output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(&format!("line {line}: ")) && said.contains(needle), "expected line {line}: {said}");
    };
    let base = config_text("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p", "file:///tmp/t", "");
    // state_dir, recipients, repo_secret_file, [target], url: the next line is 6.
    check(&format!("{base}[[job]]\nname = \"a\"\nsource = {{ path = \"/srv\", colour = 1 }}\n"), 8, "colour");
    check(&format!("{base}retry_budget = \"x\"\n"), 6, "retry_budget");
    check(&format!("{base}regionx = \"eu\"\n"), 6, "regionx");
}

#[test]
fn a_bare_number_is_not_taken_for_a_percentage() {
    let out = Command::new(BIN).args(["verify", "--read-data", "--identity", "x", "--subset", "5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("write it with %"), "{}", text(&out));
    let out = Command::new(BIN).args(["verify", "--read-data", "--identity", "x", "--subset", "5%"]).output().unwrap();
    assert!(!text(&out).contains("percentage"), "{}", text(&out));
}
