//! The `--json` contract: every command that takes `--json` prints one object per line,
//! each with `"schema": 1`, and each line validates against the command's JSON Schema in
//! `docs/schema/` with a real validator (Python's `jsonschema`, Draft 2020-12).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every `--json` line a command printed, by the schema that describes it.
#[derive(Default)]
struct Printed(BTreeMap<String, Vec<Value>>);

impl Printed {
    /// Runs `cmd`, which must exit with `code`, and keeps its lines under `schema`.
    fn run(&mut self, schema: &str, cmd: &mut Command, code: i32) -> Vec<Value> {
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{schema}: {}", text(&out));
        self.keep(schema, &out)
    }

    fn keep(&mut self, schema: &str, out: &Output) -> Vec<Value> {
        let lines = json_lines(out);
        assert!(!lines.is_empty(), "{schema} printed nothing: {}", text(out));
        self.0.entry(schema.to_string()).or_default().extend(lines.iter().cloned());
        lines
    }
}

/// Every command (and `key` action) that takes `--json`, and those that do not, as the
/// command line itself declares them.
fn commands_with_json() -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut found, mut without) = (BTreeSet::new(), BTreeSet::new());
    let top = coffer::cli::command();
    let key = top.find_subcommand("key").unwrap().get_subcommands().map(|a| (format!("key-{}", a.get_name()), a));
    let others = top.get_subcommands().filter(|c| c.get_name() != "key").map(|c| (c.get_name().to_string(), c));
    for (name, command) in others.chain(key) {
        match command.get_arguments().any(|a| a.get_long() == Some("json")) {
            true => found.insert(name),
            false => without.insert(name),
        };
    }
    (found, without)
}

#[test]
fn every_commands_json_validates_against_its_schema() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("json-schema");
    let src = scratch.path("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("docs/note-{i}.txt")), format!("note {i}\n").repeat(200)).unwrap();
    }
    let setup = Setup::new("json-schema", Target::S3, &src);
    let mut printed = Printed::default();
    let identity = setup.identity.to_str().unwrap().to_string();
    let with_identity = |args: &[&str]| {
        let mut c = setup.cmd(args);
        c.args(["--identity", &identity]);
        c
    };

    let key = scratch.path("offline-2.txt");
    let made = printed.run("keygen", Command::new(BIN).args(["keygen", "--json", "-o"]).arg(&key), 0);
    let second_recipient = made[0]["recipient"].as_str().unwrap().to_string();
    printed.run("init", &mut setup.cmd(&["init", "--json"]), 0);
    printed.run("check-config", &mut setup.cmd(&["check-config", "--json", "--remote"]), 0);
    let first = printed.run("backup", &mut setup.cmd(&["backup", "data", "--json", "--no-progress"]), 0);
    std::fs::write(src.join("docs/added.txt"), "added\n").unwrap();
    printed.run("backup", &mut setup.cmd(&["backup", "data", "--json", "--no-progress"]), 0);
    printed.run("backup", &mut setup.cmd(&["backup", "data", "--json", "--dry-run"]), 0);
    printed.run("runs", &mut setup.cmd(&["runs", "--json"]), 0);
    printed.run("snapshots", &mut setup.cmd(&["snapshots", "--json"]), 0);
    printed.run("status", &mut setup.cmd(&["status", "--json"]), 0);
    printed.run("status", &mut setup.cmd(&["status", "--json", "--remote"]), 0);
    printed.run("status", Command::new(BIN).args(["--config", "/nonexistent.toml", "status", "--json"]), 3);
    printed.run("prune", &mut setup.cmd(&["prune", "--json"]), 0);
    printed.run("verify", &mut setup.cmd(&["verify", "--json"]), 0);
    printed.run("verify", &mut with_identity(&["verify", "--json", "--read-data"]), 0);
    printed.run("scrub", &mut setup.cmd(&["scrub", "--json"]), 0);
    printed.run("stats", &mut setup.cmd(&["stats", "--json"]), 0);
    let first_snapshot = first[0]["snapshot"].as_str().unwrap().to_string();
    printed.run("ls", &mut with_identity(&["ls", "--json", "--job", "data", "latest"]), 0);
    printed.run("find", &mut with_identity(&["find", "--json", "--job", "data", "*.txt"]), 0);
    printed.run("diff", &mut with_identity(&["diff", "--json", "--job", "data", &first_snapshot, "latest"]), 0);
    let mut restore = with_identity(&["restore", "--json", "--job", "data", "latest"]);
    printed.run("restore", restore.arg("--to").arg(scratch.path("restored")), 0);
    // A dry run lists what it would write as `ls` does.
    let mut dry = with_identity(&["restore", "--json", "--dry-run", "--job", "data", "latest"]);
    printed.run("ls", dry.arg("--to").arg(scratch.path("not-made")), 0);
    printed.run("key-list", &mut setup.cmd(&["key", "list", "--json"]), 0);
    printed.run("key-add", &mut setup.cmd(&["key", "add", &second_recipient, "--json"]), 0);
    printed.run("key-remove", &mut setup.cmd(&["key", "remove", &second_recipient, "--json"]), 0);

    // A run the tripwire found suspicious (the verdict forged in the catalog), acknowledged.
    let run = printed.0["runs"][0]["run"].as_i64().unwrap();
    setup
        .catalog()
        .execute("UPDATE tripwire_runs SET verdict = 'suspicious', signals = '[]' WHERE run = ?1", [run])
        .unwrap();
    printed.run("ack", &mut setup.cmd(&["ack", "data", &run.to_string(), "--reason", "a test", "--json"]), 0);

    // A bare machine: the catalog rebuilt from the target alone (the same config in
    // another directory: its relative state directory is a new one).
    let bare = scratch.path("bare.toml");
    std::fs::copy(&setup.config, &bare).unwrap();
    let mut recover = Command::new(BIN);
    recover.arg("--config").arg(&bare).args(["recover", "--json", "--identity", &identity]);
    printed.run("recover", &mut recover, 0);

    let covered: BTreeSet<String> = printed.0.keys().cloned().collect();
    let (with_json, without) = commands_with_json();
    assert_eq!(covered, with_json, "commands with --json and the ones validated here differ");
    // The others print data (dump, completions, man), a log (daemon) or nothing on
    // standard output (mount): none prints a summary without a JSON form.
    let data: BTreeSet<String> = ["completions", "daemon", "dump", "man", "mount"].map(String::from).into();
    assert_eq!(without, data, "a command without --json");
    validate(&scratch, &printed);
}

/// Validates each kept line against `docs/schema/NAME.json` with Python's jsonschema.
fn validate(scratch: &Scratch, printed: &Printed) {
    let lines = scratch.path("lines.json");
    std::fs::write(&lines, serde_json::to_vec(&printed.0).unwrap()).unwrap();
    let script = r#"
import json, sys, pathlib
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
printed = json.load(open(sys.argv[1]))
schemas = {f.name: json.load(open(f)) for f in pathlib.Path(sys.argv[2]).glob("*.json")}
registry = Registry().with_resources((name, Resource.from_contents(s)) for name, s in schemas.items())
failed = 0
for name, lines in sorted(printed.items()):
    schema = schemas[f"{name}.json"]
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, registry=registry)
    for line in lines:
        for e in validator.iter_errors(line):
            failed += 1
            print(f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    # Not vacuous: a line without its schema version is refused.
    if validator.is_valid({k: v for k, v in lines[0].items() if k != "schema"}):
        failed += 1
        print(f"{name}: the schema accepts a line without \"schema\"")
    print(f"{name}: {len(lines)} lines checked")
sys.exit(1 if failed else 0)
"#;
    let out = Command::new("python3").args(["-c", script]).arg(&lines).arg(repo("docs/schema")).output().unwrap();
    eprintln!("{}", text(&out));
    assert!(out.status.success(), "--json output that its schema refuses:\n{}", text(&out));
}
