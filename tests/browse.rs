//! Looking inside snapshots: `ls`, `find`, `diff` and `dump` against the real binary.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn browse(setup: &Setup, args: &[&str]) -> Output {
    let mut c = setup.cmd(args);
    c.arg("--identity").arg(&setup.identity);
    c.output().unwrap()
}

fn ok(setup: &Setup, args: &[&str]) -> Output {
    let out = browse(setup, args);
    assert!(out.status.success(), "coffer {}: {}", args.join(" "), text(&out));
    out
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Path → (kind, mode, content hash) of a tree, as tar carries it (mtimes to the second
/// only, so they are left out).
fn contents(root: &Path) -> BTreeMap<String, String> {
    described_tree(root, false).into_iter().map(|(k, v)| (k.to_string_lossy().into_owned(), v)).collect()
}

#[test]
fn ls_find_diff_and_dump_show_what_snapshots_hold() {
    let scratch = Scratch::new("browse");
    let src = scratch.path("src");
    std::fs::create_dir_all(src.join("etc/nginx")).unwrap();
    std::fs::create_dir_all(src.join("srv")).unwrap();
    std::fs::write(src.join("etc/nginx/nginx.conf"), "worker_processes 2;\n").unwrap();
    std::fs::write(src.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(src.join("srv/big.bin"), Rng(3).mixed(3 << 20)).unwrap();
    std::fs::write(src.join("srv/old.txt"), "to be removed\n").unwrap();
    std::fs::write(src.join("srv/mode.txt"), "chmod me\n").unwrap();
    std::os::unix::fs::symlink("nginx/nginx.conf", src.join("etc/conf")).unwrap();
    // A name a forger (or a user) could choose to drive a terminal: ESC [2J clears it.
    std::fs::write(src.join("srv/\x1b[2Jclear"), "x").unwrap();
    let setup = Setup::new("browse", Target::Dir, &src);
    setup.backup();
    let first = setup.snapshots()[0]["snapshot"].as_str().unwrap().to_string();

    // ls --json: every path of the tree, each once, with kinds and sizes.
    let listed = lines(&ok(&setup, &["ls", &first, "--json"]));
    let mut paths: Vec<&str> = listed.iter().map(|e| e["path"].as_str().unwrap()).collect();
    paths.sort();
    let mut expected: Vec<String> = contents(&src).into_keys().collect();
    expected.sort();
    assert_eq!(paths, expected);
    let big = listed.iter().find(|e| e["path"] == "srv/big.bin").unwrap();
    assert_eq!((big["kind"].as_str(), big["size"].as_u64()), (Some("file"), Some(3 << 20)));
    let link = listed.iter().find(|e| e["path"] == "etc/conf").unwrap();
    assert_eq!((link["kind"].as_str(), link["link"].as_str()), (Some("symlink"), Some("nginx/nginx.conf")));
    // A path with or without the source root; --long; the hostile name escaped.
    let under = format!("{}/etc", src.display());
    let long = text(&ok(&setup, &["ls", &first, &under, "--long"]));
    assert!(long.contains("rw-r--r--") && long.contains("etc/nginx/nginx.conf"), "{long}");
    assert!(!long.contains("srv/"), "{long}");
    let plain = ok(&setup, &["ls", &first, "srv"]);
    assert!(!plain.stdout.contains(&0x1b), "a raw ESC reached the terminal");
    assert!(text(&plain).contains("srv/\\u{1b}[2Jclear"), "{}", text(&plain));
    let missing = browse(&setup, &["ls", &first, "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("no path `nope`"), "{}", text(&missing));

    // Known changes, then a second snapshot.
    std::fs::write(src.join("etc/nginx/nginx.conf"), "worker_processes 4;\n").unwrap();
    std::fs::remove_file(src.join("srv/old.txt")).unwrap();
    std::fs::set_permissions(src.join("srv/mode.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(src.join("srv/new.conf"), "listen 80;\n").unwrap();
    setup.backup();
    let second = setup.snapshots()[1]["snapshot"].as_str().unwrap().to_string();

    let changes = lines(&ok(&setup, &["diff", &first, &second, "--json"]));
    let found: Vec<(String, String)> = changes
        .iter()
        .map(|d| (d["path"].as_str().unwrap().to_string(), d["change"].as_str().unwrap().to_string()))
        .collect();
    let want = [
        ("etc/nginx/nginx.conf", "modified"), // new content, same size
        ("srv", "metadata"),                  // a file added and one removed
        ("srv/mode.txt", "metadata"),         // chmod only
        ("srv/new.conf", "added"),
        ("srv/old.txt", "removed"),
    ];
    assert_eq!(found, want.map(|(p, c)| (p.to_string(), c.to_string())));
    let conf = changes.iter().find(|d| d["path"] == "etc/nginx/nginx.conf").unwrap();
    assert_eq!((conf["size_before"].as_u64(), conf["size_after"].as_u64()), (Some(20), Some(20)));
    let human = text(&ok(&setup, &["diff", &first, &second]));
    assert!(human.contains("1 added, 1 removed, 1 modified, 2 with new metadata"), "{human}");

    // find: a glob on the name, across both snapshots, newest first.
    let hits = lines(&ok(&setup, &["find", "*.conf", "--json"]));
    let found: Vec<(&str, &str)> =
        hits.iter().map(|h| (h["snapshot"].as_str().unwrap(), h["path"].as_str().unwrap())).collect();
    assert_eq!(
        found,
        [
            (second.as_str(), "etc/nginx/nginx.conf"),
            (second.as_str(), "srv/new.conf"),
            (first.as_str(), "etc/nginx/nginx.conf")
        ]
    );
    let one = lines(&ok(&setup, &["find", "etc/**", "--snapshot", &first, "--json"]));
    assert_eq!(one.len(), 4, "{one:?}");

    // dump: a file byte for byte; a directory as a tar stream that `tar` extracts.
    let dumped = ok(&setup, &["dump", "latest", "--job", "data", "srv/big.bin"]);
    assert_eq!(dumped.stdout, std::fs::read(src.join("srv/big.bin")).unwrap());
    let tarball = ok(&setup, &["dump", "latest", "--job", "data", &format!("{}/srv", src.display())]);
    let out = scratch.path("untar");
    std::fs::create_dir_all(&out).unwrap();
    let untar = piped(Command::new("tar").args(["-xpf", "-", "-C"]).arg(&out), &tarball.stdout);
    assert!(untar.status.success(), "{}", text(&untar));
    assert_eq!(contents(&out.join("srv")), contents(&src.join("srv")));
    let whole = ok(&setup, &["dump", &second, "/"]);
    assert!(whole.stdout.len() > 3 << 20, "the whole snapshot as tar");

    restores_what_include_exclude_and_path_select(&setup, &scratch, &src);
}

/// restore --include/--exclude (repeatable), paths with or without the source root.
fn restores_what_include_exclude_and_path_select(setup: &Setup, scratch: &Scratch, src: &Path) {
    let restore = |to: &Path, args: &[&str]| {
        let mut c = setup.cmd(&["restore", "latest", "--job", "data", "--no-progress", "--to"]);
        c.arg(to).args(args);
        ok_restore(setup, c)
    };
    let confs = scratch.path("confs");
    restore(&confs, &["--include", "*.conf", "--exclude", "srv/**"]);
    assert_eq!(contents(&confs).into_keys().collect::<Vec<_>>(), ["etc", "etc/nginx", "etc/nginx/nginx.conf"]);
    let srv = scratch.path("srv-no-bin");
    let abs = format!("{}/srv", src.display());
    restore(&srv, &["--path", &abs, "--path", "etc/hosts", "--exclude", "*.bin"]);
    let mut want: Vec<String> = contents(&src.join("srv")).into_keys().map(|k| format!("srv/{k}")).collect();
    want.retain(|k| !k.ends_with(".bin"));
    want.extend(["etc".to_string(), "etc/hosts".to_string(), "srv".to_string()]);
    want.sort();
    assert_eq!(contents(&srv).into_keys().collect::<Vec<_>>(), want);

    // --dry-run lists what that restore wrote, and writes nothing, not even the directory.
    let untouched = scratch.path("dry-run");
    let listed =
        restore(&untouched, &["--path", &abs, "--path", "etc/hosts", "--exclude", "*.bin", "--dry-run", "--json"]);
    let mut paths: Vec<String> = json_lines(&listed).iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    paths.sort();
    assert_eq!(paths, want);
    assert!(!untouched.exists(), "a dry run made {}", untouched.display());
    let told = text(&restore(&untouched, &["--path", "etc/hosts", "--dry-run"]));
    assert!(told.contains("would restore snapshot") && told.contains("nothing written"), "{told}");
    // It fails where the restore would: into a directory that is not empty.
    let mut into_full = setup.cmd(&["restore", "latest", "--job", "data", "--dry-run", "--to"]);
    into_full.arg(&srv).arg("--identity").arg(&setup.identity);
    let out = into_full.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is not empty"), "{}", text(&out));
}

fn ok_restore(setup: &Setup, mut c: Command) -> Output {
    c.arg("--identity").arg(&setup.identity);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    let out = run_ok(Command::new(BIN).args(["completions", "bash"]));
    let script = String::from_utf8(out.stdout).unwrap();
    // bash loads it, registers it for `coffer`, and offers the verbs.
    let check = "source /dev/stdin; complete -p coffer; COMP_WORDS=(coffer re); COMP_CWORD=1; \
                 _coffer coffer re coffer; printf '%s\\n' \"${COMPREPLY[@]}\"";
    let offered = String::from_utf8(piped(Command::new("bash").args(["-c", check]), script.as_bytes()).stdout).unwrap();
    assert!(
        offered.contains("-F _coffer coffer") && offered.contains("restore") && offered.contains("recover"),
        "{offered}"
    );
    // coffer(1) lists every command, and each has its own page with its options.
    let page = |args: &[&str]| String::from_utf8(run_ok(Command::new(BIN).arg("man").args(args)).stdout).unwrap();
    let top = page(&[]);
    assert!(top.contains(".TH coffer 1"), "{top}");
    for verb in ["backup", "restore", "ls", "find", "diff", "dump", "status", "verify", "recover", "prune"] {
        assert!(top.contains(&format!("coffer\\-{verb}(1)")), "coffer(1) lacks {verb}");
        let own = page(&[verb]);
        assert!(own.contains(&format!(".TH coffer-{verb} 1")) && own.contains("\\-\\-config"), "{own}");
    }
    assert!(page(&["restore"]).contains("\\-\\-include"));
    // Every page says what its exit codes and environment variables mean.
    for args in [&[][..], &["backup"], &["status"]] {
        let roff = page(args);
        for section in [".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", "COFFER_IDENTITY", "AWS_ACCESS_KEY_ID"] {
            assert!(roff.contains(section), "coffer man {args:?} lacks {section}");
        }
    }
    // coffer.toml(5): the example config, every key of it.
    let config_page = page(&["coffer.toml"]);
    assert!(config_page.contains(".TH coffer.toml 5"), "{config_page}");
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/coffer.example.toml")).unwrap();
    for key in example.lines().filter_map(|l| l.split_once(" = ")).map(|(k, _)| k.trim_start_matches("# ")) {
        assert!(config_page.contains(key), "coffer.toml(5) lacks `{key}`");
    }
    if let Some(groff) = tool("groff", "apt-get install groff-base") {
        let commands = coffer::cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect::<Vec<_>>();
        let pages: Vec<String> = commands.iter().map(|c| page(&[c])).collect();
        for roff in [&top, &config_page].into_iter().chain(&pages) {
            let rendered = piped(Command::new(groff).args(["-man", "-Tutf8", "-ww"]), roff.as_bytes());
            let warnings = String::from_utf8_lossy(&rendered.stderr);
            assert!(rendered.status.success() && warnings.is_empty(), "{warnings}");
        }
        let rendered = piped(Command::new(groff).args(["-man", "-Tutf8", "-ww"]), top.as_bytes());
        assert!(String::from_utf8_lossy(&rendered.stdout).contains("deduplicated, compressed"));
    }
}

/// A terminal (`script` gives the command one) sees how far a backup is, against the
/// previous snapshot's size, and the time left; `--quiet` shows nothing but data.
#[test]
fn a_terminal_sees_the_percentage_and_quiet_silences_summaries() {
    let Some(script) = tool("script", "apt-get install util-linux") else { return };
    let scratch = Scratch::new("progress");
    // A dump that takes 2 s: half of it, a pause, the other half.
    let setup = Setup::with_source(
        "progress",
        Target::Dir,
        "{ command = [\"sh\", \"-c\", \"head -c 8000000 /dev/zero; sleep 2; head -c 8000000 /dev/zero\"], file = \"d.bin\" }",
        "",
    );
    setup.backup();
    let cmd = format!("{BIN} --config {} backup data", setup.config.display());
    let out = run_ok(Command::new(script).args(["-qec", &cmd, "/dev/null"]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("% of 15.3 MiB") && shown.contains("s left"), "{shown}");
    assert!(shown.contains("snapshot") && shown.contains("complete"), "{shown}");

    let quiet = run_ok(&mut setup.cmd(&["-q", "backup", "data"]));
    assert!(quiet.stdout.is_empty(), "{}", text(&quiet));
    let quiet_status = setup.run(&["--quiet", "status"]);
    assert_eq!((quiet_status.status.code(), quiet_status.stdout.len()), (Some(1), 0), "{}", text(&quiet_status));
    let json = run_ok(&mut setup.cmd(&["-q", "snapshots", "--json"]));
    assert_eq!(json_lines(&json).len(), 3);
    let listed = run_ok(setup.cmd(&["-q", "ls", "latest", "--job", "data"]).arg("--identity").arg(&setup.identity));
    assert_eq!(text(&listed).trim(), "d.bin");

    // A path source's first backup has an estimate too: a quick walk before it.
    let src = random_parts(&scratch, 4, 12);
    let first = Setup::new("progress-first", Target::Dir, &src);
    let cmd = format!("{BIN} --config {} backup data", first.config.display());
    let out = run_ok(Command::new(script).args(["-qec", &cmd, "/dev/null"]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("% of 384.0 MiB") && shown.contains("s left"), "{shown}");
}

/// `--json` on the commands that print a summary: one object each, parsed.
#[test]
fn summaries_come_as_json_too() {
    let scratch = Scratch::new("json");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    let setup = Setup::new("json", Target::Dir, &src);
    let parse = |args: &[&str]| -> Value {
        let out = setup.run(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("coffer {}: {e}: {}", args.join(" "), text(&out)))
    };
    assert_eq!(parse(&["init", "--json"])["created"], false);
    let backup = parse(&["backup", "data", "--json"]);
    assert_eq!((backup["outcome"].as_str(), backup["stats"]["files"].as_u64()), (Some("success"), Some(1)));
    assert_eq!(backup["targets"][0]["target"], "default");
    assert!(parse(&["backup", "data", "--dry-run", "--json"])["retain_until"].is_i64());
    let to = scratch.path("out");
    let mut c = setup.cmd(&["restore", "latest", "--job", "data", "--json", "--to"]);
    c.arg(&to).arg("--identity").arg(&setup.identity);
    let restored: Value = serde_json::from_slice(&run_ok(&mut c).stdout).unwrap();
    assert_eq!((restored["files"].as_u64(), restored["target"].as_str()), (Some(1), Some("default")));
    assert!(parse(&["prune", "--json"])["candidates"].is_array());
    assert_eq!(parse(&["check-config", "--json"])["ok"], true);
    let key = scratch.path("k.txt");
    let made = run_ok(Command::new(BIN).args(["keygen", "--json", "-o"]).arg(&key));
    let made: Value = serde_json::from_slice(&made.stdout).unwrap();
    assert!(made["recipient"].as_str().unwrap().starts_with("age1"));
}

/// An identity encrypted with a passphrase (`age -p`, here written with the age crate):
/// the passphrase comes from a private file named in COFFER_IDENTITY_PASSPHRASE_FILE.
#[test]
fn a_passphrase_protected_identity_restores() {
    let scratch = Scratch::new("passphrase");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "secret plans").unwrap();
    let setup = Setup::new("passphrase", Target::Dir, &src);
    setup.backup();
    let plain = std::fs::read(&setup.identity).unwrap();
    let sealed = scratch.path("identity.age");
    {
        let encryptor = age::Encryptor::with_user_passphrase("correct horse battery".to_string().into());
        let file = std::fs::File::create(&sealed).unwrap();
        let armored = age::armor::ArmoredWriter::wrap_output(file, age::armor::Format::AsciiArmor).unwrap();
        let mut w = encryptor.wrap_output(armored).unwrap();
        std::io::Write::write_all(&mut w, &plain).unwrap();
        w.finish().unwrap().finish().unwrap();
    }
    std::fs::set_permissions(&sealed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pass = scratch.path("pass");
    // setsid: no controlling terminal to ask on.
    let restore = |pass_text: Option<&str>, to: &Path| {
        let mut c = Command::new("setsid");
        c.arg(BIN).arg("--config").arg(&setup.config);
        c.args(["restore", "latest", "--job", "data", "--no-progress", "--to"]).arg(to);
        c.arg("--identity").arg(&sealed).env_remove("COFFER_IDENTITY_PASSPHRASE_FILE");
        if let Some(t) = pass_text {
            std::fs::write(&pass, t).unwrap();
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
            c.env("COFFER_IDENTITY_PASSPHRASE_FILE", &pass);
        }
        c.stdin(std::process::Stdio::null()).output().unwrap()
    };
    let out = restore(Some("correct horse battery\n"), &scratch.path("out"));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(scratch.path("out/a.txt")).unwrap(), "secret plans");
    let wrong = restore(Some("wrong horse\n"), &scratch.path("out2"));
    assert!(text(&wrong).contains("wrong passphrase"), "{}", text(&wrong));
    let none = restore(None, &scratch.path("out3"));
    assert!(text(&none).contains("COFFER_IDENTITY_PASSPHRASE_FILE"), "{}", text(&none));
    assert!(!scratch.path("out3/a.txt").exists());
}

/// Tags (`backup --tag`, a job's `tags`) and hosts pick snapshots for `snapshots`, `ls`,
/// `find` and `restore`; they live in the sealed record, so `recover` brings them back.
#[test]
fn tags_and_hosts_pick_snapshots() {
    let scratch = Scratch::new("tags");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "first").unwrap();
    let setup = Setup::with_extra("tags", Target::Dir, &src, "tags = [\"nightly\"]\n");
    setup.ok(&["backup", "data", "--no-progress", "--tag", "db", "--tag", "weekly"]);
    std::fs::write(src.join("b.txt"), "second").unwrap();
    setup.ok(&["backup", "data", "--no-progress"]);
    setup.ok(&["backup", "data", "--no-progress", "--tag", "weekly"]);

    let listed = |args: &[&str]| -> Vec<Value> { json_lines(&setup.ok(&[&["snapshots", "--json"], args].concat())) };
    assert_eq!(listed(&[]).len(), 3);
    assert_eq!(listed(&["--tag", "weekly"]).len(), 2);
    let first = listed(&["--tag", "weekly", "--tag", "db"]);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["tags"], serde_json::json!(["nightly", "db", "weekly"]));
    assert_eq!(listed(&["--tag", "nightly"]).len(), 3, "the job's own tags label every snapshot");
    let host = first[0]["host"].as_str().unwrap().to_string();
    assert_eq!(listed(&["--host", &host]).len(), 3);
    assert!(listed(&["--host", "elsewhere"]).is_empty());

    // `latest` with --tag is the newest snapshot carrying it.
    let names =
        |out: Output| -> Vec<String> { lines(&out).iter().map(|e| e["path"].as_str().unwrap().into()).collect() };
    assert_eq!(names(ok(&setup, &["ls", "latest", "--job", "data", "--tag", "db", "--json"])), ["a.txt"]);
    assert_eq!(names(ok(&setup, &["ls", "latest", "--job", "data", "--json"])), ["a.txt", "b.txt"]);
    let found = ok(&setup, &["find", "*.txt", "--job", "data", "--tag", "db", "--json"]);
    assert!(lines(&found).iter().all(|h| h["snapshot"] == first[0]["snapshot"]), "{}", text(&found));
    let mut dry = setup.cmd(&["restore", "latest", "--job", "data", "--tag", "db", "--dry-run", "--json", "--to"]);
    dry.arg(scratch.path("not-made"));
    assert_eq!(names(ok_restore(&setup, dry)), ["a.txt"]);
    let none = browse(&setup, &["ls", "latest", "--job", "data", "--tag", "monthly"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(text(&none).contains("no complete snapshot with tag monthly"), "{}", text(&none));

    // A tag that would need quoting is refused before anything runs.
    let bad = setup.run(&["backup", "data", "--tag", "two words"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("only letters, digits"), "{}", text(&bad));
    assert_eq!(listed(&[]).len(), 3);

    // From the target alone: the records carry their tags.
    // The same config in another directory: its relative state directory is a new one.
    let bare = scratch.path("bare.toml");
    std::fs::copy(&setup.config, &bare).unwrap();
    let mut recover = Command::new(BIN);
    recover.arg("--config").arg(&bare).args(["recover", "--identity"]).arg(&setup.identity);
    run_ok(&mut recover);
    let mut again = Command::new(BIN);
    again.arg("--config").arg(&bare).args(["snapshots", "--json", "--tag", "db"]);
    assert_eq!(json_lines(&run_ok(&mut again))[0]["snapshot"], first[0]["snapshot"]);
}
