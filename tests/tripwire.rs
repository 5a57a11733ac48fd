//! The tripwire's evaluation: attacks on a real tree (the Rust toolchain's books, and the
//! sources of crates coffer builds with), and benign changes that must not trip, each
//! after a baseline of ordinary days. Made by `tests/tripwire_cases.py` with real tools
//! (AES-CTR, git, cargo, gzip, tar), seeded. Prints the table the README quotes:
//!
//!     cargo test --release --test tripwire -- --nocapture

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Runs in the baseline (the default `tripwire.history`).
const HISTORY: usize = 5;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Attack,
    Benign,
}

/// Each case: its name (as `tripwire_cases.py` knows it), what it is, and how many runs
/// the change takes (the slow attack spreads over several).
const CASES: &[(&str, Kind, usize, &str)] = &[
    ("aes-full", Kind::Attack, 1, "every file AES-encrypted in place"),
    ("aes-rename", Kind::Attack, 1, "every file encrypted and renamed to `.locked`"),
    ("aes-partial", Kind::Attack, 1, "the first 4 KiB of every file encrypted"),
    ("aes-intermittent", Kind::Attack, 1, "every other 64 KiB of every file encrypted"),
    ("aes-base64", Kind::Attack, 1, "every file encrypted, then Base64-encoded"),
    ("delete-60", Kind::Attack, 1, "60 % of the files deleted"),
    ("slow-5", Kind::Attack, 3, "5 % of the files encrypted per run"),
    ("cargo-build", Kind::Benign, 1, "`cargo build` of a new crate in the tree"),
    ("git-gc", Kind::Benign, 1, "`git gc` of a repository of 1,500 files in two commits"),
    ("package-upgrade", Kind::Benign, 1, "80 executables replaced by others"),
    ("log-rotate", Kind::Benign, 1, "150 logs rotated, gzip-compressed"),
    ("db-dump", Kind::Benign, 1, "20 table dumps rewritten, 3 % of rows changed"),
    ("photo-import", Kind::Benign, 1, "200 new JPEG photos"),
    ("tarball", Kind::Benign, 1, "a directory replaced by its .tar.gz"),
    ("rm-build", Kind::Benign, 1, "`rm -rf` of a build folder of 2,400 files"),
];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tripwire_cases.py")
}

fn py(args: &[&str], tree: &Path) {
    let out = Command::new("python3").arg(script()).args(args).arg(tree).output().unwrap();
    assert!(out.status.success(), "tripwire_cases.py {args:?}: {}", text(&out));
}

fn cp(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// A real tree of a few thousand files: the toolchain's books (HTML, JavaScript, fonts,
/// images), where installed, and the sources of crates from cargo's registry.
fn base_tree(scratch: &Scratch) -> PathBuf {
    let base = scratch.path("base");
    std::fs::create_dir_all(&base).unwrap();
    let sysroot = String::from_utf8(run_ok(Command::new("rustc").args(["--print", "sysroot"])).stdout).unwrap();
    let docs = Path::new(sysroot.trim()).join("share/doc/rust/html");
    for book in ["book", "reference", "nomicon", "edition-guide", "cargo", "rustdoc", "style-guide"] {
        if docs.join(book).is_dir() {
            cp(&docs.join(book), &base.join(book));
        }
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let mut crates: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
        .into_iter()
        .flatten()
        .flat_map(|index| std::fs::read_dir(index.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    crates.sort();
    std::fs::create_dir_all(base.join("crates")).unwrap();
    let mut files = 0;
    for c in crates {
        let n = walk_count(&c);
        if files + n > 1600 {
            continue;
        }
        files += n;
        cp(&c, &base.join("crates").join(c.file_name().unwrap()));
    }
    base
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk_count(&e.path()),
                    Ok(t) if t.is_file() => 1,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// One backup: its outcome, the exit code, and the tripwire's report.
fn backup(setup: &Setup) -> (String, i32, serde_json::Value) {
    let out = setup.run(&["backup", "data", "--no-progress", "--json"]);
    let code = out.status.code().unwrap_or(-1);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("backup --json: {e}: {}", text(&out)));
    let outcome = json["outcome"].as_str().unwrap().to_string();
    (outcome, code, json["tripwire"].clone())
}

struct Row {
    case: &'static str,
    kind: Kind,
    what: &'static str,
    files: u64,
    /// Per run of the change: the verdict and the signals that fired.
    runs: Vec<(String, Vec<String>)>,
}

fn run_case(base: &Path, case: &'static str, kind: Kind, steps: usize, what: &'static str) -> Row {
    let scratch = Scratch::new(&format!("tripwire-{case}"));
    let src = scratch.path("src");
    cp(base, &src);
    py(&["prepare", case], &src);
    let setup = Setup::new(&format!("tw-{case}"), Target::Dir, &src);
    let (_, _, first) = backup(&setup);
    assert_eq!(first["verdict"], "first", "{first}");
    for day in 0..HISTORY {
        py(&["churn", &day.to_string()], &src);
        let (outcome, _, t) = backup(&setup);
        assert_eq!(outcome, "success", "an ordinary day of {case}: {t}");
    }
    let mut runs = Vec::new();
    let mut files = 0;
    for step in 0..steps {
        py(&["change", case, &step.to_string()], &src);
        let (outcome, code, t) = backup(&setup);
        let verdict = t["verdict"].as_str().unwrap().to_string();
        assert_eq!(outcome == "suspicious", verdict == "suspicious", "{t}");
        assert_eq!(code == 6, verdict == "suspicious", "exit code {code} for {t}");
        let signals = t["signals"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string());
        files = t["measures"]["previous"].as_u64().unwrap();
        runs.push((verdict, signals.collect()));
    }
    Row { case, kind, what, files, runs }
}

#[test]
fn attacks_trip_and_ordinary_changes_do_not() {
    if tool("python3", "python3 and pip install cryptography").is_none() {
        return;
    }
    let scratch = Scratch::new("tripwire-eval");
    let base = base_tree(&scratch);
    let rows: Vec<Row> =
        CASES.iter().map(|&(case, kind, steps, what)| run_case(&base, case, kind, steps, what)).collect();

    println!("\n| case | change | files | verdict per run | signals |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &rows {
        let verdicts: Vec<&str> = r.runs.iter().map(|(v, _)| v.as_str()).collect();
        let signals: Vec<String> = r.runs.iter().map(|(_, s)| s.join(", ")).filter(|s| !s.is_empty()).collect();
        let kind = if r.kind == Kind::Attack { "attack" } else { "benign" };
        println!(
            "| {} ({kind}) | {} | {} | {} | {} |",
            r.case,
            r.what,
            r.files,
            verdicts.join(", "),
            signals.join(" / ")
        );
    }
    let detected = |r: &Row| r.runs.iter().any(|(v, _)| v == "suspicious");
    let attacks: Vec<&Row> = rows.iter().filter(|r| r.kind == Kind::Attack).collect();
    let benign: Vec<&Row> = rows.iter().filter(|r| r.kind == Kind::Benign).collect();
    println!(
        "\nattacks detected: {} of {}; false alarms: {} of {} benign changes",
        attacks.iter().filter(|r| detected(r)).count(),
        attacks.len(),
        benign.iter().filter(|r| detected(r)).count(),
        benign.len()
    );
    for r in &attacks {
        // A fast attack is caught by the run that stores it; the slow one within its runs.
        let caught = if r.runs.len() == 1 { r.runs[0].0 == "suspicious" } else { detected(r) };
        assert!(caught, "{} was not detected: {:?}", r.case, r.runs);
    }
    for r in &benign {
        assert!(!detected(r), "{} tripped: {:?}", r.case, r.runs);
    }
}

/// A tree of `n` small text files in a few directories, and a spreadsheet-named canary.
fn text_tree(dir: &Path, n: usize) -> PathBuf {
    let mut rng = Rng(7);
    let words = ["chunk", "lock", "restore", "snapshot", "target", "retain", "job", "fn", "let", "match"];
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 12));
        std::fs::create_dir_all(&sub).unwrap();
        let text: Vec<&str> = (0..200 + rng.below(600)).map(|_| words[rng.below(10) as usize]).collect();
        std::fs::write(sub.join(format!("f{i}.txt")), text.join(" ")).unwrap();
    }
    let canary = dir.join("finance/budget-2027.txt");
    std::fs::create_dir_all(canary.parent().unwrap()).unwrap();
    std::fs::write(&canary, "a file nobody edits: any change to it is a sign\n".repeat(40)).unwrap();
    canary
}

/// An ordinary day: a few files appended to.
fn edit(dir: &Path, day: usize) {
    for k in 0..3 {
        let i = (day * 12 + k * 13) % 300;
        let f = dir.join(format!("d{}/f{i}.txt", i % 12));
        assert!(f.exists(), "{}", f.display());
        let mut text = std::fs::read(&f).unwrap_or_default();
        text.extend_from_slice(format!(" day {day} edit {k}").as_bytes());
        std::fs::write(&f, text).unwrap();
    }
}

#[test]
fn a_trip_holds_the_clean_snapshots_freezes_prune_and_waits_for_ack() {
    let scratch = Scratch::new("tripwire-trip");
    let src = scratch.path("src");
    let canary = text_tree(&src, 300);
    let heard = scratch.path("hook.txt");
    let extra = format!(
        "on_failure = [\"/bin/sh\", \"-c\", \"echo $COFFER_OUTCOME >> {}\"]\ntripwire = {{ canaries = [\"{}\"], hold_days = 90 }}\n",
        heard.display(),
        canary.display()
    );
    let on_s3 = s3_available();
    let setup = Setup::with_extra("tw-trip", if on_s3 { Target::S3 } else { Target::Dir }, &src, &extra);
    let (_, _, t) = backup(&setup);
    assert_eq!(t["verdict"], "first", "{t}");
    // Fewer judged runs than `history` (5): measured, not judged.
    for day in 0..HISTORY {
        edit(&src, day);
        let (outcome, _, t) = backup(&setup);
        assert_eq!((outcome.as_str(), t["verdict"].as_str()), ("success", Some("not-enough-history")), "{t}");
        assert_eq!(t["history"], day, "{t}");
    }
    edit(&src, 9);
    let (_, _, t) = backup(&setup);
    assert_eq!(t["verdict"], "clean", "a judged ordinary day: {t}");
    let clean = scratch.path("clean");
    cp(&src, &clean);

    py(&["change", "aes-full", "0"], &src);
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(text(&out).contains("ANOMALOUS CHANGE"), "{}", text(&out));
    assert!(text(&out).contains("ERROR"), "logged at ERROR: {}", text(&out));
    let runs = json_lines(&setup.ok(&["runs", "data", "--json"]));
    let tripped = &runs[0];
    assert_eq!(tripped["outcome"], "suspicious", "{tripped}");
    let error = tripped["error"].as_str().unwrap();
    assert!(error.starts_with("anomalous change: ") && error.contains("canary"), "{error}");
    assert!(error.contains("held until"), "{error}");
    assert_eq!(std::fs::read_to_string(&heard).unwrap().trim(), "suspicious", "the on_failure hook heard of it");

    // The snapshot is stored and marked; the three clean ones before it are held.
    let snaps = setup.snapshots();
    let marked: Vec<bool> = snaps.iter().map(|s| s["suspicious"].as_bool().unwrap()).collect();
    assert_eq!(marked.iter().filter(|m| **m).count(), 1, "{marked:?}");
    assert!(*marked.last().unwrap());
    let held_until = now() + 89 * 86_400;
    let held: Vec<&serde_json::Value> = snaps[snaps.len() - 4..snaps.len() - 1].iter().collect();
    for s in &held {
        assert!(s["retain_until"].as_i64().unwrap() > held_until, "held in the catalog: {s}");
    }
    assert!(snaps[0]["retain_until"].as_i64().unwrap() < held_until, "older ones are not: {}", snaps[0]);
    if on_s3 {
        assert_held_on_the_server(&setup, &held, held_until);
    }

    // Monitoring: CRITICAL, naming the run and what to do.
    let status = setup.run(&["status"]);
    assert_eq!(status.status.code(), Some(2), "{}", text(&status));
    let run = tripped["run"].as_i64().unwrap().to_string();
    assert!(text(&status).contains(&format!("anomalous change in run {run}")), "{}", text(&status));
    assert!(text(&status).contains(&format!("coffer ack data {run}")), "{}", text(&status));
    let prune: serde_json::Value = serde_json::from_slice(&setup.ok(&["prune", "--json"]).stdout).unwrap();
    assert_eq!(prune["frozen"], serde_json::json!(["data"]), "{prune}");

    // The restore that matters: the newest clean snapshot, byte for byte.
    let restored = scratch.path("restored");
    let r = setup.restore("latest-clean", &restored);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&clean, &restored);

    // Acknowledged once, with a reason: the status no longer names it, prune thaws.
    let wrong = setup.run(&["ack", "data", "1", "--reason", "x"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong).contains("not judged") || text(&wrong).contains("not suspicious"), "{}", text(&wrong));
    setup.ok(&["ack", "data", &run, "--reason", "an attack: restored latest-clean"]);
    let again = setup.run(&["ack", "data", &run, "--reason", "twice"]);
    assert!(!again.status.success() && text(&again).contains("acknowledged already"), "{}", text(&again));
    let status = setup.run(&["status"]);
    assert!(!text(&status).contains("anomalous change"), "{}", text(&status));
    let prune: serde_json::Value = serde_json::from_slice(&setup.ok(&["prune", "--json"]).stdout).unwrap();
    assert_eq!(prune["frozen"], serde_json::json!([]), "{prune}");
    // Not a false alarm: its snapshot stays marked, and latest-clean still passes it over.
    assert!(setup.snapshots().last().unwrap()["suspicious"].as_bool().unwrap());
}

/// The server's word: each held snapshot's record, and every pack they need, is locked
/// past `until`.
fn assert_held_on_the_server(setup: &Setup, held: &[&serde_json::Value], until: i64) {
    let locks = setup.s3_inspect("locks", &[]);
    for s in held {
        let id = s["snapshot"].as_str().unwrap();
        let lock = locks.iter().find(|l| l["key"].as_str().unwrap().contains(id)).unwrap();
        assert!(lock["until"].as_i64().unwrap() > until, "{lock}");
    }
    let db = setup.catalog();
    let mut st = db
        .prepare(
            "SELECT DISTINCT p.hash FROM snapshot_packs sp JOIN snapshots s ON s.seq = sp.snapshot
             JOIN packs p ON p.id = sp.pack WHERE s.id IN (?1, ?2, ?3)",
        )
        .unwrap();
    let ids: Vec<&str> = held.iter().map(|s| s["snapshot"].as_str().unwrap()).collect();
    let needed: Vec<String> =
        st.query_map([ids[0], ids[1], ids[2]], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert!(!needed.is_empty());
    for hash in &needed {
        let lock = locks.iter().find(|l| l["key"].as_str().unwrap().ends_with(hash.as_str())).unwrap();
        assert!(lock["until"].as_i64().unwrap() > until, "{lock}");
    }
}

#[test]
fn forged_tripwire_rows_give_clear_errors_never_a_panic() {
    let scratch = Scratch::new("tripwire-forged");
    let src = scratch.path("src");
    text_tree(&src, 300);
    let setup = Setup::with_extra("tw-forged", Target::Dir, &src, "tripwire = { history = 2 }\n");
    for day in 0..4 {
        edit(&src, day);
        setup.backup();
    }
    let db = setup.catalog();
    // Traits out of every range: read as unknown, or as some traits.
    assert!(db.execute("UPDATE file_cache SET traits = -5", []).unwrap() > 0);
    db.execute("UPDATE file_cache SET traits = 9223372036854775807 WHERE path LIKE '%3.txt'", []).unwrap();
    db.execute("UPDATE file_cache SET traits = 65535 WHERE path LIKE '%5.txt'", []).unwrap();
    edit(&src, 5);
    let (outcome, _, t) = backup(&setup);
    assert_eq!((outcome.as_str(), t["verdict"].as_str()), ("success", Some("clean")), "{t}");

    // A baseline row that does not parse: the snapshot is stored, the run says why it
    // was not judged, at ERROR.
    let newest: i64 = db.query_row("SELECT max(run) FROM tripwire_runs", [], |r| r.get(0)).unwrap();
    db.execute("UPDATE tripwire_runs SET measures = '{\"files\": \"lots\"}' WHERE run = ?1", [newest]).unwrap();
    edit(&src, 6);
    let out = setup.run(&["backup", "data", "--no-progress", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = json["tripwire_error"].as_str().unwrap();
    assert!(error.contains(&format!("baseline row of run {newest} in the catalog is unreadable")), "{error}");
    assert!(text(&out).contains("ERROR") && text(&out).contains("could not judge"), "{}", text(&out));
    assert_eq!(setup.snapshots().len(), 6);

    // A suspicious row whose signals do not read: CRITICAL all the same, and it can be
    // acknowledged.
    db.execute("UPDATE tripwire_runs SET measures = '{}' WHERE run = ?1", [newest]).unwrap();
    db.execute("UPDATE tripwire_runs SET verdict = 'suspicious', signals = 'not json' WHERE run = ?1", [newest])
        .unwrap();
    let status = setup.run(&["status"]);
    assert_eq!(status.status.code(), Some(2), "{}", text(&status));
    assert!(text(&status).contains("(the recorded signals do not read)"), "{}", text(&status));
    setup.ok(&["ack", "data", &newest.to_string(), "--reason", "forged in a test", "--false-alarm"]);
    assert!(!text(&setup.run(&["status"])).contains("anomalous"));
}

#[test]
fn canaries_are_files_inside_the_source() {
    let scratch = Scratch::new("tripwire-canaries");
    let src = scratch.path("src");
    text_tree(&src, 3);
    let setup = Setup::new("tw-canaries", Target::Dir, &src);
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let inside = format!("{}/d0/f0.txt", src.display());
    let missing = format!("{}/d0/nothing.txt", src.display());
    let dotdot = format!("{}/../outside.txt", src.display());
    let cases = [
        (inside.as_str(), true),
        (missing.as_str(), false),
        ("/etc/passwd", false),
        ("d0/f0.txt", false),
        (dotdot.as_str(), false),
    ];
    for (canary, ok) in cases {
        let with = config.replace(
            "[[job]]\nname = \"data\"\n",
            &format!("[[job]]\nname = \"data\"\ntripwire = {{ canaries = [\"{canary}\"] }}\n"),
        );
        assert_ne!(with, config);
        std::fs::write(&setup.config, with).unwrap();
        let out = setup.run(&["check-config"]);
        assert_eq!(out.status.success(), ok, "{canary}: {}", text(&out));
        let why = match canary == missing {
            true => "is not a regular file (it must exist, and never change)",
            false => "job[0].tripwire.canaries[0]",
        };
        assert_eq!(text(&out).contains(why), !ok, "{}", text(&out));
    }
}
