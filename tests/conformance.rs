//! The store conformance suite: what coffer needs of every kind of store, checked through
//! `Target` (the one API every command reaches storage by) against every provider the
//! tests can start: a directory (`file://`), Ceph RGW, LocalStack, SeaweedFS and moto.
//! A new store kind runs it by adding one row to `providers()`.
//!
//! Each provider's result is held against what the README says it fails (`EXPECTED`): a
//! provider that starts passing a check, or stops, fails the suite until the table and
//! the README say so.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coffer::catalog::TargetId;
use coffer::retry::Retry;
use coffer::runtime::block_on;
use coffer::store::{AlreadyExists, LockMode, Target};
use common::*;

/// Every check, in the order they run.
const CHECKS: &[(&str, Check)] = &[
    ("create-only put", create_only),
    ("read by version", versions),
    ("lock and extension", lock_and_extension),
    ("delete and shortening refused", refusals),
    ("legal hold read", legal_hold),
    ("hostile keys listed back", hostile_keys),
    ("bounded reads", bounded_reads),
    ("a missing object is not retried", missing_not_retried),
    ("retried through dropped connections", retried_through_drops),
    ("a put whose answer was lost is kept once", lost_answer_kept),
    ("an outage ends at the retry budget", outage_gives_up),
];

/// What each provider is known to fail, with why (the README's table says the same).
const EXPECTED: &[(&str, &str, &str)] = &[
    (
        "ceph",
        "create-only put",
        "Ceph 16 ignores `If-None-Match: *` on a versioned bucket: a second put is a new version",
    ),
    ("moto", "lock and extension", "moto 5.2 answers GetObjectRetention of a version with the object's bytes"),
    (
        "moto",
        "delete and shortening refused",
        "moto 5.2 answers GetObjectRetention of a version with the object's bytes",
    ),
    ("seaweedfs", "hostile keys listed back", "SeaweedFS 4.48 stores a key's `\\` as `/`"),
    (
        "ceph",
        "a put whose answer was lost is kept once",
        "Ceph 16 ignores `If-None-Match: *`: the retried put is a second, identical version",
    ),
];

/// A check's verdict: passed, or does not apply to this kind (and why); or why it failed.
type Verdict = Result<Applies, String>;

#[derive(Debug, PartialEq)]
enum Applies {
    Passed,
    NotApplicable(&'static str),
}

use Applies::{NotApplicable, Passed};

type Check = fn(&Store) -> Verdict;

/// One provider as the checks reach it.
struct Store {
    /// A target with a retry budget of a few seconds, through a proxy that can drop
    /// connections (S3 kinds) or straight (a directory).
    target: Target,
    retry: Retry,
    proxy: Option<Proxy>,
    /// The same store's URL and table, to open it again elsewhere (an outage).
    table: String,
    locks: bool,
}

/// A provider by name: its target table, and the server the suite started for it (moto),
/// where it runs here.
type Provider = (&'static str, Option<(String, Option<Moto>)>);

#[test]
fn every_store_kind_passes_what_coffer_needs_of_it() {
    let scratch = Scratch::new("conformance");
    let mut table = Vec::new();
    let mut wrong = Vec::new();
    let mut tested = Vec::new();
    for (name, provider) in providers(&scratch) {
        let Some((target_table, _keep)) = provider else { continue };
        tested.push(name);
        let store = open(&target_table);
        for (check, run) in CHECKS {
            let started = Instant::now();
            let result = run(&store);
            let expected = EXPECTED.iter().find(|(p, c, _)| *p == name && c == check);
            let shown = match &result {
                Ok(Passed) => "pass".to_string(),
                Ok(NotApplicable(why)) => format!("n/a: {why}"),
                Err(why) => format!("FAIL: {why}"),
            };
            eprintln!("{name:10} {check:40} {:>5.1}s {shown}", started.elapsed().as_secs_f64());
            match (&result, expected) {
                (Ok(_), Some((_, _, why))) => wrong.push(format!("{name}: `{check}` passes now ({why})")),
                (Err(e), None) => wrong.push(format!("{name}: `{check}` fails: {e}")),
                _ => {}
            }
            table.push((name, *check, result.is_ok()));
        }
    }
    assert!(wrong.is_empty(), "the providers do not behave as documented:\n  {}", wrong.join("\n  "));
    assert!(tested.contains(&"file"), "the directory kind always runs");
    eprintln!("conformance: {} providers, {} checks each", tested.len(), CHECKS.len());
}

/// Every provider the suite knows: its target table, or `None` when it cannot run here
/// (a failure when COFFER_TEST_S3=require, as the README's test command sets).
fn providers(scratch: &Scratch) -> Vec<Provider> {
    let stamp = nanos() % 1_000_000_000;
    let dir = format!("url = \"file://{}\"\n", scratch.path("target").display());
    let ceph = std::env::var("AWS_ENDPOINT_URL").ok().filter(|_| s3_available()).map(|endpoint| {
        let bucket = format!("conf-ceph-{stamp}");
        make_bucket(&bucket, true);
        s3_table(&bucket, &endpoint, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    });
    let localstack = std::env::var("COFFER_TEST_LOCALSTACK").ok().map(|endpoint| {
        let bucket = format!("conf-ls-{stamp}");
        mkbucket(&bucket, &endpoint, "test", "test");
        s3_table(&bucket, &endpoint, "COFFER_CONFORMANCE_ANY_KEY", "COFFER_CONFORMANCE_ANY_KEY")
    });
    let seaweedfs = std::env::var("COFFER_TEST_SEAWEEDFS").ok().map(|endpoint| {
        let bucket = format!("conf-sw-{stamp}");
        let (id, secret) = (env("COFFER_SEAWEEDFS_ACCESS_KEY"), env("COFFER_SEAWEEDFS_SECRET_KEY"));
        mkbucket(&bucket, &endpoint, &id, &secret);
        s3_table(&bucket, &endpoint, "COFFER_SEAWEEDFS_ACCESS_KEY", "COFFER_SEAWEEDFS_SECRET_KEY")
    });
    let moto = Moto::start("conf-moto").map(|moto| {
        let port = moto.1;
        let table = s3_table(
            "conf-moto",
            &format!("http://127.0.0.1:{port}"),
            "COFFER_CONFORMANCE_ANY_KEY",
            "COFFER_CONFORMANCE_ANY_KEY",
        );
        (table, Some(moto))
    });
    let required = std::env::var("COFFER_TEST_S3").as_deref() == Ok("require");
    let mut all: Vec<Provider> = vec![
        ("file", Some((dir, None))),
        ("ceph", ceph.map(|t| (t, None))),
        ("localstack", localstack.map(|t| (t, None))),
        ("seaweedfs", seaweedfs.map(|t| (t, None))),
        ("moto", moto),
    ];
    for (name, provider) in &mut all {
        if provider.is_none() {
            assert!(!required, "COFFER_TEST_S3=require but {name} is not running (scripts/test.sh starts it)");
            eprintln!("SKIPPED: {name} is not running; scripts/test.sh starts every provider");
        }
    }
    all
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// An `s3://` target table whose credentials are in the variables named.
fn s3_table(bucket: &str, endpoint: &str, id_env: &str, secret_env: &str) -> String {
    format!(
        "url = \"s3://{bucket}/coffer\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n\
         access_key_id_env = \"{id_env}\"\nsecret_access_key_env = \"{secret_env}\"\n"
    )
}

/// A bucket with Object Lock, made by boto3 (not coffer's code).
fn mkbucket(bucket: &str, endpoint: &str, id: &str, secret: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_inspect.py");
    run_ok(Command::new("python3").arg(script).args(["mkbucket", bucket, "coffer/"]).envs([
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", id),
        ("AWS_SECRET_ACCESS_KEY", secret),
    ]));
}

/// The target a table names, behind a proxy where it is reached over the network, with
/// a short retry budget. The config's parser reads the table, as coffer does.
fn open(table: &str) -> Store {
    // SAFETY: set once, before any target reads its credentials; the suite is one test.
    unsafe { std::env::set_var("COFFER_CONFORMANCE_ANY_KEY", "test") };
    let parsed = parse(table);
    let proxy = parsed.options_endpoint().map(Proxy::start);
    let table = match &proxy {
        Some(p) => table.replace(&parsed.endpoint.clone().unwrap(), &format!("http://127.0.0.1:{}", p.port)),
        None => table.to_string(),
    };
    let cfg = parse(&table).cfg;
    let retry = Retry::new(Duration::from_secs(8), None);
    let target = Target::open_with(&cfg, TargetId(1), retry.clone()).unwrap();
    let locks = target.locks();
    Store { target, retry, proxy, table, locks }
}

struct Parsed {
    cfg: coffer::config::TargetConfig,
    endpoint: Option<String>,
}

impl Parsed {
    fn options_endpoint(&self) -> Option<SocketAddr> {
        let endpoint = self.endpoint.as_ref()?;
        endpoint.trim_start_matches("http://").parse().ok()
    }
}

fn parse(table: &str) -> Parsed {
    let value: toml::Value = toml::from_str(table).unwrap();
    let endpoint = value.get("endpoint").and_then(|e| e.as_str()).map(str::to_string);
    let mut targets = coffer::store::config::parse_targets(value, &Default::default()).unwrap();
    let mut cfg = targets.remove(0);
    cfg.max_lock_days = 30;
    Parsed { cfg, endpoint }
}

fn check(passed: bool, why: impl Into<String>) -> Verdict {
    if passed { Ok(Passed) } else { Err(why.into()) }
}

fn now() -> i64 {
    coffer::time::now_secs()
}

fn key(name: &str) -> String {
    format!("conformance/{name}-{}", nanos() % 1_000_000_000)
}

fn create_only(s: &Store) -> Verdict {
    let k = key("once");
    block_on(s.target.put_new(&k, Bytes::from_static(b"first"), now() + 86_400)).map_err(|e| format!("{e:#}"))?;
    let second = block_on(s.target.put_new(&k, Bytes::from_static(b"second"), now() + 86_400));
    if !s.target.capabilities().create_only {
        return Ok(NotApplicable("the kind does not refuse a second write"));
    }
    match second {
        Err(e) if e.is::<AlreadyExists>() => {}
        Err(e) => return Err(format!("a second put failed otherwise: {e:#}")),
        Ok(_) => return Err("a second put to the same key was accepted".into()),
    }
    let got = block_on(s.target.get(&k, None, 16)).map_err(|e| format!("{e:#}"))?;
    check(got == "first", format!("the key reads {got:?}"))
}

fn versions(s: &Store) -> Verdict {
    let k = key("versioned");
    let version = block_on(s.target.put_new(&k, Bytes::from_static(b"v1 bytes"), now() + 86_400))
        .map_err(|e| format!("{e:#}"))?;
    if !s.target.capabilities().versions {
        check(version.is_none(), "a kind without versions returned a version id")?;
        return Ok(NotApplicable("the kind keeps no versions"));
    }
    let version = version.ok_or("no version id for a put")?;
    let listed = block_on(s.target.list("conformance")).map_err(|e| format!("{e:#}"))?;
    if !listed.iter().any(|v| v.key == k && v.version_id.as_deref() == Some(&version)) {
        return Err(format!("the listing lacks {k} at version {version}"));
    }
    let got = block_on(s.target.get(&k, Some(&version), 8)).map_err(|e| format!("{e:#}"))?;
    let size = block_on(s.target.size_of(&k, Some(&version))).map_err(|e| format!("{e:#}"))?;
    check(got == "v1 bytes" && size == Some(8), format!("version reads {got:?}, size {size:?}"))
}

/// Puts a locked object; returns its key and version.
fn locked(s: &Store, name: &str, until: i64) -> Result<(String, Option<String>), String> {
    let k = key(name);
    let v = block_on(s.target.put_new(&k, Bytes::from_static(b"locked"), until)).map_err(|e| format!("{e:#}"))?;
    Ok((k, v))
}

fn lock_and_extension(s: &Store) -> Verdict {
    let until = now() + 86_400;
    let (k, v) = locked(s, "lock", until)?;
    let lock = block_on(s.target.lock_of(&k, v.as_deref())).map_err(|e| format!("{e:#}"))?;
    if !s.locks {
        check(lock.is_none(), format!("a target that does not lock reports a lock {lock:?}"))?;
        return Ok(NotApplicable("the target does not lock"));
    }
    match lock {
        Some(l) if l.mode == LockMode::Compliance && (l.until - until).abs() <= 1 => {}
        other => return Err(format!("the lock reads {other:?}, not COMPLIANCE until {until}")),
    }
    block_on(s.target.extend_lock(&k, v.as_deref(), until + 86_400)).map_err(|e| format!("{e:#}"))?;
    match block_on(s.target.lock_of(&k, v.as_deref())).map_err(|e| format!("{e:#}"))? {
        Some(l) if (l.until - (until + 86_400)).abs() <= 1 => Ok(Passed),
        other => Err(format!("after the extension the lock reads {other:?}")),
    }
}

fn refusals(s: &Store) -> Verdict {
    if !s.locks {
        return Ok(NotApplicable("the target does not lock"));
    }
    let until = now() + 2 * 86_400;
    let (k, v) = locked(s, "refuse", until)?;
    if block_on(s.target.delete(&k, v.as_deref())).is_ok() {
        return Err("a locked version was deleted".into());
    }
    // Shortening goes through the same call as an extension, with an earlier date.
    let shortened = block_on(s.target.extend_lock(&k, v.as_deref(), now() + 3600));
    let lock = block_on(s.target.lock_of(&k, v.as_deref())).map_err(|e| format!("{e:#}"))?;
    match (shortened, lock) {
        (Err(_), Some(l)) if l.until >= until - 1 => {}
        (r, l) => {
            return Err(format!("shortening answered {:?}; the lock reads {l:?}", r.map_err(|e| format!("{e:#}"))));
        }
    }
    let still = block_on(s.target.get(&k, v.as_deref(), 16)).map_err(|e| format!("{e:#}"))?;
    check(still == "locked", "the version changed".to_string())
}

fn legal_hold(s: &Store) -> Verdict {
    let (k, v) = locked(s, "hold", now() + 86_400)?;
    match block_on(s.target.legal_hold(&k, v.as_deref())) {
        Ok(false) => Ok(Passed),
        Ok(true) => Err("a fresh object reads as held".into()),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Names a hostile writer of the bucket (or a path) could give keys: every one is
/// written, listed back byte for byte, and read.
const HOSTILE: &[&str] = &[
    "sp ace",
    "pl+us",
    "per%25cent",
    "q?x=1",
    "h#sh",
    "semi;colon",
    "back\\slash",
    "ü-ñ-日本",
    "quote\"",
    "amp&lt",
    "til~de",
    "(paren)",
    "star*",
    "com,ma",
    "dollar$",
    "at@",
    "eq=ual",
];

fn hostile_keys(s: &Store) -> Verdict {
    let sub = key("hostile");
    for name in HOSTILE {
        let k = format!("{sub}/{name}");
        block_on(s.target.put_new(&k, Bytes::from(name.as_bytes().to_vec()), now() + 86_400))
            .map_err(|e| format!("put {k:?}: {e:#}"))?;
    }
    let listed = block_on(s.target.list(&sub)).map_err(|e| format!("{e:#}"))?;
    let mut got: Vec<&str> = listed.iter().map(|v| v.key.trim_start_matches(&format!("{sub}/"))).collect();
    got.sort();
    let mut want = HOSTILE.to_vec();
    want.sort();
    if got != want {
        return Err(format!("listed {got:?}"));
    }
    for name in HOSTILE {
        let k = format!("{sub}/{name}");
        let bytes = block_on(s.target.get(&k, None, 64)).map_err(|e| format!("get {k:?}: {e:#}"))?;
        if bytes != name.as_bytes() {
            return Err(format!("{k:?} reads {bytes:?}"));
        }
    }
    Ok(Passed)
}

fn bounded_reads(s: &Store) -> Verdict {
    let k = key("bounded");
    block_on(s.target.put_new(&k, Bytes::from(vec![7u8; 100_000]), now() + 86_400)).map_err(|e| format!("{e:#}"))?;
    match block_on(s.target.get(&k, None, 99_999)) {
        Ok(_) => return Err("a body larger than the ceiling was read".into()),
        Err(e) if format!("{e:#}").contains("more than the 99999") => {}
        Err(e) => return Err(format!("refused for another reason: {e:#}")),
    }
    let whole = block_on(s.target.get(&k, None, 100_000)).map_err(|e| format!("{e:#}"))?;
    check(whole.len() == 100_000, "short read".to_string())
}

fn missing_not_retried(s: &Store) -> Verdict {
    let before = s.retry.retries();
    let started = Instant::now();
    let missing = block_on(s.target.size_of(&key("missing"), None)).map_err(|e| format!("{e:#}"))?;
    if missing.is_some() {
        return Err("a missing key has a size".into());
    }
    let retried = s.retry.retries() - before;
    check(
        retried == 0 && started.elapsed() < Duration::from_secs(5),
        format!("{retried} retries, {:?}", started.elapsed()),
    )
}

fn retried_through_drops(s: &Store) -> Verdict {
    let Some(proxy) = &s.proxy else { return Ok(NotApplicable("no network between coffer and the store")) };
    let before = s.retry.retries();
    proxy.drop_next(3);
    let k = key("dropped");
    block_on(s.target.put_new(&k, Bytes::from_static(b"through"), now() + 86_400)).map_err(|e| format!("{e:#}"))?;
    let got = block_on(s.target.get(&k, None, 16)).map_err(|e| format!("{e:#}"))?;
    let retried = s.retry.retries() - before;
    check(got == "through" && retried >= 1, format!("read {got:?} after {retried} retries"))
}

fn lost_answer_kept(s: &Store) -> Verdict {
    let Some(proxy) = &s.proxy else { return Ok(NotApplicable("no network between coffer and the store")) };
    let before = s.retry.retries();
    proxy.swallow_next_answer();
    let k = key("lost");
    let version = block_on(s.target.put_new(&k, Bytes::from_static(b"stored once"), now() + 86_400))
        .map_err(|e| format!("{e:#}"))?;
    let retried = s.retry.retries() - before;
    let got = block_on(s.target.get(&k, version.as_deref(), 16)).map_err(|e| format!("{e:#}"))?;
    let listed = block_on(s.target.list(&k)).map_err(|e| format!("{e:#}"))?;
    let copies = listed.iter().filter(|v| v.key == k && !v.delete_marker).count();
    check(
        retried >= 1 && got == "stored once" && copies == 1,
        format!("after {retried} retries it reads {got:?}; {copies} versions"),
    )
}

fn outage_gives_up(s: &Store) -> Verdict {
    if s.proxy.is_none() {
        return Ok(NotApplicable("no network between coffer and the store"));
    }
    // The same store behind a port where nothing answers.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = parse(&s.table).endpoint.unwrap();
    let cfg = parse(&s.table.replace(&endpoint, &format!("http://127.0.0.1:{dead}"))).cfg;
    let retry = Retry::new(Duration::from_secs(2), None);
    let target = Target::open_with(&cfg, TargetId(1), retry.clone()).unwrap();
    let started = Instant::now();
    let e = match block_on(target.put_new(&key("outage"), Bytes::from_static(b"x"), now() + 86_400)) {
        Ok(_) => return Err("a put to a dead endpoint succeeded".into()),
        Err(e) => format!("{e:#}"),
    };
    let took = started.elapsed();
    check(
        e.contains("retry budget") && retry.retries() >= 2 && took < Duration::from_secs(15),
        format!("after {took:?} and {} retries: {e}", retry.retries()),
    )
}

/// A TCP proxy in front of a provider that can drop the next connections it accepts
/// (a network that resets them), and otherwise forwards bytes both ways.
struct Proxy {
    port: u16,
    drops: Arc<AtomicUsize>,
    /// Connections whose answer is read from the server and never passed on.
    swallows: Arc<AtomicUsize>,
    open: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let drops = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let swallows = Arc::new(AtomicUsize::new(0));
        let (to_drop, to_swallow, opened) = (drops.clone(), swallows.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if to_drop.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                opened.lock().unwrap().push(client.try_clone().unwrap());
                let swallow = to_swallow.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                std::thread::spawn(move || pipe(client, server));
                match swallow {
                    true => std::thread::spawn(move || swallow_answer(s2, c2)),
                    false => std::thread::spawn(move || pipe(s2, c2)),
                };
            }
        });
        Proxy { port, drops, swallows, open }
    }

    /// Drops the next `n` connections, and every connection now open (the client's pool
    /// would otherwise go on using them).
    fn drop_next(&self, n: usize) {
        self.drops.store(n, Ordering::SeqCst);
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The next request reaches the server; its answer is lost on the way back (every open
/// connection is closed first, so that the request takes a new one).
impl Proxy {
    fn swallow_next_answer(&self) {
        self.swallows.store(1, Ordering::SeqCst);
        self.drop_next(0);
    }
}

/// Reads the server's answer and closes the client's connection without a byte of it.
fn swallow_answer(mut server: TcpStream, client: TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = server.read(&mut buf);
    let _ = client.shutdown(std::net::Shutdown::Both);
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
