//! Disaster recovery from the bucket alone: the attack drill, `recover`, `verify`, and
//! kill -9 at random moments. Every test runs the real binary; the S3 ones run against
//! the local Ceph RGW with Object Lock, and the attacker is boto3 (`tests/attacker.py`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A second configuration for the same target and identity, with an empty state
/// directory and no repository secret: the bare machine of a disaster recovery.
fn fresh_machine(setup: &Setup, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("state_dir = \"state\"", &format!("state_dir = \"{name}\""))
        .replace("state/repo.secret", &format!("{name}/repo.secret"));
    let config = setup.dir.path(&format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    config
}

fn coffer(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(config).args(args);
    c
}

fn recover(setup: &Setup, config: &Path) -> Output {
    coffer(config, &["recover", "--json", "--identity"]).arg(&setup.identity).output().unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

fn restore_with(setup: &Setup, config: &Path, snapshot: &str, to: &Path) -> Output {
    let mut c = coffer(config, &["restore", snapshot, "--job", "data", "--no-progress", "--to"]);
    c.arg(to).arg("--identity").arg(&setup.identity);
    c.output().unwrap()
}

fn snapshot_ids(config: &Path) -> Vec<String> {
    let out = run_ok(&mut coffer(config, &["snapshots", "--json"]));
    let rows = json_lines(&out);
    rows.iter().map(|r| r["snapshot"].as_str().unwrap().to_string()).collect()
}

fn integrity_of(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    let v: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(v, "ok", "{}", db.display());
}

/// Findings of a recover or verify report, by kind: kind -> keys.
fn findings_by_kind(report: &Value, field: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for f in report[field].as_array().unwrap() {
        out.entry(f["kind"].as_str().unwrap().into()).or_default().push(f["key"].as_str().unwrap().into());
    }
    out
}

/// A source tree that changes between snapshots; `stage` 0, 1, 2.
fn change_tree(src: &Path, stage: u64) {
    match stage {
        0 => {
            std::fs::create_dir_all(src.join("docs")).unwrap();
            std::fs::write(src.join("docs/report.txt"), "quarterly numbers\n".repeat(5000)).unwrap();
            std::fs::write(src.join("docs/data.bin"), Rng(41).mixed(6 << 20)).unwrap();
            std::fs::write(src.join("db.dump"), Rng(42).mixed(3 << 20)).unwrap();
            std::os::unix::fs::symlink("docs/report.txt", src.join("latest")).unwrap();
        }
        1 => {
            std::fs::write(src.join("db.dump"), Rng(43).mixed(3 << 20)).unwrap();
            std::fs::write(src.join("docs/new.bin"), Rng(44).mixed(2 << 20)).unwrap();
        }
        _ => {
            std::fs::remove_file(src.join("docs/data.bin")).unwrap();
            std::fs::write(src.join("docs/report.txt"), "revised numbers\n".repeat(7000)).unwrap();
        }
    }
}

/// Three snapshots of a changing tree; returns the copies of the tree at each.
fn three_snapshots(setup: &Setup, scratch: &Scratch, src: &Path) -> Vec<PathBuf> {
    let mut originals = Vec::new();
    for stage in 0..3 {
        change_tree(src, stage);
        setup.backup();
        let copy = scratch.path(&format!("original{stage}"));
        run_ok(Command::new("cp").arg("-a").arg(src).arg(&copy));
        originals.push(copy);
    }
    originals
}

#[test]
fn the_attack_drill_changes_nothing_a_restore_needs() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("drill");
    let src = scratch.path("src");
    let setup = Setup::new("drill", Target::S3, &src);
    let originals = three_snapshots(&setup, &scratch, &src);
    let ids = snapshot_ids(&setup.config);
    assert_eq!(ids.len(), 3);
    let before = setup.run(&["status", "--remote", "--json"]);
    assert_eq!(before.status.code(), Some(0), "{}", text(&before));
    assert_eq!(json(&before)["tampering"], serde_json::json!([]));

    // The attacker, with coffer's own target credentials.
    let rest = setup.target_url.strip_prefix("s3://").unwrap();
    let (bucket, prefix) = rest.split_once('/').unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacker.py");
    let out = run_ok(Command::new("python3").arg(script).args([bucket, prefix, "data"]));
    let attack: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("attack: {attack}");
    let (keys, versions) = (attack["keys"].as_u64().unwrap(), attack["versions"].as_u64().unwrap());
    assert_eq!(attack["delete_markers"].as_u64(), Some(keys));
    assert_eq!(attack["deleted"], 0, "a locked version was deleted");
    assert_eq!(attack["delete_refused"].as_u64(), Some(versions));
    assert_eq!(attack["shortened"], 0, "a lock was shortened");
    assert_eq!(attack["shorten_refused"].as_u64(), Some(versions));
    assert_eq!(attack["bucket_deleted"], false);
    let forged: Vec<String> =
        attack["forged"].as_array().unwrap().iter().map(|f| f["key"].as_str().unwrap().to_string()).collect();

    // The daemon's own status check sees the attack.
    let status = setup.run(&["status", "--remote", "--json"]);
    assert_eq!(status.status.code(), Some(2), "{}", text(&status));
    let seen = findings_by_kind(&json(&status), "tampering");
    assert_eq!(seen["delete-marker"].len() as u64, keys, "{seen:?}");
    assert_eq!(seen["overwrite"].len() as u64, keys, "{seen:?}");
    assert_eq!(seen["forged-record"].len(), forged.len(), "{seen:?}");
    assert_eq!(seen["unknown-key"], vec!["README-RESTORE-YOUR-FILES.txt".to_string()]);

    // The backup host is gone: a bare state directory, the bucket, and the identity.
    let config = fresh_machine(&setup, "fresh");
    let out = recover(&setup, &config);
    assert_eq!(out.status.code(), Some(4), "tampering must make recover exit 4: {}", text(&out));
    let report = json(&out);
    let mut recovered: Vec<String> =
        report["snapshots"].as_array().unwrap().iter().map(|s| s["snapshot"].as_str().unwrap().to_string()).collect();
    recovered.sort();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    assert_eq!(recovered, sorted_ids, "exactly the three genuine snapshots, the forgeries rejected");
    let found = findings_by_kind(&report, "findings");
    assert_eq!(found["delete-marker"].len() as u64, keys, "{found:?}");
    assert_eq!(found["overwrite"].len() as u64, keys, "{found:?}");
    let mut rejected = found["forged-record"].clone();
    rejected.sort();
    let mut expected = forged.clone();
    expected.sort();
    assert_eq!(rejected, expected, "every forged record is reported");
    assert_eq!(found["unknown-key"], vec!["README-RESTORE-YOUR-FILES.txt".to_string()]);
    assert!(!found.contains_key("unreadable"), "{found:?}");
    // Human output says so too.
    let human = coffer(&config, &["snapshots"]).output().unwrap();
    assert!(human.status.success());
    assert_eq!(
        std::fs::read(setup.dir.path("fresh/repo.secret")).unwrap(),
        std::fs::read(setup.dir.path("state/repo.secret")).unwrap(),
        "recover wrote the repository secret back"
    );

    for (id, original) in ids.iter().zip(&originals) {
        let out_dir = scratch.path(&format!("restored-{id}"));
        let r = restore_with(&setup, &config, id, &out_dir);
        assert!(r.status.success(), "restore of {id} failed: {}", text(&r));
        assert_same_tree(original, &out_dir);
    }
}

#[test]
fn recover_rebuilds_a_catalog_that_everything_works_with() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("recover");
    let src = scratch.path("src");
    let setup = Setup::new("recover", Target::S3, &src);
    change_tree(&src, 0);
    setup.backup();
    change_tree(&src, 1);
    setup.backup();
    let mut before = setup.snapshots();
    before.sort_by_key(|s| s["snapshot"].as_str().unwrap().to_string());

    let config = fresh_machine(&setup, "fresh");
    let out = recover(&setup, &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["findings"], serde_json::json!([]));
    assert_eq!(report["snapshots"].as_array().unwrap().len(), 2);
    // The same snapshots, with the same figures.
    let mut after: Vec<Value> = json_lines(&run_ok(&mut coffer(&config, &["snapshots", "--json"])));
    after.sort_by_key(|s| s["snapshot"].as_str().unwrap().to_string());
    for field in ["snapshot", "created_at", "files", "bytes", "bytes_new", "retain_until", "targets"] {
        let a: Vec<&Value> = before.iter().map(|s| &s[field]).collect();
        let b: Vec<&Value> = after.iter().map(|s| &s[field]).collect();
        assert_eq!(a, b, "field {field}");
    }
    // Packs and chunks as the original catalog has them.
    let count = |db: &Path, sql: &str| -> i64 {
        rusqlite::Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
    };
    let (old_db, new_db) = (setup.dir.path("state/catalog.sqlite"), setup.dir.path("fresh/catalog.sqlite"));
    for sql in [
        "SELECT count(*) FROM packs",
        "SELECT count(*) FROM chunks",
        "SELECT count(*) FROM snapshot_packs",
        "SELECT sum(size) FROM packs",
    ] {
        assert_eq!(count(&old_db, sql), count(&new_db, sql), "{sql}");
    }
    integrity_of(&new_db);

    let status = coffer(&config, &["status", "--remote", "--json"]).output().unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    // By id: two snapshots made within one second have no order but their upload's.
    let newest = snapshot_ids(&setup.config).pop().unwrap();
    let out_dir = scratch.path("restored");
    let r = restore_with(&setup, &config, &newest, &out_dir);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&src, &out_dir);
    // Running it again is refused: the state directory has a catalog now.
    let again = recover(&setup, &config);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("already holds a catalog"), "{}", text(&again));

    // Backups go on from the recovered catalog, deduplicating against recovered chunks.
    let added = 3 << 20;
    std::fs::write(src.join("added.bin"), {
        let mut b = vec![0u8; added];
        Rng(45).fill(&mut b);
        b
    })
    .unwrap();
    run_ok(&mut coffer(&config, &["backup", "data", "--no-progress"]));
    let rows: Vec<Value> = json_lines(&run_ok(&mut coffer(&config, &["snapshots", "--json"])));
    let new = rows.last().unwrap()["bytes_new"].as_u64().unwrap();
    assert!(new >= added as u64 && new < added as u64 + (1 << 20), "bytes_new {new} for {added} new bytes");
}

#[test]
fn verify_read_data_finds_a_corrupt_pack_and_names_the_snapshots_that_need_it() {
    let scratch = Scratch::new("verify");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), Rng(51).mixed(4 << 20)).unwrap();
    let setup = Setup::new("verify", Target::Dir, &src);
    setup.backup();
    std::fs::write(src.join("b.bin"), Rng(52).mixed(4 << 20)).unwrap();
    setup.backup();
    let ids = snapshot_ids(&setup.config);
    let verify = |args: &[&str]| {
        let mut c = setup.cmd(&["verify", "--json"]);
        c.args(args).arg("--identity").arg(&setup.identity);
        let out = c.output().unwrap();
        (out.status.code(), json(&out))
    };
    let chunks: i64 = setup.catalog().query_row("SELECT count(*) FROM chunks", [], |r| r.get(0)).unwrap();
    let (code, clean) = verify(&["--read-data"]);
    assert_eq!(code, Some(0), "{clean}");
    assert_eq!(clean["chunks_verified"].as_i64(), Some(chunks));
    let packs = setup.pack_count();
    let (_, half) = verify(&["--read-data", "--subset", "50%"]);
    assert_eq!(half["packs_read"].as_i64(), Some((packs + 1) / 2));

    // A pack only the second snapshot needs, corrupted on disk (one byte, same size).
    let only_second: String = setup
        .catalog()
        .query_row(
            "SELECT p.hash FROM packs p JOIN snapshot_packs sp ON sp.pack = p.id JOIN snapshots s ON s.seq = sp.snapshot
             WHERE s.id = ?1 AND p.id NOT IN (SELECT pack FROM snapshot_packs sp2 JOIN snapshots s2 ON s2.seq = sp2.snapshot
                                              WHERE s2.id = ?2) LIMIT 1",
            [&ids[1], &ids[0]],
            |r| r.get(0),
        )
        .unwrap();
    let key = format!("packs/{}/{only_second}", &only_second[..2]);
    let path = setup.dir.path("target").join(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let (code, metadata_only) = verify(&[]);
    assert_eq!(code, Some(0), "without --read-data only existence and size are checked: {metadata_only}");
    let (code, report) = verify(&["--read-data"]);
    assert_eq!(code, Some(4), "{report}");
    let found = findings_by_kind(&report, "findings");
    assert_eq!(found["unreadable"], vec![key.clone()], "{report}");
    assert_eq!(report["snapshots_affected"], serde_json::json!([format!("data/{}", ids[1])]));
    let human = setup.cmd(&["verify", "--read-data", "--identity"]).arg(&setup.identity).output().unwrap();
    assert!(text(&human).contains("content hash mismatch") && text(&human).contains(&ids[1]), "{}", text(&human));
}

#[test]
fn verify_finds_a_recorded_version_missing_on_s3() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("verify-s3");
    let src = scratch.path("src");
    change_tree(&src, 0);
    let setup = Setup::new("verify-s3", Target::S3, &src);
    // GOVERNANCE, so that the test (not coffer) can remove a version with bypass.
    let text_cfg =
        std::fs::read_to_string(&setup.config).unwrap().replace("[target]\n", "[target]\nlock_mode = \"governance\"\n");
    std::fs::write(&setup.config, text_cfg).unwrap();
    setup.backup();
    let id = &snapshot_ids(&setup.config)[0];
    let clean = setup.run(&["verify"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));

    let (hash, version): (String, String) = setup
        .catalog()
        .query_row("SELECT p.hash, c.version FROM packs p JOIN pack_copies c ON c.pack = p.id LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let key = format!("packs/{}/{hash}", &hash[..2]);
    setup.s3_inspect("remove", &[&key, &version]);
    let out = setup.run(&["verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&key) && t.contains("not on the target"), "{t}");
    assert!(t.contains(&format!("snapshots affected: data/{id}")), "{t}");
}

/// Runs `cmd` and kills it with SIGKILL after `after`; true when it had already ended.
fn kill_after(mut cmd: Command, after: Duration) -> bool {
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    false
}

#[test]
fn kill_9_at_random_moments_never_breaks_backup_or_recover() {
    if !s3_available() {
        return;
    }
    const ROUNDS: usize = 20;
    let seed = now() as u64 | 1;
    eprintln!("kill moments seeded with {seed}");
    let mut rng = Rng(seed);
    let scratch = Scratch::new("crash");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let setup = Setup::with_extra("crash", Target::S3, &src, "");
    let piece = |round: usize| {
        let mut b = vec![0u8; 3 << 20];
        Rng(1000 + round as u64).fill(&mut b);
        std::fs::write(src.join(format!("piece{round:02}.bin")), b).unwrap();
    };
    piece(99);
    let t0 = Instant::now();
    setup.backup();
    let full = t0.elapsed();

    // Backups: each round adds new data, kills a run at a random moment, then runs again,
    // until ROUNDS runs were really killed (a moment after the run's end kills nothing).
    let (mut killed, mut round) = (0, 0);
    while killed < ROUNDS {
        assert!(round < 3 * ROUNDS, "backups kept ending before their kill moment");
        piece(round);
        round += 1;
        let at = full.mul_f64(rng.below(1000) as f64 / 1000.0);
        if !kill_after(setup.cmd(&["backup", "data", "--no-progress"]), at) {
            killed += 1;
        }
        setup.integrity_ok();
        setup.backup();
        setup.integrity_ok();
    }
    eprintln!("backup: {killed} runs killed in {round} rounds");
    let snapshots = snapshot_ids(&setup.config);
    let restored = scratch.path("restored-backup");
    setup.assert_restores(&src, &restored);

    // Recover: killed at a random moment on a bare state directory, then run again.
    let config = fresh_machine(&setup, "fresh");
    let state = setup.dir.path("fresh");
    let t0 = Instant::now();
    assert_eq!(recover(&setup, &config).status.code(), Some(0));
    let full = t0.elapsed();
    let (mut resumed_packs, mut killed, mut round) = (0, 0, 0);
    while killed < ROUNDS {
        assert!(round < 3 * ROUNDS, "recover kept ending before its kill moment");
        round += 1;
        std::fs::remove_dir_all(&state).unwrap();
        let at = full.mul_f64(rng.below(1000) as f64 / 1000.0);
        let mut cmd = coffer(&config, &["recover", "--identity"]);
        cmd.arg(&setup.identity);
        if !kill_after(cmd, at) {
            killed += 1;
        }
        for db in ["catalog.sqlite", "catalog.sqlite.recovering"] {
            if state.join(db).exists() {
                integrity_of(&state.join(db));
            }
        }
        if !state.join("catalog.sqlite").exists() {
            let out = recover(&setup, &config);
            assert_eq!(out.status.code(), Some(0), "round {round} (killed at {at:?}): {}", text(&out));
            resumed_packs += json(&out)["packs_resumed"].as_u64().unwrap();
        }
        integrity_of(&state.join("catalog.sqlite"));
        let ids = snapshot_ids(&config);
        assert!(snapshots.iter().all(|s| ids.contains(s)), "round {round}: a snapshot is missing after recover");
    }
    eprintln!("recover: {killed} runs killed in {round} rounds");
    eprintln!("recover: {resumed_packs} packs were not read again after a kill");
    let restored = scratch.path("restored-recovered");
    let r = restore_with(&setup, &config, "latest", &restored);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&src, &restored);
}

/// A pack that a restore finds damaged is marked in the catalog; the next backup stores
/// its chunks again (the source did not change), and then the *old* snapshot restores
/// too, from the new pack. A cached chunk list that does not add up to its file's size
/// is not trusted, and verify --read-data names such a file. The state directory is
/// made private.
#[test]
fn damage_heals_with_the_next_backup() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("heal");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), Rng(61).mixed(6 << 20)).unwrap();
    std::fs::write(src.join("b.txt"), "stable text\n".repeat(5000)).unwrap();
    let setup = Setup::new("heal", Target::Dir, &src);
    setup.backup();
    let first = snapshot_ids(&setup.config)[0].clone();

    // A pack holding file data, corrupted on the target.
    let hash: String =
        setup.catalog().query_row("SELECT hash FROM packs ORDER BY size DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    let path = setup.dir.path("target").join(format!("packs/{}/{hash}", &hash[..2]));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = scratch.path("out1");
    let r = setup.restore(&first, &out);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    let damaged: Option<String> =
        setup.catalog().query_row("SELECT damaged FROM packs WHERE hash = ?1", [&hash], |r| r.get(0)).unwrap();
    assert!(damaged.is_some_and(|d| d.contains("content hash")), "the pack is marked damaged");

    // Nothing changed in the source, yet the next backup stores those chunks again.
    let before = setup.pack_count();
    let out2 = setup.backup();
    assert!(setup.pack_count() > before, "{}", text(&out2));
    let healed = scratch.path("out2");
    let r = setup.restore(&first, &healed);
    assert!(r.status.success(), "the old snapshot restores from the new pack: {}", text(&r));
    assert_same_tree(&src, &healed);

    // A cached chunk list emptied in the catalog: the file is read again, not trusted.
    setup.catalog().execute("UPDATE file_cache SET chunks = X'' WHERE path = CAST('a.bin' AS BLOB)", []).unwrap();
    let out3 = setup.backup();
    let read: i64 =
        setup.catalog().query_row("SELECT bytes_read FROM runs ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(read >= 6 << 20, "the file was not read again ({read} bytes read): {}", text(&out3));
    let restored = scratch.path("out3");
    assert!(setup.restore("latest", &restored).status.success());
    assert_same_tree(&src, &restored);

    // A chunk list edited in place (same length, its packs left as they were): the
    // row's check fails, the chunks are looked up, none is stored, the file is read.
    setup
        .catalog()
        .execute("UPDATE file_cache SET chunks = zeroblob(length(chunks)) WHERE path = CAST('a.bin' AS BLOB)", [])
        .unwrap();
    let out = setup.backup();
    let read: i64 =
        setup.catalog().query_row("SELECT bytes_read FROM runs ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(read >= 6 << 20, "the edited row was trusted ({read} bytes read): {}", text(&out));

    // Rows that do not name their chunks' packs (written before they did): the chunks
    // are looked up one by one, nothing is read again, and the rows are written anew.
    let unnamed = |setup: &Setup| -> i64 {
        setup.catalog().query_row("SELECT count(*) FROM file_cache WHERE packs IS NULL", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(unnamed(&setup), 0);
    setup.catalog().execute("UPDATE file_cache SET packs = NULL", []).unwrap();
    assert_eq!(unnamed(&setup), 2);
    let out4 = setup.backup();
    let read: i64 =
        setup.catalog().query_row("SELECT bytes_read FROM runs ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(read, 0, "{}", text(&out4));
    assert_eq!(unnamed(&setup), 0, "the rows name their packs again");
    let mut verify = setup.cmd(&["verify", "--read-data", "--no-progress", "--identity"]);
    let v = verify.arg(&setup.identity).output().unwrap();
    assert_eq!(v.status.code(), Some(4), "the damaged pack is still on the target: {}", text(&v));

    // The state directory: private, whatever it was.
    let state = setup.dir.path("state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    setup.ok(&["snapshots"]);
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
}
