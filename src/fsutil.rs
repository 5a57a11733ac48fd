//! Crash-safe local file writes: a temporary file in the same directory, fsync, rename,
//! fsync of the directory. A crash leaves either the old state or the new, never half.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes a new file with mode 0600; fails if `path` exists.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} already exists", path.display())));
    }
    let tmp = temp_path(path);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let result = f.write_all(bytes).and_then(|_| f.sync_all()).and_then(|_| {
        // hard_link fails if the destination appeared meanwhile: never overwrite a key.
        std::fs::hard_link(&tmp, path)
    });
    let _ = std::fs::remove_file(&tmp);
    result?;
    sync_dir(path)
}

/// A sibling name for a temporary file: same directory, so rename is atomic.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.coffer-tmp-{}", crate::hex::random(6)))
}

/// Makes a directory entry change (create, rename) durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Removes a (temporary) file when dropped.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Creates a directory (and parents) with mode 0700.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

use std::os::unix::fs::DirBuilderExt;

/// An exclusive advisory lock held while the value lives (flock on a file).
pub struct LockFile {
    _file: File,
}

impl LockFile {
    /// Takes the lock or returns `WouldBlock` when another process holds it.
    pub fn try_lock(path: &Path) -> io::Result<LockFile> {
        use std::os::fd::AsRawFd;
        let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path)?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(LockFile { _file: file })
    }

    /// Takes the lock; when another process holds it, the error is [`Held`], with
    /// `held_by`'s sentence.
    pub fn take(path: &Path, held_by: impl FnOnce() -> String) -> anyhow::Result<LockFile> {
        LockFile::try_lock(path).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => anyhow::Error::new(Held(held_by())),
            _ => io_error(e, path).context("cannot take the lock"),
        })
    }
}

/// A lock another process holds.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Held(pub String);

/// A file the running user must read; otherwise says whose it is. Opened without
/// blocking, so that a FIFO put in its place cannot hang coffer.
pub fn readable(path: &Path, what: &str) -> anyhow::Result<()> {
    open_nonblocking(path, what).map(drop)
}

fn open_nonblocking(path: &Path, what: &str) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path);
    match opened {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!("permission denied: {what} {} ({})", path.display(), owner_of(path))
        }
        Err(e) => anyhow::bail!("{what} {}: {e}", path.display()),
    }
}

/// The bytes of a small file coffer is given (a key, a passphrase, a token): a regular
/// file of at most `max` bytes, opened without blocking (a FIFO or a device in its
/// place is refused, not waited on) and never read past its bound.
pub fn read_small(path: &Path, what: &str, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_nonblocking(path, what)?;
    let meta = file.metadata().map_err(|e| io_error(e, path))?;
    if !meta.is_file() {
        anyhow::bail!("{what} {} is not a regular file", path.display());
    }
    if meta.len() > max {
        anyhow::bail!("{what} {} has {} bytes; such a file has at most {max}", path.display(), meta.len());
    }
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out).map_err(|e| io_error(e, path))?;
    if out.len() as u64 > max {
        anyhow::bail!("{what} {} grew past {max} bytes while it was read", path.display());
    }
    Ok(out)
}

/// "owned by uid 0, mode 600; coffer runs as uid 990", or, when `path` cannot be
/// looked at, the same of the nearest directory above it that can ("state is owned…").
pub fn owner_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let runs_as = format!("coffer runs as uid {}", euid());
    for (i, p) in path.ancestors().filter(|p| !p.as_os_str().is_empty()).enumerate() {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            let what = format!("owned by uid {}, mode {:o}; {runs_as}", m.uid(), m.mode() & 0o7777);
            return if i == 0 { what } else { format!("{} is {what}", p.display()) };
        }
    }
    runs_as
}

/// An I/O error on `path` as a user needs it: a refused permission names the owner.
pub fn io_error(e: io::Error, path: &Path) -> anyhow::Error {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("permission denied: {} ({})", path.display(), owner_of(path))
        }
        _ => anyhow::anyhow!("{}: {e}", path.display()),
    }
}

pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}
