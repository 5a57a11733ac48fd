//! A second target that is hostile or broken (`tests/hostile_s3.py`, a small S3 endpoint
//! of the attacker's): it answers a create-only PUT with "already exists" and then
//! announces 10^15 bytes for the object; it never answers at all; it lists without end.
//! coffer must neither abort, nor wait out its retry budget, nor grow without bound, and
//! the honest target still gets every run's snapshot.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Setup, json_lines, peak_rss, text};

/// The hostile endpoint, stopped when dropped.
struct Hostile {
    child: Child,
    port: u16,
}

impl Hostile {
    fn start(mode: &str, dir: &Path) -> Hostile {
        let port_file = dir.join(format!("port-{mode}"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile_s3.py");
        let child = Command::new("python3").arg(script).arg(mode).arg(&port_file).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_file.exists() {
            assert!(Instant::now() < deadline, "the hostile endpoint did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
        Hostile { child, port }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The setup's own `file://` target, then the hostile one (unlocked S3, its own keys).
fn with_hostile_target(setup: &Setup, port: u16) {
    let targets = format!(
        "[[target]]\nname = \"default\"\nurl = \"{}\"\n\
         [[target]]\nname = \"evil\"\nurl = \"s3://evil/coffer\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
         region = \"us-east-1\"\nlock_mode = \"none\"\naccess_key_id_env = \"EVIL_KEY\"\n\
         secret_access_key_env = \"EVIL_SECRET\"\n",
        setup.target_url
    );
    setup.set_targets(&targets);
}

fn coffer(setup: &Setup, args: &[&str]) -> Command {
    let mut c = setup.cmd(args);
    c.env("EVIL_KEY", "evil-key").env("EVIL_SECRET", "evil-secret");
    c
}

#[test]
fn a_hostile_target_cannot_abort_stall_or_exhaust_coffer() {
    let src = common::Scratch::new("hostile-src");
    std::fs::write(src.path("a.txt"), "data").unwrap();
    let setup = Setup::new("hostile", common::Target::Dir, &src.0);
    setup.backup();

    // "Already exists", then 10^15 bytes announced: refused before anything is allocated.
    let evil = Hostile::start("huge", &setup.dir.0);
    with_hostile_target(&setup, evil.port);
    let (out, rss) = peak_rss(&mut coffer(&setup, &["backup", "data", "--no-progress"]));
    eprintln!("huge: peak RSS {rss} KiB");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("target evil: NOT stored"), "{}", text(&out));
    assert!(text(&out).contains("announces 1000000000000000 bytes"), "{}", text(&out));
    assert!(text(&out).contains("target default: stored"), "{}", text(&out));
    assert!(rss < 200 * 1024, "peak RSS {rss} KiB");
    drop(evil);

    // Never an answer: left out of the run in seconds, not after its 15-minute budget.
    let evil = Hostile::start("silent", &setup.dir.0);
    with_hostile_target(&setup, evil.port);
    let started = Instant::now();
    let out = coffer(&setup, &["backup", "data", "--no-progress"]).output().unwrap();
    let took = started.elapsed();
    eprintln!("silent: the run took {took:?}");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("did not answer within 20s"), "{}", text(&out));
    assert!(text(&out).contains("target default: stored"), "{}", text(&out));
    assert!(took < Duration::from_secs(120), "the run waited {took:?}");
    drop(evil);

    // A listing without end: refused at its bound, memory bounded.
    let evil = Hostile::start("endless", &setup.dir.0);
    with_hostile_target(&setup, evil.port);
    let (out, rss) = peak_rss(&mut coffer(&setup, &["verify", "--target", "evil"]));
    eprintln!("endless: peak RSS {rss} KiB");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("the listing goes on past 1000000 entries"), "{}", text(&out));
    assert!(rss < 200 * 1024, "peak RSS {rss} KiB");
    // The scrub, too: that target fails, named; the honest one is scrubbed.
    let out = coffer(&setup, &["scrub"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("target `evil`") && text(&out).contains("listing goes on past"), "{}", text(&out));
    let runs = json_lines(&setup.ok(&["runs", "@scrub", "--json"]));
    assert_eq!(runs[0]["outcome"], "failed", "{:?}", runs[0]);
    drop(evil);

    // A listing of garbage (terminal escapes, invalid UTF-8): a clear error, and not one
    // byte of the server's answer reaches the terminal raw.
    let evil = Hostile::start("garbage", &setup.dir.0);
    with_hostile_target(&setup, evil.port);
    for args in [&["verify", "--target", "evil"][..], &["scrub"][..]] {
        let out = coffer(&setup, args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("target `evil`") || text(&out).contains("evil"), "{args:?}: {}", text(&out));
        for raw in [&b"\x1b"[..], &b"\x07"[..], &b"\xff"[..]] {
            let said = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
            assert!(!said.windows(raw.len()).any(|w| w == raw), "{args:?} printed a raw {raw:?}: {}", text(&out));
        }
    }
    drop(evil);

    // The honest target holds every run's snapshot and restores.
    let snapshots = setup.snapshots();
    assert_eq!(snapshots.len(), 3, "{snapshots:?}");
    let out = setup.dir.path("restored");
    let mut r = coffer(&setup, &["restore", "latest", "--job", "data", "--target", "default", "--to"]);
    let r = r.arg(&out).arg("--identity").arg(&setup.identity).output().unwrap();
    assert!(r.status.success(), "{}", text(&r));
    common::assert_same_tree(&src.0, &out);
}
