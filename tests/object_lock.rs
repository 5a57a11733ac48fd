//! Write-once on S3: every object coffer writes carries a COMPLIANCE Object Lock, checked by
//! asking the server with another client (boto3, `tests/s3_inspect.py`), and coffer's own
//! credentials cannot delete any of it.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn inspect(cmd: &str, setup: &Setup) -> Vec<serde_json::Value> {
    let rest = setup.target_url.strip_prefix("s3://").unwrap();
    let (bucket, prefix) = rest.split_once('/').unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_inspect.py");
    let out = run_ok(Command::new("python3").arg(script).args([cmd, bucket, &format!("{prefix}/")]));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_object_is_locked_in_compliance_mode_and_cannot_be_deleted() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("locks");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), Rng(1).mixed(20 << 20)).unwrap();
    let setup = Setup::with_extra("locks", Target::S3, &src, "lock_days = 3\n");
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let first = setup.backup();
    assert!(text(&first).contains("locked (COMPLIANCE) until"), "{}", text(&first));
    std::fs::write(src.join("b.bin"), Rng(2).mixed(5 << 20)).unwrap();
    setup.backup();

    let snapshots = setup.snapshots();
    assert_eq!(snapshots.len(), 2);
    let day = 86_400;
    let versions = inspect("locks", &setup);
    let keys: Vec<&str> = versions.iter().map(|v| v["key"].as_str().unwrap()).collect();
    assert!(keys.iter().any(|k| k.ends_with("coffer.repo")));
    assert!(keys.iter().filter(|k| k.contains("/snapshots/data/")).count() == 2);
    assert!(keys.iter().filter(|k| k.contains("/packs/")).count() >= 2);
    for v in &versions {
        let key = v["key"].as_str().unwrap();
        assert_eq!(v["delete_marker"], false, "{key}");
        assert_eq!(v["mode"], "COMPLIANCE", "{key} is not locked in compliance mode: {v}");
        let until = v["until"].as_i64().unwrap();
        // lock_days = 3 for snapshots; packs and the repository record get 7 days of slack.
        let least = if key.contains("/snapshots/") { 3 * day } else { 10 * day };
        assert!(until >= t0 + least - 60, "{key} locked only until {until} (wanted ≥ {})", t0 + least);
    }
    // Everything a snapshot needs is locked at least until the snapshot may expire.
    for s in &snapshots {
        let retain = s["retain_until"].as_i64().unwrap();
        assert!(retain >= t0 + 3 * day - 60);
        for v in versions.iter().filter(|v| v["key"].as_str().unwrap().contains("/packs/")) {
            assert!(v["until"].as_i64().unwrap() >= retain, "a pack expires before snapshot {}", s["id"]);
        }
    }

    // The server refuses to delete any version with coffer's own credentials...
    let result = &inspect("delete", &setup)[0];
    assert_eq!(result["deleted"], 0, "the server deleted locked versions: {result}");
    assert_eq!(result["refused"].as_u64().unwrap() as usize, versions.len());
    // ...so everything is still there and restores.
    let out = scratch.path("out");
    let r = setup.restore("latest", &out);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&src, &out);
}

#[test]
fn init_refuses_a_bucket_without_object_lock() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("nolock");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let bucket = format!("it-nolock-{}", std::process::id());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server.sh");
    run_ok(Command::new("bash").arg(&script).args(["mkbucket", &bucket, "--no-lock"]));
    let id = scratch.path("id.txt");
    let recipient = String::from_utf8(run_ok(Command::new(BIN).args(["keygen", "-o"]).arg(&id)).stdout).unwrap();
    let config = scratch.path("coffer.toml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "state_dir = \"state\"\nrecipients = [\"{}\"]\nrepo_secret_file = \"state/repo.secret\"\n\
                 [target]\nurl = \"s3://{bucket}/c\"\n{extra}",
                recipient.trim()
            ),
        )
        .unwrap()
    };
    write_config("");
    let out = Command::new(BIN).arg("--config").arg(&config).arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("Object Lock disabled"), "{}", text(&out));
    // Explicitly unprotected is allowed, and said so.
    write_config("lock_mode = \"none\"\n");
    let out = run_ok(Command::new(BIN).arg("--config").arg(&config).arg("init"));
    assert!(text(&out).contains("UNPROTECTED"), "{}", text(&out));
}

#[test]
fn reused_packs_are_extended_once_when_a_snapshot_needs_them_longer() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("extend");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), Rng(3).mixed(40 << 20)).unwrap();
    let setup = Setup::with_extra("extend", Target::S3, &src, "lock_days = 1\n");
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let day = 86_400;
    assert!(text(&setup.backup()).contains("0 lock extensions"));
    let packs = setup.pack_hashes();
    assert!(packs.len() >= 2);
    let pack_locks = |setup: &Setup| -> Vec<i64> {
        inspect("locks", setup)
            .iter()
            .filter(|v| v["key"].as_str().unwrap().contains("/packs/"))
            .map(|v| v["until"].as_i64().unwrap())
            .collect()
    };
    assert!(pack_locks(&setup).iter().all(|&u| u < t0 + 9 * day));

    // The job now keeps snapshots 30 days: the same data reuses every pack, whose locks
    // must be extended before the new snapshot counts as complete.
    let config = std::fs::read_to_string(&setup.config).unwrap().replace("lock_days = 1", "lock_days = 30");
    std::fs::write(&setup.config, config).unwrap();
    let second = setup.backup();
    assert!(text(&second).contains(&format!("{} lock extensions", packs.len())), "{}", text(&second));
    assert_eq!(setup.pack_hashes(), packs, "nothing new was uploaded");
    let locks = pack_locks(&setup);
    assert_eq!(locks.len(), packs.len());
    assert!(locks.iter().all(|&u| u >= t0 + 30 * day), "a reused pack was not extended: {locks:?}");
    let events: i64 = setup
        .catalog()
        .query_row("SELECT count(*) FROM events WHERE kind = 'lock-extended'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events as usize, packs.len());

    // The next snapshot finds every lock long enough (thanks to the slack): no request.
    let third = setup.backup();
    assert!(text(&third).contains(" 0 lock extensions"), "{}", text(&third));
}
