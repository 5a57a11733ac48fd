//! Write-once on S3: every object coffer writes carries a COMPLIANCE Object Lock, checked by
//! asking the server with another client (boto3, `tests/s3_inspect.py`), and coffer's own
//! credentials cannot delete any of it.

mod common;

use std::process::Command;

use common::*;

fn inspect(cmd: &str, setup: &Setup) -> Vec<serde_json::Value> {
    setup.s3_inspect(cmd, &[])
}

#[test]
fn every_object_is_locked_in_compliance_mode_and_cannot_be_deleted() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("locks");
    let src = one_file_source(&scratch, "a.bin", 1, 20);
    let setup = Setup::with_extra("locks", Target::S3, &src, "lock_days = 3\n");
    let t0 = now();
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
    // init's canary: locked, and still there although init tried to delete it.
    assert_eq!(keys.iter().filter(|k| k.contains("/canary/")).count(), 1);
    assert!(keys.iter().filter(|k| k.contains("/snapshots/data/")).count() == 2);
    assert!(keys.iter().filter(|k| k.contains("/packs/")).count() >= 2);
    for v in &versions {
        let key = v["key"].as_str().unwrap();
        assert_eq!(v["delete_marker"], false, "{key}");
        assert_eq!(v["mode"], "COMPLIANCE", "{key} is not locked in compliance mode: {v}");
        let until = v["until"].as_i64().unwrap();
        // lock_days = 3 for snapshots; packs and the repository record get 7 days of
        // slack; the canary has the shortest lock, one day.
        let least = if key.contains("/snapshots/") {
            3 * day
        } else if key.contains("/canary/") {
            day
        } else {
            10 * day
        };
        assert!(until >= t0 + least - 60, "{key} locked only until {until} (wanted ≥ {})", t0 + least);
    }
    // Everything a snapshot needs is locked at least until the snapshot may expire.
    for s in &snapshots {
        let retain = s["retain_until"].as_i64().unwrap();
        assert!(retain >= t0 + 3 * day - 60);
        for v in versions.iter().filter(|v| v["key"].as_str().unwrap().contains("/packs/")) {
            assert!(v["until"].as_i64().unwrap() >= retain, "a pack expires before snapshot {}", s["snapshot"]);
        }
    }

    // With coffer's own credentials the server refuses to delete any version or to
    // shorten any lock...
    let result = &inspect("attack", &setup)[0];
    assert_eq!(result["deleted"], 0, "the server deleted locked versions: {result}");
    assert_eq!(result["shortened"], 0, "the server shortened a lock: {result}");
    assert_eq!(result["delete_refused"].as_u64().unwrap() as usize, versions.len());
    assert_eq!(result["shorten_refused"].as_u64().unwrap() as usize, versions.len());
    assert_eq!(inspect("locks", &setup), versions, "an attack changed what the server holds");
    // ...so everything is still there and restores.
    let out = scratch.path("out");
    setup.assert_restores(&src, &out);
}

#[test]
fn init_refuses_a_bucket_without_object_lock() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("nolock");
    let bucket = format!("it-nolock-{}", std::process::id());
    make_bucket(&bucket, false);
    let id = scratch.path("id.txt");
    let recipient = String::from_utf8(run_ok(Command::new(BIN).args(["keygen", "-o"]).arg(&id)).stdout).unwrap();
    let config = scratch.path("coffer.toml");
    let write_config =
        |extra: &str| std::fs::write(&config, config_text(&recipient, &format!("s3://{bucket}/c"), extra)).unwrap();
    write_config("");
    let out = Command::new(BIN).arg("--config").arg(&config).arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("Object Lock disabled"), "{}", text(&out));
    // All or nothing: the refused init made no state directory, catalog or secret.
    assert!(!scratch.path("state").exists(), "a refused init left state behind");
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
    let src = one_file_source(&scratch, "a.bin", 3, 40);
    let setup = Setup::with_extra("extend", Target::S3, &src, "lock_days = 1\n");
    let t0 = now();
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
    // Every pack, and coffer.repo (locked at init for 1 + 7 days), which restores need.
    assert!(text(&second).contains(&format!("{} lock extensions", packs.len() + 1)), "{}", text(&second));
    assert_eq!(setup.pack_hashes(), packs, "nothing new was uploaded");
    let locks = pack_locks(&setup);
    assert_eq!(locks.len(), packs.len());
    assert!(locks.iter().all(|&u| u >= t0 + 30 * day), "a reused pack was not extended: {locks:?}");
    let events: i64 = setup
        .catalog()
        .query_row("SELECT count(*) FROM events WHERE kind = 'lock-extended'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events as usize, packs.len() + 1);
    let repo_lock =
        inspect("locks", &setup).into_iter().find(|v| v["key"].as_str().unwrap().ends_with("coffer.repo")).unwrap();
    assert!(repo_lock["until"].as_i64().unwrap() >= t0 + 30 * day, "{repo_lock}");

    // The next snapshot finds every lock long enough (thanks to the slack): no request.
    let third = setup.backup();
    assert!(text(&third).contains(" 0 lock extensions"), "{}", text(&third));
}

fn status(setup: &Setup, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let out = setup.run(&all);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out.status.code().unwrap(), json)
}

/// The documented shape of `status --json`.
fn assert_status_shape(v: &serde_json::Value) {
    assert!(["OK", "WARNING", "CRITICAL"].contains(&v["status"].as_str().unwrap()));
    assert!(v["checked_at"].is_i64());
    for t in v["targets"].as_array().unwrap() {
        assert!(t["target"].is_string() && t["url"].is_string() && t["protection"].is_string());
        assert!(t["remote_checked"].is_boolean() && t["objects_checked"].is_u64());
    }
    assert!(v["problems"].as_array().unwrap().iter().all(|p| p.is_string()));
    let tampering = v["tampering"].as_array().unwrap();
    assert!(tampering.iter().all(|f| f["target"].is_string() && f["kind"].is_string() && f["key"].is_string()));
    for j in v["jobs"].as_array().unwrap() {
        assert!(j["job"].is_string() && j["live_snapshots"].is_u64());
        assert!(j["locked_until"].is_i64() || j["locked_until"].is_null());
        for g in j["gaps"].as_array().unwrap() {
            assert!(g["target"].is_string() && g["snapshot"].is_string());
            assert!(g["objects"].as_array().unwrap().iter().all(|o| o["key"].is_string()));
        }
        for t in j["targets"].as_array().unwrap() {
            assert!(t["target"].is_string() && t["live_snapshots"].is_u64() && t["lag"].is_u64());
        }
    }
}

#[test]
fn status_reports_health_and_finds_a_shortened_lock_on_the_server() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("status");
    let src = one_file_source(&scratch, "a.bin", 4, 30);

    // Healthy, COMPLIANCE: OK from the catalog and from the server.
    let healthy = Setup::with_extra("status-ok", Target::S3, &src, "lock_days = 2\n");
    healthy.backup();
    let (code, v) = status(&healthy, &[]);
    assert_status_shape(&v);
    assert_eq!((code, v["status"].as_str().unwrap()), (0, "OK"), "{v}");
    let (code, v) = status(&healthy, &["--remote"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["targets"][0]["objects_checked"].as_u64().unwrap() >= 3, "{v}");
    assert!(v["jobs"][0]["locked_until"].as_i64().unwrap() >= v["checked_at"].as_i64().unwrap() + 2 * 86_400 - 60);

    // GOVERNANCE (a warning in itself); shorten one pack's lock with bypass.
    let gov = Setup::with_extra("status-gov", Target::S3, &src, "lock_days = 2\n");
    let config =
        std::fs::read_to_string(&gov.config).unwrap().replace("[target]\n", "[target]\nlock_mode = \"governance\"\n");
    std::fs::write(&gov.config, config).unwrap();
    // (init already ran with compliance for coffer.repo; the packs are written now)
    gov.backup();
    let (code, v) = status(&gov, &[]);
    assert_eq!(code, 1, "{v}");
    let pack = gov.pack_hashes().pop().unwrap();
    let key = format!("packs/{}/{pack}", &pack[..2]);
    gov.s3_inspect("shorten", &[&key, "3600"]);

    // The catalog still believes the recorded lock; the server does not.
    assert_eq!(status(&gov, &[]).0, 1);
    let (code, v) = status(&gov, &["--remote"]);
    assert_status_shape(&v);
    assert_eq!((code, v["status"].as_str().unwrap()), (2, "CRITICAL"), "{v}");
    let snapshot = gov.snapshots()[0]["snapshot"].as_str().unwrap().to_string();
    let gap = &v["jobs"][0]["gaps"][0];
    assert_eq!(gap["snapshot"], snapshot.as_str());
    assert!(gap["objects"][0]["key"].as_str().unwrap().ends_with(&pack), "{v}");
    let lowered: Vec<&serde_json::Value> =
        v["tampering"].as_array().unwrap().iter().filter(|f| f["kind"] == "lower-lock").collect();
    assert_eq!(lowered.len(), 1, "{v}");
    assert_eq!(lowered[0]["key"], key.as_str());
    let human = gov.run(&["status", "--remote"]);
    assert_eq!(human.status.code(), Some(2));
    assert!(text(&human).contains(&snapshot) && text(&human).contains(&pack), "{}", text(&human));
}

#[test]
fn status_calls_a_directory_target_unprotected() {
    let scratch = Scratch::new("status-dir");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), "a").unwrap();
    let setup = Setup::new("status_dir", Target::Dir, &src);
    let (code, v) = status(&setup, &[]);
    assert_status_shape(&v);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["targets"][0]["protection"], "UNPROTECTED");
    assert!(v["problems"].to_string().contains("no live snapshot"));
    setup.backup();
    let (code, v) = status(&setup, &[]);
    assert_eq!((code, v["jobs"][0]["live_snapshots"].as_u64()), (1, Some(1)), "{v}");
    // Without a catalog the check itself fails: UNKNOWN, never OK.
    std::fs::remove_file(setup.dir.path("state/catalog.sqlite")).unwrap();
    let (code, v) = status(&setup, &[]);
    assert_eq!((code, v["status"].as_str().unwrap()), (3, "UNKNOWN"));
}

/// What stolen daemon credentials can do without changing a byte: lock a pack for years
/// (a lock bomb), put the repository record under a legal hold, add a lifecycle rule over
/// coffer's prefix and a default retention of a century. `status --remote` names each,
/// CRITICAL; and coffer itself never locks past `max_lock_days`.
#[test]
fn status_remote_finds_lock_bombs_legal_holds_and_bucket_rules() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("audit");
    let src = one_file_source(&scratch, "a.bin", 4, 2);
    let setup = Setup::with_extra("audit", Target::S3, &src, "lock_days = 2\n");
    setup.backup();
    let (code, v) = status(&setup, &["--remote"]);
    assert_eq!(code, 0, "quiet before: {v}");
    let pack = setup.pack_hashes().pop().unwrap();
    let key = format!("packs/{}/{pack}", &pack[..2]);
    setup.s3_inspect("bomb", &[&key, "800"]);
    setup.s3_inspect("hold", &["coffer.repo"]);
    setup.s3_inspect("rules", &[]);
    let (code, v) = status(&setup, &["--remote"]);
    assert_eq!((code, v["status"].as_str().unwrap()), (2, "CRITICAL"), "{v}");
    let found: Vec<(String, String)> = v["tampering"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (f["kind"].as_str().unwrap().to_string(), f["key"].as_str().or(f["setting"].as_str()).unwrap().to_string())
        })
        .collect();
    for expected in [
        ("lock-beyond", key.as_str()),
        ("legal-hold", "coffer.repo"),
        ("bucket-setting", "lifecycle"),
        ("bucket-setting", "default-retention"),
    ] {
        assert!(found.iter().any(|(k, what)| k == expected.0 && what == expected.1), "{expected:?} not in {found:?}");
    }

    // coffer's own bound: a lock past max_lock_days is refused before it is asked for.
    let cfg = coffer::config::Config::load(&setup.config).unwrap();
    let target = coffer::store::Target::open(&cfg.targets[0], coffer::catalog::TargetId::NONE).unwrap();
    let far = common::now() + 400 * 86_400;
    let e = coffer::runtime::block_on(target.put_new("junk", bytes::Bytes::from_static(b"x"), far)).unwrap_err();
    assert!(format!("{e:#}").contains("max_lock_days"), "{e:#}");
    let e = coffer::runtime::block_on(target.extend_lock(&key, None, far)).unwrap_err();
    assert!(format!("{e:#}").contains("max_lock_days"), "{e:#}");
}
