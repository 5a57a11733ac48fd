//! Git and command sources, with real git and a real database tool (sqlite3).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .envs([("GIT_AUTHOR_NAME", "Test"), ("GIT_AUTHOR_EMAIL", "t@example.com")])
            .envs([("GIT_COMMITTER_NAME", "Test"), ("GIT_COMMITTER_EMAIL", "t@example.com")]),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An upstream repository with `commits` commits over three branches, an annotated and a
/// lightweight tag, and a branch that was deleted; built with fast-import.
fn upstream_repo(dir: &Path, commits: usize) {
    run_ok(Command::new("git").args(["init", "--quiet", "-b", "main"]).arg(dir));
    let mut stream = String::new();
    let mut rng = Rng(7);
    for i in 1..=commits {
        let branch = ["main", "feature", "release"][i % 3];
        let mut body = String::new();
        for _ in 0..200 {
            body.push_str(&format!("line {} of commit {i}\n", rng.below(1_000_000)));
        }
        let message = format!("commit {i}");
        let when = 1_767_225_600 + i as i64 * 60;
        stream.push_str(&format!(
            "commit refs/heads/{branch}\nmark :{i}\ncommitter Test <t@example.com> {when} +0000\ndata {}\n{message}\n",
            message.len()
        ));
        if i > 3 {
            stream.push_str(&format!("from :{}\n", i - 3));
        }
        stream.push_str(&format!("M 644 inline file{}.txt\ndata {}\n{body}\n", i % 17, body.len()));
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["fast-import", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stream.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    git(dir, &["tag", "-a", "v1.0", "-m", "release 1.0", "release"]);
    git(dir, &["tag", "v1.1-light", "feature"]);
    git(dir, &["branch", "old-work", "main"]);
    git(dir, &["branch", "-D", "old-work"]);
    git(dir, &["reset", "--hard", "--quiet", "main"]);
}

fn refs_of(repo: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = git(repo, &["for-each-ref", "--format=%(refname) %(objectname)"])
        .lines()
        .map(|l| {
            let (r, o) = l.split_once(' ').unwrap();
            (r.to_string(), o.to_string())
        })
        .collect();
    v.sort();
    v
}

fn snapshot_refs(snapshot: &Value, repo: usize) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = snapshot["contents"]["git"]["repos"][repo]["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
        .collect();
    v.sort();
    v
}

fn git_setup(name: &str, urls: &[String]) -> Setup {
    let list: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    Setup::with_source(name, Target::Dir, &format!("{{ git = [{}] }}", list.join(", ")), "")
}

#[test]
fn a_git_repository_round_trips_with_its_refs_and_dedups_between_runs() {
    let scratch = Scratch::new("git");
    let upstream = scratch.path("upstream");
    upstream_repo(&upstream, 300);
    let setup = git_setup("git", &[format!("file://{}", upstream.display())]);
    setup.backup();
    let snaps = setup.snapshots();
    let first = &snaps[0];
    assert_eq!(snapshot_refs(first, 0), refs_of(&upstream), "the snapshot records every upstream ref");
    assert!(refs_of(&upstream).iter().any(|(r, _)| r == "refs/tags/v1.0"));
    assert!(!refs_of(&upstream).iter().any(|(r, _)| r.contains("old-work")));
    assert_eq!(first["contents"]["git"]["repos"][0]["head"], "refs/heads/main");

    // Restore: a bare repository git accepts, with exactly the recorded refs, and a working clone.
    let out = scratch.path("out");
    let mut c = setup.cmd(&["restore", "latest", "--job", "data", "--checkout", "--identity"]);
    c.arg(&setup.identity).arg("--to").arg(&out);
    run_ok(&mut c);
    let bare = out.join("upstream.git");
    git(&bare, &["fsck", "--full", "--strict"]);
    assert_eq!(refs_of(&bare), snapshot_refs(first, 0));
    assert_eq!(git(&out.join("upstream"), &["rev-parse", "HEAD"]), git(&upstream, &["rev-parse", "main"]));
    assert_eq!(
        std::fs::read_to_string(out.join("upstream/file1.txt")).unwrap(),
        git(&upstream, &["show", "main:file1.txt"])
    );

    // One more commit: the next snapshot stores little more than the new objects.
    std::fs::write(upstream.join("new.txt"), "a new file\n".repeat(100)).unwrap();
    git(&upstream, &["add", "new.txt"]);
    git(&upstream, &["commit", "--quiet", "-m", "one more"]);
    setup.backup();
    let second = &setup.snapshots()[1];
    let uploaded = second["bytes_uploaded"].as_u64().unwrap();
    eprintln!("one more commit: {uploaded} bytes uploaded (the first snapshot: {})", first["bytes_uploaded"]);
    assert!(uploaded < 1 << 20, "one commit cost {uploaded} bytes of uploads");
    assert_eq!(snapshot_refs(second, 0), refs_of(&upstream));

    // Nothing changed upstream: no new pack at all.
    let packs = setup.pack_hashes().len();
    setup.backup();
    assert_eq!(setup.pack_hashes().len(), packs, "an unchanged repository uploaded a pack");
    let out = setup.ok(&["snapshots"]);
    assert!(text(&out).contains("1 repos, "), "{}", text(&out));
}

#[test]
fn a_lost_upstream_keeps_its_mirror_and_the_other_repositories_are_still_backed_up() {
    let scratch = Scratch::new("gitlost");
    let (a, b) = (scratch.path("alpha"), scratch.path("beta"));
    upstream_repo(&a, 30);
    upstream_repo(&b, 30);
    let setup = git_setup("gitlost", &[format!("file://{}", a.display()), format!("file://{}", b.display())]);
    setup.backup();
    let mirror = setup.dir.path("state/mirrors/data/alpha.git");
    let before = snapshot_tree(&mirror);

    // alpha is deleted upstream; beta gets a commit.
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::write(b.join("more.txt"), "more\n").unwrap();
    git(&b, &["add", "more.txt"]);
    git(&b, &["commit", "--quiet", "-m", "more"]);
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(3), "a repository that failed makes the snapshot partial: {}", text(&out));
    let t = text(&out);
    assert!(t.contains("alpha.git") && t.contains("git fetch of file://"), "{t}");
    assert_eq!(snapshot_tree(&mirror), before, "the mirror of a lost upstream must not change");

    let snaps = setup.snapshots();
    assert_eq!(snaps.len(), 2);
    let repos = &snaps[1]["contents"]["git"]["repos"];
    assert!(repos[0]["error"].as_str().unwrap().contains("fetch"));
    assert_eq!(snapshot_refs(&snaps[1], 0), snapshot_refs(&snaps[0], 0), "the last good mirror is kept");
    assert_eq!(snapshot_refs(&snaps[1], 1), refs_of(&b), "beta is backed up as it is now");
    // Both repositories restore, alpha as it last was.
    let out = scratch.path("out");
    let r = setup.restore("latest", &out);
    assert!(r.status.success(), "{}", text(&r));
    git(&out.join("alpha.git"), &["fsck", "--full"]);
    assert_eq!(refs_of(&out.join("beta.git")), refs_of(&b));
}

#[test]
fn a_password_in_a_git_url_is_never_printed() {
    let scratch = Scratch::new("gitpass");
    let good = scratch.path("good");
    upstream_repo(&good, 5);
    let secret = "Pa55wordInTheUrl";
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bad = format!("http://backup:{secret}@127.0.0.1:{port}/team/private.git");
    let setup = git_setup("gitpass", &[format!("file://{}", good.display()), bad]);
    let out = setup.run(&["-vv", "backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("http://backup:***@127.0.0.1"), "{}", text(&out));
    let mut printed = text(&out);
    for args in [&["snapshots"][..], &["snapshots", "--json"], &["runs"], &["runs", "--json"], &["status"]] {
        printed.push_str(&text(&setup.run(args)));
    }
    assert!(printed.contains("private.git"));
    assert!(!printed.contains(secret), "the password was printed:\n{printed}");
}

/// Every file under `root` that holds `needle`.
fn files_holding(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let (p, m) = (e.path(), e.path().symlink_metadata().unwrap());
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle) {
                found.push(p);
            }
        }
    }
    found
}

/// A git repository behind HTTP basic authentication (`tests/git_http.py`); its port.
struct GitServer(std::process::Child, u16);

impl GitServer {
    fn start(root: &Path, user: &str, password: &str) -> GitServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/git_http.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(root)
            .args([user, password])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        GitServer(child, line.trim().parse().unwrap())
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_git_password_reaches_git_only_through_its_environment() {
    let scratch = Scratch::new("gitcred");
    upstream_repo(&scratch.path("repos/private.git"), 12);
    let secret = "Hunter2InTheUrl";
    let server = GitServer::start(&scratch.path("repos"), "backup", secret);
    // A `git` first on PATH that writes down its arguments, then runs the real one.
    let bin = scratch.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let argv_log = scratch.path("git-argv.log");
    let real = String::from_utf8(run_ok(Command::new("sh").args(["-c", "command -v git"])).stdout).unwrap();
    std::fs::write(
        bin.join("git"),
        format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec {} \"$@\"\n", argv_log.display(), real.trim()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("git"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    // The password in the URL (in the config file), and through `password_env`.
    let in_url = format!("http://backup:{secret}@127.0.0.1:{}/private.git", server.1);
    let named = format!("{{ git = \"http://backup@127.0.0.1:{}/private.git\", password_env = \"GIT_PW\" }}", server.1);
    for (name, source) in [("url", format!("{{ git = \"{in_url}\" }}")), ("env", named)] {
        let setup = Setup::with_source(&format!("gitcred-{name}"), Target::Dir, &source, "");
        for _ in 0..2 {
            // A clone, then a fetch into the existing mirror.
            let out = setup
                .cmd(&["backup", "data", "--no-progress"])
                .env("PATH", &path)
                .env("GIT_PW", secret)
                .output()
                .unwrap();
            assert!(out.status.success(), "{name}: {}", text(&out));
        }
        let snap = setup.snapshots().pop().unwrap();
        assert_eq!(snapshot_refs(&snap, 0), refs_of(&scratch.path("repos/private.git")), "{name}");
        let out = scratch.path(&format!("restored-{name}"));
        assert!(setup.restore("latest", &out).status.success());

        let argv = std::fs::read_to_string(&argv_log).unwrap();
        assert!(argv.contains("clone") && argv.contains("fetch"), "the wrapper saw no git run: {argv}");
        assert!(!argv.contains(secret), "{name}: the password was in git's argv:\n{argv}");
        let state = setup.dir.path("state");
        assert_eq!(files_holding(&state, secret.as_bytes()), Vec::<PathBuf>::new(), "{name}: in the state dir");
        assert_eq!(files_holding(&out, secret.as_bytes()), Vec::<PathBuf>::new(), "{name}: in the snapshot");
        let config = state.join("mirrors/data/private.git/config");
        assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

fn sqlite_db(path: &Path, rows: usize) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL, note BLOB)").unwrap();
    let mut rng = Rng(99);
    for i in 0..rows {
        let mut note = vec![0u8; 64];
        rng.fill(&mut note);
        c.execute(
            "INSERT INTO orders (customer, total, note) VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("customer {}", rng.below(1000)), i as f64 * 1.25, note],
        )
        .unwrap();
    }
}

fn command_setup(name: &str, argv: &[&str], extra: &str) -> Setup {
    let list: Vec<String> = argv.iter().map(|a| format!("\"{a}\"")).collect();
    Setup::with_source(
        name,
        Target::Dir,
        &format!("{{ command = [{}], file = \"app.sql\"{extra} }}", list.join(", ")),
        "",
    )
}

#[test]
fn a_database_dump_backs_up_and_restores_identically() {
    let scratch = Scratch::new("dump");
    let db = scratch.path("app.db");
    sqlite_db(&db, 20_000);
    let db_arg = db.display().to_string();
    let setup = command_setup("dump", &["sqlite3", &db_arg, ".dump"], "");
    let out = setup.backup();
    assert!(text(&out).contains("complete"));
    let expected = run_ok(Command::new("sqlite3").arg(&db).arg(".dump")).stdout;
    let snap = &setup.snapshots()[0];
    assert_eq!(snap["contents"]["command"]["bytes"].as_u64().unwrap(), expected.len() as u64);
    let restored = scratch.path("out");
    let r = setup.restore("latest", &restored);
    assert!(r.status.success(), "{}", text(&r));
    let dump = std::fs::read(restored.join("app.sql")).unwrap();
    assert_eq!(dump, expected, "the restored dump differs from a fresh one");
    // And it loads into a database with the same rows.
    let copy = scratch.path("copy.db");
    let mut load = Command::new("sqlite3").arg(&copy).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut load.stdin.take().unwrap(), &dump).unwrap();
    assert!(load.wait().unwrap().success());
    let count = |p: &PathBuf| {
        rusqlite::Connection::open(p).unwrap().query_row("SELECT count(*), sum(total) FROM orders", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
        })
    };
    assert_eq!(count(&copy).unwrap(), count(&db).unwrap());
    // An unchanged database dedups: only the new entry (its dump time) is stored.
    setup.backup();
    let again = setup.snapshots()[1]["bytes_uploaded"].as_u64().unwrap();
    assert!(again < 64 << 10, "an unchanged dump uploaded {again} bytes");
}

#[test]
fn a_failing_command_leaves_no_snapshot_and_says_why() {
    let setup = command_setup(
        "dumpfail",
        &["sh", "-c", "echo 'INSERT INTO t VALUES (1);'; echo 'pg_dump: error: connection refused' >&2; exit 7"],
        "",
    );
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("exit status: 7") && t.contains("connection refused"), "{t}");
    assert!(setup.snapshots().is_empty(), "a failed dump must not make a complete snapshot");
    let runs = json_lines(&setup.ok(&["runs", "--json"]));
    assert_eq!(runs[0]["outcome"], "failed");

    // A command that hangs is killed at its timeout.
    let setup = command_setup("dumphang", &["sleep", "600"], ", timeout = \"1s\"");
    let t0 = std::time::Instant::now();
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("timeout"), "{}", text(&out));
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    assert!(setup.snapshots().is_empty());

    // With `shell = true` the script runs under sh.
    let setup = Setup::with_source(
        "dumpshell",
        Target::Dir,
        "{ command = [\"printf 'a\\\\nb\\\\n' | sort -r\"], file = \"sorted.txt\", shell = true }",
        "",
    );
    setup.backup();
    let out = setup.dir.path("out");
    assert!(setup.restore("latest", &out).status.success());
    assert_eq!(std::fs::read_to_string(out.join("sorted.txt")).unwrap(), "b\na\n");
}

const SRC_KEY: &str = "COFFERSOURCEKEY00001";
const SRC_SECRET: &str = "cofferSourceSecret0000000000000000000000";

/// Runs a python helper with the source user's credentials; stdout lines as JSON.
fn source_py(args: &[&str]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_objects.py");
    let out = run_ok(
        Command::new("python3")
            .arg(script)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", SRC_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SRC_SECRET),
    );
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn s3_script(args: &[&str], as_source_user: bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server.sh");
    let mut c = Command::new("bash");
    c.arg(script).args(args);
    if as_source_user {
        c.env("AWS_ACCESS_KEY_ID", SRC_KEY).env("AWS_SECRET_ACCESS_KEY", SRC_SECRET);
    }
    run_ok(&mut c);
}

/// Runs coffer with the source credentials in its environment, under python's
/// getrusage so that its peak RSS (KiB) is measured alone.
fn coffer_measured(setup: &Setup, args: &[&str]) -> (std::process::Output, u64) {
    let mut argv = vec![BIN.to_string(), "--config".into(), setup.config.display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let code = "import json, resource, subprocess, sys\n\
                r = subprocess.run(json.loads(sys.argv[1]))\n\
                print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n\
                sys.exit(r.returncode)\n";
    let out = Command::new("python3")
        .args(["-c", code, &serde_json::to_string(&argv).unwrap()])
        .env("COFFER_SRC_KEY", SRC_KEY)
        .env("COFFER_SRC_SECRET", SRC_SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rss = stderr.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    (out, rss)
}

#[test]
fn a_bucket_on_another_provider_is_backed_up_incrementally_and_restored_to_a_directory_and_a_bucket() {
    if !s3_available() {
        return;
    }
    const BIG_MIB: u64 = 100;
    s3_script(&["mkuser", "coffer-source", SRC_KEY, SRC_SECRET], false);
    let stamp = now() % 1_000_000_000;
    let (src_bucket, back_bucket) = (format!("src-{stamp}"), format!("back-{stamp}"));
    s3_script(&["mkbucket", &src_bucket, "--no-lock"], true);
    s3_script(&["mkbucket", &back_bucket, "--no-lock"], true);
    source_py(&["fill", &src_bucket, "data/", "1000", &BIG_MIB.to_string()]);
    let original = source_py(&["dump", &src_bucket, "data/"]);
    assert_eq!(original.len(), 1000);

    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let source = format!(
        "{{ bucket = \"s3://{src_bucket}/data\", endpoint = \"{endpoint}\", \
         access_key_id_env = \"COFFER_SRC_KEY\", secret_access_key_env = \"COFFER_SRC_SECRET\" }}"
    );
    let setup = Setup::with_source("bucketsrc", Target::S3, &source, "");
    std::fs::write(
        &setup.config,
        std::fs::read_to_string(&setup.config).unwrap().replacen("[target]", "pack_size_mib = 4\n[target]", 1),
    )
    .unwrap();
    // The target's credentials cannot read the source bucket: the two are separate.
    let denied = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_objects.py"))
        .args(["dump", &src_bucket, "data/"])
        .output()
        .unwrap();
    assert!(!denied.status.success(), "the target's user could read the source bucket");

    let (out, _) = coffer_measured(&setup, &["-vv", "backup", "data", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut printed = text(&out);
    let first = &setup.snapshots()[0];
    assert_eq!(first["contents"]["bucket"]["objects"], 1000);
    assert_eq!(first["files"], 1000);

    // Restore to a directory: every object is a file under its key, byte for byte.
    let scratch = Scratch::new("bucketsrc-out");
    let dir = scratch.path("restored");
    let r = setup.restore("latest", &dir);
    assert!(r.status.success(), "{}", text(&r));
    for o in &original {
        let data = std::fs::read(dir.join(o["key"].as_str().unwrap())).unwrap();
        assert_eq!(data.len() as u64, o["size"].as_u64().unwrap());
        assert_eq!(sha256_hex(&data), o["sha256"].as_str().unwrap(), "{}", o["key"]);
    }

    // Ten objects change, the big one growing to 300 MiB: only they are downloaded, and
    // the run's memory stays below the size of the object it streamed. (The pipeline's
    // own working set, queues and packs in flight, is ~130 MiB whatever the data.)
    const CHANGED_BIG_MIB: u64 = 300;
    let changed = source_py(&["change", &src_bucket, "data/", "10", &CHANGED_BIG_MIB.to_string()]);
    let changed_bytes = changed[0]["changed_bytes"].as_u64().unwrap();
    let (out, peak_kib) = coffer_measured(&setup, &["backup", "data", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let runs = json_lines(&setup.ok(&["runs", "--json", "-n", "1"]));
    assert_eq!(runs[0]["bytes_read"].as_u64().unwrap(), changed_bytes, "only the changed objects are read");
    eprintln!("peak RSS of the incremental run with a {CHANGED_BIG_MIB} MiB object: {} MiB", peak_kib / 1024);
    assert!(
        peak_kib > 0 && peak_kib < CHANGED_BIG_MIB * 1024,
        "peak RSS {peak_kib} KiB: the object was held in memory"
    );

    // Back into a new bucket: same keys, bytes and content types.
    let now_state = source_py(&["dump", &src_bucket, "data/"]);
    let mut c = setup.cmd(&["restore", "latest", "--job", "data", "--identity"]);
    c.arg(&setup.identity).args(["--to-bucket", &format!("s3://{back_bucket}/copy")]);
    c.env("COFFER_SRC_KEY", SRC_KEY).env("COFFER_SRC_SECRET", SRC_SECRET);
    let out = run_ok(&mut c);
    assert!(text(&out).contains("1000 objects"), "{}", text(&out));
    printed.push_str(&text(&out));
    for args in [&["snapshots"][..], &["snapshots", "--json"], &["runs", "--json"]] {
        printed.push_str(&text(&setup.run(args)));
    }
    assert!(printed.contains(&src_bucket));
    assert!(!printed.contains(SRC_SECRET), "the source bucket's secret was printed");
    let copy = source_py(&["dump", &back_bucket, "copy/"]);
    assert_eq!(copy, now_state, "the bucket restored from the snapshot differs from the source");
    assert!(copy.iter().any(|o| o["content_type"] == "image/png"));
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `tests/s3_objects.py put` with `keys` on its standard input.
fn put_objects(bucket: &str, prefix: &str, keys: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_objects.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["put", bucket, prefix])
        .env("AWS_ACCESS_KEY_ID", SRC_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SRC_SECRET)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines: String = keys.iter().map(|k| serde_json::to_string(k).unwrap() + "\n").collect();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn object_keys_come_back_byte_for_byte() {
    if !s3_available() {
        return;
    }
    let stamp = common::now() % 1_000_000_000;
    let (src_bucket, back_bucket) = (format!("keys-src-{stamp}"), format!("keys-back-{stamp}"));
    s3_script(&["mkuser", "coffer-source", SRC_KEY, SRC_SECRET], false);
    s3_script(&["mkbucket", &src_bucket, "--no-lock"], true);
    s3_script(&["mkbucket", &back_bucket, "--no-lock"], true);
    // Keys that are file paths, then keys that are not (or clash with another's path).
    let keys = [
        "50%.txt",
        "a#b",
        "q?x=1&y",
        "with space",
        "plus+sign",
        "tilde~",
        "ünïcödé/文件.txt",
        "%2F",
        "a/b c/d",
        "x/../y",
        "x//y",
        "/lead",
        "trail/",
        "ctl\u{1}char",
        "new\nline",
        ".",
        "..",
        "clash",
        "clash/under",
        ".coffer-keys/k-clash",
        "x",
    ];
    put_objects(&src_bucket, "data/", &keys);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let source = format!(
        "{{ bucket = \"s3://{src_bucket}/data\", endpoint = \"{endpoint}\", \
         access_key_id_env = \"COFFER_SRC_KEY\", secret_access_key_env = \"COFFER_SRC_SECRET\" }}"
    );
    let setup = Setup::with_source("keys", Target::Dir, &source, "");
    let (out, _) = coffer_measured(&setup, &["backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(0), "no key may fail the job: {}", text(&out));
    let snap = setup.snapshots().pop().unwrap();
    assert_eq!(snap["contents"]["bucket"]["objects"], keys.len());

    // To a directory: the keys that are paths as they are, the others escaped.
    let dir = setup.dir.path("as-files");
    let restored = setup.restore("latest", &dir);
    assert!(restored.status.success(), "{}", text(&restored));
    let mut seen = 0;
    for key in keys {
        let body = key.repeat(1000);
        let plain = dir.join(key);
        if coffer::source::bucket::escaped_path(key, false).is_none()
            && std::fs::read(&plain).ok().as_deref() == Some(body.as_bytes())
        {
            seen += 1;
        }
    }
    let escaped: Vec<_> = std::fs::read_dir(dir.join(".coffer-keys")).unwrap().map(|e| e.unwrap().path()).collect();
    for p in &escaped {
        let body = std::fs::read_to_string(p).unwrap();
        assert!(keys.iter().any(|k| body == k.repeat(1000)), "{} holds no object's bytes", p.display());
    }
    assert_eq!(seen + escaped.len(), keys.len(), "every object is in the directory once: {escaped:?}");
    let mut c = setup.cmd(&["restore", "latest", "--job", "data", "--no-progress", "--identity"]);
    c.arg(&setup.identity).args(["--to-bucket", &format!("s3://{back_bucket}/copy")]);
    c.env("COFFER_SRC_KEY", SRC_KEY).env("COFFER_SRC_SECRET", SRC_SECRET);
    let out = run_ok(&mut c);
    assert!(text(&out).contains(&format!("{} objects", keys.len())), "{}", text(&out));
    let mut want: Vec<Value> = source_py(&["dump", &src_bucket, "data/"]);
    let mut got: Vec<Value> = source_py(&["dump", &back_bucket, "copy/"]);
    let by_key = |v: &Value| v["key"].as_str().unwrap().to_string();
    want.sort_by_key(by_key);
    got.sort_by_key(by_key);
    assert_eq!(want.len(), keys.len());
    assert_eq!(got, want, "the keys, bytes and content types written back differ");
}

/// Runs the backup `backup` (its environment set): what the command source wrote into
/// the snapshot's `file`, and what the hook wrote to `hook_out`.
fn what_children_saw(setup: &Setup, mut backup: Command, file: &str, hook_out: &Path) -> (String, String) {
    let out = backup.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let restored = setup.dir.path("out");
    assert!(setup.restore("latest", &restored).status.success());
    (std::fs::read_to_string(restored.join(file)).unwrap(), std::fs::read_to_string(hook_out).unwrap())
}

#[test]
fn children_never_see_coffers_credentials() {
    let scratch = Scratch::new("childenv");
    let hook_out = scratch.path("hook-env.txt");
    let job_extra = format!(
        "env = {{ PGHOST = \"db.internal\" }}\nenv_passthrough = [\"PGPASSWORD\"]\non_success = [\"sh\", \"-c\", \"env > '{}'\"]\n",
        hook_out.display()
    );
    let setup = Setup::with_source("childenv", Target::Dir, "{ command = [\"env\"], file = \"env.txt\" }", &job_extra);
    let mut c = setup.cmd(&["backup", "data", "--no-progress"]);
    c.env("AWS_ACCESS_KEY_ID", "TARGETKEYID").env("AWS_SECRET_ACCESS_KEY", "TARGETSECRET");
    c.env("COFFER_PRUNE_SECRET_ACCESS_KEY", "PRUNESECRET").env("SOME_OTHER_SECRET", "OTHERSECRET");
    c.env("PGPASSWORD", "passed-on");
    let (dumped, hooked) = what_children_saw(&setup, c, "env.txt", &hook_out);
    for (who, env) in [("the command source", &dumped), ("the hook", &hooked)] {
        for secret in ["TARGETKEYID", "TARGETSECRET", "PRUNESECRET", "OTHERSECRET"] {
            assert!(!env.contains(secret), "{who} got {secret}:\n{env}");
        }
        for wanted in ["PATH=", "PGHOST=db.internal", "PGPASSWORD=passed-on"] {
            assert!(env.contains(wanted), "{who} lacks {wanted}:\n{env}");
        }
    }
    assert!(hooked.contains("COFFER_OUTCOME=success"), "{hooked}");

    // What a job may not ask for.
    for (extra, why) in [
        ("env_passthrough = [\"AWS_SECRET_ACCESS_KEY\"]", "credentials of coffer's"),
        ("env_passthrough = [\"COFFER_PRUNE_SECRET_ACCESS_KEY\"]", "credentials of coffer's"),
        ("env = { DB_PASSWORD = \"inline\" }", "looks like a secret"),
        ("env = { \"A B\" = \"x\" }", "not an environment variable name"),
    ] {
        let config = scratch.path("bad.toml");
        let base: String = std::fs::read_to_string(&setup.config)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("env"))
            .map(|l| format!("{l}\n"))
            .collect();
        let text_cfg = base + extra + "\n";
        std::fs::write(&config, text_cfg).unwrap();
        let out = Command::new(BIN).arg("--config").arg(&config).args(["snapshots"]).output().unwrap();
        assert!(!out.status.success() && text(&out).contains(why), "{extra}: {}", text(&out));
    }
}

/// A child can look where the kernel keeps the environment coffer started with,
/// `/proc/<coffer's pid>/environ`: it shows nothing of it. Run as a service user holding
/// CAP_DAC_READ_SEARCH as an ambient capability (as `deploy/coffer.service` gives it),
/// coffer reads a root-only file into the snapshot, and its hook, started with no ambient
/// capabilities, cannot read that file.
#[test]
fn children_see_neither_coffers_first_environment_nor_its_capabilities() {
    let scratch = Scratch::new("childproc");
    let hook_out = scratch.path("hook.txt");
    // (Through TOML: `\\0` reaches tr as `\0`.)
    let peek = "tr '\\\\0' '\\\\n' < /proc/$PPID/environ 2>&1; true";
    let job_extra = format!("on_success = [\"sh\", \"-c\", \"({peek}) > '{}'\"]\n", hook_out.display());
    let source = format!("{{ command = [\"sh\", \"-c\", \"{peek}\"], file = \"peek.txt\" }}");
    let setup = Setup::with_source("childproc", Target::Dir, &source, &job_extra);
    let mut c = setup.cmd(&["backup", "data", "--no-progress"]);
    c.env("AWS_SECRET_ACCESS_KEY", "TARGETSECRET").env("COFFER_PRUNE_SECRET_ACCESS_KEY", "PRUNESECRET");
    let (peeked, hooked) = what_children_saw(&setup, c, "peek.txt", &hook_out);
    for (who, seen) in [("the command source", &peeked), ("the hook", &hooked)] {
        for secret in ["TARGETSECRET", "PRUNESECRET", "COFFER_PRUNE", "AWS_SECRET"] {
            assert!(!seen.contains(secret), "{who} read {secret} in /proc/$PPID/environ:\n{seen}");
        }
    }

    // A service user with CAP_DAC_READ_SEARCH in its ambient set.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the capability half needs root (setpriv)");
        return;
    }
    let dir = Scratch::new("childcaps");
    let src = dir.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("open.txt"), "anyone").unwrap();
    let hook_out = dir.path("hook/out.txt");
    std::fs::create_dir_all(hook_out.parent().unwrap()).unwrap();
    let job_extra = format!(
        "on_success = [\"sh\", \"-c\", \"cat '{}' > '{}' 2>&1; true\"]\n",
        src.join("root-only.txt").display(),
        hook_out.display()
    );
    let setup = Setup::with_extra("childcaps", Target::Dir, &src, &job_extra);
    run_ok(Command::new("chown").args(["-R", "65534:65534"]).arg(&dir.0).arg(&setup.dir.0));
    std::fs::write(src.join("root-only.txt"), "root's eyes only").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("root-only.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let service = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search"]);
        c.args(["--ambient-caps=+dac_read_search", BIN, "--config"]).arg(&setup.config).args(args);
        c.env("AWS_SECRET_ACCESS_KEY", "TARGETSECRET").output().unwrap()
    };
    let out = service(&["backup", "data", "--no-progress"]);
    assert!(out.status.success(), "coffer reads the root-only file with its capability: {}", text(&out));
    let hooked = std::fs::read_to_string(&hook_out).unwrap();
    assert!(!hooked.contains("root's eyes only") && hooked.contains("Permission denied"), "the hook read: {hooked}");
    let restored = dir.path("restored");
    let identity = setup.identity.to_str().unwrap();
    let out = service(&["restore", "latest", "--job", "data", "--to", restored.to_str().unwrap(), "-i", identity]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(restored.join("root-only.txt")).unwrap(), "root's eyes only");
}

/// A directory read as a bucket (`bucket = "file:///dir"`, for trying coffer out) keeps
/// every file whatever its name holds (each holds its own name here, so that every
/// object is found again after a restore), and follows no symlink: one pointing at a
/// file outside is named and left out.
#[test]
fn a_directory_read_as_a_bucket_keeps_every_name_and_follows_no_symlink() {
    let scratch = Scratch::new("dirbucket");
    let bucket = scratch.path("bucket");
    std::fs::create_dir_all(bucket.join("sub/dir")).unwrap();
    let names = [
        "50%.txt",
        "a#b",
        "q?x=1&y",
        "with space",
        "plus+sign",
        "tilde~",
        "ünïcödé.txt",
        "ctl\u{1}char",
        "new\nline",
        "back\\slash",
        "sub/dir/deep.txt",
    ];
    for name in names {
        std::fs::write(bucket.join(name), name).unwrap();
    }
    std::fs::write(scratch.path("outside.txt"), "outside the bucket").unwrap();
    std::os::unix::fs::symlink(scratch.path("outside.txt"), bucket.join("link")).unwrap();
    let source = format!("{{ bucket = \"file://{}\" }}", bucket.display());
    let setup = Setup::with_source("dirbucket", Target::Dir, &source, "");
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("link: a symlink, not followed"), "{}", text(&out));
    let restored = scratch.path("out");
    let r = setup.restore("latest", &restored);
    assert!(r.status.success(), "{}", text(&r));
    let mut found: Vec<String> = common::snapshot_tree(&restored)
        .into_keys()
        .map(|p| restored.join(p))
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(found, want, "every object, and nothing from outside the bucket");
}

/// Azurite's development account key: public, documented by Microsoft.
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Runs the azure-storage-blob helper; stdout lines as JSON.
fn azure_py(args: &[&str]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/azure_blobs.py");
    let out = run_ok(Command::new("python3").arg(script).args(args).env("AZURITE_KEY", AZURITE_KEY));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Azurite's Blob endpoint, or `None` (a loud skip) outside the full suite.
fn azurite() -> Option<String> {
    let endpoint = std::env::var("COFFER_TEST_AZURITE").ok();
    if endpoint.is_none() {
        if std::env::var("COFFER_TEST_S3").as_deref() == Ok("require") {
            panic!("the full suite needs Azurite: run `eval \"$(scripts/azurite.sh start)\"`");
        }
        eprintln!("SKIPPED: no Azurite (COFFER_TEST_AZURITE unset); run scripts/test.sh for the full suite");
    }
    endpoint
}

#[test]
fn an_azure_container_is_backed_up_incrementally_and_restored_to_a_directory_and_a_container() {
    let Some(endpoint) = azurite() else { return };
    let stamp = now() % 1_000_000_000;
    let (src, back) = (format!("src-{stamp}"), format!("back-{stamp}"));
    azure_py(&["fill", &src, "data/", "200", "20"]);
    azure_py(&["mkcontainer", &back]);
    let original = azure_py(&["dump", &src, "data/"]);
    assert_eq!(original.len(), 200);

    let source = format!(
        "{{ azure = \"az://devstoreaccount1/{src}/data\", endpoint = \"{endpoint}\", access_key_env = \"COFFER_AZ_KEY\" }}"
    );
    let setup = Setup::with_source("azuresrc", Target::Dir, &source, "");
    let coffer = |args: &[&str]| {
        let mut c = setup.cmd(args);
        c.env("COFFER_AZ_KEY", AZURITE_KEY);
        c
    };
    let mut printed = text(&run_ok(&mut coffer(&["-vv", "backup", "data", "--no-progress"])));
    let first = &setup.snapshots()[0];
    assert_eq!(first["contents"]["bucket"]["objects"], 200);
    assert_eq!(first["source"], format!("bucket az://devstoreaccount1/{src}/data"));

    // Restore to a directory: every blob is a file under its name, byte for byte.
    let scratch = Scratch::new("azuresrc-out");
    let dir = scratch.path("restored");
    let r = setup.restore("latest", &dir);
    assert!(r.status.success(), "{}", text(&r));
    for o in &original {
        let data = std::fs::read(dir.join(o["key"].as_str().unwrap())).unwrap();
        assert_eq!(sha256_hex(&data), o["sha256"].as_str().unwrap(), "{}", o["key"]);
    }

    // Five blobs change: only they are downloaded (the ETag skip).
    let changed = azure_py(&["change", &src, "data/", "5"]);
    let changed_bytes = changed[0]["changed_bytes"].as_u64().unwrap();
    printed.push_str(&text(&run_ok(&mut coffer(&["backup", "data", "--no-progress"]))));
    let runs = json_lines(&setup.ok(&["runs", "--json", "-n", "1"]));
    assert_eq!(runs[0]["bytes_read"].as_u64().unwrap(), changed_bytes, "only the changed blobs are read");

    // Back into another container: same names, bytes and content types.
    let now_state = azure_py(&["dump", &src, "data/"]);
    let mut c = coffer(&["restore", "latest", "--job", "data", "--identity"]);
    c.arg(&setup.identity).args(["--to-bucket", &format!("az://devstoreaccount1/{back}/copy")]);
    let out = run_ok(&mut c);
    assert!(text(&out).contains("200 objects"), "{}", text(&out));
    printed.push_str(&text(&out));
    assert_eq!(azure_py(&["dump", &back, "copy/"]), now_state, "the container restored differs from the source");
    assert!(now_state.iter().any(|o| o["content_type"] == "image/png"));
    assert!(!printed.contains(AZURITE_KEY), "the account key was printed");
}

#[test]
fn a_blob_name_that_is_no_path_fails_the_azure_job_with_its_name() {
    // Whoever can write the container can name a blob `a//b`. object_store's paths refuse
    // it; the run must say which blob, and record no snapshot, not panic or skip silently.
    let Some(endpoint) = azurite() else { return };
    let container = format!("odd-{}", now() % 1_000_000_000);
    azure_py(&["mkcontainer", &container]);
    let names = ["data/ok.txt", "data/a//b"].map(|n| serde_json::to_string(n).unwrap()).join("\n");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/azure_blobs.py");
    let mut put = Command::new("python3")
        .arg(script)
        .args(["put", &container])
        .env("AZURITE_KEY", AZURITE_KEY)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut put.stdin.take().unwrap(), names.as_bytes()).unwrap();
    assert!(put.wait().unwrap().success());

    let source = format!(
        "{{ azure = \"az://devstoreaccount1/{container}/data\", endpoint = \"{endpoint}\", access_key_env = \"COFFER_AZ_KEY\" }}"
    );
    let setup = Setup::with_source("azure-odd", Target::Dir, &source, "");
    let out = setup.cmd(&["backup", "data", "--no-progress"]).env("COFFER_AZ_KEY", AZURITE_KEY).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("a//b"), "the blob is not named: {}", text(&out));
    assert!(setup.snapshots().is_empty());
}
