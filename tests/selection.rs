//! Choosing what to back up: exclude files, marker files, cache directories; every job
//! at once; and `keygen -o -`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

#[test]
fn caches_marked_directories_and_an_exclude_file_are_left_out() {
    let scratch = Scratch::new("selection");
    let src = scratch.path("src");
    write(&src, "keep/a.txt", b"kept");
    write(&src, "cache/CACHEDIR.TAG", b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n");
    write(&src, "cache/blob.bin", &[7; 5000]);
    // A tag without the signature is no cache tag.
    write(&src, "notacache/CACHEDIR.TAG", b"just a file\n");
    write(&src, "notacache/b.txt", b"kept too");
    write(&src, "private/.nobackup", b"");
    write(&src, "private/secret.txt", b"left out");
    write(&src, "build/out.o", b"left out by the exclude file");
    let excludes = scratch.path("excludes.txt");
    std::fs::write(&excludes, "# build output\nbuild\n\n").unwrap();
    let extra = format!(
        "exclude_caches = true\nexclude_if_present = [\".nobackup\"]\nexclude_from = \"{}\"\n",
        excludes.display()
    );
    let setup = Setup::with_extra("selection", Target::Dir, &src, &extra);

    // Before the first backup, --dry-run lists what it will read (the excluded paths
    // not among them), and its estimate is what the backup then reads.
    let listed = text(&setup.ok(&["backup", "data", "--dry-run"]));
    let files: Vec<&str> =
        listed.lines().filter(|l| l.starts_with("+ ")).map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(files, ["keep/a.txt", "notacache/CACHEDIR.TAG", "notacache/b.txt"], "{listed}");
    let estimate = &json_lines(&setup.ok(&["backup", "data", "--dry-run", "--json"]))[0]["would_read"];
    assert!(setup.snapshots().is_empty(), "a dry run made a snapshot");
    let done = &json_lines(&setup.ok(&["backup", "data", "--json", "--no-progress"]))[0];
    assert_eq!(
        (estimate["files"].as_u64(), estimate["bytes"].as_u64()),
        (Some(3), done["stats"]["bytes_read"].as_u64())
    );
    // After it: a changed file is `M`, a new one `+`, the rest unchanged and not listed.
    write(&src, "keep/a.txt", b"kept, and changed");
    write(&src, "keep/new.txt", b"new");
    let listed = text(&setup.ok(&["backup", "data", "--dry-run"]));
    let marked: Vec<&str> = listed.lines().filter(|l| l.starts_with(['+', 'M'])).collect();
    assert_eq!(marked.len(), 2, "{listed}");
    assert!(marked[0].starts_with("M ") && marked[0].ends_with("keep/a.txt"), "{listed}");
    assert!(marked[1].starts_with("+ ") && marked[1].ends_with("keep/new.txt"), "{listed}");
    assert!(listed.contains("2 unchanged files"), "{listed}");

    setup.backup();
    let out = scratch.path("out");
    let r = setup.restore("latest", &out);
    assert!(r.status.success(), "{}", text(&r));
    let restored: Vec<String> = snapshot_tree(&out).keys().map(|p| p.display().to_string()).collect();
    for kept in ["keep/a.txt", "notacache/CACHEDIR.TAG", "notacache/b.txt"] {
        assert!(restored.iter().any(|p| p == kept), "{kept} missing from {restored:?}");
    }
    for left in ["cache", "private", "build"] {
        assert!(!restored.iter().any(|p| p.starts_with(left)), "{left} was backed up: {restored:?}");
    }

    // A marker that is not a plain name is refused with its key.
    let config = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, config.replace("[\".nobackup\"]", "[\"a/b\"]")).unwrap();
    let e = setup.run(&["backup", "data"]);
    assert!(!e.status.success() && text(&e).contains("job[0].exclude_if_present[0]"), "{}", text(&e));
}

#[test]
fn backup_all_runs_every_job_and_exits_with_the_worst_outcome() {
    let scratch = Scratch::new("all");
    let src = random_parts(&scratch, 9, 2);
    let setup = Setup::new("all", Target::Dir, &src);
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let failing = "[[job]]\nname = \"dump\"\nsource = { command = [\"false\"], file = \"x.dump\" }\n";
    std::fs::write(&setup.config, format!("{config}{failing}")).unwrap();
    let out = setup.run(&["backup", "--all", "--no-progress"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("job=dump") && text(&out).contains("of job data complete"), "{}", text(&out));
    // The job after a failing one still runs: put the failing one first.
    std::fs::write(&setup.config, config.replacen("[[job]]", &format!("{failing}[[job]]"), 1)).unwrap();
    let out = setup.run(&["backup", "--all", "--no-progress"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(setup.snapshots().len(), 2, "data was backed up both times");
    std::fs::write(&setup.config, config).unwrap();
    assert!(setup.run(&["backup", "--all", "--no-progress"]).status.success());
}

#[test]
fn keygen_to_stdout_prints_the_identity_and_writes_no_file() {
    let scratch = Scratch::new("keygen-stdout");
    let out = run_ok(Command::new(BIN).args(["keygen", "-o", "-"]).current_dir(&scratch.0));
    let identity = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(identity.lines().any(|l| l.starts_with("AGE-SECRET-KEY-1")), "{identity}");
    let recipient = stderr.trim().strip_prefix("public key: ").unwrap_or_else(|| panic!("{stderr}"));
    assert!(identity.contains(recipient) && recipient.starts_with("age1"));
    assert!(!scratch.path("-").exists(), "a file named `-` was written");
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn one_file_system_keeps_a_mount_point_empty() {
    let scratch = Scratch::new("onefs");
    let src = scratch.path("src");
    write(&src, "local.txt", b"on the source's file system");
    let mnt = src.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "coffer-test"]).arg(&mnt).output();
    if !mounted.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _mount = Mounted(mnt.clone());
    write(&mnt, "inner/other.txt", b"on another file system");

    let setup = Setup::with_extra("onefs", Target::Dir, &src, "one_file_system = true\n");
    setup.backup();
    let out = scratch.path("out");
    assert!(setup.restore("latest", &out).status.success());
    assert!(out.join("local.txt").is_file() && out.join("mnt").is_dir());
    assert_eq!(std::fs::read_dir(out.join("mnt")).unwrap().count(), 0, "the mount point was entered");

    // Without the option, the mounted file system is backed up like any directory.
    let config = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, config.replace("one_file_system = true\n", "")).unwrap();
    setup.backup();
    let all = scratch.path("all");
    assert!(setup.restore("latest", &all).status.success());
    assert_eq!(std::fs::read(all.join("mnt/inner/other.txt")).unwrap(), b"on another file system");
}

#[test]
fn markers_other_users_plant_cannot_hang_the_walk_or_be_borrowed_through_a_symlink() {
    // Other users write in the tree: one makes CACHEDIR.TAG a FIFO (an open that blocks
    // would hang the run), another links it to a valid tag elsewhere.
    let scratch = Scratch::new("markers-hostile");
    let src = scratch.path("src");
    write(&src, "fifo/a.txt", b"kept");
    write(&src, "linked/b.txt", b"kept too");
    let fifo = src.join("fifo/CACHEDIR.TAG");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let valid = scratch.path("elsewhere/CACHEDIR.TAG");
    write(&scratch.0, "elsewhere/CACHEDIR.TAG", b"Signature: 8a477f597d28d172789f06886806bc55\n");
    std::os::unix::fs::symlink(&valid, src.join("linked/CACHEDIR.TAG")).unwrap();

    let setup = Setup::with_extra("markers-hostile", Target::Dir, &src, "exclude_caches = true\n");
    let mut backup = setup.cmd(&["backup", "data", "--no-progress"]).spawn().unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = backup.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = backup.kill();
            panic!("the walk hung on a FIFO named CACHEDIR.TAG");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success());
    let to = scratch.path("out");
    assert!(setup.restore("latest", &to).status.success());
    assert_eq!(std::fs::read(to.join("fifo/a.txt")).unwrap(), b"kept");
    assert_eq!(std::fs::read(to.join("linked/b.txt")).unwrap(), b"kept too", "a symlinked tag was honoured");
}

/// Extended attributes (`user.*`, `security.*`, a POSIX ACL) on a file system that has
/// them (a tmpfs, as root), set and read back with Python's os.*xattr, not coffer's code.
#[test]
fn extended_attributes_and_acls_round_trip() {
    let scratch = Scratch::new("xattr");
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "coffer-xattr"]).arg(&src).output();
    if !mounted.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _mount = Mounted(src.clone());
    std::fs::create_dir_all(src.join("docs")).unwrap();
    std::fs::write(src.join("docs/plan.txt"), "plans").unwrap();
    std::fs::write(src.join("plain.txt"), "no attributes").unwrap();
    // An ACL granting uid 65534 read: version 2, then (tag, perm, id) entries.
    let set = r#"
import os, struct, sys
root = sys.argv[1]
f = os.path.join(root, "docs/plan.txt")
os.setxattr(f, "user.comment", b"written by alice")
os.setxattr(f, "user.binary", bytes(range(256)))
os.setxattr(f, "security.coffer", b"label")
os.setxattr(os.path.join(root, "docs"), "user.project", b"apollo")
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in
    [(1, 6, 0xFFFFFFFF), (2, 4, 65534), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)])
os.setxattr(f, "system.posix_acl_access", acl)
"#;
    run_ok(Command::new("python3").args(["-c", set]).arg(&src));
    let dump = r#"
import os, sys, json
root = sys.argv[1]
out = {}
for rel in ["docs", "docs/plan.txt", "plain.txt"]:
    p = os.path.join(root, rel)
    out[rel] = {n: os.getxattr(p, n).hex() for n in sorted(os.listxattr(p))}
print(json.dumps(out, sort_keys=True))
"#;
    let attrs =
        |root: &Path| String::from_utf8(run_ok(Command::new("python3").args(["-c", dump]).arg(root)).stdout).unwrap();
    let before = attrs(&src);
    assert!(before.contains("system.posix_acl_access") && before.contains("security.coffer"), "{before}");

    let setup = Setup::new("xattr", Target::Dir, &src);
    setup.backup();
    let out = scratch.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "coffer-xattr-out"]).arg(&out).output().unwrap();
    assert!(mounted.status.success());
    let _out_mount = Mounted(out.clone());
    assert!(setup.restore("latest", &out.join("r")).status.success());
    assert_eq!(attrs(&out.join("r")), before, "extended attributes differ after the restore");
    // A second run with nothing changed keeps them (the fast path reads no file), also
    // for cache rows written before attributes were kept (NULL: read, and rewritten).
    setup.catalog().execute("UPDATE file_cache SET xattrs = NULL", []).unwrap();
    setup.backup();
    let unknown: i64 =
        setup.catalog().query_row("SELECT count(*) FROM file_cache WHERE xattrs IS NULL", [], |r| r.get(0)).unwrap();
    assert_eq!(unknown, 0, "the rows were not rewritten with the attributes");
    let second = setup.snapshots()[1]["snapshot"].as_str().unwrap().to_string();
    let restored = scratch.path("out2");
    std::fs::create_dir_all(&restored).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "coffer-xattr-out2"]).arg(&restored).output().unwrap();
    assert!(mounted.status.success());
    let _out2 = Mounted(restored.clone());
    assert!(setup.restore(&second, &restored.join("r")).status.success());
    assert_eq!(attrs(&restored.join("r")), before);
    // `dump` carries them in the tar stream, as GNU tar reads them back.
    let mut dump = setup.cmd(&["dump", "latest", "--job", "data", "docs", "--identity"]);
    let tarball = run_ok(dump.arg(&setup.identity)).stdout;
    std::fs::create_dir_all(restored.join("t")).unwrap();
    let untar = piped(
        Command::new("tar").args(["--xattrs", "--xattrs-include=user.*", "-xpf", "-", "-C"]).arg(restored.join("t")),
        &tarball,
    );
    assert!(untar.status.success(), "{}", text(&untar));
    let get = "import os, sys; print(os.getxattr(sys.argv[1], 'user.comment').decode())";
    let comment = run_ok(Command::new("python3").args(["-c", get]).arg(restored.join("t/docs/plan.txt")));
    assert_eq!(text(&comment).trim(), "written by alice");
}

/// A job with several paths: each tree is stored under its own path, with the
/// directories above it, and restores to the same layout; a second run reads nothing.
#[test]
fn several_paths_in_one_job_restore_to_the_same_layout() {
    let scratch = Scratch::new("paths");
    let (etc, srv) = (scratch.path("host/etc"), scratch.path("data/srv/www"));
    for (dir, file) in [(&etc, "hosts"), (&srv, "index.html")] {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join(file), file).unwrap();
        std::fs::write(dir.join("sub/deeper.txt"), "deeper").unwrap();
    }
    let source = format!("{{ path = [\"{}\", \"{}\"] }}", srv.display(), etc.display());
    let setup = Setup::with_source("paths", Target::Dir, &source, "");
    setup.backup();
    let out = scratch.path("out");
    assert!(setup.restore("latest", &out).status.success());
    let inside = |p: &Path| out.join(p.strip_prefix("/").unwrap());
    assert_same_tree(&etc, &inside(&etc));
    assert_same_tree(&srv, &inside(&srv));
    // The directories above each tree carry their own metadata.
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
    assert_eq!(mode(&inside(&scratch.path("data/srv"))), mode(&scratch.path("data/srv")));
    let again = setup.ok(&["backup", "data", "--no-progress", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(summary["stats"]["bytes_read"], 0, "{summary}");
    assert_eq!(summary["unchanged_files"], 4, "{summary}");
    // Nested trees are refused by name.
    let nested = format!("{{ path = [\"{}\", \"{}\"] }}", etc.display(), etc.join("sub").display());
    let cfg = std::fs::read_to_string(&setup.config).unwrap().replace(&source, &nested);
    std::fs::write(&setup.config, cfg).unwrap();
    let refused = setup.run(&["check-config"]);
    assert!(text(&refused).contains("is inside"), "{}", text(&refused));
}
