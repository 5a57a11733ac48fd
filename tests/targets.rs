//! Several targets on different providers: Ceph RGW (reached through a gateway the test
//! stops: an outage) and LocalStack's S3, each with its own credentials, named in the
//! config by the variables that hold them (coffer's environment has no AWS_* keys).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// True when LocalStack's environment is present (scripts/localstack.sh); required with
/// COFFER_TEST_S3=require, as the README's test command sets.
fn localstack() -> Option<String> {
    match std::env::var("COFFER_TEST_LOCALSTACK") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("COFFER_TEST_S3").as_deref() == Ok("require") => {
            panic!("COFFER_TEST_S3=require but no LocalStack: run `eval \"$(scripts/localstack.sh start)\"`")
        }
        Err(_) => {
            eprintln!("SKIPPED: no LocalStack (COFFER_TEST_LOCALSTACK unset); run scripts/test.sh");
            None
        }
    }
}

/// A dump that writes 8 MB, pauses 6 s (the test stops a provider then), and writes 3 MB.
const DUMP: &str = "head -c 8000000 /dev/urandom; sleep 6; head -c 3000000 /dev/urandom";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// boto3 on LocalStack (not coffer's code): `tests/s3_inspect.py CMD BUCKET coffer/`.
fn localstack_inspect(endpoint: &str, cmd: &str, bucket: &str) -> Vec<Value> {
    inspect(
        cmd,
        bucket,
        &[("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")],
    )
}

/// boto3 on the Ceph cluster, through its main gateway.
fn ceph_inspect(cmd: &str, bucket: &str) -> Vec<Value> {
    inspect(cmd, bucket, &[])
}

fn inspect(cmd: &str, bucket: &str, env: &[(&str, &str)]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_inspect.py");
    let out = run_ok(Command::new("python3").arg(script).args([cmd, bucket, "coffer/"]).envs(env.iter().copied()));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Two targets and one job; coffer runs with each target's keys in its own variables.
struct Two {
    /// Config, state and identity (the test's scratch directory removes it).
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
    identity: std::path::PathBuf,
    ceph_bucket: String,
    ls_bucket: String,
    ls_endpoint: String,
}

impl Two {
    fn new(dir: std::path::PathBuf, src: &Path, gw_port: u16, ls_endpoint: &str) -> Two {
        std::fs::create_dir_all(dir.join("offline")).unwrap();
        let identity = dir.join("offline/identity.txt");
        let out = run_ok(Command::new(env!("CARGO_BIN_EXE_coffer")).args(["keygen", "-o"]).arg(&identity));
        let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
        let (ceph_bucket, ls_bucket) = (format!("mt-ceph-{stamp}"), format!("mt-ls-{stamp}"));
        make_bucket(&ceph_bucket, true);
        localstack_inspect(ls_endpoint, "mkbucket", &ls_bucket);
        let config = dir.join("coffer.toml");
        let text = format!(
            "state_dir = \"state\"\nrecipients = [\"{recipient}\"]\nrepo_secret_file = \"state/repo.secret\"\n\
             pack_size_mib = 1\n\
             [[target]]\nname = \"ceph\"\nurl = \"s3://{ceph_bucket}/coffer\"\nendpoint = \"http://127.0.0.1:{gw_port}\"\n\
             access_key_id_env = \"CEPH_KEY_ID\"\nsecret_access_key_env = \"CEPH_SECRET_KEY\"\nretry_budget = \"3s\"\n\
             [[target]]\nname = \"ls\"\nurl = \"s3://{ls_bucket}/coffer\"\nendpoint = \"{ls_endpoint}\"\n\
             region = \"us-east-1\"\naccess_key_id_env = \"LS_KEY_ID\"\nsecret_access_key_env = \"LS_SECRET_KEY\"\n\
             [[job]]\nname = \"data\"\nsource = {{ path = \"{}\" }}\nlock_days = 2\n\
             [[job]]\nname = \"dump\"\nlock_days = 2\nsource = {{ command = [\"sh\", \"-c\", \"{DUMP}\"], file = \"dump.bin\" }}\n",
            src.display()
        );
        std::fs::write(&config, text).unwrap();
        let two = Two { dir, config, identity, ceph_bucket, ls_bucket, ls_endpoint: ls_endpoint.to_string() };
        two.ok(&["init"]);
        two
    }

    /// coffer with each target's keys in its named variables, and no AWS_* ones.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.arg("--config").arg(&self.config).args(args);
        c.env("CEPH_KEY_ID", std::env::var("AWS_ACCESS_KEY_ID").unwrap());
        c.env("CEPH_SECRET_KEY", std::env::var("AWS_SECRET_ACCESS_KEY").unwrap());
        c.env("LS_KEY_ID", "test").env("LS_SECRET_KEY", "test");
        for v in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"] {
            c.env_remove(v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        run_ok(&mut self.cmd(args))
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    }

    /// A list's `--json`: its lines, as an array.
    fn lines(&self, args: &[&str]) -> Value {
        Value::Array(json_lines(&self.run(args)))
    }

    fn restore(&self, target: Option<&str>, to: &Path) -> Output {
        let mut args = vec!["restore", "latest", "--job", "data", "--no-progress", "--to", to.to_str().unwrap()];
        args.extend(target.iter().flat_map(|t| ["--target", t]));
        let mut c = self.cmd(&args);
        c.arg("--identity").arg(&self.identity);
        c.output().unwrap()
    }

    /// The line of job `data` for `target` in `status --json`.
    fn on_target(status: &Value, target: &str) -> Value {
        Two::job_on_target(status, "data", target)
    }

    fn job_on_target(status: &Value, job: &str, target: &str) -> Value {
        let job = status["jobs"].as_array().unwrap().iter().find(|j| j["job"] == job).unwrap();
        let targets = job["targets"].as_array().unwrap();
        targets.iter().find(|t| t["target"] == target).cloned().unwrap_or_else(|| panic!("{status}"))
    }

    /// (key, version) → retain-until the catalog records for `target`'s copies.
    fn recorded_locks(&self, target: &str) -> Vec<(String, String, i64)> {
        let c = rusqlite::Connection::open(self.dir.join("state/catalog.sqlite")).unwrap();
        let mut st = c
            .prepare(
                "SELECT 'packs/' || substr(p.hash, 1, 2) || '/' || p.hash, c.version, c.retain_until FROM pack_copies c
                 JOIN packs p ON p.id = c.pack JOIN targets t ON t.id = c.target WHERE t.name = ?1
                 UNION ALL
                 SELECT 'snapshots/' || s.job || '/' || s.id, c.record_version, s.retain_until FROM snapshot_copies c
                 JOIN snapshots s ON s.seq = c.snapshot JOIN targets t ON t.id = c.target WHERE t.name = ?1
                 UNION ALL
                 SELECT 'coffer.repo', record_version, record_retain_until FROM targets WHERE name = ?1",
            )
            .unwrap();
        let rows = st.query_map([target], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        rows.map(|r| r.unwrap()).collect()
    }
}

/// Every object the catalog records on a target is there, by its version, locked in
/// COMPLIANCE at least as long as recorded (asked with boto3).
fn assert_locked_as_recorded(recorded: &[(String, String, i64)], on_server: &[Value]) {
    assert!(!recorded.is_empty());
    for (key, version, until) in recorded {
        let v = on_server
            .iter()
            .find(|v| v["key"].as_str().unwrap().ends_with(key.as_str()) && v["version"] == version.as_str())
            .unwrap_or_else(|| panic!("{key} version {version} is not on the server"));
        assert_eq!(v["mode"], "COMPLIANCE", "{v}");
        assert!(v["until"].as_i64().unwrap() >= *until, "{key}: locked until {} < recorded {until}", v["until"]);
    }
}

#[test]
fn one_provider_down_degrades_the_run_and_the_next_run_catches_it_up() {
    if !s3_available() {
        return;
    }
    let Some(ls_endpoint) = localstack() else { return };
    let scratch = Scratch::new("targets");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), Rng(1).mixed(3 << 20)).unwrap();
    std::fs::write(src.join("b.txt"), "first\n").unwrap();
    let gw_port = free_port();
    let gateway = Gateway::start(&format!("targets{gw_port}"), gw_port);
    let two = Two::new(scratch.path("host"), &src, gw_port, &ls_endpoint);

    // Both answer: the snapshot is on both, each with its own version ids.
    let first = two.ok(&["backup", "data", "--no-progress"]);
    let t = text(&first);
    assert!(t.contains("target ceph: stored") && t.contains("target ls: stored"), "{t}");
    let snaps = two.lines(&["snapshots", "--json"]);
    let held: Vec<&str> =
        snaps[0]["targets"].as_array().unwrap().iter().map(|h| h["target"].as_str().unwrap()).collect();
    assert_eq!(held, ["ceph", "ls"]);
    for target in ["ceph", "ls"] {
        let out = scratch.path(&format!("restore-{target}"));
        let r = two.restore(Some(target), &out);
        assert!(r.status.success() && text(&r).contains(&format!("from target {target}")), "{}", text(&r));
        assert_same_tree(&src, &out);
    }

    // Ceph's gateway goes down in the middle of a run: the packs sent before are on both,
    // the rest on LocalStack alone, and the run ends degraded.
    let packs_on = |target: &str| -> i64 {
        let c = rusqlite::Connection::open(two.dir.join("state/catalog.sqlite")).unwrap();
        let sql = "SELECT count(*) FROM pack_copies c JOIN targets t ON t.id = c.target WHERE t.name = ?1";
        c.query_row(sql, [target], |r| r.get(0)).unwrap()
    };
    let before = packs_on("ceph");
    let dump = two.cmd(&["backup", "dump", "--no-progress"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let waited = std::time::Instant::now();
    while packs_on("ceph") == before {
        assert!(waited.elapsed().as_secs() < 30, "no pack of the dump reached Ceph");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    gateway.stop();
    let dumped = dump.wait_with_output().unwrap();
    let t = text(&dumped);
    assert_eq!(dumped.status.code(), Some(5), "{t}");
    assert!(t.contains("target ls: stored") && t.contains("target ceph: NOT stored"), "{t}");
    assert!(packs_on("ceph") > before && packs_on("ls") > packs_on("ceph"), "{t}");

    // Two more runs while it is down complete on LocalStack alone.
    std::fs::write(src.join("c.bin"), Rng(2).mixed(2 << 20)).unwrap();
    let degraded = two.run(&["backup", "data", "--no-progress"]);
    let t = text(&degraded);
    assert_eq!(degraded.status.code(), Some(5), "{t}");
    assert!(t.contains("target ls: stored") && t.contains("target ceph: NOT stored"), "{t}");
    let runs = two.lines(&["runs", "data", "--json"]);
    assert_eq!(runs[0]["outcome"], "degraded", "{runs}");
    let status = two.json(&["status", "--json"]);
    assert_eq!(Two::on_target(&status, "ceph")["lag"], 1, "{status}");
    assert_eq!(Two::on_target(&status, "ls")["lag"], 0, "{status}");
    std::fs::write(src.join("b.txt"), "second\n").unwrap();
    assert_eq!(two.run(&["backup", "data", "--no-progress"]).status.code(), Some(5));
    let status = two.run(&["status"]);
    assert_eq!(status.status.code(), Some(1), "lagging by two snapshots is WARNING: {}", text(&status));
    assert!(text(&status).contains("target ceph lags"), "{}", text(&status));
    // A restore with Ceph down reads from the target that answers.
    let out = scratch.path("restore-down");
    let r = two.restore(None, &out);
    assert!(r.status.success() && text(&r).contains("from target ls"), "{}", text(&r));
    assert_same_tree(&src, &out);

    // Back up: the next runs copy what Ceph lacks from LocalStack before anything else;
    // the unchanged tree is not read again.
    gateway.start_again();
    let caught = two.ok(&["backup", "--all", "--no-progress"]);
    assert!(text(&caught).contains("caught up lagging targets"), "{}", text(&caught));
    let runs = two.lines(&["runs", "data", "--json"]);
    assert_eq!((runs[0]["outcome"].as_str(), runs[0]["bytes_read"].as_i64()), (Some("success"), Some(0)), "{runs}");
    let status = two.json(&["status", "--json", "--remote"]);
    assert_eq!(status["status"], "OK", "{status}");
    assert_eq!(Two::on_target(&status, "ceph")["live_snapshots"], 4, "{status}");
    assert_eq!(Two::job_on_target(&status, "dump", "ceph")["live_snapshots"], 2, "{status}");
    assert_eq!(packs_on("ceph"), packs_on("ls"));
    assert_locked_as_recorded(&two.recorded_locks("ceph"), &ceph_inspect("locks", &two.ceph_bucket));
    assert_locked_as_recorded(
        &two.recorded_locks("ls"),
        &localstack_inspect(&two.ls_endpoint, "locks", &two.ls_bucket),
    );
    let r = two.restore(Some("ceph"), &scratch.path("restore-ceph-after"));
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&src, &scratch.path("restore-ceph-after"));
    assert_eq!(two.run(&["verify", "--target", "ceph"]).status.code(), Some(0));

    recovers_from_either_onto_a_fresh_host(&two, &scratch, &src);
}

/// Recovers from each target onto a fresh host; `verify --target` then records what the
/// other target holds, and both restore.
fn recovers_from_either_onto_a_fresh_host(two: &Two, scratch: &Scratch, src: &Path) {
    for (from, other) in [("ceph", "ls"), ("ls", "ceph")] {
        // The same config (its paths are relative to it) in another directory.
        let fresh = scratch.path(&format!("fresh-{from}"));
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::copy(&two.config, fresh.join("coffer.toml")).unwrap();
        let again = Two { config: fresh.join("coffer.toml"), dir: fresh.clone(), ..two.clone_names() };
        let mut c = again.cmd(&["recover", "--target", from, "--no-progress"]);
        c.arg("--identity").arg(&two.identity);
        let out = c.output().unwrap();
        assert!(out.status.success() && text(&out).contains(&format!("from target {from} (")), "{}", text(&out));
        let verify = again.ok(&["verify", "--target", other]);
        assert!(text(&verify).contains("recorded"), "{}", text(&verify));
        let status = again.json(&["status", "--json"]);
        assert_eq!(Two::on_target(&status, other)["lag"], 0, "{status}");
        let out = fresh.join("restored");
        let r = again.restore(Some(other), &out);
        assert!(r.status.success(), "{}", text(&r));
        assert_same_tree(src, &out);
    }
}

impl Two {
    /// The same buckets and identity, for another state directory.
    fn clone_names(&self) -> Two {
        Two {
            dir: self.dir.clone(),
            config: self.config.clone(),
            identity: self.identity.clone(),
            ceph_bucket: self.ceph_bucket.clone(),
            ls_bucket: self.ls_bucket.clone(),
            ls_endpoint: self.ls_endpoint.clone(),
        }
    }
}

/// Catch-up copies what one target holds onto another, so those bytes are input too: a
/// pack whose content no longer matches its hash, or a snapshot record whose MAC fails,
/// on the only target holding it, is named and never copied; the lagging target gets
/// nothing it could not verify. A damaged pack the new snapshot reuses keeps the new
/// target from holding it (degraded, exit 5); an old snapshot whose record is damaged
/// is skipped and named, and the run's own snapshot still reaches the new target.
/// (Two `file://` targets: no server needed.)
#[test]
fn catch_up_copies_nothing_that_fails_its_check() {
    catch_up_from_damaged("packs", "its content does not match its hash", 5, "target second: NOT stored");
    catch_up_from_damaged("snapshots", "MAC mismatch", 0, "not copied to target `second`");
}

/// Every object under `dir` on the first target damaged, then a second target joins:
/// the run names `why` and `what`, exits with `code`, and the second target holds no
/// damaged bytes.
fn catch_up_from_damaged(dir: &str, why: &str, code: i32, what: &str) {
    let name = format!("catchup-{dir}");
    let src = common::Scratch::new(&format!("{name}-src"));
    std::fs::write(src.path("a.txt"), "first").unwrap();
    let setup = common::Setup::new(&name, common::Target::Dir, &src.0);
    setup.backup();
    let first = Path::new(setup.target_url.strip_prefix("file://").unwrap()).to_path_buf();
    let damaged = objects(&first.join(dir));
    assert!(!damaged.is_empty(), "nothing under {}", first.join(dir).display());
    for p in &damaged {
        let mut b = std::fs::read(p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(p, b).unwrap();
    }
    let second = setup.dir.path("second");
    setup.add_dir_target("second", &second);
    let out = setup.run(&["backup", "data", "--no-progress"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(code), "{dir}: {said}");
    assert!(said.contains(what) && said.contains(why), "{dir}: {said}");
    let bad: Vec<Vec<u8>> = damaged.iter().map(|d| std::fs::read(d).unwrap()).collect();
    for p in objects(&second) {
        assert!(!bad.contains(&std::fs::read(&p).unwrap()), "{dir}: {} was copied", p.display());
    }
}

/// Every file under `root`.
fn objects(root: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type().unwrap().is_dir() {
                true => stack.push(e.path()),
                false => found.push(e.path()),
            }
        }
    }
    found
}
