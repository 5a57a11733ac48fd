//! Looking inside snapshots without restoring them: `ls`, `find`, `diff` and `dump`.
//!
//! A snapshot's file list is encrypted to the recipients, so each needs the restorer's
//! identity, as a restore does. Each snapshot is read from the target the handle was
//! unlocked on when that target holds it, else from the first target holding it. What a
//! snapshot says is input: paths are shown with control characters and bytes that are
//! not UTF-8 escaped (a forged name cannot drive the terminal), `dump` verifies every
//! chunk as a restore does, and its tar stream holds only entries a restore accepts.

use crate::escape::printable;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::catalog::{Filter, SnapshotRow, SnapshotState};
use crate::chunk_id::ChunkId;
use crate::config::Config;
use crate::format::entry::{Entry, EntryReader, Kind};
use crate::format::entry_check::TreeCheck;
use crate::keys::Identity;
use crate::repo::{Repo, Restorer};
use crate::restore::tree::ChunkReader;

/// The unlocked repository, for reading snapshots' file lists and files.
pub struct Browser {
    repo: Repo<Restorer>,
    /// The target named with `--target`, if one was.
    wanted: Option<String>,
    /// The packs the snapshot last read was made with (where its chunks are read).
    made_with: HashSet<i64>,
    /// Which snapshots `latest`, a prefix and `find` may pick (`--tag`, `--host`).
    filter: Filter,
    /// The snapshot `made_with` and the read target are for, and the pack last read
    /// (chunk by chunk reads, `mount`'s, mostly want the same again).
    reading: Option<String>,
    pack: Option<crate::restore::tree::Pack>,
}

/// An entry as `ls` and `find` show it.
#[derive(Serialize)]
pub struct Shown<'a> {
    #[serde(with = "crate::format::entry::raw_path")]
    pub path: &'a [u8],
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// A symlink's target (`link`: `target` names a target store everywhere else).
    #[serde(rename = "link", with = "crate::format::entry::opt_raw_path", skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<u8>>,
}

impl<'a> From<&'a Entry> for Shown<'a> {
    fn from(e: &'a Entry) -> Self {
        Shown {
            path: &e.path,
            kind: e.kind,
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime_ns: e.mtime_ns,
            target: e.target.clone(),
        }
    }
}

impl Browser {
    /// Opens the repository with the identity, from the target named `target` or the
    /// first that answers.
    pub fn open(cfg: &Config, identity: &Path, target: Option<&str>, filter: Filter) -> Result<Browser> {
        let identity = Arc::new(Identity::load(identity)?);
        let repo = Repo::open(cfg)?.unlock(identity, target, None)?;
        let wanted = target.map(str::to_string);
        Ok(Browser { repo, wanted, made_with: HashSet::new(), filter, reading: None, pack: None })
    }

    /// `latest` or `latest-clean` (of `job`), a full snapshot id, or a unique prefix of
    /// one; within `job` when given, else among every job's snapshots.
    pub fn snapshot(&self, job: Option<&str>, selector: &str) -> Result<SnapshotRow> {
        if let Some(job) = job {
            return self.repo.catalog.find_snapshot_where(job, selector, &self.filter);
        }
        if selector == "latest" || selector == "latest-clean" {
            bail!("`{selector}` needs --job JOB");
        }
        let all = self.repo.catalog.snapshots(None)?.into_iter();
        let found: Vec<SnapshotRow> = all.filter(|s| s.id.starts_with(selector) && self.filter.matches(s)).collect();
        match found.len() {
            1 => Ok(found.into_iter().next().expect("one")),
            0 => bail!("no snapshot `{selector}`{} (see `coffer snapshots`)", self.filter.said()),
            n => bail!("snapshot prefix `{selector}` is ambiguous: {n} snapshots match"),
        }
    }

    /// The complete snapshots of `job` (or of every job), newest first.
    pub fn snapshots(&self, job: Option<&str>) -> Result<Vec<SnapshotRow>> {
        let mut all = self.repo.catalog.snapshots(job)?;
        all.retain(|s| s.state == SnapshotState::Complete && self.filter.matches(s));
        all.reverse();
        Ok(all)
    }

    /// Reads from a target that holds `snap` (the one named, or the unlocked one, or the
    /// first holder).
    fn read_from_holder(&mut self, snap: &SnapshotRow) -> Result<()> {
        if self.reading.as_deref() == Some(snap.id.as_str()) {
            return Ok(());
        }
        self.reading = Some(snap.id.clone());
        self.made_with = self.repo.catalog.snapshot_pack_ids(&snap.id)?;
        if self.wanted.is_some() {
            return Ok(());
        }
        let holders: Vec<_> = self.repo.catalog.snapshot_holders(&snap.id)?.into_iter().map(|(t, _)| t).collect();
        if holders.contains(&self.repo.read_target().id) {
            return Ok(());
        }
        let index = self.repo.targets.iter().position(|t| holders.contains(&t.id));
        let index = index.ok_or_else(|| anyhow!("no configured target holds snapshot {}", snap.id))?;
        self.repo.read_from(index);
        Ok(())
    }

    /// Calls `f` with each entry of the snapshot, in stream order, until it returns false.
    pub fn entries(&mut self, snap: &SnapshotRow, mut f: impl FnMut(&Entry) -> Result<bool>) -> Result<()> {
        self.read_from_holder(snap)?;
        let record = self.repo.snapshot_record(snap)?;
        let mut chunks = ChunkReader::new(&self.repo, Some(&self.made_with));
        let reader = EntryReader::with_limits(chunks.stream(&record.tree), &self.repo.limits)?;
        for entry in reader {
            let entry = entry.map_err(|e| anyhow!("the snapshot's file list cannot be read: {e}"))?;
            if !f(&entry)? {
                break;
            }
        }
        Ok(())
    }

    /// Every entry of the snapshot, in stream order (for diff: held in memory).
    pub fn all_entries(&mut self, snap: &SnapshotRow) -> Result<Vec<Entry>> {
        let mut all = Vec::new();
        self.entries(snap, |e| {
            all.push(e.clone());
            Ok(true)
        })?;
        Ok(all)
    }

    /// The entry at `path` in the snapshot.
    pub fn entry(&mut self, snap: &SnapshotRow, path: &[u8]) -> Result<Entry> {
        let mut found = None;
        self.entries(snap, |e| {
            if e.path == path {
                found = Some(e.clone());
            }
            Ok(found.is_none())
        })?;
        found.ok_or_else(|| anyhow!("no path `{}` in snapshot {}", printable(path), snap.id))
    }

    /// Writes a file's bytes to `out`, each chunk verified; fails when the chunks do not
    /// add up to the size the entry claims. Returns the bytes written.
    pub fn copy_file(&self, e: &Entry, out: &mut dyn Write) -> Result<u64> {
        let mut chunks = ChunkReader::new(&self.repo, Some(&self.made_with));
        let mut written = 0u64;
        for id in &e.chunks {
            let data = chunks.chunk(id)?;
            written += data.len() as u64;
            if written > e.size {
                break;
            }
            out.write_all(&data)?;
        }
        if written != e.size {
            bail!("{}: its chunks do not add up to its size of {} bytes", printable(&e.path), e.size);
        }
        Ok(written)
    }

    /// The plaintext size of a file's chunks, as the catalog records them (`None`: a chunk
    /// is in no pack it knows).
    fn stored_size(&self, chunks: &[ChunkId]) -> Result<Option<u64>> {
        Ok(self.chunk_lengths(chunks)?.map(|l| l.iter().map(|&n| u64::from(n)).sum()))
    }

    /// Each chunk's plaintext length, as the catalog records it (`None`: a chunk is in no
    /// pack it knows), for the snapshot read last.
    fn chunk_lengths(&self, chunks: &[ChunkId]) -> Result<Option<Vec<u32>>> {
        let target = self.repo.read_target().id;
        let mut lengths = Vec::with_capacity(chunks.len());
        for id in chunks {
            match self.repo.catalog.chunk_location(target, id, Some(&self.made_with))? {
                Some(loc) => lengths.push(loc.raw_length),
                None => return Ok(None),
            }
        }
        Ok(Some(lengths))
    }

    /// Where each of a file's `chunks` (of `snap`) starts in it, and its end: `None` when
    /// they do not add up to the `size` its entry claims (or one is unknown).
    pub fn chunk_offsets(&mut self, snap: &SnapshotRow, chunks: &[ChunkId], size: u64) -> Result<Option<Vec<u64>>> {
        self.read_from_holder(snap)?;
        let Some(lengths) = self.chunk_lengths(chunks)? else { return Ok(None) };
        let mut offsets = Vec::with_capacity(lengths.len() + 1);
        let mut at = 0u64;
        offsets.push(0);
        for n in lengths {
            at += u64::from(n);
            offsets.push(at);
        }
        Ok((at == size).then_some(offsets))
    }

    /// One chunk of `snap`'s, verified; the pack it came from is kept for the next call.
    pub fn chunk(&mut self, snap: &SnapshotRow, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_from_holder(snap)?;
        let mut reader = ChunkReader::with_pack(&self.repo, Some(&self.made_with), self.pack.take());
        let data = reader.chunk(id);
        self.pack = reader.into_pack();
        data
    }

    /// Writes the directory `dir` (`b""`: the whole snapshot) and everything under it as
    /// a tar stream, extended attributes in PAX headers. Entries a restore refuses, and
    /// files whose chunks do not add up to their size, are left out and returned as
    /// messages.
    pub fn tar(&mut self, snap: &SnapshotRow, dir: &[u8], out: impl Write) -> Result<Vec<String>> {
        let mut entries = Vec::new();
        let mut check = TreeCheck::default();
        let mut skipped = Vec::new();
        self.entries(snap, |e| {
            let inside = dir.is_empty() || e.path == dir || e.path.starts_with(&[dir, b"/"].concat());
            match check.check(e) {
                Ok(()) if inside => entries.push(e.clone()),
                Ok(()) => {}
                Err(why) if inside => skipped.push(format!("{}: refused: {why}", printable(&e.path))),
                Err(_) => {}
            }
            Ok(true)
        })?;
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Complete);
        for e in &entries {
            // Checked before any header: a PAX record written for an entry then left out
            // would describe the next one.
            if e.kind == Kind::File && self.stored_size(&e.chunks)? != Some(e.size) {
                skipped.push(format!("{}: its chunks do not add up to its size", printable(&e.path)));
                continue;
            }
            let path = std::ffi::OsStr::from_bytes(&e.path);
            let mut header = tar::Header::new_gnu();
            header.set_mode(e.mode & 0o7777);
            header.set_uid(u64::from(e.uid));
            header.set_gid(u64::from(e.gid));
            header.set_mtime(e.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
            let (xattrs, unfit) = pax_xattrs(&e.xattrs);
            for name in unfit {
                skipped.push(format!(
                    "{}: extended attribute {} cannot be a tar header",
                    printable(&e.path),
                    printable(name)
                ));
            }
            tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), *v)))?;
            match e.kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    tar.append_data(&mut header, path, std::io::empty())?;
                }
                Kind::Symlink => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    let target = std::ffi::OsStr::from_bytes(e.target.as_deref().unwrap_or_default());
                    tar.append_link(&mut header, path, target)?;
                }
                Kind::File => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(e.size);
                    let mut chunks = ChunkReader::new(&self.repo, Some(&self.made_with));
                    let fetch = |id: &ChunkId| chunks.chunk(id).map_err(|e| std::io::Error::other(format!("{e:#}")));
                    let data = crate::format::entry::ChunkedStream::new(e.chunks.iter().copied(), fetch);
                    tar.append_data(&mut header, path, Exactly::new(data, e.size, &e.path))?;
                }
            }
        }
        tar.into_inner()?.flush()?;
        Ok(skipped)
    }
}

/// A file's bytes for a tar member: exactly the size its header announced, or an error
/// that ends the stream. A tar reader takes whatever follows a member's announced size
/// as the next header, so a single byte too many or too few would let a forged snapshot
/// write members of its choice (devices, setuid files, `../` names) into the stream.
struct Exactly<R> {
    inner: R,
    left: u64,
    path: String,
}

impl<R: std::io::Read> Exactly<R> {
    fn new(inner: R, size: u64, path: &[u8]) -> Self {
        Exactly { inner, left: size, path: printable(path) }
    }
}

impl<R: std::io::Read> std::io::Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(format!("{}: its data is longer than its size", self.path))),
            };
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "{}: its data ends {} bytes short of its size",
                self.path, self.left
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A PAX record: its key, and its value.
type PaxRecord<'a> = (String, &'a [u8]);

/// Extended attributes as PAX records, as GNU tar and bsdtar read them (`tar --xattrs`),
/// and the names that cannot be one. A record is `key=value`: a name holding `=`, a
/// newline or bytes that are not UTF-8 (which a forged snapshot may carry) would be read
/// back as another name, so it is left out, not mangled.
fn pax_xattrs(xattrs: &[crate::format::entry::Xattr]) -> (Vec<PaxRecord<'_>>, Vec<&[u8]>) {
    let mut records = Vec::new();
    let mut unfit = Vec::new();
    for x in xattrs {
        match std::str::from_utf8(&x.name) {
            Ok(name) if !name.is_empty() && !name.contains(['=', '\n', '\0']) => {
                records.push((format!("SCHILY.xattr.{name}"), &x.value[..]))
            }
            _ => unfit.push(&x.name[..]),
        }
    }
    (records, unfit)
}

/// How one path differs between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    /// Other content (a file's bytes, a symlink's target) or another kind.
    Modified,
    /// The same content; mode, owner, modification time or extended attributes changed.
    Metadata,
}

/// One difference, with the sizes before and after.
#[derive(Debug, Serialize)]
pub struct Difference {
    #[serde(with = "crate::format::entry::raw_path")]
    pub path: Vec<u8>,
    pub change: Change,
    pub kind: Kind,
    pub size_before: Option<u64>,
    pub size_after: Option<u64>,
}

/// What changed from `before` to `after`, by path (bytewise order).
pub fn diff(before: Vec<Entry>, after: Vec<Entry>) -> Vec<Difference> {
    let mut old: HashMap<Vec<u8>, Entry> = before.into_iter().map(|e| (e.path.clone(), e)).collect();
    let mut out = Vec::new();
    for e in after {
        let change = match old.remove(&e.path) {
            None => Some((Change::Added, None)),
            Some(o) if o.kind != e.kind || o.chunks != e.chunks || o.target != e.target || o.size != e.size => {
                Some((Change::Modified, Some(o.size)))
            }
            Some(o)
                if (o.mode, o.uid, o.gid, o.mtime_ns, &o.xattrs) != (e.mode, e.uid, e.gid, e.mtime_ns, &e.xattrs) =>
            {
                Some((Change::Metadata, Some(o.size)))
            }
            Some(_) => None,
        };
        if let Some((change, size_before)) = change {
            out.push(Difference { path: e.path, change, kind: e.kind, size_before, size_after: Some(e.size) });
        }
    }
    out.extend(old.into_values().map(|o| Difference {
        path: o.path,
        change: Change::Removed,
        kind: o.kind,
        size_before: Some(o.size),
        size_after: None,
    }));
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind, size: u64, chunk: u8, mode: u32) -> Entry {
        let mut e = Entry::synthetic(path.as_bytes().to_vec(), kind, mode, 7);
        e.size = size;
        e.chunks = if kind == Kind::File { vec![ChunkId([chunk; 32])] } else { Vec::new() };
        e
    }

    #[test]
    fn diff_names_each_kind_of_change() {
        let before = vec![
            entry("d", Kind::Dir, 0, 0, 0o755),
            entry("d/same", Kind::File, 5, 1, 0o644),
            entry("d/edited", Kind::File, 5, 2, 0o644),
            entry("d/chmod", Kind::File, 5, 3, 0o644),
            entry("gone", Kind::File, 9, 4, 0o644),
            entry("tagged", Kind::File, 1, 7, 0o644),
        ];
        let after = vec![
            entry("d", Kind::Dir, 0, 0, 0o755),
            entry("d/same", Kind::File, 5, 1, 0o644),
            entry("d/edited", Kind::File, 6, 5, 0o644),
            entry("d/chmod", Kind::File, 5, 3, 0o600),
            entry("new", Kind::File, 3, 6, 0o644),
            {
                let mut e = entry("tagged", Kind::File, 1, 7, 0o644);
                e.xattrs = vec![crate::format::entry::Xattr { name: b"user.tag".to_vec(), value: b"x".to_vec() }];
                e
            },
        ];
        let found: Vec<(String, Change, Option<u64>, Option<u64>)> = diff(before, after)
            .into_iter()
            .map(|d| (String::from_utf8(d.path).unwrap(), d.change, d.size_before, d.size_after))
            .collect();
        assert_eq!(
            found,
            [
                ("d/chmod".into(), Change::Metadata, Some(5), Some(5)),
                ("d/edited".into(), Change::Modified, Some(5), Some(6)),
                ("gone".into(), Change::Removed, Some(9), None),
                ("new".into(), Change::Added, None, Some(3)),
                ("tagged".into(), Change::Metadata, Some(1), Some(1)),
            ]
        );
    }

    #[test]
    fn a_tar_member_gets_exactly_its_size() {
        use std::io::Read;
        let read = |data: &[u8], size| {
            let mut out = Vec::new();
            Exactly::new(data, size, b"f").read_to_end(&mut out).map(|_| out)
        };
        assert_eq!(read(b"abc", 3).unwrap(), b"abc");
        assert!(read(b"abcd", 3).unwrap_err().to_string().contains("longer than its size"));
        assert!(read(b"ab", 3).unwrap_err().to_string().contains("1 bytes short"));
        assert!(read(b"", 0).unwrap().is_empty());
    }

    #[test]
    fn attribute_names_that_would_forge_a_tar_record_are_left_out() {
        let x = |name: &[u8]| crate::format::entry::Xattr { name: name.to_vec(), value: b"v".to_vec() };
        let attrs = [x(b"user.ok"), x(b"user.a=path"), x(b"user.b\npath=../../etc"), x(b"user.\xff"), x(b"")];
        let (records, unfit) = pax_xattrs(&attrs);
        assert_eq!(records, [("SCHILY.xattr.user.ok".to_string(), &b"v"[..])]);
        assert_eq!(unfit.len(), 4);
    }
}
