//! Restores of forged snapshots. Root on the backup host holds the repository secret, so
//! it can write snapshots whose MAC verifies, encrypted to the public recipients, whose
//! entry streams are built to turn the restore against the restoring machine. The
//! forger below does exactly that with coffer's own format code; the victim then runs
//! `coffer recover` and `coffer restore` as root, as after a disaster.
//!
//! Outside `--to` sits a canary tree (files, modes, owners, a symlink); after every
//! restore it must be byte-for-byte and mode-for-mode what it was.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use coffer::config::Config;
use coffer::format::entry::{Entry, EntryWriter, Kind};
use coffer::format::pack::PackBuilder;
use coffer::format::snapshot::{self, SnapshotRecord, SnapshotStats};
use coffer::keys::RepoSecret;
use coffer::target::Target;
use common::{BIN, Setup, text};

/// One entry of a forged stream.
enum F<'a> {
    Dir(&'a [u8], u32),
    File(&'a [u8], &'a [u8], u32),
    Link(&'a [u8], &'a [u8]),
    /// A file that claims `size` bytes and carries extended attributes (name, value).
    Tagged(&'a [u8], &'a [u8], u64, Vec<(&'a [u8], &'a [u8])>),
}

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Writes a snapshot of `job` holding `stream` to the setup's target, with the
/// repository secret, as root on the backup host could. Returns its id.
fn forge(setup: &Setup, job: &str, stream: &[F]) -> String {
    let cfg = Config::load(&setup.config).unwrap();
    let secret = RepoSecret::load(&cfg.repo_secret_file).unwrap();
    let mut pack = PackBuilder::default();
    let mut w = EntryWriter::new(Vec::new()).unwrap();
    let now = common::now();
    for f in stream {
        let (path, kind, mode) = match f {
            F::Dir(p, m) => (*p, Kind::Dir, *m),
            F::File(p, _, m) => (*p, Kind::File, *m),
            F::Tagged(p, ..) => (*p, Kind::File, 0o644),
            F::Link(p, _) => (*p, Kind::Symlink, 0o777),
        };
        let mut e = Entry::synthetic(path.to_vec(), kind, mode, now * 1_000_000_000);
        (e.uid, e.gid) = (1234, 1234);
        match f {
            F::File(_, data, _) if !data.is_empty() => {
                let id = secret.chunk_id(data);
                pack.add(id, data, data.len() as u32, 0);
                (e.size, e.chunks) = (data.len() as u64, vec![id]);
            }
            F::Link(_, target) => e.target = Some(target.to_vec()),
            F::Tagged(_, data, size, xattrs) => {
                let id = secret.chunk_id(data);
                pack.add(id, data, data.len() as u32, 0);
                (e.size, e.chunks) = (*size, vec![id]);
                e.xattrs = xattrs
                    .iter()
                    .map(|(n, v)| coffer::format::entry::Xattr { name: n.to_vec(), value: v.to_vec() })
                    .collect();
            }
            _ => {}
        }
        w.write(&e).unwrap();
    }
    let entries = w.into_inner();
    let tree = secret.chunk_id(&entries);
    pack.add(tree, &entries, entries.len() as u32, 0);
    let (plain, _) = pack.finish();
    let ct = coffer::keys::encrypt(&cfg.recipients, &plain).unwrap();
    let id = coffer::hex::random(8);
    let record = SnapshotRecord {
        format: snapshot::VERSION,
        id: id.clone(),
        job: job.into(),
        host: "forger".into(),
        created: now,
        created_ns: Some(now * 1_000_000_000),
        source: "path /nowhere".into(),
        tree: vec![tree],
        stats: SnapshotStats::default(),
        errors: vec![],
        retain_until: Some(now + 86_400),
        contents: None,
    };
    let key = coffer::format::snapshot_key(job, &id);
    let sealed = snapshot::seal(&record, &key, &cfg.recipients, &secret).unwrap();
    let target = Target::open(&cfg.targets[0], coffer::catalog::TargetId::NONE).unwrap();
    let rt = coffer::target::runtime().unwrap();
    rt.block_on(target.put_new(&coffer::format::pack_key(&coffer::format::pack_id(&ct)), ct.into(), now + 86_400))
        .unwrap();
    rt.block_on(target.put_new(&key, sealed.into(), now + 86_400)).unwrap();
    id
}

/// Everything that could be harmed outside `--to`: what a restore is compared by (kind,
/// mode, mtime, content, link target), plus owners, by path, and the root's mode.
fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out: BTreeMap<PathBuf, String> = common::snapshot_tree(root)
        .into_iter()
        .map(|(rel, what)| {
            let m = std::fs::symlink_metadata(root.join(&rel)).unwrap();
            (rel, format!("{what} {}:{}", m.uid(), m.gid()))
        })
        .collect();
    out.insert(PathBuf::from("."), format!("{:o}", std::fs::metadata(root).unwrap().mode()));
    out
}

/// A canary tree outside the restore directory.
fn canary(dir: &Path) {
    std::fs::create_dir_all(dir.join("dir/tree/deep")).unwrap();
    std::fs::write(dir.join("existing"), b"the victim's secret").unwrap();
    std::fs::write(dir.join("file"), b"an ordinary file").unwrap();
    std::fs::write(dir.join("dir/tree/deep/f"), b"deep").unwrap();
    std::os::unix::fs::symlink("existing", dir.join("link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("existing"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Absolute paths into a canary tree, as a forger aims at them.
struct Canary {
    root: Vec<u8>,
    existing: Vec<u8>,
    file: Vec<u8>,
    dir_tree: Vec<u8>,
    nowhere: Vec<u8>,
}

impl Canary {
    fn at(dir: &Path) -> Canary {
        let at = |rest: &str| [dir.as_os_str().as_bytes(), rest.as_bytes()].concat();
        Canary { root: at(""), existing: at("/existing"), file: at("/file"), dir_tree: at("/dir"), nowhere: at("/new") }
    }
}

/// A forged stream: its name, its entries, the paths a restore must refuse, and the good
/// files that must still restore.
type Case<'a> = (&'a str, Vec<F<'a>>, Vec<&'a [u8]>, Vec<&'a [u8]>);

/// The hostile streams, aimed at the canary `p`.
fn hostile_cases(p: &Canary) -> Vec<Case<'_>> {
    let Canary { root: canary_root, existing, file, dir_tree, nowhere } = p;
    vec![
        (
            "symlink then a file under it",
            vec![
                F::Link(b"a", canary_root),
                F::File(b"a/x", b"evil", 0o644),
                F::File(b"a/existing", b"overwritten", 0o644),
                F::File(b"good", b"good", 0o644),
            ],
            vec![b"a/x", b"a/existing"],
            vec![b"good"],
        ),
        (
            "symlink then a directory of the same name",
            vec![F::Link(b"s", file), F::Dir(b"s", 0o4777), F::File(b"good", b"good", 0o600)],
            vec![b"s"],
            vec![b"good"],
        ),
        (
            "a chain of symlinked parents",
            vec![
                F::Link(b"a", canary_root),
                F::Link(b"a/link", b"existing"),
                F::File(b"a/link/x", b"evil", 0o644),
                F::File(b"good", b"good", 0o644),
            ],
            vec![b"a/link", b"a/link/x"],
            vec![b"good"],
        ),
        (
            "a file over a directory",
            vec![
                F::Link(b"d", dir_tree),
                F::File(b"d/tree", b"evil", 0o644),
                F::Dir(b"e", 0o755),
                F::File(b"e", b"evil", 0o644),
                F::File(b"good", b"good", 0o644),
            ],
            vec![b"d/tree", b"e"],
            vec![b"good"],
        ),
        (
            "a dangling symlink then a file",
            vec![F::Link(b"l", nowhere), F::File(b"l", b"evil", 0o644), F::File(b"good", b"good", 0o644)],
            vec![b"l"],
            vec![b"good"],
        ),
        (
            "entries out of order",
            vec![F::File(b"o/x", b"evil", 0o644), F::Dir(b"o", 0o755), F::File(b"o/y", b"good", 0o644)],
            vec![b"o/x"],
            vec![b"o/y"],
        ),
        (
            "duplicate paths",
            vec![F::File(b"f", b"first", 0o644), F::File(b"f", b"second", 0o644), F::Dir(b"f", 0o755)],
            vec![b"f", b"f"],
            vec![b"f"],
        ),
        (
            "`..`, absolute paths and NUL",
            vec![
                F::File(b"../escape", b"evil", 0o644),
                F::File(b"../../../../../../../../../tmp/coffer-escape", b"evil", 0o644),
                F::File(existing, b"evil", 0o644),
                F::File(b"a\0b", b"evil", 0o644),
                F::File(b"x/./y", b"evil", 0o644),
                F::File(b"good", b"good", 0o644),
            ],
            vec![b"../escape", b"../../../../../../../../../tmp/coffer-escape", &existing, b"a\0b", b"x/./y"],
            vec![b"good"],
        ),
    ]
}

/// A second state directory on the same target: the victim's, rebuilt by `recover`.
fn victim_config(setup: &Setup) -> PathBuf {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text
        .replace("state_dir = \"state\"", "state_dir = \"victim\"")
        .replace("state/repo.secret", "victim/repo.secret");
    let path = setup.dir.path("victim.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn coffer(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("--config").arg(config).args(args).output().unwrap()
}

#[test]
fn forged_snapshots_cannot_touch_anything_outside_the_restore_directory() {
    if !root() {
        eprintln!("note: not root; owners are not restored, the rest is checked");
    }
    let empty = common::Scratch::new("forged-src");
    let setup = Setup::new("forged", common::Target::Dir, &empty.0);
    let canary_dir = setup.dir.path("canary");
    canary(&canary_dir);
    let paths = Canary::at(&canary_dir);
    let Canary { root: canary_root, existing, file, dir_tree, nowhere } = &paths;
    let long = vec![b'n'; 255];
    let long_dir = vec![b'd'; 255];
    let long_dir_file = [&long_dir[..], b"/inner"].concat();

    let cases = hostile_cases(&paths);
    let before = describe(&canary_dir);
    let mut ids = Vec::new();
    for (name, stream, _, _) in &cases {
        ids.push(forge(&setup, "data", stream));
        eprintln!("forged {name}: {}", ids.last().unwrap());
    }
    // Names of 255 bytes, a setuid file: nothing hostile, all of it must restore.
    let benign = forge(
        &setup,
        "data",
        &[
            F::File(&long, b"a long name", 0o644),
            F::Dir(&long_dir, 0o750),
            F::File(&long_dir_file, b"inside a long name", 0o640),
            F::File(b"setuid", b"#!/bin/sh\n", 0o4755),
            F::File(b"empty", b"", 0o600),
        ],
    );

    // The victim rebuilds the catalog from the target: recover reports every forged
    // snapshot's refused entries as tampering (exit 4), and keeps the snapshots.
    let victim = victim_config(&setup);
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&victim).args(["recover", "--no-progress", "--identity"]).arg(&setup.identity);
    let out = rec.output().unwrap();
    assert_eq!(out.status.code(), Some(4), "recover: {}", text(&out));
    let report = text(&out);
    for (_, _, refused, _) in &cases {
        for p in refused {
            let shown = String::from_utf8_lossy(p).into_owned();
            assert!(report.contains(&shown), "recover does not name `{shown}`:\n{report}");
        }
    }
    assert!(report.contains("unsafe-entry"), "{report}");

    let restore = |id: &str, to: &Path, overwrite: bool| {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&victim).args(["restore", id, "--job", "data", "--no-progress", "--to"]).arg(to);
        c.arg("--identity").arg(&setup.identity);
        if overwrite {
            c.arg("--overwrite");
        }
        c.output().unwrap()
    };
    for ((name, _, refused, good), id) in cases.iter().zip(&ids) {
        for overwrite in [false, true] {
            let to = setup.dir.path(&format!("to-{id}-{overwrite}"));
            if overwrite {
                // What was there before: symlinks out to the canary at the snapshot's names.
                std::fs::create_dir_all(&to).unwrap();
                for (n, t) in [
                    ("a", &canary_root[..]),
                    ("s", &file[..]),
                    ("d", &dir_tree[..]),
                    ("l", &nowhere[..]),
                    ("good", &existing[..]),
                    ("e", &dir_tree[..]),
                    ("o", &canary_root[..]),
                    ("f", &existing[..]),
                ] {
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), to.join(n)).unwrap();
                }
            }
            let out = restore(id, &to, overwrite);
            let said = text(&out);
            assert_eq!(out.status.code(), Some(1), "{name} (overwrite {overwrite}): {said}");
            assert!(
                said.contains("refuses"),
                "{name}: the restore does not say up front that it refuses entries: {said}"
            );
            for p in refused {
                let shown = String::from_utf8_lossy(p).into_owned();
                assert!(said.contains(&format!("{shown}: refused")), "{name}: `{shown}` not named as refused: {said}");
            }
            assert_eq!(describe(&canary_dir), before, "{name} (overwrite {overwrite}) changed the canary");
            assert!(!Path::new("/tmp/coffer-escape").exists() && !setup.dir.path("escape").exists(), "{name}");
            for g in good {
                let p = to.join(std::ffi::OsStr::from_bytes(g));
                let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{name}: {}: {e}", p.display()));
                assert!(m.is_file(), "{name}: {} is not a regular file", p.display());
            }
        }
    }

    // The benign forgery restores completely, with its owners and its setuid bit.
    let to = setup.dir.path("to-benign");
    let out = restore(&benign, &to, false);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(to.join(std::ffi::OsStr::from_bytes(&long))).unwrap(), b"a long name");
    let inner = std::fs::read(to.join(std::ffi::OsStr::from_bytes(&long_dir_file))).unwrap();
    assert_eq!(inner, b"inside a long name");
    let setuid = std::fs::metadata(to.join("setuid")).unwrap();
    assert_eq!(setuid.mode() & 0o7777, 0o4755, "the setuid bit is kept");
    if root() {
        assert_eq!((setuid.uid(), setuid.gid()), (1234, 1234));
    }
    assert_eq!(std::fs::metadata(to.join("empty")).unwrap().len(), 0);
    let entries: Vec<_> = std::fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 4, "no temporary file is left: {entries:?}");
    let m = std::fs::metadata(to.join(std::ffi::OsStr::from_bytes(&long_dir))).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o750, "a directory gets its mode at the end");
    assert_eq!(describe(&canary_dir), before);

    // verify --read-data on the rebuilt catalog names them too.
    let out =
        coffer(&victim, &["verify", "--read-data", "--no-progress", "--identity", setup.identity.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("a/x") && text(&out).contains("unsafe-entry"), "{}", text(&out));
}

#[test]
fn a_forged_bucket_snapshot_uploads_nothing_but_its_own_bytes() {
    let scratch = common::Scratch::new("forged-bucket");
    let src = scratch.path("bucket");
    std::fs::create_dir_all(&src).unwrap();
    let setup = Setup::with_source(
        "forgedbucket",
        common::Target::Dir,
        &format!("{{ bucket = \"file://{}\" }}", src.display()),
        "",
    );
    let secret_file = scratch.path("secret.txt");
    std::fs::write(&secret_file, b"THE RESTORING MACHINE'S SECRET").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret_path = secret_file.as_os_str().as_bytes();
    let dir_path = scratch.0.as_os_str().as_bytes();
    forge(
        &setup,
        "data",
        &[
            F::Dir(b"d", 0o755),
            F::File(b"d/obj", b"an object", 0o644),
            F::Link(b"leak", secret_path),
            F::Link(b"dirleak", dir_path),
            F::File(b"dirleak/secret.txt", b"evil", 0o644),
            F::File(b"ok", b"fine", 0o644),
        ],
    );
    let victim = victim_config(&setup);
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&victim).args(["recover", "--no-progress", "--identity"]).arg(&setup.identity);
    assert_eq!(rec.output().unwrap().status.code(), Some(4));

    let out_dir = scratch.path("restored-bucket");
    let mut c = Command::new(BIN);
    c.arg("--config").arg(&victim).args(["restore", "latest", "--job", "data", "--no-progress", "--identity"]);
    c.arg(&setup.identity).arg("--to-bucket").arg(format!("file://{}", out_dir.display()));
    let out = c.output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("leak: a symlink"), "{said}");
    assert!(said.contains("dirleak/secret.txt: refused"), "{said}");
    assert_eq!(std::fs::read(out_dir.join("ok")).unwrap(), b"fine");
    assert_eq!(std::fs::read(out_dir.join("d/obj")).unwrap(), b"an object");
    let mut objects = Vec::new();
    let mut stack = vec![out_dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else {
                assert!(!std::fs::read(&p).unwrap().windows(6).any(|w| w == b"SECRET"), "{} leaks", p.display());
                objects.push(p.strip_prefix(&out_dir).unwrap().to_path_buf());
            }
        }
    }
    objects.sort();
    assert_eq!(objects, [PathBuf::from("d/obj"), PathBuf::from("ok")]);
    assert_eq!(std::fs::read(&secret_file).unwrap(), b"THE RESTORING MACHINE'S SECRET");
}

/// Every hostile stream again, as a bucket job restored with `--to-bucket`: nothing but
/// the snapshot's own good files becomes an object, and nothing outside the bucket moves.
#[test]
fn forged_bucket_snapshots_upload_only_their_good_files() {
    let scratch = common::Scratch::new("forged-buckets");
    let src = scratch.path("bucket");
    std::fs::create_dir_all(&src).unwrap();
    let source = format!("{{ bucket = \"file://{}\" }}", src.display());
    let setup = Setup::with_source("forgedbuckets", common::Target::Dir, &source, "");
    let canary_dir = scratch.path("canary");
    canary(&canary_dir);
    let before = describe(&canary_dir);
    let paths = Canary::at(&canary_dir);
    let cases = hostile_cases(&paths);
    let ids: Vec<String> = cases.iter().map(|(_, stream, _, _)| forge(&setup, "data", stream)).collect();
    let victim = victim_config(&setup);
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&victim).args(["recover", "--no-progress", "--identity"]).arg(&setup.identity);
    assert_eq!(rec.output().unwrap().status.code(), Some(4));
    for ((name, stream, refused, good), id) in cases.iter().zip(&ids) {
        let out = scratch.path(&format!("out-{id}"));
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&victim).args(["restore", id, "--job", "data", "--no-progress", "--identity"]);
        c.arg(&setup.identity).arg("--to-bucket").arg(format!("file://{}", out.display()));
        let r = c.output().unwrap();
        let said = text(&r);
        assert_eq!(r.status.code(), Some(1), "{name}: {said}");
        for p in refused {
            let shown = String::from_utf8_lossy(p).into_owned();
            assert!(said.contains(&format!("{shown}: refused")), "{name}: `{shown}` not named: {said}");
        }
        assert_eq!(describe(&canary_dir), before, "{name} changed the canary");
        // The objects are exactly the case's good files, each with its own bytes.
        let mut uploaded: Vec<Vec<u8>> = Vec::new();
        if out.exists() {
            for (rel, what) in common::snapshot_tree(&out) {
                if what.starts_with("dir") {
                    continue;
                }
                let key = rel.as_os_str().as_bytes().to_vec();
                let first = stream.iter().find_map(|f| match f {
                    F::File(p, data, _) if *p == &key[..] => Some(*data),
                    _ => None,
                });
                assert_eq!(Some(&std::fs::read(out.join(&rel)).unwrap()[..]), first, "{name}: {}", rel.display());
                uploaded.push(key);
            }
        }
        let mut want: Vec<Vec<u8>> = good.iter().map(|g| g.to_vec()).collect();
        want.sort();
        uploaded.sort();
        assert_eq!(uploaded, want, "{name}: the objects uploaded");
    }
}

/// Extended attributes are snapshot bytes too. A forged file whose chunks fall short
/// carries one: `dump` leaves it out, and its attribute is not written ahead of the next
/// entry (a PAX record describes the entry after it). A name no file system allows (NUL
/// inside) fails its own file, in `dump` and in `restore`; the others restore with theirs.
#[test]
fn forged_extended_attributes_stay_with_their_own_file() {
    let empty = common::Scratch::new("forged-xattr-src");
    let setup = Setup::new("forged-xattr", common::Target::Dir, &empty.0);
    let id = forge(
        &setup,
        "data",
        &[
            F::Dir(b"d", 0o755),
            F::Tagged(b"d/short", b"abcd", 10, vec![(b"user.evil", b"1")]),
            F::File(b"d/next", b"next", 0o644),
            F::Tagged(b"d/nul", b"x", 1, vec![(b"user.a\0b", b"v")]),
            F::Tagged(b"d/tagged", b"ok", 2, vec![(b"user.ok", b"yes")]),
        ],
    );
    let victim = victim_config(&setup);
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&victim).args(["recover", "--no-progress", "--identity"]).arg(&setup.identity);
    rec.output().unwrap();

    let tar = setup.dir.path("d.tar");
    let mut c = Command::new(BIN);
    c.arg("--config").arg(&victim).args(["dump", &id, "d", "--job", "data", "--identity"]).arg(&setup.identity);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("d/short: its chunks do not add up"), "{}", text(&out));
    std::fs::write(&tar, &out.stdout).unwrap();
    let listing = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, tarfile\n\
             for m in tarfile.open(sys.argv[1]).getmembers():\n\
             \x20   xs = sorted(k for k in m.pax_headers if k.startswith('SCHILY.xattr.'))\n\
             \x20   print(m.name, ' '.join(xs))",
        )
        .arg(&tar)
        .output()
        .unwrap();
    let listing = text(&listing);
    let line =
        |name: &str| listing.lines().find(|l| l.split(' ').next() == Some(name)).map(str::trim).map(String::from);
    assert_eq!(line("d/next").as_deref(), Some("d/next"), "d/next carries no attribute: {listing}");
    assert_eq!(line("d/tagged").as_deref(), Some("d/tagged SCHILY.xattr.user.ok"), "{listing}");
    assert_eq!(line("d/short"), None, "{listing}");
    assert!(!listing.contains("user.evil"), "{listing}");

    let to = setup.dir.path("restored");
    let mut c = Command::new(BIN);
    c.arg("--config").arg(&victim).args(["restore", &id, "--job", "data", "--no-progress", "--to"]).arg(&to);
    let out = c.arg("--identity").arg(&setup.identity).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("d/nul"), "{}", text(&out));
    assert!(!to.join("d/nul").exists() && !to.join("d/short").exists(), "{}", text(&out));
    assert_eq!(std::fs::read(to.join("d/next")).unwrap(), b"next");
    assert_eq!(std::fs::read(to.join("d/tagged")).unwrap(), b"ok");
}
