//! The restore destination, confined beneath one directory descriptor.
//!
//! A snapshot may be forged by whoever holds the repository secret (root on the backup
//! host), and the restore runs as root on the victim's machine. So every operation
//! resolves beneath the descriptor of `--to` and none follows a symlink inside it: not
//! one the snapshot made, not one that was there before, not one another user swaps in
//! while the restore runs.
//! - Directories are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or on
//!   kernels without it one component at a time with `O_NOFOLLOW | O_DIRECTORY`.
//! - Everything else is an `*at` call on a parent's descriptor and a single name, with
//!   the flag that keeps it from following a final symlink.
//! - New files are anonymous (`O_TMPFILE`, made with their permission bits: no name
//!   reaches them) until complete, then get owner (first, so that setuid/setgid
//!   survive) and mode where they differ, and times, through their descriptor, and only
//!   then a name (`linkat`): a killed restore leaves no half-written file under a final
//!   name, and a name of 255 bytes needs no longer temporary one. Where `O_TMPFILE` is
//!   not supported, a short temporary name (0600, as it has a name) and `renameat` do
//!   the same.
//! - New directories are 0700 until the end, when they get their own metadata.
//! - With `--overwrite`, whatever is in an entry's way is replaced, never followed.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, Dir, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::format::entry::Entry;

/// What an entry gets once it is complete.
#[derive(Debug, Clone)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub mtime_ns: i64,
    pub xattrs: Vec<crate::format::entry::Xattr>,
}

impl From<&Entry> for Meta {
    fn from(e: &Entry) -> Meta {
        Meta { uid: e.uid, gid: e.gid, mode: e.mode & 0o7777, mtime_ns: e.mtime_ns, xattrs: e.xattrs.clone() }
    }
}

impl Meta {
    fn times(&self) -> Timestamps {
        let t = Timespec {
            tv_sec: self.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: self.mtime_ns.rem_euclid(1_000_000_000),
        };
        Timestamps { last_access: t, last_modification: t }
    }
}

/// A file being written: anonymous, or under a temporary name in its directory.
pub struct NewFile {
    pub file: File,
    temp: Option<Vec<u8>>,
}

/// The destination directory and how to write into it.
pub struct Dest {
    root: OwnedFd,
    /// `openat2` with RESOLVE_BENEATH works here (Linux ≥ 5.6, not filtered).
    beneath: bool,
    overwrite: bool,
    /// Restore owners (only root can).
    chown: bool,
    /// `O_TMPFILE` works on this file system (cleared at the first refusal).
    tmpfile: AtomicBool,
    /// `linkat(AT_EMPTY_PATH)` works (it needs CAP_DAC_READ_SEARCH); else /proc/self/fd.
    flink: AtomicBool,
}

const DIR_PATH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);
const DIR_READ: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

impl Dest {
    /// Opens `to` (created 0700 if missing); it must be empty unless `overwrite`.
    pub fn open(to: &Path, overwrite: bool) -> Result<Dest> {
        match std::fs::symlink_metadata(to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
                }
                crate::fsutil::create_private_dir(to)
                    .with_context(|| format!("cannot create restore target {}", to.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("restore target {}", to.display())),
            Ok(_) => {}
        }
        // `--to` itself may be a symlink the user chose; nothing below it is followed.
        let root = rustix::fs::open(to, DIR_READ, Mode::empty())
            .with_context(|| format!("restore target {} is not a directory that can be opened", to.display()))?;
        if !overwrite && !is_empty(&root)? {
            bail!("restore target {} is not empty; choose an empty directory or pass --overwrite", to.display());
        }
        let beneath = rustix::fs::openat2(&root, ".", DIR_PATH, Mode::empty(), beneath_flags()).is_ok();
        // SAFETY: geteuid cannot fail.
        let chown = unsafe { libc::geteuid() } == 0;
        Ok(Dest { root, beneath, overwrite, chown, tmpfile: AtomicBool::new(true), flink: AtomicBool::new(chown) })
    }

    /// A directory of the destination by its path below the root (`""`: the root),
    /// for `*at` calls; no component may be a symlink.
    pub fn dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        self.open_beneath(rel, DIR_PATH)
    }

    fn open_beneath(&self, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
        if self.beneath {
            return Ok(rustix::fs::openat2(&self.root, rel, flags, Mode::empty(), beneath_flags())?);
        }
        walk_beneath(self.root.as_fd(), rel, flags)
    }

    /// Creates directory `name` in `parent`, 0700 until [`Dest::finish_dir`]. An existing
    /// directory is kept; anything else there is replaced with `--overwrite`.
    pub fn make_dir(&self, parent: BorrowedFd, name: &[u8]) -> io::Result<()> {
        match rustix::fs::mkdirat(parent, name, Mode::RWXU) {
            Err(Errno::EXIST) => match self.kind_of(parent, name)? {
                rustix::fs::FileType::Directory => Ok(()),
                _ => {
                    self.clear(parent, name)?;
                    Ok(rustix::fs::mkdirat(parent, name, Mode::RWXU)?)
                }
            },
            r => Ok(r?),
        }
    }

    /// A new, empty file in `parent` without its final name: anonymous, with `mode`'s
    /// permission bits (as the umask leaves them), so that a file whose owner and mode
    /// are already right needs no `fchown` or `fchmod` (a journaled inode update each);
    /// else under a temporary name, readable by no one else.
    pub fn create_file(&self, parent: BorrowedFd, mode: u32) -> io::Result<NewFile> {
        if self.tmpfile.load(Ordering::Relaxed) {
            let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
            match rustix::fs::openat(parent, ".", flags, Mode::from_raw_mode(mode & 0o777)) {
                Ok(fd) => return Ok(NewFile { file: fd.into(), temp: None }),
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => self.tmpfile.store(false, Ordering::Relaxed),
                Err(e) => return Err(e.into()),
            }
        }
        let (name, fd) = create_temp(|name| {
            let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            rustix::fs::openat(parent, name, flags, Mode::RUSR | Mode::WUSR)
        })?;
        Ok(NewFile { file: fd.into(), temp: Some(name) })
    }

    /// Gives a complete file its owner, mode and times, then its name `name` in `parent`.
    pub fn finish_file(&self, parent: BorrowedFd, name: &[u8], f: &NewFile, meta: &Meta) -> io::Result<()> {
        self.set_meta(f.file.as_fd(), meta)?;
        match &f.temp {
            Some(temp) => self.rename_into_place(parent, temp, name),
            None => match self.link(f.file.as_fd(), parent, name) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && self.overwrite => {
                    if self.kind_of(parent, name)? == rustix::fs::FileType::Directory {
                        self.clear(parent, name)?;
                        return self.link(f.file.as_fd(), parent, name);
                    }
                    // Replaced in one step: a name, then a rename over the old entry.
                    let (temp, ()) = create_temp(|t| self.link(f.file.as_fd(), parent, t).map_err(to_errno))?;
                    self.rename_into_place(parent, &temp, name)
                }
                r => r,
            },
        }
    }

    /// Removes what a failed file left behind (an anonymous file leaves nothing).
    pub fn discard(&self, parent: BorrowedFd, f: &NewFile) {
        if let Some(temp) = &f.temp {
            let _ = rustix::fs::unlinkat(parent, temp.as_slice(), AtFlags::empty());
        }
    }

    /// Creates symlink `name` in `parent` pointing at `target`, with owner and times.
    pub fn symlink(&self, parent: BorrowedFd, name: &[u8], target: &[u8], meta: &Meta) -> io::Result<()> {
        match rustix::fs::symlinkat(target, parent, name) {
            Err(Errno::EXIST) if self.overwrite => {
                if self.kind_of(parent, name)? == rustix::fs::FileType::Directory {
                    self.clear(parent, name)?;
                    rustix::fs::symlinkat(target, parent, name)?;
                } else {
                    let (temp, ()) = create_temp(|t| rustix::fs::symlinkat(target, parent, t))?;
                    self.rename_into_place(parent, &temp, name)?;
                }
            }
            r => r?,
        }
        if self.chown {
            let (u, g) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
            rustix::fs::chownat(parent, name, u, g, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(rustix::fs::utimensat(parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// Gives a directory its own owner, mode and times (after everything inside it).
    pub fn finish_dir(&self, rel: &[u8], meta: &Meta) -> io::Result<()> {
        let fd = self.open_beneath(rel, DIR_READ)?;
        self.set_meta(fd.as_fd(), meta)
    }

    /// One flush of everything written, instead of an fsync per file.
    pub fn sync(&self) {
        let _ = rustix::fs::syncfs(&self.root);
    }

    /// Owner first (chown clears setuid/setgid), then mode, then extended attributes
    /// (an ACL after the mode it refines), then times. Owner and mode are set only
    /// where they differ from what the file has.
    fn set_meta(&self, fd: BorrowedFd, meta: &Meta) -> io::Result<()> {
        let st = rustix::fs::fstat(fd)?;
        let mut mode_right = st.st_mode & 0o7777 == meta.mode;
        if self.chown && (st.st_uid, st.st_gid) != (meta.uid, meta.gid) {
            rustix::fs::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))?;
            mode_right &= meta.mode & 0o6000 == 0;
        }
        if !mode_right {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
        }
        crate::xattr::apply(fd, &meta.xattrs)?;
        Ok(rustix::fs::futimens(fd, &meta.times())?)
    }

    fn kind_of(&self, parent: BorrowedFd, name: &[u8]) -> io::Result<rustix::fs::FileType> {
        let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(rustix::fs::FileType::from_raw_mode(st.st_mode))
    }

    /// Makes room for an entry: with `--overwrite` whatever is at `name` goes (a
    /// directory with its contents); without, the entry fails.
    fn clear(&self, parent: BorrowedFd, name: &[u8]) -> io::Result<()> {
        if !self.overwrite {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something else is in the way (pass --overwrite)",
            ));
        }
        match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Err(Errno::ISDIR) => remove_tree(parent, name),
            r => Ok(r?),
        }
    }

    fn rename_into_place(&self, parent: BorrowedFd, temp: &[u8], name: &[u8]) -> io::Result<()> {
        let mut r = rustix::fs::renameat(parent, temp, parent, name);
        if matches!(r, Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST)) && self.overwrite {
            r = self
                .clear(parent, name)
                .map_err(to_errno)
                .and_then(|()| rustix::fs::renameat(parent, temp, parent, name));
        }
        if r.is_err() {
            let _ = rustix::fs::unlinkat(parent, temp, AtFlags::empty());
        }
        Ok(r?)
    }

    /// Gives an anonymous file a name.
    fn link(&self, file: BorrowedFd, parent: BorrowedFd, name: &[u8]) -> io::Result<()> {
        if self.flink.load(Ordering::Relaxed) {
            match rustix::fs::linkat(file, "", parent, name, AtFlags::EMPTY_PATH) {
                Err(Errno::NOENT | Errno::PERM) => self.flink.store(false, Ordering::Relaxed),
                r => return Ok(r?),
            }
        }
        // Our own descriptor, through /proc: not a path inside the destination.
        let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
        Ok(rustix::fs::linkat(rustix::fs::CWD, proc.as_str(), parent, name, AtFlags::SYMLINK_FOLLOW)?)
    }
}

fn beneath_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn to_errno(e: io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error)
}

/// Opens `rel` below `root` one component at a time, refusing any symlink (the
/// fallback where `openat2` is missing).
pub(crate) fn walk_beneath(root: BorrowedFd, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').filter(|c| *c != b".").collect();
    if parts.iter().any(|p| p.is_empty() || *p == b"..") {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "path leaves the destination"));
    }
    let Some((last, dirs)) = parts.split_last() else {
        return Ok(rustix::fs::openat(root, ".", flags, Mode::empty())?);
    };
    let mut cur: Option<OwnedFd> = None;
    for part in dirs {
        let base = cur.as_ref().map_or(root, |c| c.as_fd());
        cur = Some(rustix::fs::openat(base, *part, DIR_PATH | OFlags::NOFOLLOW, Mode::empty())?);
    }
    let base = cur.as_ref().map_or(root, |c| c.as_fd());
    Ok(rustix::fs::openat(base, *last, flags | OFlags::NOFOLLOW | OFlags::DIRECTORY, Mode::empty())?)
}

/// Creates something under a fresh short name in `dir` (`.coffer-` and 12 hex digits:
/// far below NAME_MAX, whatever the final name).
fn create_temp<T>(mut make: impl FnMut(&[u8]) -> rustix::io::Result<T>) -> io::Result<(Vec<u8>, T)> {
    loop {
        let name = format!(".coffer-{}", crate::hex::random(6)).into_bytes();
        match make(&name) {
            Err(Errno::EXIST) => continue,
            r => return Ok((name, r?)),
        }
    }
}

fn is_empty(dir: &OwnedFd) -> io::Result<bool> {
    for e in Dir::read_from(dir)? {
        let name = e?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes a directory and everything in it, through descriptors, following no symlink.
fn remove_tree(parent: BorrowedFd, name: &[u8]) -> io::Result<()> {
    let dir = rustix::fs::openat(parent, name, DIR_READ | OFlags::NOFOLLOW, Mode::empty())?;
    let mut names = Vec::new();
    for e in Dir::read_from(&dir)? {
        let n = e?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(n);
        }
    }
    for n in names {
        match rustix::fs::unlinkat(&dir, n.as_slice(), AtFlags::empty()) {
            Err(Errno::ISDIR) => remove_tree(dir.as_fd(), &n)?,
            r => r?,
        }
    }
    Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;

    fn scratch() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("coffer-dest-{}-{}", std::process::id(), crate::hex::random(6)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A destination with the kernel's help or without it, and with or without O_TMPFILE.
    fn dest(to: &Path, overwrite: bool, beneath: bool, tmpfile: bool) -> Dest {
        let mut d = Dest::open(to, true).unwrap();
        d.overwrite = overwrite;
        d.beneath &= beneath;
        d.tmpfile = AtomicBool::new(tmpfile);
        d
    }

    const META: Meta = Meta { uid: 0, gid: 0, mode: 0o640, mtime_ns: 1_700_000_000_123_456_789, xattrs: Vec::new() };

    #[test]
    fn no_symlink_is_ever_followed() {
        for beneath in [true, false] {
            let base = scratch();
            let outside = base.join("outside");
            std::fs::create_dir_all(outside.join("sub")).unwrap();
            let to = base.join("to");
            let d = dest(&to, true, beneath, true);
            std::fs::create_dir(to.join("real")).unwrap();
            symlink(&outside, to.join("out")).unwrap();
            symlink("real", to.join("rel")).unwrap();
            assert!(d.dir(b"real").is_ok());
            for bad in [&b"out"[..], b"out/sub", b"rel", b"real/../out", b"..", b"/etc"] {
                assert!(d.dir(bad).is_err(), "{} followed (beneath: {beneath})", String::from_utf8_lossy(bad));
            }
            assert!(walk_beneath(d.root.as_fd(), b"out/sub", DIR_PATH).is_err());
            assert!(walk_beneath(d.root.as_fd(), b"real", DIR_PATH).is_ok());
            assert!(d.finish_dir(b"out", &META).is_err());
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing was written outside");
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    #[test]
    fn files_appear_whole_under_names_of_any_length_and_replace_what_is_in_the_way() {
        for tmpfile in [true, false] {
            let base = scratch();
            let outside = base.join("outside");
            std::fs::write(&outside, b"keep").unwrap();
            let to = base.join("to");
            let d = dest(&to, true, true, tmpfile);
            let root = d.dir(b"").unwrap();
            let long = vec![b'x'; 255];
            // In the way: a symlink out, a directory with contents, a plain file.
            symlink(&outside, to.join("link")).unwrap();
            std::fs::create_dir_all(to.join("dir/inner")).unwrap();
            std::fs::write(to.join("plain"), b"old").unwrap();
            for name in [&long[..], b"link", b"dir", b"plain"] {
                let mut f = d.create_file(root.as_fd(), 0o640).unwrap();
                f.file.write_all(b"new").unwrap();
                if name == &long[..] {
                    assert!(!to.join(std::ffi::OsStr::from_bytes(name)).exists(), "visible before it is complete");
                }
                d.finish_file(root.as_fd(), name, &f, &META).unwrap();
                let p = to.join(std::ffi::OsStr::from_bytes(name));
                let m = std::fs::symlink_metadata(&p).unwrap();
                assert!(m.is_file(), "tmpfile {tmpfile}");
                assert_eq!((m.mode() & 0o7777, m.mtime_nsec()), (0o640, 123_456_789));
                assert_eq!(std::fs::read(&p).unwrap(), b"new");
            }
            assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
            let left: Vec<_> = std::fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left.len(), 4, "no temporary name is left: {left:?}");
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    #[test]
    fn owner_and_mode_are_exact_whatever_the_new_file_had() {
        use std::os::unix::fs::PermissionsExt;
        // Root restores owners; a setgid parent gives new files its group; the umask
        // strips group write; special bits are not given at creation.
        let root_user = unsafe { libc::geteuid() } == 0;
        let owners: &[(u32, u32)] = if root_user { &[(0, 0), (1234, 5678)] } else { &[] };
        for tmpfile in [true, false] {
            let base = scratch();
            let to = base.join("to");
            let d = dest(&to, true, true, tmpfile);
            std::fs::create_dir(to.join("sgid")).unwrap();
            if root_user {
                std::os::unix::fs::chown(to.join("sgid"), None, Some(4321)).unwrap();
            }
            std::fs::set_permissions(to.join("sgid"), std::fs::Permissions::from_mode(0o2777)).unwrap();
            let mine = std::fs::metadata(&to).map(|m| (m.uid(), m.gid())).unwrap();
            for dir in [&b""[..], b"sgid"] {
                let parent = d.dir(dir).unwrap();
                for &(uid, gid) in owners.iter().chain(owners.is_empty().then_some(&mine)) {
                    for mode in [0o644, 0o600, 0o444, 0o664, 0o4755, 0o2750, 0o1777, 0] {
                        let meta = Meta { uid, gid, mode, ..META };
                        let mut f = d.create_file(parent.as_fd(), mode).unwrap();
                        f.file.write_all(b"x").unwrap();
                        let name = format!("f{uid}-{mode:o}");
                        d.finish_file(parent.as_fd(), name.as_bytes(), &f, &meta).unwrap();
                        let m =
                            std::fs::symlink_metadata(to.join(std::ffi::OsStr::from_bytes(dir)).join(&name)).unwrap();
                        let said = format!("{name} in `{}` (tmpfile {tmpfile})", String::from_utf8_lossy(dir));
                        assert_eq!(m.mode() & 0o7777, mode, "{said}");
                        assert_eq!((m.uid(), m.gid()), (uid, gid), "{said}");
                    }
                }
            }
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    #[test]
    fn without_overwrite_nothing_in_the_way_is_replaced() {
        let base = scratch();
        let to = base.join("to");
        std::fs::create_dir_all(&to).unwrap();
        assert!(Dest::open(&to, false).is_ok());
        symlink("/", to.join("l")).unwrap();
        assert!(Dest::open(&to, false).is_err(), "a non-empty destination needs --overwrite");
        let d = dest(&to, false, true, true);
        let root = d.dir(b"").unwrap();
        assert!(d.make_dir(root.as_fd(), b"l").is_err());
        let f = d.create_file(root.as_fd(), 0o640).unwrap();
        assert!(d.finish_file(root.as_fd(), b"l", &f, &META).is_err());
        assert!(d.symlink(root.as_fd(), b"l", b"/etc", &META).is_err());
        assert_eq!(std::fs::read_link(to.join("l")).unwrap(), Path::new("/"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
