//! `coffer mount`, as root with /dev/fuse: the snapshots read with `cat`, `cp -a`,
//! `find` and `stat` as the files were, a large file's first byte read without its
//! whole, a read-only tree, and a clean unmount on SIGINT and SIGTERM.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

/// Bytes the process `pid` has read through read(2) and the like (`rchar`).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().parse().unwrap()
}

#[test]
fn snapshots_read_as_the_files_were_and_unmount_cleanly() {
    let scratch = Scratch::new("mount");
    let src = scratch.path("src");
    std::fs::create_dir_all(src.join("docs/deep")).unwrap();
    std::fs::write(src.join("docs/a.txt"), "alpha\n".repeat(1000)).unwrap();
    std::fs::write(src.join("docs/deep/b.bin"), Rng(3).mixed(3 << 20)).unwrap();
    std::os::unix::fs::symlink("deep/b.bin", src.join("docs/link")).unwrap();
    std::fs::set_permissions(src.join("docs/a.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    // 1 GiB, half of it random: its first byte must come without reading the rest.
    let large = Rng(5).mixed(1 << 30);
    std::fs::write(src.join("large.bin"), &large).unwrap();
    let first_byte = large[0];
    drop(large);
    let setup = Setup::new("mount", Target::Dir, &src);
    setup.backup();
    std::fs::write(src.join("docs/a.txt"), "changed\n").unwrap();
    setup.backup();
    let snaps = setup.snapshots();
    let (first, second) = (snaps[0]["snapshot"].as_str().unwrap(), snaps[1]["snapshot"].as_str().unwrap());

    let dir = scratch.path("mnt");
    let Some(mount) = Mounted::start(&setup.config, &setup.identity, &dir, &[]) else { return };
    let job = dir.join("by-job/data");
    assert_eq!(std::fs::read_link(job.join("latest")).unwrap(), Path::new(second));
    assert_eq!(std::fs::read_to_string(job.join(first).join("docs/a.txt")).unwrap(), "alpha\n".repeat(1000));
    assert_eq!(std::fs::read_to_string(job.join("latest/docs/a.txt")).unwrap(), "changed\n");

    // The first byte of the large file, and how much the mount read to give it.
    let before = bytes_read(mount.child.id());
    let t0 = Instant::now();
    let head = run_ok(Command::new("head").args(["-c", "1"]).arg(job.join("latest/large.bin")));
    let took = t0.elapsed();
    let read = bytes_read(mount.child.id()) - before;
    eprintln!("first byte of 1 GiB in {took:?}, {read} bytes read by the mount");
    assert_eq!(head.stdout, [first_byte]);
    assert!(read < 64 << 20, "the mount read {read} bytes for one byte of a 1 GiB file");

    // cp -a, find and stat see the tree as it was backed up (the large file aside).
    let copy = scratch.path("copy");
    std::fs::remove_file(src.join("large.bin")).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(job.join("latest/docs")).arg(&copy));
    assert_eq!(described_tree(&copy, true), described_tree(&src.join("docs"), true));
    let found = text(&run_ok(Command::new("find").arg(job.join(first)).args(["-printf", "%P %y %s\\n"])));
    for line in ["docs d", "docs/deep/b.bin f 3145728", "docs/link l 10", "large.bin f 1073741824"] {
        assert!(found.lines().any(|l| l.starts_with(line)), "find lacks `{line}`:\n{found}");
    }
    let stat = text(&run_ok(Command::new("stat").args(["-c", "%a %s %F"]).arg(job.join(first).join("docs/a.txt"))));
    assert_eq!(stat.trim(), "640 6000 regular file");

    // Nothing can be written or changed.
    assert!(std::fs::write(job.join("latest/docs/a.txt"), "x").is_err());
    assert!(std::fs::write(job.join("latest/new.txt"), "x").is_err());
    assert!(std::fs::remove_file(job.join("latest/docs/a.txt")).is_err());

    let (status, said) = mount.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {said}");
    assert!(!std::fs::read_to_string("/proc/self/mounts").unwrap().contains(dir.to_str().unwrap()), "still mounted");

    // SIGINT (Ctrl-C) unmounts too.
    let Some(mount) = Mounted::start(&setup.config, &setup.identity, &dir, &["--job", "data"]) else { return };
    assert_eq!(std::fs::read_dir(&job).unwrap().count(), 3, "two snapshots and latest");
    let (status, said) = mount.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {said}");
    assert!(!std::fs::read_to_string("/proc/self/mounts").unwrap().contains(dir.to_str().unwrap()));
}
