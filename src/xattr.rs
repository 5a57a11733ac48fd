//! Extended attributes (`user.*`, `security.*`, `trusted.*`, POSIX ACLs as
//! `system.posix_acl_*`): read from an open file, or from a name in a walked directory
//! without following a symlink; set on an open file by a restore.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;

use crate::format::entry::Xattr;

/// The attributes of an open file (or directory), sorted by name; none where the file
/// system keeps none.
pub fn of_fd(fd: impl AsFd) -> io::Result<Vec<Xattr>> {
    let fd = fd.as_fd();
    read(|buf| rustix::fs::flistxattr(fd, buf), |name, buf| rustix::fs::fgetxattr(fd, name, buf))
}

/// The attributes of `name` in the directory `dir`, not following a symlink (through
/// `/proc/self/fd`: there are no `*xattrat` calls).
pub fn at(dir: BorrowedFd, name: &[u8]) -> io::Result<Vec<Xattr>> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = OsStr::from_bytes(&path);
    read(|buf| rustix::fs::llistxattr(path, buf), |name, buf| rustix::fs::lgetxattr(path, name, buf))
}

fn read(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&std::ffi::CStr, &mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<Xattr>> {
    let names = match grow(&list) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for attr in names.split(|&b| b == 0).filter(|a| !a.is_empty()) {
        let c_name = CString::new(attr).map_err(|_| io::Error::other("an attribute name holds NUL"))?;
        match grow(|buf| get(&c_name, buf)) {
            Ok(value) => out.push(Xattr { name: attr.to_vec(), value }),
            // Removed between the listing and the read.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Calls `f` with a buffer that grows until the answer fits (ERANGE).
fn grow(f: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match f(&mut buf) {
            Err(Errno::RANGE) if buf.len() < 1 << 24 => buf.resize(buf.len() * 4, 0),
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sets each attribute on an open file. One this user may not set (`security.*`
/// without privilege) or the file system does not keep is left out and named in a
/// warning, not an error: the file is restored without it.
pub fn apply(fd: BorrowedFd, xattrs: &[Xattr]) -> io::Result<()> {
    for x in xattrs {
        let shown = String::from_utf8_lossy(&x.name);
        let name = CString::new(x.name.clone()).map_err(|_| io::Error::other("an attribute name holds NUL"))?;
        match rustix::fs::fsetxattr(fd, name.as_c_str(), &x.value, rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            Err(e @ (Errno::PERM | Errno::NOTSUP | Errno::ACCESS)) => {
                tracing::warn!("extended attribute {shown} not restored: {}", io::Error::from(e));
            }
            Err(e) => return Err(io::Error::other(format!("extended attribute {shown}: {}", io::Error::from(e)))),
        }
    }
    Ok(())
}
