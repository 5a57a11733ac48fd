//! The scrub, run by hand and by the daemon, without the identity: a pack changed by one
//! byte on the target is found and named, and the next backup stores its chunks again; a
//! scrub killed at any moment goes on where it stopped; on Ceph, what the listing holds
//! is checked against the catalog too.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Several 1 MiB packs of random data.
fn setup(name: &str, target: Target) -> (Setup, Scratch) {
    let scratch = Scratch::new(name);
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(11);
    for i in 0..6 {
        let mut data = vec![0u8; 1_500_000];
        rng.fill(&mut data);
        std::fs::write(src.join(format!("f{i}.bin")), data).unwrap();
    }
    let setup = Setup::with_extra(name, target, &src, "lock_days = 2\n");
    let config = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, format!("pack_size_mib = 1\n{config}")).unwrap();
    (setup, scratch)
}

fn scrub_runs(setup: &Setup) -> Vec<Value> {
    json_lines(&setup.ok(&["runs", "@scrub", "--json"]))
}

#[test]
fn a_changed_byte_is_found_by_the_scrub_and_healed_by_the_next_backup() {
    let (setup, scratch) = setup("scrub-byte", Target::Dir);
    setup.backup();
    let packs = setup.pack_hashes();
    assert!(packs.len() >= 5, "{packs:?}");
    let out = setup.run(&["scrub"]);
    assert!(out.status.success() && text(&out).contains("no findings"), "{}", text(&out));

    // One byte of one pack, on the target (a provider's bit rot, or a swap).
    let victim = &packs[2];
    let path = setup.dir.path(&format!("target/packs/{}/{victim}", &victim[..2]));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, bytes).unwrap();
    // Every pack was read a moment ago: the changed one comes round again once the others
    // have been read since; a scrub reads all of them now (a day's budget is 2 GiB).
    let out = setup.run(&["scrub", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report}");
    assert!(findings[0]["key"].as_str().unwrap().ends_with(victim.as_str()), "{report}");
    assert!(findings[0]["why"].as_str().unwrap().contains("does not match its hash"), "{report}");
    let runs = scrub_runs(&setup);
    assert_eq!((runs[0]["outcome"].as_str(), runs[0]["findings"].as_u64()), (Some("success"), Some(1)), "{runs:?}");

    // The next backup stores the damaged pack's chunks again; every snapshot restores.
    let out = setup.ok(&["backup", "data", "--no-progress", "--json"]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["stats"]["bytes_uploaded"].as_u64().unwrap() > 0, "{summary}");
    let first = setup.snapshots()[0]["snapshot"].as_str().unwrap().to_string();
    let to = scratch.path("restored");
    let r = setup.restore(&first, &to);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&scratch.path("src"), &to);
    // The damage is known now: the next scrub does not cry it again.
    let out = setup.run(&["scrub"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_scrub_killed_at_any_moment_goes_on_where_it_stopped() {
    let (setup, _scratch) = setup("scrub-kill", Target::Dir);
    setup.backup();
    let packs = setup.pack_hashes().len();
    for (i, delay) in [5u64, 20, 40, 80, 120, 200].into_iter().enumerate() {
        let mut child = setup.cmd(&["scrub", "-q"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        let check: String = setup.catalog().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok", "after kill {i}");
    }
    let out = setup.run(&["scrub"]);
    assert!(out.status.success(), "{}", text(&out));
    let read: i64 = setup
        .catalog()
        .query_row("SELECT count(*) FROM pack_copies WHERE scrubbed_at IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(read as usize, packs, "every pack was read by one scrub or another");
}

/// With a budget below a pack, each scrub reads one pack, the one read least recently
/// (never read first): as many scrubs as packs read every pack once, and the next one
/// reads the first again.
#[test]
fn each_scrub_reads_the_packs_read_least_recently() {
    let (setup, _scratch) = setup("scrub-rotate", Target::Dir);
    setup.backup();
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let scrub = "[scrub]\nschedule = \"0 4 * * *\"\nread_per_day = \"1MiB\"\n";
    std::fs::write(&setup.config, config.replacen("[target]", &format!("{scrub}[target]"), 1)).unwrap();
    let packs = setup.pack_hashes().len();
    let read_order = || -> Vec<String> {
        let c = setup.catalog();
        let mut st = c
            .prepare(
                "SELECT p.hash FROM pack_copies c JOIN packs p ON p.id = c.pack WHERE c.scrubbed_at IS NOT NULL
                 ORDER BY c.scrubbed_at, p.id",
            )
            .unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
    };
    for n in 1..=packs {
        setup.ok(&["scrub"]);
        assert_eq!(read_order().len(), n, "scrub {n} of {packs} packs");
        // scrubbed_at counts seconds: the next scrub must see this one as older.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let first = read_order()[0].clone();
    setup.ok(&["scrub"]);
    assert_eq!(read_order().last(), Some(&first), "the pack read longest ago is read again first");
}

/// The daemon scrubs on `[scrub] schedule`, within `read_per_day` (a pack a run here),
/// and `/metrics` says when and what it found; on Ceph the listing is checked too.
#[test]
fn the_daemon_scrubs_on_its_schedule() {
    if !s3_available() {
        return;
    }
    let (setup, _scratch) = setup("scrub-daemon", Target::S3);
    setup.backup();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let extra = format!(
        "[scrub]\nschedule = \"*/2 * * * * *\"\nread_per_day = \"1MiB\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    std::fs::write(&setup.config, config.replacen("[target]", &format!("{extra}[target]"), 1)).unwrap();
    let log = setup.dir.path("daemon.log");
    let mut daemon =
        setup.cmd(&["daemon"]).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut done = Vec::new();
    while std::time::Instant::now() < deadline {
        done = scrub_runs(&setup).into_iter().filter(|r| r["outcome"] == "success").collect();
        if done.len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let metrics = metrics(port);
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
    assert!(done.len() >= 3, "scrubs: {done:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    for run in &done {
        // One pack a run: a day's 1 MiB, spread over the day, is less than a pack.
        assert!(run["bytes_read"].as_u64().unwrap() < 3 << 20, "{run}");
        assert_eq!(run["findings"], 0, "{run}");
        assert_eq!(run["kind"], "scrub", "the run history knows the daemon's tasks apart: {run}");
    }
    let all = json_lines(&setup.ok(&["runs", "--json"]));
    assert!(all.iter().any(|r| r["job"] == "data" && r["kind"] == "backup"), "{all:?}");
    assert!(metrics.contains("coffer_scrub_last_run_findings 0"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("coffer_scrub_read_bytes_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}
