//! Restore: read a snapshot back, verifying everything on the way.
//!
//! Every pack is checked against its content hash before it is decrypted, every chunk
//! against its keyed hash after; objects are read by the version id the catalog
//! recorded. Files are written to a temporary name and renamed, so a file either appears
//! whole or not at all. A file whose data cannot be verified is named, skipped, and makes
//! the restore fail at the end; the rest is still restored.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

use crate::ChunkId;
use crate::catalog::{Catalog, SnapshotRow};
use crate::config::Config;
use crate::format::entry::{Entry, EntryReader, Kind, safe_relative};
use crate::format::repo::RepoRecord;
use crate::format::snapshot::{self, SnapshotRecord};
use crate::format::{DecodeError, REPO_KEY, pack};
use crate::keys::{Identity, RepoSecret};
use crate::target::Target;

pub struct Options {
    pub job: String,
    pub snapshot: String,
    pub to: PathBuf,
    pub subpath: Option<String>,
    pub identity: PathBuf,
    pub overwrite: bool,
}

#[derive(Default)]
pub struct Summary {
    pub snapshot_id: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Paths that could not be restored, with the reason.
    pub failures: Vec<String>,
}

/// Decoded packs kept in memory: a snapshot's files mostly come from consecutive packs.
const PACK_CACHE_BYTES: usize = 64 << 20;

pub fn run(cfg: &Config, opts: &Options) -> Result<Summary> {
    let catalog = Catalog::open_existing(cfg)?;
    let repo = catalog.repo()?.ok_or_else(|| anyhow!("the catalog has no repository; run `coffer init` first"))?;
    let snap = catalog.find_snapshot(&opts.job, &opts.snapshot)?;
    let identity = Identity::load(&opts.identity)?;
    let target = Target::open(&cfg.target)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let record_bytes = runtime.block_on(target.get(REPO_KEY, repo.record_version.as_deref()))?;
    let repo_record = RepoRecord::decode(&record_bytes)?;
    let secret = repo_record.open_secret(&identity).map_err(|e| identity_error(e, &identity, &repo_record))?;
    let record = read_record(&runtime, &target, &snap, &secret, &identity)?;

    let subpath = match &opts.subpath {
        Some(p) => {
            let p = p.trim_matches('/');
            if !safe_relative(p.as_bytes()) {
                bail!("--path `{p}` must be a relative path inside the snapshot, without `..`");
            }
            Some(p.as_bytes().to_vec())
        }
        None => None,
    };
    prepare_target_dir(&opts.to, opts.overwrite)?;

    let mut r = Restorer {
        catalog,
        target,
        runtime,
        identity,
        secret,
        cache: VecDeque::new(),
        cached_bytes: 0,
        bad_packs: Vec::new(),
    };
    let tmp = cfg.state_dir.join("tmp");
    crate::fsutil::create_private_dir(&tmp)?;
    let entries_path = tmp.join(format!("restore-{}-{}", snap.id, crate::hex::random(6)));
    let result = r.restore(&record, &entries_path, &opts.to, subpath.as_deref());
    let _ = std::fs::remove_file(&entries_path);
    let mut summary = result?;
    summary.snapshot_id = snap.id.clone();
    let detail = format!("snapshot {} to {} ({} failures)", snap.id, opts.to.display(), summary.failures.len());
    let _ = r.catalog.event("restore", Some(&opts.job), &detail);
    Ok(summary)
}

fn identity_error(e: DecodeError, identity: &Identity, repo: &RepoRecord) -> anyhow::Error {
    match e {
        DecodeError::Decrypt(age::DecryptError::NoMatchingKeys) => anyhow!(
            "identity {} cannot open this repository: it is not one of its recipients ({})",
            identity.path.display(),
            repo.recipients.join(", ")
        ),
        other => anyhow!("cannot open the repository secret with {}: {other}", identity.path.display()),
    }
}

fn read_record(
    runtime: &tokio::runtime::Runtime,
    target: &Target,
    snap: &SnapshotRow,
    secret: &RepoSecret,
    identity: &Identity,
) -> Result<SnapshotRecord> {
    let key = crate::format::snapshot_key(&snap.job, &snap.id);
    let object = runtime.block_on(target.get(&key, snap.record_version.as_deref()))?;
    snapshot::open(&object, &key, secret, identity).with_context(|| format!("snapshot record {key}"))
}

fn prepare_target_dir(to: &Path, overwrite: bool) -> Result<()> {
    match std::fs::read_dir(to) {
        Ok(mut rd) => {
            if rd.next().is_some() && !overwrite {
                bail!("restore target {} is not empty; choose an empty directory or pass --overwrite", to.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(to).with_context(|| format!("cannot create restore target {}", to.display()))
        }
        Err(e) => Err(anyhow!(e).context(format!("restore target {}", to.display()))),
    }
}

struct Restorer {
    catalog: Catalog,
    target: Target,
    runtime: tokio::runtime::Runtime,
    identity: Identity,
    secret: RepoSecret,
    cache: VecDeque<(String, Arc<Vec<u8>>)>,
    cached_bytes: usize,
    /// Packs already found unreadable, with why (not fetched again).
    bad_packs: Vec<(String, String)>,
}

impl Restorer {
    fn restore(
        &mut self,
        record: &SnapshotRecord,
        entries_path: &Path,
        to: &Path,
        sub: Option<&[u8]>,
    ) -> Result<Summary> {
        // The entry stream goes to a local file first: it can be larger than memory.
        {
            let mut out = BufWriter::new(File::create(entries_path)?);
            for id in &record.tree {
                let data = self.chunk(id).map_err(|e| anyhow!("the snapshot's file list cannot be read: {e}"))?;
                out.write_all(&data)?;
            }
            out.flush()?;
        }
        let mut summary = Summary::default();
        let mut dirs: Vec<(PathBuf, Entry)> = Vec::new();
        let mut matched = false;
        for entry in EntryReader::new(BufReader::new(File::open(entries_path)?))? {
            let entry = entry?;
            if !safe_relative(&entry.path) {
                bail!(
                    "the snapshot holds an unsafe path {:?}; refusing to restore it",
                    String::from_utf8_lossy(&entry.path)
                );
            }
            if let Some(sub) = sub {
                let inside =
                    entry.path == sub || (entry.path.starts_with(sub) && entry.path.get(sub.len()) == Some(&b'/'));
                if !inside {
                    continue;
                }
            }
            matched = true;
            let dest = to.join(OsStr::from_bytes(&entry.path));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            match entry.kind {
                Kind::Dir => {
                    match std::fs::create_dir(&dest) {
                        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                            return Err(anyhow!(e).context(format!("cannot create {}", dest.display())));
                        }
                        _ => {}
                    }
                    summary.dirs += 1;
                    dirs.push((dest, entry));
                }
                Kind::Symlink => {
                    let target = entry.target.as_deref().ok_or_else(|| anyhow!("symlink without a target"))?;
                    if dest.symlink_metadata().is_ok() {
                        std::fs::remove_file(&dest).with_context(|| format!("cannot replace {}", dest.display()))?;
                    }
                    std::os::unix::fs::symlink(OsStr::from_bytes(target), &dest)
                        .with_context(|| format!("cannot create symlink {}", dest.display()))?;
                    set_owner_and_time(&dest, &entry)?;
                    summary.symlinks += 1;
                }
                Kind::File => match self.file(&dest, &entry) {
                    Ok(()) => {
                        summary.files += 1;
                        summary.bytes += entry.size;
                    }
                    Err(e) => {
                        let msg = format!("{}: {e:#}", String::from_utf8_lossy(&entry.path));
                        tracing::error!("{msg}");
                        summary.failures.push(msg);
                    }
                },
            }
        }
        if !matched && sub.is_some() {
            bail!("no path `{}` in snapshot {}", String::from_utf8_lossy(sub.unwrap_or_default()), record.id);
        }
        // Directory modes and times last, deepest first: writing inside changes them.
        for (dest, entry) in dirs.iter().rev() {
            std::fs::set_permissions(dest, std::fs::Permissions::from_mode(entry.mode))?;
            set_owner_and_time(dest, entry)?;
        }
        sync_filesystem(to);
        Ok(summary)
    }

    /// Writes one file under a temporary name, then renames it into place.
    fn file(&mut self, dest: &Path, entry: &Entry) -> Result<()> {
        let tmp = crate::fsutil::temp_path(dest);
        let written = (|| -> Result<()> {
            let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            let mut size = 0u64;
            for id in &entry.chunks {
                let data = self.chunk(id)?;
                size += data.len() as u64;
                out.write_all(&data)?;
            }
            if size != entry.size {
                bail!("restored {size} bytes but the snapshot recorded {}", entry.size);
            }
            let f = out.into_inner().map_err(|e| anyhow!("write failed: {e}"))?;
            f.set_permissions(std::fs::Permissions::from_mode(entry.mode))?;
            drop(f);
            set_owner_and_time(&tmp, entry)?;
            if dest.is_dir() {
                std::fs::remove_dir_all(dest)?;
            }
            std::fs::rename(&tmp, dest)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// A chunk's plaintext, verified against its keyed hash.
    fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.catalog.chunk_location(id)?.ok_or_else(|| anyhow!("chunk {id} is not in the catalog"))?;
        let plain = self.pack(&loc.pack_hash, loc.pack_version.as_deref())?;
        let key = crate::format::pack_key(&loc.pack_hash);
        let stored = pack::blob_bytes(&plain, loc.offset, loc.length).with_context(|| format!("pack {key}"))?;
        let data = pack::unpack_blob(stored, loc.raw_length, loc.flags).with_context(|| format!("pack {key}"))?;
        if self.secret.chunk_id(&data) != *id {
            bail!("chunk {id} in pack {key} fails verification: the data is not what was backed up");
        }
        Ok(data)
    }

    /// A pack's plaintext: fetched by version, checked against its content hash, decrypted.
    fn pack(&mut self, hash: &str, version: Option<&str>) -> Result<Arc<Vec<u8>>> {
        if let Some(pos) = self.cache.iter().position(|(h, _)| h == hash) {
            let hit = self.cache.remove(pos).expect("position is in range");
            let plain = hit.1.clone();
            self.cache.push_back(hit);
            return Ok(plain);
        }
        let key = crate::format::pack_key(hash);
        if let Some((_, why)) = self.bad_packs.iter().find(|(h, _)| h == hash) {
            bail!("pack {key}: {why}");
        }
        let fetched = self.runtime.block_on(self.target.get(&key, version)).and_then(|ct| {
            if crate::format::pack_id(&ct) != hash {
                bail!("content hash mismatch: the stored pack is corrupt or was replaced");
            }
            self.identity.decrypt(&ct).map_err(|e| anyhow!("cannot decrypt: {e}"))
        });
        let plain = match fetched {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let why = format!("{e:#}");
                self.bad_packs.push((hash.to_string(), why.clone()));
                bail!("pack {key}: {why}");
            }
        };
        self.cached_bytes += plain.len();
        self.cache.push_back((hash.to_string(), plain.clone()));
        while self.cached_bytes > PACK_CACHE_BYTES && self.cache.len() > 1 {
            if let Some((_, old)) = self.cache.pop_front() {
                self.cached_bytes -= old.len();
            }
        }
        Ok(plain)
    }
}

/// Restores owner (when running as root) and modification time, without following links.
fn set_owner_and_time(path: &Path, e: &Entry) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: plain syscalls on a NUL-terminated path we own; no memory is shared.
    unsafe {
        if libc::geteuid() == 0 && libc::lchown(c.as_ptr(), e.uid, e.gid) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot chown {}", path.display()));
        }
        let t = libc::timespec {
            tv_sec: e.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: e.mtime_ns.rem_euclid(1_000_000_000),
        };
        let times = [t, t];
        if libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot set times of {}", path.display()));
        }
    }
    Ok(())
}

/// One flush of everything written, instead of an fsync per file.
fn sync_filesystem(dir: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(d) = File::open(dir) {
        // SAFETY: syncfs on a descriptor we own.
        unsafe { libc::syncfs(d.as_raw_fd()) };
    }
}
