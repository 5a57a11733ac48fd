//! `coffer mount`: the snapshots as a read-only file system (FUSE, through `fuser`).
//!
//! `/by-job/JOB/SNAPSHOT/…` holds each snapshot's tree, and `/by-job/JOB/latest` links to
//! the newest. A snapshot's file list is read when its directory is first looked into;
//! a file's bytes when they are read, chunk by chunk through the same verified path as a
//! restore (each chunk's keyed hash checked), never the whole file at once. The file
//! list is input like a restore's: entries a restore refuses (an unsafe path, a
//! duplicate, a path through a symlink or under a file) are left out and named in the
//! log, and a file whose chunks do not add up to its size cannot be opened. Nothing is
//! ever written: the mount is read-only, and every call that would change it fails.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

use crate::browse::Browser;
use crate::catalog::SnapshotRow;
use crate::chunk_id::ChunkId;
use crate::escape::printable;
use crate::format::entry::{Entry, Kind};
use crate::format::entry_check::TreeCheck;

/// How long the kernel may keep what it was told: nothing here changes but `latest`.
const TTL: Duration = Duration::from_secs(60);

/// One name in the mount.
struct Node {
    parent: u64,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    size: u64,
    what: What,
}

enum What {
    /// A directory and its entries, by name.
    Dir(BTreeMap<Vec<u8>, u64>),
    /// A snapshot's root: its file list not read yet (`snapshot` indexes `Mount::snapshots`).
    Unread {
        snapshot: usize,
    },
    Symlink(Vec<u8>),
    File {
        snapshot: usize,
        chunks: Vec<ChunkId>,
    },
}

/// An open file: its snapshot, chunks and where each starts.
struct Open {
    snapshot: usize,
    chunks: Vec<ChunkId>,
    offsets: Vec<u64>,
}

struct State {
    browser: Browser,
    snapshots: Vec<SnapshotRow>,
    /// Inode `n` is `nodes[n - 1]`.
    nodes: Vec<Node>,
    open: HashMap<u64, Open>,
    next_handle: u64,
    /// The chunk read last, for the next read of the same file (the kernel reads 128 KiB
    /// at a time; a chunk is 1 MiB on average).
    last: Option<(ChunkId, Arc<Vec<u8>>)>,
}

/// The file system `fuser` serves.
pub struct Mount(Mutex<State>);

impl Mount {
    /// The tree of `snapshots` (complete ones, oldest first), read through `browser`.
    pub fn new(browser: Browser, snapshots: Vec<SnapshotRow>) -> Mount {
        let dir = |parent: u64, mtime_ns: i64| Node {
            parent,
            kind: Kind::Dir,
            mode: 0o555,
            uid: 0,
            gid: 0,
            mtime_ns,
            size: 0,
            what: What::Dir(BTreeMap::new()),
        };
        let mut nodes = vec![dir(1, 0), dir(1, 0)];
        add_child(&mut nodes, 1, b"by-job", 2);
        let mut jobs: HashMap<String, u64> = HashMap::new();
        for (i, s) in snapshots.iter().enumerate() {
            let job = *jobs.entry(s.job.clone()).or_insert_with(|| {
                nodes.push(dir(2, 0));
                let ino = nodes.len() as u64;
                add_child(&mut nodes, 2, s.job.as_bytes(), ino);
                ino
            });
            let created = s.created_at.saturating_mul(1_000_000_000);
            nodes.push(Node { what: What::Unread { snapshot: i }, ..dir(job, created) });
            let ino = nodes.len() as u64;
            add_child(&mut nodes, job, s.id.as_bytes(), ino);
            nodes[job as usize - 1].mtime_ns = created;
        }
        // `latest`: the newest snapshot of each job (they come oldest first).
        for (job, &ino) in &jobs {
            let newest = snapshots.iter().rev().find(|s| s.job == *job).expect("a job has a snapshot");
            let link = What::Symlink(newest.id.as_bytes().to_vec());
            let mtime_ns = newest.created_at.saturating_mul(1_000_000_000);
            nodes.push(Node { kind: Kind::Symlink, mode: 0o777, size: 16, what: link, ..dir(ino, mtime_ns) });
            let link_ino = nodes.len() as u64;
            add_child(&mut nodes, ino, b"latest", link_ino);
        }
        let state = State { browser, snapshots, nodes, open: HashMap::new(), next_handle: 1, last: None };
        Mount(Mutex::new(state))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn add_child(nodes: &mut [Node], parent: u64, name: &[u8], child: u64) {
    if let What::Dir(children) = &mut nodes[parent as usize - 1].what {
        children.insert(name.to_vec(), child);
    }
}

impl State {
    fn node(&self, ino: INodeNo) -> Option<&Node> {
        self.nodes.get(u64::from(ino).checked_sub(1)? as usize)
    }

    /// Reads the file list of the snapshot whose root is `ino`, if not read yet.
    fn read_list(&mut self, ino: u64) -> Result<(), Errno> {
        let node = (ino as usize).checked_sub(1).and_then(|i| self.nodes.get(i));
        let Some(Node { what: What::Unread { snapshot }, .. }) = node else { return Ok(()) };
        let snapshot = *snapshot;
        let snap = self.snapshots[snapshot].clone();
        let before = self.nodes.len();
        let mut dirs: HashMap<Vec<u8>, u64> = HashMap::from([(Vec::new(), ino)]);
        self.nodes[ino as usize - 1].what = What::Dir(BTreeMap::new());
        let mut check = TreeCheck::default();
        let (mut nodes, mut refused) = (std::mem::take(&mut self.nodes), 0u64);
        let read = self.browser.entries(&snap, |e| {
            if let Err(why) = check.check(e) {
                refused += 1;
                tracing::warn!(snapshot = %snap.id, "left out of the mount: {}: refused: {why}", printable(&e.path));
                return Ok(true);
            }
            let (parent_path, name) = match e.path.iter().rposition(|&b| b == b'/') {
                Some(cut) => (&e.path[..cut], &e.path[cut + 1..]),
                None => (&e.path[..0], &e.path[..]),
            };
            // The check saw the parent as a directory; it is one here too.
            let Some(&parent) = dirs.get(parent_path) else { return Ok(true) };
            nodes.push(entry_node(parent, e, snapshot));
            let child = nodes.len() as u64;
            add_child(&mut nodes, parent, name, child);
            if e.kind == Kind::Dir {
                dirs.insert(e.path.clone(), child);
            }
            Ok(true)
        });
        self.nodes = nodes;
        if refused > 0 {
            tracing::error!(snapshot = %snap.id, refused, "the snapshot holds entries a restore refuses: it may be forged");
        }
        read.map_err(|e| {
            // Not half a tree: the next look into the directory reads the list again.
            self.nodes.truncate(before);
            self.nodes[ino as usize - 1].what = What::Unread { snapshot };
            tracing::error!(snapshot = %snap.id, "its file list cannot be read: {e:#}");
            Errno::EIO
        })
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.nodes.get(ino.checked_sub(1)? as usize)?;
        let time = UNIX_EPOCH + Duration::from_nanos(n.mtime_ns.max(0) as u64);
        let kind = match n.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
            Kind::Symlink => FileType::Symlink,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            // As backed up: the mount is read-only (`ro`) and ignores setuid (`nosuid`).
            perm: (n.mode & 0o7777) as u16,
            nlink: if n.kind == Kind::Dir { 2 } else { 1 },
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    /// `size` bytes of the open file `fh` from `offset`.
    fn read(&mut self, fh: u64, offset: u64, size: u32) -> anyhow::Result<Vec<u8>> {
        let open = self.open.get(&fh).ok_or_else(|| anyhow::anyhow!("no open file {fh}"))?;
        let end = (offset + u64::from(size)).min(*open.offsets.last().unwrap_or(&0));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            // The chunk holding byte `at`: the last that starts at or before it.
            let i = open.offsets.partition_point(|&o| o <= at) - 1;
            let (id, start) = (open.chunks[i], open.offsets[i]);
            let data = match &self.last {
                Some((last, data)) if *last == id => data.clone(),
                _ => {
                    let snap = &self.snapshots[open.snapshot];
                    let data = Arc::new(self.browser.chunk(snap, &id)?);
                    self.last = Some((id, data.clone()));
                    data
                }
            };
            let from = (at - start) as usize;
            let upto = ((end - start) as usize).min(data.len());
            if from >= upto {
                anyhow::bail!("chunk {id} is shorter than the catalog says");
            }
            out.extend_from_slice(&data[from..upto]);
            at = start + upto as u64;
        }
        Ok(out)
    }
}

fn entry_node(parent: u64, e: &Entry, snapshot: usize) -> Node {
    let what = match e.kind {
        Kind::Dir => What::Dir(BTreeMap::new()),
        Kind::Symlink => What::Symlink(e.target.clone().unwrap_or_default()),
        Kind::File => What::File { snapshot, chunks: e.chunks.clone() },
    };
    let size = match &what {
        What::Symlink(t) => t.len() as u64,
        _ if e.kind == Kind::File => e.size,
        _ => 0,
    };
    Node { parent, kind: e.kind, mode: e.mode, uid: e.uid, gid: e.gid, mtime_ns: e.mtime_ns, size, what }
}

impl Filesystem for Mount {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        if let Err(e) = s.read_list(u64::from(parent)) {
            return reply.error(e);
        }
        let child = match s.node(parent).map(|n| &n.what) {
            Some(What::Dir(children)) => children.get(name.as_bytes()).copied(),
            _ => None,
        };
        match child.and_then(|c| s.attr(c)) {
            Some(attr) => reply.entry(&TTL, &attr, fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(u64::from(ino)) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.state().node(ino).map(|n| &n.what) {
            Some(What::Symlink(target)) => reply.data(target),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let mut s = self.state();
        let Some(Node { what: What::File { snapshot, chunks }, size, .. }) = s.node(ino) else {
            return reply.error(Errno::EISDIR);
        };
        let (snapshot, chunks, size) = (*snapshot, chunks.clone(), *size);
        let snap = s.snapshots[snapshot].clone();
        match s.browser.chunk_offsets(&snap, &chunks, size) {
            Ok(Some(offsets)) => {
                let fh = s.next_handle;
                s.next_handle += 1;
                s.open.insert(fh, Open { snapshot, chunks, offsets });
                reply.opened(FileHandle(fh), fuser::FopenFlags::FOPEN_KEEP_CACHE);
            }
            Ok(None) => {
                tracing::error!(snapshot = %snap.id, inode = u64::from(ino), "a file whose chunks do not add up to its size: not opened");
                reply.error(Errno::EIO);
            }
            Err(e) => {
                tracing::error!(snapshot = %snap.id, "a file cannot be opened: {e:#}");
                reply.error(Errno::EIO);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(u64::from(fh), offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                tracing::error!("a read failed: {e:#}");
                reply.error(Errno::EIO);
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.state().open.remove(&u64::from(fh));
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut s = self.state();
        if let Err(e) = s.read_list(u64::from(ino)) {
            return reply.error(e);
        }
        let Some(Node { what: What::Dir(children), parent, .. }) = s.node(ino) else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(u64::from(ino), b".".as_slice()), (*parent, b"..".as_slice())];
        let listed = dots.into_iter().chain(children.iter().map(|(name, &child)| (child, name.as_slice())));
        for (i, (child, name)) in listed.enumerate().skip(offset as usize) {
            let kind = match s.nodes[child as usize - 1].kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
                Kind::Symlink => FileType::Symlink,
            };
            if reply.add(INodeNo(child), (i + 1) as u64, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }
}
