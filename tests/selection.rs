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
    assert!(text(&out).contains("job dump") && text(&out).contains("of job data complete"), "{}", text(&out));
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
