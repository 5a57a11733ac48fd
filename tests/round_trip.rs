//! Acceptance 1 and 2 of the core engine: a realistic tree survives a round trip through
//! `file://` and S3 unchanged (content, modes, mtimes, links), and dedup stores only what
//! changed.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

const SMALL_FILES: usize = 10_000;

/// Nested dirs, empty files and dirs, a 200 MiB file of mixed random/compressible data,
/// 10 000 small files, symlinks and unusual names. Returns every regular file.
fn build_tree(root: &Path) -> Vec<PathBuf> {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut files = Vec::new();
    let write = |p: PathBuf, data: &[u8], files: &mut Vec<PathBuf>| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        files.push(p);
    };
    write(root.join("big/mixed.bin"), &rng.mixed(200 << 20), &mut files);
    for i in 0..SMALL_FILES {
        // Source-file-like sizes: 0 to 32 KiB, a few empty.
        let len = if i % 97 == 0 { 0 } else { rng.below(32 * 1024) as usize };
        let data = rng.mixed(len);
        write(root.join(format!("small/d{:03}/f{i:05}.dat", i / 100)), &data, &mut files);
    }
    for name in ["with space.txt", "ünïcödé €.txt", "new\nline.txt", "tab\there", "-leading-dash"] {
        write(root.join("names").join(name), name.as_bytes(), &mut files);
    }
    let raw = root.join("names").join(std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe"));
    write(raw, b"bytes", &mut files);
    std::fs::create_dir_all(root.join("empty/nested/deeper")).unwrap();
    write(root.join("modes/secret"), b"s", &mut files);
    std::fs::set_permissions(root.join("modes/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    write(root.join("modes/tool.sh"), b"#!/bin/sh\necho hi\n", &mut files);
    std::fs::set_permissions(root.join("modes/tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(root.join("modes/readonly"), b"r", &mut files);
    std::fs::set_permissions(root.join("modes/readonly"), std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::create_dir_all(root.join("modes/private")).unwrap();
    std::fs::set_permissions(root.join("modes/private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("../big/mixed.bin", root.join("names/link-to-big")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling", root.join("names/dangling")).unwrap();
    std::os::unix::fs::symlink("../small/d000", root.join("names/link-to-dir")).unwrap();
    // Old, exact mtimes so a restore that forgets them is caught.
    set_mtime(&root.join("modes/secret"), 1_000_000_000, 123_456_789);
    set_mtime(&root.join("names/dangling"), 1_100_000_000, 0);
    set_mtime(&root.join("empty/nested"), 1_200_000_000, 5);
    files
}

fn latest(setup: &Setup) -> serde_json::Value {
    setup.snapshots().pop().expect("a snapshot")
}

#[test]
fn tree_round_trips_through_a_directory_target_and_dedups() {
    let scratch = Scratch::new("rt-dir");
    let src = scratch.path("src");
    let files = build_tree(&src);
    let setup = Setup::new("rt_dir", Target::Dir, &src);

    setup.backup();
    let out = scratch.path("restore1");
    setup.assert_restores(&src, &out);

    // Unchanged tree: no new pack at all.
    let packs_before = setup.pack_hashes();
    setup.backup();
    assert_eq!(setup.pack_hashes(), packs_before, "an unchanged tree uploaded a pack");
    assert_eq!(latest(&setup)["bytes_uploaded"], 0);
    let read: i64 =
        setup.catalog().query_row("SELECT bytes_read FROM runs ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(read, 0, "unchanged files were read again instead of taking the fast path");

    // Change 1 % of the files (chosen at random over the whole tree) to new content.
    let mut rng = Rng(42);
    let mut changed_compressed = 0usize;
    let n_changed = files.len() / 100;
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < n_changed {
        picked.insert(rng.below(files.len() as u64) as usize);
    }
    for &i in &picked {
        let p = &files[i];
        let len = std::fs::metadata(p).unwrap().len().max(1000) as usize;
        let data = rng.mixed(len);
        changed_compressed += zstd::bulk::compress(&data, 3).unwrap().len().min(data.len());
        let mode = std::fs::metadata(p).unwrap().permissions();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(p, &data).unwrap();
        std::fs::set_permissions(p, mode).unwrap();
    }
    setup.backup();
    let uploaded = latest(&setup)["bytes_uploaded"].as_u64().unwrap() as usize;
    eprintln!("changed {n_changed} files: {changed_compressed} bytes compressed; uploaded {uploaded} bytes");
    assert!(uploaded > 0);
    assert!(
        uploaded <= 2 * changed_compressed,
        "uploaded {uploaded} bytes for {changed_compressed} compressed changed bytes"
    );
    let out2 = scratch.path("restore2");
    setup.assert_restores(&src, &out2);
    setup.integrity_ok();
}

#[test]
fn tree_round_trips_through_s3() {
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("rt-s3");
    let src = scratch.path("src");
    build_tree(&src);
    let setup = Setup::new("rt_s3", Target::S3, &src);
    setup.backup();
    // Every pack was recorded with the version id the server returned.
    let unversioned: i64 =
        setup.catalog().query_row("SELECT count(*) FROM pack_copies WHERE version IS NULL", [], |r| r.get(0)).unwrap();
    assert_eq!(unversioned, 0);
    let out = scratch.path("restore");
    setup.assert_restores(&src, &out);
    let packs = setup.pack_hashes();
    setup.backup();
    assert_eq!(setup.pack_hashes(), packs, "an unchanged tree uploaded a pack");
}

#[test]
fn two_copies_of_a_file_are_stored_once() {
    let scratch = Scratch::new("twice");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = Rng(7).mixed(100 << 20);
    std::fs::write(src.join("one.bin"), &data).unwrap();
    std::fs::write(src.join("two.bin"), &data).unwrap();
    let setup = Setup::new("twice", Target::Dir, &src);
    setup.backup();
    let snap = latest(&setup);
    let new = snap["bytes_new"].as_u64().unwrap();
    // 100 MiB of file data once, plus a few KiB of entry stream.
    assert!(new < (100 << 20) + (64 << 10), "stored {new} new bytes for two copies of 100 MiB");
    assert!(new >= 100 << 20);
    let out = scratch.path("out");
    setup.assert_restores(&src, &out);
}

#[test]
fn restore_a_subpath_and_overwrite() {
    let scratch = Scratch::new("subpath");
    let src = scratch.path("src");
    for (p, body) in [("docs/a.txt", "a"), ("docs/deep/b.txt", "b"), ("other/c.txt", "c"), ("docs2/d.txt", "d")] {
        std::fs::create_dir_all(src.join(p).parent().unwrap()).unwrap();
        std::fs::write(src.join(p), body).unwrap();
    }
    let setup = Setup::new("subpath", Target::Dir, &src);
    setup.backup();
    let out = scratch.path("out");
    let restore_path = |path: &str, to: &std::path::Path, extra: &[&str]| {
        let mut c = setup.cmd(&["restore", "latest", "--job", "data", "--path", path, "--to"]);
        c.arg(to).arg("--identity").arg(&setup.identity).args(extra);
        c.output().unwrap()
    };
    let restore_docs = |extra: &[&str]| restore_path("/docs/", &out, extra);
    let r = restore_docs(&[]);
    assert!(r.status.success(), "{}", text(&r));
    // Only docs/ (not docs2/, whose name merely starts the same), with its contents.
    assert_same_tree(&src.join("docs"), &out.join("docs"));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);

    std::fs::write(out.join("docs/a.txt"), "changed by someone").unwrap();
    let refused = restore_docs(&[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).contains("--overwrite"), "{}", text(&refused));
    assert_eq!(std::fs::read_to_string(out.join("docs/a.txt")).unwrap(), "changed by someone");
    assert!(restore_docs(&["--overwrite"]).status.success());
    assert_same_tree(&src.join("docs"), &out.join("docs"));

    let missing = restore_path("nope", &scratch.path("o2"), &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("matches --path `nope`"), "{}", text(&missing));
    let escape = restore_path("../etc", &scratch.path("o3"), &[]);
    assert_eq!(escape.status.code(), Some(1));
}

/// While a restore runs, another user of the machine looks into the destination as often
/// as it can: no file may show there before it is complete, and none with more
/// permission than it ends with; directories stay 0700 until they get their own mode.
#[test]
fn nothing_is_readable_by_others_while_a_restore_writes() {
    use std::os::unix::fs::MetadataExt;
    let scratch = Scratch::new("watched-src");
    let src = scratch.path("src");
    let mut rng = Rng(7);
    std::fs::create_dir_all(src.join("open/sub")).unwrap();
    std::fs::create_dir_all(src.join("private")).unwrap();
    std::fs::write(src.join("private/key"), rng.mixed(64 << 20)).unwrap();
    for i in 0..2000 {
        std::fs::write(src.join(format!("open/sub/f{i}")), rng.mixed(4096)).unwrap();
    }
    std::fs::write(src.join("open/secret"), b"only for the owner").unwrap();
    std::fs::set_permissions(src.join("private/key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(src.join("open/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(src.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let setup = Setup::new("watched", Target::Dir, &src);
    setup.backup();
    let final_modes = |root: &Path| -> std::collections::HashMap<PathBuf, (u32, u64)> {
        snapshot_tree(root)
            .keys()
            .map(|k| {
                let m = std::fs::symlink_metadata(root.join(k)).unwrap();
                (k.clone(), (m.mode() & 0o7777, if m.is_file() { m.len() } else { 0 }))
            })
            .collect()
    };
    let want = final_modes(&src);

    let to = setup.dir.path("out");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (to, done, want) = (to.clone(), done.clone(), want.clone());
        std::thread::spawn(move || {
            let (mut looks, mut seen_to) = (0u64, None);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                looks += 1;
                if let Ok(m) = std::fs::metadata(&to) {
                    seen_to.get_or_insert(m.mode() & 0o777);
                }
                let mut stack = vec![to.clone()];
                while let Some(d) = stack.pop() {
                    let Ok(rd) = std::fs::read_dir(&d) else { continue };
                    for e in rd.flatten() {
                        let p = e.path();
                        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
                        let rel = p.strip_prefix(&to).unwrap().to_path_buf();
                        let mode = m.mode() & 0o7777;
                        let Some(&(final_mode, final_len)) = want.get(&rel) else {
                            panic!("{} appeared during the restore and is not in the snapshot", rel.display());
                        };
                        if m.is_dir() {
                            assert!(
                                mode == 0o700 || mode == final_mode,
                                "{}: dir {mode:o} while restoring",
                                rel.display()
                            );
                            stack.push(p);
                        } else if m.is_file() {
                            assert_eq!(mode, final_mode, "{} shown with mode {mode:o}", rel.display());
                            assert_eq!(m.len(), final_len, "{} shown before it was complete", rel.display());
                        }
                    }
                }
            }
            (looks, seen_to)
        })
    };
    let r = setup.restore("latest", &to);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (looks, seen_to) = watcher.join().expect("the watcher saw something it should not have");
    assert!(r.status.success(), "{}", text(&r));
    assert!(looks > 5, "the watcher looked only {looks} times");
    assert_eq!(seen_to, Some(0o700), "--to is created 0700");
    assert_same_tree(&src, &to);
}

#[test]
fn the_first_snapshot_is_seen_to_be_the_yearly_keeper_before_it_binds() {
    let scratch = Scratch::new("keeper");
    let src = random_parts(&scratch, 5, 2);
    let setup = Setup::with_extra("keeper", Target::Dir, &src, "keep = { daily = \"7d\", yearly = \"7y\" }\n");
    let year = run_ok(std::process::Command::new("date").args(["-u", "+%Y"])).stdout;
    let in_seven_years = (String::from_utf8(year).unwrap().trim().parse::<i64>().unwrap() + 7).to_string();

    let dry = text(&setup.ok(&["backup", "data", "--dry-run"]));
    assert!(dry.contains("the yearly keeper (keep.yearly = 7y)") && dry.contains(&in_seven_years), "{dry}");
    assert!(dry.contains("nothing was read or written"), "{dry}");
    assert!(setup.snapshots().is_empty() && setup.pack_count() == 0, "a dry run stored something");

    let first = text(&setup.backup());
    assert!(
        first.contains("kept until") && first.contains("yearly keeper") && first.contains(&in_seven_years),
        "{first}"
    );
    let dry = text(&setup.ok(&["backup", "data", "--dry-run"]));
    assert!(dry.contains("lock_days = 30"), "the second snapshot of the day is no keeper: {dry}");

    let table = text(&setup.ok(&["snapshots"]));
    assert!(table.contains("KEEP UNTIL") && table.contains("LOCKED UNTIL"), "{table}");
    assert!(table.lines().nth(1).is_some_and(|l| l.contains(&format!("{in_seven_years}-"))), "{table}");
}

/// A file an observer was shown: its path, size, and what the last snapshot knew of it.
type SeenFile = (String, u64, &'static str);

/// What a per-file step added to a run sees ([`coffer::backup::Observer`]): each file's
/// path and what the last snapshot knew of it, and the bytes of every file that was read
/// (each file's chunks at their offsets, from 0).
#[derive(Clone, Default)]
struct Seen {
    files: std::sync::Arc<std::sync::Mutex<Vec<SeenFile>>>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The offset the next chunk of the file being read must have.
    next: u64,
}

impl coffer::backup::Observer for Seen {
    fn file(&mut self, entry: &coffer::format::entry::Entry, change: coffer::backup::Change<'_>) {
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        let change = match change {
            coffer::backup::Change::Unchanged => "unchanged",
            coffer::backup::Change::Modified(before) => {
                assert_ne!(before.size, entry.size, "the previous version is the last snapshot's");
                "modified"
            }
            coffer::backup::Change::Added => "added",
        };
        self.files.lock().unwrap().push((path, entry.size, change));
    }

    fn chunk(&mut self, offset: u64, data: &[u8]) {
        assert!(offset == 0 || offset == self.next, "chunk at {offset}, expected 0 or {}", self.next);
        self.next = offset + data.len() as u64;
        self.bytes.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Seen {
    fn run(cfg: &coffer::config::Config) -> Seen {
        let seen = Seen::default();
        let opts = coffer::backup::Options {
            progress: false,
            trigger: coffer::catalog::Trigger::Manual,
            scheduled_for: None,
            stop: None,
            observers: vec![Box::new(seen.clone())],
        };
        coffer::backup::run(cfg, cfg.job("data").unwrap(), opts).unwrap();
        seen
    }

    fn files(&self) -> Vec<SeenFile> {
        let mut files = self.files.lock().unwrap().clone();
        files.sort();
        files
    }

    /// The bytes of the files that were read, as their sizes add up.
    fn read_bytes(&self) -> u64 {
        self.files().iter().filter(|f| f.2 != "unchanged").map(|f| f.1).sum()
    }
}

#[test]
fn an_observer_sees_every_file_and_the_bytes_read() {
    let scratch = Scratch::new("observer");
    let src = scratch.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(src.join("d/b.bin"), Rng(3).mixed(3 << 20)).unwrap();
    std::fs::write(src.join("d/c.txt"), b"gamma\n").unwrap();
    let setup = Setup::new("observer", Target::Dir, &src);
    let cfg = coffer::config::Config::load(&setup.config).unwrap();

    let first = Seen::run(&cfg);
    let files = first.files();
    let paths: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(paths, ["a.txt", "d/b.bin", "d/c.txt"], "every file, once");
    assert!(files.iter().all(|f| f.2 == "added"), "a first run reads every file: {files:?}");
    assert_eq!(first.bytes.load(std::sync::atomic::Ordering::Relaxed), (3 << 20) + 12);

    // The second run: what is unchanged may be reused; what changed is read, and only
    // what is read is shown as bytes.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(src.join("d/c.txt"), b"gamma, changed\n").unwrap();
    let second = Seen::run(&cfg);
    let files = second.files();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.contains(&("d/c.txt".into(), 15, "modified")), "the changed file is read: {files:?}");
    assert!(files.iter().filter(|f| f.0 != "d/c.txt").all(|f| f.2 != "added"), "{files:?}");
    assert_eq!(second.bytes.load(std::sync::atomic::Ordering::Relaxed), second.read_bytes(), "{files:?}");
    assert_eq!(setup.snapshots().len(), 2);
}
