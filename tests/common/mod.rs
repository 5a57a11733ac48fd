//! Shared helpers for the integration tests: they run the real `coffer` binary against a
//! real `file://` directory or the local S3 server started by `scripts/s3-server.sh`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_coffer");

/// A scratch directory removed when the test ends.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let base = std::env::var_os("COFFER_TEST_TMP").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("coffer-it-{name}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("COFFER_KEEP_TEST_DIRS").is_none() {
            let _ = Command::new("chmod").args(["-R", "u+rwX"]).arg(&self.0).output();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A command's `--json` output: one object per line, each with `"schema": 1`.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")));
    let lines: Vec<serde_json::Value> = lines.collect();
    assert!(lines.iter().all(|l| l["schema"] == 1), "a --json line without \"schema\": 1 in {text}");
    lines
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A source directory `src` in `scratch` holding one file of `mib` MiB of mixed data.
pub fn one_file_source(scratch: &Scratch, name: &str, seed: u64, mib: usize) -> PathBuf {
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join(name), Rng(seed).mixed(mib << 20)).unwrap();
    src
}

/// Size of each part made by `random_parts`.
pub const PART: usize = 32 << 20;

/// A source directory `src` in `scratch` holding `count` files of 32 MiB of random data
/// (incompressible, so a backup takes long enough to be interrupted).
pub fn random_parts(scratch: &Scratch, seed: u64, count: usize) -> PathBuf {
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(seed);
    for i in 0..count {
        let mut data = vec![0u8; PART];
        rng.fill(&mut data);
        std::fs::write(src.join(format!("part{i:02}.bin")), data).unwrap();
    }
    src
}

/// A configuration: state and repository secret under `state/`, one recipient, the
/// target, then `extra` (a `[[job]]`, further keys).
pub fn config_text(recipient: &str, target_url: &str, extra: &str) -> String {
    format!(
        "state_dir = \"state\"\nrecipients = [\"{}\"]\nrepo_secret_file = \"state/repo.secret\"\n\
         [target]\nurl = \"{target_url}\"\n{extra}",
        recipient.trim()
    )
}

pub fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// Where backups go in a test.
pub enum Target {
    Dir,
    S3,
}

/// True when the local S3 server's environment is present. Tests that need it fail when
/// COFFER_TEST_S3=require (the README's test command sets it) and skip loudly otherwise.
pub fn s3_available() -> bool {
    let have = std::env::var("AWS_ENDPOINT_URL").is_ok() && std::env::var("AWS_ACCESS_KEY_ID").is_ok();
    if !have {
        if std::env::var("COFFER_TEST_S3").as_deref() == Ok("require") {
            panic!("COFFER_TEST_S3=require but no S3 server: run `eval \"$(scripts/s3-server.sh start)\"`");
        }
        eprintln!("SKIPPED: no local S3 server (AWS_ENDPOINT_URL unset); run scripts/test.sh for the full suite");
    }
    have
}

/// Creates a fresh bucket on the local S3 server, with Object Lock or without.
pub fn make_bucket(name: &str, object_lock: bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server.sh");
    let lock_flag: &[&str] = if object_lock { &[] } else { &["--no-lock"] };
    let out = Command::new("bash").arg(script).args(["mkbucket", name]).args(lock_flag).output().unwrap();
    assert!(out.status.success(), "mkbucket {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A configured coffer setup: identity, config, state and target in a scratch directory.
pub struct Setup {
    pub dir: Scratch,
    pub config: PathBuf,
    pub identity: PathBuf,
    pub target_url: String,
}

impl Setup {
    /// Keygen + config for one job `data` backing up `source`; `init` is run.
    pub fn new(name: &str, target: Target, source: &Path) -> Setup {
        Self::with_extra(name, target, source, "")
    }

    pub fn with_extra(name: &str, target: Target, source: &Path, job_extra: &str) -> Setup {
        Self::with_source(name, target, &format!("{{ path = \"{}\" }}", source.display()), job_extra)
    }

    /// Keygen + config for one job `data` with `source` (TOML inline table) then
    /// `job_extra`; `init` is run.
    pub fn with_source(name: &str, target: Target, source: &str, job_extra: &str) -> Setup {
        let dir = Scratch::new(name);
        // Not beside the config: the preflight refuses an identity on the backup host.
        std::fs::create_dir_all(dir.path("offline")).unwrap();
        let identity = dir.path("offline/identity.txt");
        let out = run_ok(Command::new(BIN).args(["keygen", "-o"]).arg(&identity));
        let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let target_url = match target {
            Target::Dir => format!("file://{}", dir.path("target").display()),
            Target::S3 => {
                let bucket = format!("it-{}-{}", name.replace('_', "-"), nanos() % 1_000_000_000);
                make_bucket(&bucket, true);
                format!("s3://{bucket}/coffer")
            }
        };
        let config = dir.path("coffer.toml");
        let job = format!("[[job]]\nname = \"data\"\nsource = {source}\n{job_extra}");
        std::fs::write(&config, config_text(&recipient, &target_url, &job)).unwrap();
        let s = Setup { dir, config, identity, target_url };
        s.ok(&["init"]);
        s
    }

    /// Replaces the config's target table(s) with `tables` (`[[target]]` tables).
    pub fn set_targets(&self, tables: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let job = text.find("[[job]]").unwrap();
        let head = text[..job].split("[[target]]").next().unwrap().split("[target]").next().unwrap();
        std::fs::write(&self.config, format!("{head}{tables}{}", &text[job..])).unwrap();
    }

    /// A `file://` target `name` at `dir`, then the setup's own target as `default`.
    pub fn add_dir_target(&self, name: &str, dir: &Path) {
        self.set_targets(&format!(
            "[[target]]\nname = \"{name}\"\nurl = \"file://{}\"\n[[target]]\nname = \"default\"\nurl = \"{}\"\n",
            dir.display(),
            self.target_url
        ));
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        run_ok(&mut self.cmd(args))
    }

    pub fn backup(&self) -> Output {
        self.ok(&["backup", "data", "--no-progress"])
    }

    pub fn restore(&self, snapshot: &str, to: &Path) -> Output {
        let mut c = self.cmd(&["restore", snapshot, "--job", "data", "--to"]);
        c.arg(to).arg("--identity").arg(&self.identity);
        c.output().unwrap()
    }

    /// Restores the latest snapshot to `out` and asserts it equals `src`.
    pub fn assert_restores(&self, src: &Path, out: &Path) {
        let r = self.restore("latest", out);
        assert!(r.status.success(), "restore failed: {}", text(&r));
        assert_same_tree(src, out);
    }

    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        json_lines(&self.ok(&["snapshots", "--json"]))
    }

    pub fn catalog(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path("state/catalog.sqlite")).unwrap()
    }

    pub fn pack_hashes(&self) -> Vec<String> {
        let c = self.catalog();
        let mut st = c.prepare("SELECT hash FROM packs ORDER BY id").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
    }

    /// Runs `tests/s3_inspect.py CMD BUCKET PREFIX/ ARGS…` (boto3: another client than
    /// coffer's) on this setup's S3 target; returns its stdout lines parsed as JSON.
    pub fn s3_inspect(&self, cmd: &str, args: &[&str]) -> Vec<serde_json::Value> {
        let rest = self.target_url.strip_prefix("s3://").expect("an S3 target");
        let (bucket, prefix) = rest.split_once('/').expect("a bucket and a prefix");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_inspect.py");
        let out = run_ok(Command::new("python3").arg(script).args([cmd, bucket, &format!("{prefix}/")]).args(args));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Packs the catalog holds (0 while it cannot be read).
    pub fn pack_count(&self) -> i64 {
        self.catalog().query_row("SELECT count(*) FROM packs", [], |r| r.get(0)).unwrap_or(0)
    }

    /// Raw bytes of every chunk the catalog holds.
    /// The plaintext bytes of every chunk the catalog records as stored: indexed, or in
    /// the chunk list of a pack not indexed yet (what a killed run leaves).
    pub fn stored_raw_bytes(&self) -> i64 {
        let c = self.catalog();
        let indexed: i64 = c.query_row("SELECT coalesce(sum(raw_length), 0) FROM chunks", [], |r| r.get(0)).unwrap();
        let mut st = c.prepare("SELECT blobs FROM unindexed").unwrap();
        let lists = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap().map(|l| l.unwrap());
        // Entries of 49 bytes: id (32), offset (8), length (4), raw length (4), flags.
        let raw = |e: &[u8]| i64::from(u32::from_le_bytes(e[44..48].try_into().unwrap()));
        indexed + lists.map(|l| l.chunks_exact(49).map(raw).sum::<i64>()).sum::<i64>()
    }

    pub fn integrity_ok(&self) {
        let v: String = self.catalog().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(v, "ok");
    }
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds of MiB.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    /// Half random, half text-like (compressible), in 64 KiB runs.
    pub fn mixed(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        for (i, c) in v.chunks_mut(64 * 1024).enumerate() {
            if i % 2 == 0 {
                self.fill(c);
            } else {
                let seed = self.next();
                for (j, b) in c.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog\n"[(j + seed as usize % 7) % 44];
                }
            }
        }
        v
    }
}

/// Everything a user would compare after a restore: kind, mode, mtime, link target,
/// and a content hash, keyed by relative path.
pub fn snapshot_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    described_tree(root, true)
}

/// Each entry under `root` by relative path: kind, mode, link target, content hash, and
/// (`with_mtime`) modification time.
pub fn described_tree(root: &Path, with_mtime: bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = m.permissions().mode() & 0o7777;
            let mtime = if with_mtime { format!(" {:?}", (m.mtime(), m.mtime_nsec())) } else { String::new() };
            let desc = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o}{mtime}")
            } else {
                let hash = blake3::hash(&std::fs::read(&p).unwrap());
                format!("file {mode:o}{mtime} {} {}", m.len(), hash)
            };
            out.insert(rel, desc);
        }
    }
    out
}

/// Runs `cmd` with `input` on its standard input; its output.
pub fn piped(cmd: &mut Command, input: &[u8]) -> Output {
    use std::process::Stdio;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input).unwrap();
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Asserts two trees are identical, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (snapshot_tree(a), snapshot_tree(b));
    for (k, v) in &ta {
        assert_eq!(Some(v), tb.get(k), "restored tree differs at {}", k.display());
    }
    assert_eq!(ta.len(), tb.len(), "restored tree has extra entries");
}

/// Sets a file's mtime (and atime) to a fixed time, without following links.
pub fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec { tv_sec: secs, tv_nsec: nsec };
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0);
}

/// A command-line checker the full suite needs (`name --version` answers), or `None`
/// with a loud skip outside it; `install` says how to get it.
pub fn tool(name: &'static str, install: &str) -> Option<&'static str> {
    if Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(name);
    }
    if std::env::var("COFFER_TEST_S3").as_deref() == Ok("require") {
        panic!("the full suite needs {name}: {install}");
    }
    eprintln!("SKIPPED: {name} is not installed ({install})");
    None
}

/// A second gateway of the test S3 cluster that a test may stop (stopped when dropped).
pub struct Gateway {
    name: String,
    port: u16,
}

impl Gateway {
    pub fn start(name: &str, port: u16) -> Gateway {
        let g = Gateway { name: name.to_string(), port };
        g.start_again();
        g
    }

    fn script(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server.sh");
        run_ok(Command::new("bash").arg(script).args(args));
    }

    pub fn start_again(&self) {
        self.script(&["gateway-start", &self.name, &self.port.to_string()]);
    }

    pub fn stop(&self) {
        self.script(&["gateway-stop", &self.name]);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd` under GNU time: its output, and its peak resident set in KiB.
pub fn peak_rss(cmd: &mut Command) -> (Output, u64) {
    let report = std::env::temp_dir().join(format!("coffer-rss-{}-{}", std::process::id(), nanos()));
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-f").arg("%M").arg("-o").arg(&report).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let out = timed.output().unwrap();
    let kib = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_file(&report);
    let kib = kib.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("no RSS: {kib}"));
    (out, kib)
}

/// moto's server with one bucket with Object Lock; stopped (stdin closed) on drop.
pub struct Moto(Child, pub u16);

impl Moto {
    pub fn start(bucket: &str) -> Option<Moto> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto_s3.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(bucket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take()?).read_line(&mut line).ok()?;
        match line.trim().parse() {
            Ok(port) => Some(Moto(child, port)),
            Err(_) => {
                let _ = child.wait();
                None
            }
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `coffer mount` running in the background on a directory of its own.
pub struct Mounted {
    pub child: Child,
    pub dir: PathBuf,
}

impl Mounted {
    /// Mounts the snapshots of `config` on `dir` (extra arguments after), and waits for
    /// `by-job` to appear. `None` (said on stderr) where FUSE cannot be used: not root,
    /// or no /dev/fuse.
    pub fn start(config: &Path, identity: &Path, dir: &Path, extra: &[&str]) -> Option<Mounted> {
        if !rustix::process::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
            eprintln!("SKIPPED: FUSE needs root and /dev/fuse here");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("mount")
            .arg(dir)
            .arg("--identity")
            .arg(identity)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut mounted = Mounted { child, dir: dir.to_path_buf() };
        let t0 = std::time::Instant::now();
        while !dir.join("by-job").exists() {
            if let Some(status) = mounted.child.try_wait().unwrap() {
                let mut said = String::new();
                std::io::Read::read_to_string(mounted.child.stderr.as_mut().unwrap(), &mut said).unwrap();
                panic!("coffer mount exited {status}: {said}");
            }
            assert!(t0.elapsed() < std::time::Duration::from_secs(20), "the mount did not appear");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(mounted)
    }

    /// Whether the kernel still lists the mount.
    pub fn is_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        mounts.lines().any(|l| l.split(' ').nth(1) == Some(self.dir.to_str().unwrap()))
    }

    /// Sends `signal` and waits for the mount to end: its exit status and what it said.
    pub fn stop(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) on the child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().unwrap();
        let mut said = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut said).unwrap();
        (status, said)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.is_mounted() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
    }
}
