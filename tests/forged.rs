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
use coffer::store::Target;
use common::{BIN, Setup, json_lines, run_ok, text};

/// One entry of a forged stream.
enum F<'a> {
    Dir(&'a [u8], u32),
    File(&'a [u8], &'a [u8], u32),
    Link(&'a [u8], &'a [u8]),
    /// A file that claims `size` bytes and carries extended attributes (name, value).
    Tagged(&'a [u8], &'a [u8], u64, Vec<(&'a [u8], &'a [u8])>),
    /// A file of 0 bytes whose one chunk is `data`, stored raw in a pack of its own whose
    /// table claims the chunk has 0 bytes.
    Lying(&'a [u8], &'a [u8]),
}

/// Who forges, and where: with the repository secret (root on the backup host), or with
/// a secret of their own (someone who can write to one target); onto target `target`.
struct Forger {
    secret: RepoSecret,
    target: usize,
}

impl Forger {
    fn host(setup: &Setup) -> Forger {
        let cfg = Config::load(&setup.config).unwrap();
        Forger { secret: RepoSecret::load(&cfg.repo_secret_file).unwrap(), target: 0 }
    }
}

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Writes a snapshot of `job` holding `stream` to the setup's target, with the
/// repository secret, as root on the backup host could. Returns its id.
fn forge(setup: &Setup, job: &str, stream: &[F]) -> String {
    forge_as(setup, &Forger::host(setup), job, stream)
}

/// [`forge`], by `forger`.
fn forge_as(setup: &Setup, forger: &Forger, job: &str, stream: &[F]) -> String {
    let cfg = Config::load(&setup.config).unwrap();
    let secret = &forger.secret;
    let mut pack = PackBuilder::default();
    let mut lying = PackBuilder::default();
    let mut w = EntryWriter::new(Vec::new()).unwrap();
    let now = common::now();
    for f in stream {
        let (path, kind, mode) = match f {
            F::Dir(p, m) => (*p, Kind::Dir, *m),
            F::File(p, _, m) => (*p, Kind::File, *m),
            F::Tagged(p, ..) | F::Lying(p, _) => (*p, Kind::File, 0o644),
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
            F::Lying(_, data) => {
                let id = secret.chunk_id(data);
                lying.add(id, data, 0, 0);
                (e.size, e.chunks) = (0, vec![id]);
            }
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
    let (plain, _) = pack.finish(0);
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
        keyset: None,
        // Tags no `--tag` takes: a terminal escape, one too long, and too many.
        tags: [&["\u{1b}]0;owned\u{7}", &"x".repeat(10_000), "kept"][..], &["t"; 40]]
            .concat()
            .iter()
            .map(|t| t.to_string())
            .collect(),
    };
    let key = coffer::format::snapshot_key(job, &id);
    let sealed = snapshot::seal(&record, &key, &cfg.recipients, secret).unwrap();
    let target = Target::open(&cfg.targets[forger.target], coffer::catalog::TargetId::NONE).unwrap();
    let mut packs = vec![ct];
    if !lying.is_empty() {
        packs.push(coffer::keys::encrypt(&cfg.recipients, &lying.finish(0).0).unwrap());
    }
    for ct in packs {
        let key = coffer::format::pack_key(&coffer::format::pack_id(&ct));
        coffer::runtime::block_on(target.put_new(&key, ct.into(), now + 86_400)).unwrap();
    }
    coffer::runtime::block_on(target.put_new(&key, sealed.into(), now + 86_400)).unwrap();
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
                F::File(b"../\x1b]0;owned\x07\x1b[2J", b"evil", 0o644),
                F::File(b"good", b"good", 0o644),
            ],
            vec![
                b"../escape",
                b"../../../../../../../../../tmp/coffer-escape",
                &existing,
                b"a\0b",
                b"x/./y",
                b"../\x1b]0;owned\x07\x1b[2J",
            ],
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

/// What was in a restore directory before: symlinks out to the canary at the names the
/// hostile snapshots use.
fn plant_symlinks(to: &Path, p: &Canary) {
    std::fs::create_dir_all(to).unwrap();
    for (n, t) in [
        ("a", &p.root[..]),
        ("s", &p.file[..]),
        ("d", &p.dir_tree[..]),
        ("l", &p.nowhere[..]),
        ("good", &p.existing[..]),
        ("e", &p.dir_tree[..]),
        ("o", &p.root[..]),
        ("f", &p.existing[..]),
    ] {
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), to.join(n)).unwrap();
    }
}

/// Every path under `dir` in a mount, and its kind, symlinks not followed.
fn mounted_paths(dir: &Path, under: &[u8]) -> BTreeMap<Vec<u8>, Kind> {
    let mut found = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let kind = e.file_type().unwrap();
        let path = match under.is_empty() {
            true => e.file_name().as_bytes().to_vec(),
            false => [under, b"/", e.file_name().as_bytes()].concat(),
        };
        if kind.is_dir() {
            found.extend(mounted_paths(&e.path(), &path));
        }
        let kind = if kind.is_dir() {
            Kind::Dir
        } else if kind.is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        };
        found.insert(path, kind);
    }
    found
}

/// The entries of a forged stream that a restore keeps (its own check decides), by path.
fn accepted(stream: &[F]) -> BTreeMap<Vec<u8>, Kind> {
    let mut check = coffer::format::entry_check::TreeCheck::default();
    let mut kept = BTreeMap::new();
    for f in stream {
        let (path, kind) = match f {
            F::Dir(p, _) => (*p, Kind::Dir),
            F::File(p, ..) | F::Tagged(p, ..) | F::Lying(p, _) => (*p, Kind::File),
            F::Link(p, _) => (*p, Kind::Symlink),
        };
        let mut e = Entry::synthetic(path.to_vec(), kind, 0o644, 0);
        if let F::Link(_, target) = f {
            e.target = Some(target.to_vec());
        }
        if check.check(&e).is_ok() {
            kept.insert(path.to_vec(), kind);
        }
    }
    kept
}

/// Whether a command printed a terminal escape or a bell raw.
fn raw_control(o: &std::process::Output) -> bool {
    [&o.stdout, &o.stderr].iter().any(|b| b.contains(&0x1b) || b.contains(&0x07))
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
            // A mode with a file type and bits no mode has: only the permission bits count.
            F::File(b"empty", b"", 0xFFFF_0000 | 0o100600),
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
            let shown = coffer::escape::printable(p);
            assert!(report.contains(&shown), "recover does not name `{shown}`:\n{report}");
        }
    }
    assert!(report.contains("unsafe-entry"), "{report}");
    assert!(!raw_control(&out), "recover printed a snapshot's name raw");
    // A forged record's tags: only those `--tag` could have given, at most 16.
    let mut listed = Command::new(BIN);
    listed.arg("--config").arg(&victim).args(["snapshots", "--json"]);
    for snapshot in json_lines(&run_ok(&mut listed)) {
        let tags: Vec<&str> = snapshot["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(tags.len(), 16, "{tags:?}");
        assert_eq!(tags[0], "kept", "{tags:?}");
    }
    let mut table = Command::new(BIN);
    table.arg("--config").arg(&victim).arg("snapshots");
    assert!(!raw_control(&run_ok(&mut table)), "a forged tag reached the terminal");

    // Mounted, each forged snapshot shows what a restore keeps, none of what it refuses,
    // and names what it left out.
    let mnt = setup.dir.path("mnt");
    if let Some(mount) = common::Mounted::start(&victim, &setup.identity, &mnt, &[]) {
        for ((name, stream, _, kept), id) in cases.iter().zip(&ids) {
            let shown = mounted_paths(&mnt.join("by-job/data").join(id), b"");
            for p in kept {
                assert!(shown.contains_key(*p), "{name}: the mount lacks {}", coffer::escape::printable(p));
            }
            assert_eq!(shown, accepted(stream), "{name}: the mount shows other than a restore keeps");
        }
        let (status, said) = mount.stop(libc::SIGTERM);
        assert!(status.success() && said.contains("left out of the mount"), "{said}");
        assert!(!said.bytes().any(|b| b == 0x1b || b == 0x07), "the mount logged a forged name raw");
    }

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
                plant_symlinks(&to, &paths);
            }
            let out = restore(id, &to, overwrite);
            let said = text(&out);
            assert_eq!(out.status.code(), Some(1), "{name} (overwrite {overwrite}): {said}");
            assert!(!raw_control(&out), "{name}: the restore printed a snapshot's name raw");
            assert!(
                said.contains("refuses"),
                "{name}: the restore does not say up front that it refuses entries: {said}"
            );
            for p in refused {
                let shown = coffer::escape::printable(p);
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
    assert_benign_restored(&to, &long, &long_dir, &long_dir_file);
    assert_eq!(describe(&canary_dir), before);

    // verify --read-data on the rebuilt catalog names them too.
    let out =
        coffer(&victim, &["verify", "--read-data", "--no-progress", "--identity", setup.identity.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("a/x") && text(&out).contains("unsafe-entry"), "{}", text(&out));
}

/// What the benign forgery holds, restored whole: long names, its owners (as root), its
/// setuid bit, a directory's mode set at the end, and no temporary file left.
fn assert_benign_restored(to: &Path, long: &[u8], long_dir: &[u8], long_dir_file: &[u8]) {
    assert_eq!(std::fs::read(to.join(std::ffi::OsStr::from_bytes(long))).unwrap(), b"a long name");
    let inner = std::fs::read(to.join(std::ffi::OsStr::from_bytes(long_dir_file))).unwrap();
    assert_eq!(inner, b"inside a long name");
    let setuid = std::fs::metadata(to.join("setuid")).unwrap();
    assert_eq!(setuid.mode() & 0o7777, 0o4755, "the setuid bit is kept");
    if root() {
        assert_eq!((setuid.uid(), setuid.gid()), (1234, 1234));
    }
    let empty = std::fs::metadata(to.join("empty")).unwrap();
    assert_eq!((empty.len(), empty.mode() & 0o7777), (0, 0o600), "a forged mode's other bits are dropped");
    let entries: Vec<_> = std::fs::read_dir(to).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 4, "no temporary file is left: {entries:?}");
    let m = std::fs::metadata(to.join(std::ffi::OsStr::from_bytes(long_dir))).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o750, "a directory gets its mode at the end");
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
            let shown = coffer::escape::printable(p);
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

/// Seven tar members of a forger's choice, as Python's tarfile writes them (without the
/// end-of-archive blocks): a 0666 character device, a FIFO, a setuid-root file, `../`
/// and absolute names, and a file written through a symlink.
fn evil_tar_members() -> Vec<u8> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import io, sys, tarfile\n\
             buf = io.BytesIO()\n\
             t = tarfile.open(fileobj=buf, mode='w', format=tarfile.GNU_FORMAT)\n\
             def add(name, kind, mode=0o644, data=b'', link=''):\n\
             \x20   ti = tarfile.TarInfo(name); ti.type = kind; ti.mode = mode; ti.size = len(data); ti.linkname = link\n\
             \x20   ti.devmajor, ti.devminor = 1, 3\n\
             \x20   t.addfile(ti, io.BytesIO(data) if data else None)\n\
             add('d/evil-null', tarfile.CHRTYPE, 0o666)\n\
             add('d/evil-fifo', tarfile.FIFOTYPE)\n\
             add('d/evil-suid', tarfile.REGTYPE, 0o4755, b'#!/bin/sh\\nid\\n')\n\
             add('../evil-escaped', tarfile.REGTYPE, 0o644, b'outside')\n\
             add('/tmp/coffer-evil-absolute', tarfile.REGTYPE, 0o644, b'absolute')\n\
             add('d/evil-link', tarfile.SYMTYPE, link='/tmp')\n\
             add('d/evil-link/through', tarfile.REGTYPE, 0o644, b'through')\n\
             t.close()\n\
             sys.stdout.buffer.write(buf.getvalue().rstrip(b'\\0'))\n\
             sys.stdout.buffer.write(b'\\0' * (-len(buf.getvalue().rstrip(b'\\0')) % 512))",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out.stdout
}

/// A forged pack table gives a chunk stored raw a length of 0. Trusted, `dump` would
/// write a 0-byte tar member followed by the chunk's bytes, which tar readers take as
/// further members: here a device, a FIFO, a setuid file, names outside the directory.
/// The table is refused where it is read (`recover` names it), the file is left out of
/// the stream, and the stream holds exactly the snapshot's own members, for Python's
/// tarfile and for GNU tar, which extracts nothing else.
#[test]
fn a_lying_pack_table_adds_no_member_to_a_tar_stream() {
    let empty = common::Scratch::new("lying-src");
    let setup = Setup::new("lying", common::Target::Dir, &empty.0);
    let payload = evil_tar_members();
    assert!(payload.len() > 3000, "{} bytes", payload.len());
    let id = forge(
        &setup,
        "data",
        &[F::Dir(b"d", 0o755), F::Lying(b"d/empty", &payload), F::File(b"d/after", b"after", 0o644)],
    );
    let victim = victim_config(&setup);
    let mut rec = Command::new(BIN);
    rec.arg("--config").arg(&victim).args(["recover", "--no-progress", "--identity"]).arg(&setup.identity);
    let rec = rec.output().unwrap();
    assert_eq!(rec.status.code(), Some(4), "{}", text(&rec));
    let claim = format!("stored raw with {} bytes but claims 0", payload.len());
    assert!(text(&rec).contains(&claim), "recover names the lying table: {}", text(&rec));

    let mut c = Command::new(BIN);
    c.arg("--config").arg(&victim).args(["dump", &id, "d", "--job", "data", "--identity"]).arg(&setup.identity);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("d/empty"), "d/empty is named: {}", text(&out));
    let tar = setup.dir.path("d.tar");
    std::fs::write(&tar, &out.stdout).unwrap();
    let listing = Command::new("python3")
        .arg("-c")
        .arg("import sys, tarfile\nfor m in tarfile.open(sys.argv[1]).getmembers(): print(m.name, m.type, oct(m.mode))")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", text(&listing));
    let names: Vec<String> =
        text(&listing).lines().filter_map(|l| l.split(' ').next()).map(String::from).collect::<Vec<_>>();
    assert_eq!(names, ["d", "d/after"], "tarfile reads exactly the snapshot's members: {}", text(&listing));

    // GNU tar, extracting as the restorer would.
    let into = setup.dir.path("extracted");
    std::fs::create_dir_all(&into).unwrap();
    let x = Command::new("tar").arg("-xpf").arg(&tar).arg("-C").arg(&into).output().unwrap();
    assert!(x.status.success(), "{}", text(&x));
    let found: Vec<String> = common::snapshot_tree(&into).into_keys().map(|p| p.display().to_string()).collect();
    assert_eq!(found, ["d", "d/after"], "GNU tar extracted exactly the snapshot's members");
    assert!(!Path::new("/tmp/coffer-evil-absolute").exists() && !setup.dir.path("evil-escaped").exists());
}

/// Someone who can write to ONE target (a NAS share, one provider's account) replaces its
/// `coffer.repo` with a record of the same id and recipients and a secret of their
/// choosing (encrypting to public recipients needs no key), and adds a snapshot under
/// that secret holding an `authorized_keys`. The record was pinned at init: the backup
/// host refuses that target and still stores every run on the others; a newly added
/// target is caught up from an honest one; verify and restore name the replacement;
/// `recover` on a bare machine refuses to choose between disagreeing targets, and with
/// the fingerprint `init` printed rebuilds from the honest one, which restores the
/// source and nothing of the forger's.
#[test]
fn a_repository_record_replaced_on_one_target_poisons_nothing() {
    let src = common::Scratch::new("poison-src");
    std::fs::write(src.path("a.txt"), "the real data").unwrap();
    let setup = Setup::new("poison", common::Target::Dir, &src.0);
    let (a, b, c) = (setup.dir.path("target"), setup.dir.path("b"), setup.dir.path("c"));
    let targets = |names: &[(&str, &Path)]| {
        let list: String = names
            .iter()
            .map(|(n, p)| format!("[[target]]\nname = \"{n}\"\nurl = \"file://{}\"\n", p.display()))
            .collect();
        setup.set_targets(&list);
    };
    targets(&[("default", &a), ("second", &b)]);
    setup.backup();
    assert_eq!(std::fs::read(b.join("coffer.repo")).unwrap(), std::fs::read(a.join("coffer.repo")).unwrap());

    // The attacker, on `second` alone.
    let cfg = Config::load(&setup.config).unwrap();
    let genuine = coffer::format::repo::RepoRecord::decode(&std::fs::read(a.join("coffer.repo")).unwrap()).unwrap();
    let theirs = RepoSecret::from_bytes([0x66; 32]);
    let mut forged = coffer::format::repo::RepoRecord::new(&theirs, &cfg.recipients, genuine.chunker).unwrap();
    forged.id = genuine.id.clone();
    std::fs::write(b.join("coffer.repo"), forged.encode()).unwrap();
    forge_as(
        &setup,
        &Forger { secret: theirs, target: 1 },
        "data",
        &[F::Dir(b".ssh", 0o700), F::File(b".ssh/authorized_keys", b"ssh-ed25519 AAAA attacker", 0o600)],
    );

    // The host: `second` is refused and named, the run is stored on the others, and a new
    // target gets the honest record.
    targets(&[("default", &a), ("second", &b), ("third", &c)]);
    let out = setup.run(&["backup", "data", "--no-progress"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("target second: NOT stored"), "{}", text(&out));
    assert!(text(&out).contains("holds another coffer.repo"), "{}", text(&out));
    assert!(text(&out).contains("target third: stored"), "{}", text(&out));
    assert_eq!(std::fs::read(c.join("coffer.repo")).unwrap(), std::fs::read(a.join("coffer.repo")).unwrap());

    let verify = setup.run(&["verify", "--target", "second"]);
    assert_eq!(verify.status.code(), Some(4), "{}", text(&verify));
    assert!(text(&verify).contains("replaced"), "{}", text(&verify));
    let out = setup.dir.path("from-second");
    let first = setup.snapshots()[0]["snapshot"].as_str().unwrap().to_string();
    let mut r = setup.cmd(&["restore", &first, "--job", "data", "--target", "second", "--to"]);
    let r = r.arg(&out).arg("--identity").arg(&setup.identity).output().unwrap();
    assert!(!r.status.success() && text(&r).contains("another coffer.repo"), "{}", text(&r));

    // A bare machine, and the fingerprint `init` printed (asked again here).
    let init = setup.ok(&["init", "--json"]);
    let fingerprint = serde_json::from_slice::<serde_json::Value>(&init.stdout).unwrap()["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(fingerprint.len(), 64, "{}", text(&init));
    let victim = victim_config(&setup);
    let recover = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&victim).args(["recover", "--no-progress"]).args(extra);
        c.arg("--identity").arg(&setup.identity).output().unwrap()
    };
    for from in ["second", "default"] {
        let r = recover(&["--target", from]);
        assert!(!r.status.success() && text(&r).contains("disagree"), "{from}: {}", text(&r));
    }
    let r = recover(&["--target", "second", "--expect-fingerprint", &fingerprint]);
    assert!(!r.status.success() && text(&r).contains("not the"), "{}", text(&r));
    assert!(!setup.dir.path("victim/repo.secret").exists(), "no secret was written from a refused record");
    let r = recover(&["--target", "default", "--expect-fingerprint", &fingerprint.to_uppercase()]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).contains(&fingerprint), "{}", text(&r));
    let to = setup.dir.path("restored");
    let mut c = Command::new(BIN);
    c.arg("--config").arg(&victim).args(["restore", "latest", "--job", "data", "--no-progress", "--to"]).arg(&to);
    let out = c.arg("--identity").arg(&setup.identity).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    common::assert_same_tree(&src.0, &to);
}

/// A forged file list that expands thousands of times from its pack: a few hundred KiB
/// stored, some 280 MB of entries once decompressed. `recover` keeps the stored bytes,
/// not the expansion (its catalog stays small), and neither it nor a restore holds the
/// list in memory; with `[restore] max_file_list_mib` the bound is named.
#[test]
fn an_expanding_file_list_neither_fills_memory_nor_the_disk() {
    let empty = common::Scratch::new("bomb-src");
    let setup = Setup::new("bomb", common::Target::Dir, &empty.0);
    let cfg = Config::load(&setup.config).unwrap();
    let secret = RepoSecret::load(&cfg.repo_secret_file).unwrap();
    // 18 chunks of 16 MB: each the same entry line again and again (duplicates, which a
    // restore refuses and counts), first a distinct directory, so that each chunk differs.
    let now = common::now();
    let mut pack = PackBuilder::default();
    let mut tree = Vec::new();
    let mut stream_bytes = 0u64;
    let line = |e: &Entry| [serde_json::to_vec(e).unwrap(), b"\n".to_vec()].concat();
    let dup = line(&Entry::synthetic(b"dup".to_vec(), Kind::Dir, 0o755, now * 1_000_000_000));
    for n in 0..18 {
        let mut chunk = Vec::new();
        if n == 0 {
            chunk = EntryWriter::new(Vec::new()).unwrap().into_inner();
        }
        chunk.extend(line(&Entry::synthetic(format!("dir{n:02}").into_bytes(), Kind::Dir, 0o755, now * 1_000_000_000)));
        while chunk.len() < 16_000_000 {
            chunk.extend_from_slice(&dup);
        }
        stream_bytes += chunk.len() as u64;
        let id = secret.chunk_id(&chunk);
        let stored = zstd::bulk::compress(&chunk, 3).unwrap();
        pack.add(id, &stored, chunk.len() as u32, coffer::format::pack::FLAG_ZSTD);
        tree.push(id);
    }
    let (plain, _) = pack.finish(0);
    let ct = coffer::keys::encrypt(&cfg.recipients, &plain).unwrap();
    let stored = ct.len() as u64;
    let id = coffer::hex::random(8);
    let record = SnapshotRecord {
        format: snapshot::VERSION,
        id: id.clone(),
        job: "data".into(),
        host: "forger".into(),
        created: now,
        created_ns: Some(now * 1_000_000_000),
        source: "path /nowhere".into(),
        tree,
        stats: SnapshotStats::default(),
        errors: vec![],
        retain_until: Some(now + 86_400),
        contents: None,
        keyset: None,
        tags: vec![],
    };
    let key = coffer::format::snapshot_key("data", &id);
    let target = Target::open(&cfg.targets[0], coffer::catalog::TargetId::NONE).unwrap();
    coffer::runtime::block_on(target.put_new(
        &coffer::format::pack_key(&coffer::format::pack_id(&ct)),
        ct.into(),
        now + 86_400,
    ))
    .unwrap();
    let sealed = snapshot::seal(&record, &key, &cfg.recipients, &secret).unwrap();
    coffer::runtime::block_on(target.put_new(&key, sealed.into(), now + 86_400)).unwrap();
    assert!(stream_bytes > 1000 * stored, "{stream_bytes} bytes of entries from {stored} stored");

    let victim = victim_config(&setup);
    let (rec, rss) = common::peak_rss(
        Command::new(BIN)
            .arg("--config")
            .arg(&victim)
            .args(["recover", "--no-progress", "--identity"])
            .arg(&setup.identity),
    );
    assert_eq!(rec.status.code(), Some(4), "{}", text(&rec));
    assert!(text(&rec).contains("unsafe-entry") || text(&rec).contains("refuses"), "{}", text(&rec));
    let catalog = std::fs::metadata(setup.dir.path("victim/catalog.sqlite")).unwrap().len();
    eprintln!(
        "recover of {stream_bytes} bytes of entries ({stored} stored): peak RSS {rss} KiB, catalog {catalog} bytes"
    );
    assert!(rss < 200 * 1024, "recover peak RSS {rss} KiB");
    assert!(catalog < 4 * stored + (1 << 20), "the catalog holds {catalog} bytes for {stored} stored");

    let to = setup.dir.path("restored");
    let (out, rss) = common::peak_rss(
        Command::new(BIN)
            .arg("--config")
            .arg(&victim)
            .args(["restore", &id, "--job", "data", "--no-progress", "--to"])
            .arg(&to)
            .arg("--identity")
            .arg(&setup.identity),
    );
    eprintln!("restore: peak RSS {rss} KiB; {}", text(&out).lines().last().unwrap_or_default());
    assert_eq!(out.status.code(), Some(1), "duplicates are refused: {}", text(&out));
    assert!(rss < 200 * 1024, "restore peak RSS {rss} KiB");

    // The bound, named.
    let limited = std::fs::read_to_string(&victim).unwrap() + "[restore]\nmax_file_list_mib = 64\n";
    std::fs::write(&victim, limited).unwrap();
    let mut c = Command::new(BIN);
    c.arg("--config").arg(&victim).args(["restore", &id, "--job", "data", "--no-progress", "--to"]);
    let out = c.arg(setup.dir.path("limited")).arg("--identity").arg(&setup.identity).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("larger than 64 MiB (restore.max_file_list_mib)"), "{}", text(&out));
}
