//! Expiry and prune: a snapshot past its retain-until is forgotten; `prune` deletes only
//! object versions whose lock has ended and that no live snapshot needs, and only with
//! `--yes` and its own credentials.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Two snapshots of which only the second has the current data; returns their ids.
fn two_snapshots(setup: &Setup, src: &Path) -> (String, String) {
    std::fs::write(src.join("a.bin"), Rng(21).mixed(6 << 20)).unwrap();
    setup.backup();
    std::fs::remove_file(src.join("a.bin")).unwrap();
    std::fs::write(src.join("b.bin"), Rng(22).mixed(6 << 20)).unwrap();
    setup.backup();
    let s = setup.snapshots();
    (s[0]["snapshot"].as_str().unwrap().into(), s[1]["snapshot"].as_str().unwrap().into())
}

/// Time passes for the first snapshot: it and the packs only it needs expire in the catalog.
fn expire(setup: &Setup, first: &str, second: &str) -> Vec<String> {
    let c = setup.catalog();
    c.execute("UPDATE snapshots SET retain_until = strftime('%s','now') - 10 WHERE id = ?1", [first]).unwrap();
    let only_first: Vec<String> = {
        let mut st = c
            .prepare(
                "SELECT hash FROM packs WHERE id NOT IN (SELECT sp.pack FROM snapshot_packs sp
                 JOIN snapshots s ON s.seq = sp.snapshot WHERE s.id = ?1)",
            )
            .unwrap();
        st.query_map([second], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
    };
    for h in &only_first {
        c.execute(
            "UPDATE pack_copies SET retain_until = strftime('%s','now') - 10
             WHERE pack = (SELECT id FROM packs WHERE hash = ?1)",
            [h],
        )
        .unwrap();
    }
    assert!(!only_first.is_empty());
    only_first
}

#[test]
fn prune_on_a_directory_target_deletes_only_what_no_live_snapshot_needs() {
    let scratch = Scratch::new("prune-dir");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let setup = Setup::with_extra("prune_dir", Target::Dir, &src, "lock_days = 1\n");
    let (first, second) = two_snapshots(&setup, &src);
    let gone = expire(&setup, &first, &second);
    let pack_file = |h: &str| setup.dir.path(&format!("target/packs/{}/{h}", &h[..2]));
    let record = setup.dir.path(&format!("target/snapshots/data/{first}"));

    let dry = setup.ok(&["prune"]);
    assert!(text(&dry).contains("would delete") && text(&dry).contains(&gone[0]), "{}", text(&dry));
    assert!(gone.iter().all(|h| pack_file(h).exists()) && record.exists(), "a dry run deleted something");

    let real = setup.ok(&["prune", "--yes"]);
    assert!(text(&real).contains("deleted"), "{}", text(&real));
    assert!(gone.iter().all(|h| !pack_file(h).exists()), "an expired pack is still there");
    assert!(!record.exists());
    let left = setup.pack_hashes();
    assert!(!left.is_empty() && left.iter().all(|h| pack_file(h).exists() && !gone.contains(h)));
    let snaps = setup.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["snapshot"], second.as_str());
    let out = scratch.path("out");
    setup.assert_restores(&src, &out);
    setup.integrity_ok();
    // The next backup still works (the file cache was dropped with the pruned chunks).
    setup.backup();
}

#[test]
fn prune_on_s3_respects_server_locks_and_needs_its_own_credentials() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("prune-s3");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let setup = Setup::with_extra("prune-s3", Target::S3, &src, "lock_days = 1\n");
    let config =
        std::fs::read_to_string(&setup.config).unwrap().replace("[target]\n", "[target]\nlock_mode = \"governance\"\n");
    std::fs::write(&setup.config, config).unwrap();
    let (first, second) = two_snapshots(&setup, &src);
    let gone = expire(&setup, &first, &second);
    let rest = setup.target_url.strip_prefix("s3://").unwrap();
    let (bucket, prefix) = rest.split_once('/').unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_inspect.py");
    let on_server = || -> Vec<String> {
        let out = run_ok(Command::new("python3").arg(&script).args(["locks", bucket, &format!("{prefix}/")]));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["key"].as_str().unwrap().to_string())
            .collect()
    };
    let before = on_server();

    // The catalog says expired, but the server still locks them: nothing to delete.
    let dry = setup.ok(&["prune"]);
    assert!(text(&dry).contains("0 object versions"), "{}", text(&dry));
    assert!(text(&dry).contains("still locked on the server"), "{}", text(&dry));

    // Their locks end on the server too (GOVERNANCE, shortened with bypass).
    let mut keys: Vec<String> = gone.iter().map(|h| format!("packs/{}/{h}", &h[..2])).collect();
    keys.push(format!("snapshots/data/{first}"));
    for k in &keys {
        setup.s3_inspect("shorten", &[k, "2"]);
    }
    std::thread::sleep(std::time::Duration::from_secs(4));
    let dry = setup.ok(&["prune"]);
    assert!(text(&dry).contains(&format!("{} object versions", keys.len())), "{}", text(&dry));
    assert_eq!(on_server(), before, "a dry run deleted something");

    // Deleting needs the privileged credentials named in [prune].
    let refused = setup.run(&["prune", "--yes"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).contains("COFFER_PRUNE_ACCESS_KEY_ID"), "{}", text(&refused));
    assert_eq!(on_server(), before);

    let mut c = setup.cmd(&["prune", "--yes"]);
    c.env("COFFER_PRUNE_ACCESS_KEY_ID", std::env::var("AWS_ACCESS_KEY_ID").unwrap());
    c.env("COFFER_PRUNE_SECRET_ACCESS_KEY", std::env::var("AWS_SECRET_ACCESS_KEY").unwrap());
    let real = run_ok(&mut c);
    assert!(text(&real).contains(&format!("deleted: {} object versions", keys.len())), "{}", text(&real));
    let after = on_server();
    for k in &keys {
        assert!(!after.iter().any(|a| a.ends_with(k.as_str())), "{k} is still on the server");
    }
    assert_eq!(after.len(), before.len() - keys.len(), "prune deleted something else");
    let out = scratch.path("out");
    setup.assert_restores(&src, &out);
}
