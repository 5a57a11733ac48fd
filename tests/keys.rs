//! The repository's keys (`coffer key`): the config's recipients must be the
//! repository's; a key added later restores every snapshot from then on; a key removed
//! is refused while it alone can restore a live snapshot; a restorer holding only a key
//! added later recovers on a bare machine; key sets forged on the target are refused.
//! Against a `file://` target and Ceph RGW (Object Lock).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.txt"));
    let out = run_ok(Command::new(BIN).args(["keygen", "-o"]).arg(&path));
    (path, String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// The setup's config with `recipients` as given.
fn set_recipients(setup: &Setup, recipients: &[&str]) {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let start = text.find("recipients = [").unwrap();
    let end = start + text[start..].find(']').unwrap() + 1;
    let list: Vec<String> = recipients.iter().map(|r| format!("\"{r}\"")).collect();
    std::fs::write(&setup.config, format!("{}recipients = [{}]{}", &text[..start], list.join(", "), &text[end..]))
        .unwrap();
}

fn restore_with(setup: &Setup, config: &Path, snapshot: &str, identity: &Path, to: &Path) -> Output {
    let _ = setup;
    let mut c = Command::new(BIN);
    c.arg("--config").arg(config).args(["restore", snapshot, "--job", "data", "--no-progress", "--to"]).arg(to);
    c.arg("--identity").arg(identity).output().unwrap()
}

/// A snapshot's keys (fingerprints), as `coffer snapshots --json` lists them.
fn keys_of(setup: &Setup, id: &str) -> Vec<String> {
    let all = setup.snapshots();
    let snap = all.iter().find(|s| s["snapshot"] == id).unwrap_or_else(|| panic!("no snapshot {id}: {all:?}"));
    snap["keys"].as_array().unwrap().iter().map(|k| k["fingerprint"].as_str().unwrap().to_string()).collect()
}

fn fingerprint(recipient: &str) -> String {
    coffer::keys::parse_recipient(recipient).unwrap().fingerprint()
}

fn keys_round_trip(name: &str, target: Target) {
    let scratch = Scratch::new(name);
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), Rng(3).mixed(3 << 20)).unwrap();
    std::fs::write(src.join("b.txt"), "first\n").unwrap();
    let setup = Setup::new(name, target, &src);
    let offline = setup.dir.path("offline");
    let a = (setup.identity.clone(), std::fs::read_to_string(&setup.identity).unwrap());
    let a_recipient = a.1.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
    let (b_identity, b_recipient) = keygen(&offline, "b");
    let first = json_id(&setup.ok(&["backup", "data", "--no-progress", "--json"]));

    // The config names a key the repository does not have: refused everywhere, saying what to run.
    set_recipients(&setup, &[&a_recipient, &b_recipient]);
    let check = setup.run(&["check-config"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("the config adds") && text(&check).contains("coffer key add"), "{}", text(&check));
    let refused = setup.run(&["backup", "data", "--no-progress"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains(&fingerprint(&b_recipient)), "{}", text(&refused));
    let runs = json_lines(&setup.ok(&["runs", "--json"]));
    assert_eq!(runs[0]["outcome"], "failed", "the refusal is a recorded run: {runs:?}");

    // Added (no identity needed): backups go on, and B restores what is made from now on.
    let added = setup.run(&["key", "add", &b_recipient]);
    assert!(added.status.success(), "{}", text(&added));
    std::fs::write(src.join("b.txt"), "second\n").unwrap();
    let second = json_id(&setup.ok(&["backup", "data", "--no-progress", "--json"]));
    let mut both = vec![fingerprint(&a_recipient), fingerprint(&b_recipient)];
    both.sort();
    assert_eq!(keys_of(&setup, &first), [fingerprint(&a_recipient)]);
    assert_eq!(keys_of(&setup, &second), both, "every pack of the new snapshot is readable by both keys");
    let out = setup.dir.path("second-by-b");
    let r = restore_with(&setup, &setup.config, &second, &b_identity, &out);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&src, &out);
    // The first snapshot's packs were encrypted before B existed: named, with who can.
    let r = restore_with(&setup, &setup.config, &first, &b_identity, &setup.dir.path("first-by-b"));
    assert!(!r.status.success(), "{}", text(&r));
    assert!(text(&r).contains("can be restored") && text(&r).contains(&a_recipient), "{}", text(&r));
    let r = restore_with(&setup, &setup.config, &first, &a.0, &setup.dir.path("first-by-a"));
    assert!(r.status.success(), "{}", text(&r));

    // A lost: the config keeps only B. Removing A is refused while it alone restores
    // the first snapshot; with --force that snapshot is named.
    set_recipients(&setup, &[&b_recipient]);
    let refused = setup.run(&["backup", "data", "--no-progress"]);
    assert!(!refused.status.success() && text(&refused).contains("lacks the repository's key"), "{}", text(&refused));
    let r = setup.run(&["key", "remove", &a_recipient]);
    assert!(!r.status.success() && text(&r).contains(&first), "{}", text(&r));
    let r = setup.run(&["key", "remove", &fingerprint(&a_recipient), "--force"]);
    assert!(r.status.success() && text(&r).contains(&first), "{}", text(&r));
    let r = setup.run(&["key", "remove", &b_recipient, "--force"]);
    assert!(!r.status.success() && text(&r).contains("last key"), "{}", text(&r));
    std::fs::write(src.join("b.txt"), "third\n").unwrap();
    let third = json_id(&setup.ok(&["backup", "data", "--no-progress", "--json"]));
    assert_eq!(keys_of(&setup, &third), [fingerprint(&b_recipient)]);
    let listed: Value = serde_json::from_slice(&setup.ok(&["key", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed["sets"].as_array().unwrap().len(), 3, "{listed}");

    // A restorer holding only B, on a bare machine: recover opens the repository through
    // the key sets, and restores the newest snapshot.
    let bare = setup.dir.path("bare.toml");
    let text_cfg = std::fs::read_to_string(&setup.config).unwrap().replace("\"state", "\"bare-state");
    std::fs::write(&bare, text_cfg).unwrap();
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&bare).args(["recover", "--no-progress", "--identity"]).arg(&b_identity);
    let rec = rec.output().unwrap();
    assert!(rec.status.success(), "{}", text(&rec));
    let out = setup.dir.path("third-recovered");
    let r = restore_with(&setup, &bare, &third, &b_identity, &out);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&src, &out);
}

/// A `file://` setup backing up one small file: its scratch, source and setup.
fn one_file_setup(name: &str) -> (Scratch, PathBuf, Setup) {
    let scratch = Scratch::new(name);
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "data").unwrap();
    let setup = Setup::new(name, Target::Dir, &src);
    (scratch, src, setup)
}

fn json_id(out: &Output) -> String {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshot"].as_str().unwrap().to_string()
}

#[test]
fn keys_belong_to_the_repository_on_a_directory() {
    keys_round_trip("keys-dir", Target::Dir);
}

#[test]
fn keys_belong_to_the_repository_on_ceph() {
    if s3_available() {
        keys_round_trip("keys-s3", Target::S3);
    }
}

/// Key sets on the target are input too. Someone who can write to the target (not the
/// backup host: no secret) adds a key set wrapping a secret of theirs to a key they
/// hold, and garbage under another set's name: the host never reads them; `recover`
/// names both and, told the fingerprint `init` printed, refuses the forged one.
#[test]
fn forged_or_malformed_key_sets_are_refused() {
    let (_scratch, _src, setup) = one_file_setup("keys-forged");
    setup.backup();
    let init: Value = serde_json::from_slice(&setup.ok(&["init", "--json"]).stdout).unwrap();
    let fingerprint = init["fingerprint"].as_str().unwrap().to_string();
    let (mallory, mallory_recipient) = keygen(&setup.dir.path("offline"), "mallory");
    let target = setup.dir.path("target");
    let record = std::fs::read(target.join("coffer.repo")).unwrap();
    let theirs = coffer::keys::RepoSecret::from_bytes([0x42; 32]);
    let genuine = coffer::format::repo::RepoRecord::decode(&record).unwrap();
    let recipient = coffer::keys::parse_recipient(&mallory_recipient).unwrap();
    let previous = blake3::hash(&record).to_hex().to_string();
    let set = coffer::format::keyset::KeySet::new(&genuine.id, 1, &previous, &[recipient], &theirs).unwrap();
    std::fs::create_dir_all(target.join("keys")).unwrap();
    std::fs::write(target.join("keys/000001"), set.seal(&theirs)).unwrap();
    std::fs::write(target.join("keys/000002"), b"not a key set at all").unwrap();

    // The host: neither is recorded, nothing changes, backups go on.
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Value = serde_json::from_slice(&setup.ok(&["key", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed["sets"].as_array().unwrap().len(), 1, "{listed}");

    // A bare machine with Mallory's key: without the fingerprint it opens what Mallory
    // wrapped (and prints a fingerprint that is not the one kept); with it, refused.
    let bare = setup.dir.path("bare.toml");
    std::fs::write(&bare, std::fs::read_to_string(&setup.config).unwrap().replace("\"state", "\"bare-state")).unwrap();
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&bare).args(["recover", "--no-progress", "--expect-fingerprint", &fingerprint]);
    let rec = rec.arg("--identity").arg(&mallory).output().unwrap();
    assert!(!rec.status.success() && text(&rec).contains("not the"), "{}", text(&rec));
    assert!(!setup.dir.path("bare-state/repo.secret").exists());
    // The restorer's own key recovers, and names both objects as forged.
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&bare).args(["recover", "--no-progress", "--expect-fingerprint", &fingerprint]);
    let rec = rec.arg("--identity").arg(&setup.identity).output().unwrap();
    assert_eq!(rec.status.code(), Some(4), "{}", text(&rec));
    for key in ["keys/000001", "keys/000002"] {
        assert!(text(&rec).contains(&format!("forged-record: {key}")), "{key}: {}", text(&rec));
    }
}

/// A key added while one of two targets is down: exit 5, the target named; the next
/// backup that reaches it copies the key set there, and the restorer with only the new
/// key recovers from that target alone.
#[test]
fn a_key_set_reaches_a_target_that_was_down_with_the_next_backup() {
    let (_scratch, src, setup) = one_file_setup("keys-down");
    let second = setup.dir.path("second");
    setup.add_dir_target("second", &second);
    setup.backup();
    assert!(second.join("coffer.repo").is_file());
    let a_recipient = std::fs::read_to_string(&setup.identity).unwrap();
    let a_recipient = a_recipient.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
    let (b_identity, b_recipient) = keygen(&setup.dir.path("offline"), "b");

    // The second target's disk is not mounted: an empty directory where it was.
    let away = setup.dir.path("second.away");
    std::fs::rename(&second, &away).unwrap();
    std::fs::create_dir(&second).unwrap();
    let added = setup.run(&["key", "add", &b_recipient]);
    assert_eq!(added.status.code(), Some(5), "{}", text(&added));
    assert!(text(&added).contains("not stored") && text(&added).contains("second"), "{}", text(&added));

    assert!(std::fs::read_dir(&second).unwrap().next().is_none(), "something was written to the empty directory");
    // Back: the next backup copies the key set, and the snapshot, there.
    std::fs::remove_dir(&second).unwrap();
    std::fs::rename(&away, &second).unwrap();
    assert!(!second.join("keys/000001").exists());
    set_recipients(&setup, &[&a_recipient, &b_recipient]);
    std::fs::write(src.join("a.txt"), "changed").unwrap();
    let newest = json_id(&setup.ok(&["backup", "data", "--no-progress", "--json"]));
    assert!(second.join("keys/000001").is_file(), "the key set was not copied to the second target");

    // From the second target alone, with only B.
    let bare = setup.dir.path("bare.toml");
    let text_cfg = std::fs::read_to_string(&setup.config).unwrap().replace("\"state", "\"bare-state");
    std::fs::write(&bare, text_cfg).unwrap();
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&bare).args(["recover", "--target", "second", "--no-progress", "--identity"]);
    let rec = rec.arg(&b_identity).output().unwrap();
    assert!(rec.status.success(), "{}", text(&rec));
    let out = setup.dir.path("restored");
    let r = restore_with(&setup, &bare, &newest, &b_identity, &out);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&src, &out);
}

/// Whoever can write to the target can plant key-set records by the thousand, each as
/// large as one may be. `recover` reads key sets within a budget, lowest numbers (the
/// genuine chain) first: the flood neither fills the restorer's memory nor stops the
/// recovery; what was not read is named.
#[test]
fn a_flood_of_key_sets_neither_fills_memory_nor_stops_recover() {
    let (_scratch, src, setup) = one_file_setup("keys-flood");
    setup.backup();
    let keys = setup.dir.path("target/keys");
    std::fs::create_dir_all(&keys).unwrap();
    let junk = vec![b'k'; 200 << 10];
    for seq in 1..=1100 {
        std::fs::write(keys.join(format!("{seq:06}")), &junk).unwrap();
    }

    let bare = setup.dir.path("bare.toml");
    std::fs::write(&bare, std::fs::read_to_string(&setup.config).unwrap().replace("\"state", "\"bare-state")).unwrap();
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&bare).args(["recover", "--no-progress", "--identity"]).arg(&setup.identity);
    let (rec, rss) = peak_rss(&mut rec);
    eprintln!("recover beside 1100 planted key sets of 200 KiB: peak RSS {rss} KiB");
    assert_eq!(rec.status.code(), Some(4), "{}", text(&rec));
    assert!(text(&rec).contains("keys/000001") && text(&rec).contains("not read"), "{}", text(&rec));
    assert!(rss < 200 * 1024, "recover peak RSS {rss} KiB");
    let out = setup.dir.path("restored");
    let r = restore_with(&setup, &bare, "latest", &setup.identity, &out);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_tree(&src, &out);
}
