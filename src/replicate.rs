//! Catching a target up: what one target lacks is copied from another, verbatim.
//!
//! The host cannot read the ciphertext it copies, and need not: a pack proves itself by
//! its hash (its key), a snapshot record by its MAC under the repository secret, the
//! repository record by its pinned hash ([`crate::pin`]). So a target that was down, or
//! was added to the config later, gets the very objects the others hold, locked as long
//! as the snapshots that need them, without the source being read again. Every read is
//! bounded by what the object can be (a pack by its recorded size). A lagging snapshot
//! that no target holds intact is skipped and named: the ones after it, and the run's
//! own, still go to the lagging target.

use std::collections::HashSet;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;

use crate::catalog::{StoredCopy, TargetId};
use crate::format::{MAX_REPO_RECORD, MAX_SNAPSHOT_RECORD, REPO_KEY, pack_key, snapshot_key};
use crate::repo::{Host, Repo};
use crate::store::{AlreadyExists, Target};

/// What was copied to a target.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Copied {
    pub objects: u64,
    pub bytes: u64,
}

impl Copied {
    fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }
}

/// Copies onto a target from the others, except those in `skip` (down in this run);
/// `copied` adds up what it copied.
pub struct Copier<'a> {
    pub repo: &'a Repo<Host>,
    pub skip: HashSet<TargetId>,
    pub copied: Copied,
}

impl Copier<'_> {
    /// Brings `to` up to date for `job`: the repository record, then every complete
    /// snapshot of the job it lacks (its packs, then its record), oldest first. Returns
    /// the snapshots it could not copy because no other target holds them intact, with
    /// why; a failure of `to` itself is an error.
    pub fn catch_up(&mut self, to: &Target, job: &str) -> Result<Vec<String>> {
        self.repo_record(to)?;
        self.key_sets(to)?;
        let mut skipped = Vec::new();
        for snap in self.repo.catalog.lagging_snapshots(to.id, job)? {
            match self.snapshot(to, &snap, job) {
                Ok(()) => tracing::info!(target = %to.name, snapshot = %snap.id, "snapshot copied to a lagging target"),
                Err(e) if e.is::<Unavailable>() => {
                    let why = format!("snapshot {} not copied to target `{}`: {e:#}", snap.id, to.name);
                    tracing::warn!("{why}");
                    self.repo.catalog.event("copy-skipped", Some(job), &why)?;
                    skipped.push(why);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(skipped)
    }

    /// Copies one snapshot to `to`: its packs, their locks, then its record.
    fn snapshot(&mut self, to: &Target, snap: &crate::catalog::SnapshotRow, job: &str) -> Result<()> {
        let until = snap.retain_until.unwrap_or_else(soon);
        let packs = self.repo.catalog.snapshot_packs(to.id, &snap.id)?.into_iter().map(|p| p.id).collect();
        self.packs(to, &packs, until)?;
        extend_locks(self.repo, to, &packs, until, job)?;
        let key = snapshot_key(&snap.job, &snap.id);
        let holders = self.repo.catalog.snapshot_holders(&snap.id)?;
        let secret = self.repo.secret();
        let check = |b: &[u8]| crate::format::snapshot::verify_mac(b, &key, secret).map_err(|e| anyhow!(e));
        let copy = self.copy(to, &key, &holders, &check, until, MAX_SNAPSHOT_RECORD)?;
        self.repo.catalog.add_snapshot_copy(to.id, &snap.id, &copy)?;
        Ok(())
    }

    /// Stores `coffer.repo` on `to` if it is not there yet.
    pub fn repo_record(&mut self, to: &Target) -> Result<()> {
        let targets = self.repo.catalog.targets()?;
        if targets.iter().any(|t| t.id == to.id && t.record.is_some()) {
            return Ok(());
        }
        let holders: Vec<(TargetId, StoredCopy)> =
            targets.iter().filter_map(|t| Some((t.id, t.record.clone()?))).collect();
        let Some(pin) = &self.repo.row.pin else {
            bail!("the repository record is not pinned yet; coffer copies it only once it is");
        };
        let check = |b: &[u8]| match pin.holds(b) {
            true => Ok(()),
            false => bail!("it is not the repository record pinned at init"),
        };
        // Locked as long as the longest lock it has anywhere (every restore needs it), and
        // extended with the snapshots copied after it.
        let until = holders.iter().filter_map(|(_, c)| c.lock.map(|l| l.until)).fold(soon(), i64::max);
        let copy = self.copy(to, REPO_KEY, &holders, &check, until, MAX_REPO_RECORD)?;
        self.repo.catalog.set_repo_record(to.id, &copy)?;
        Ok(())
    }

    /// Stores on `to` every key-set record it lacks: a restore with a key added later
    /// needs the one that wraps the secret to it. Each is checked by its recorded hash
    /// and its MAC.
    pub fn key_sets(&mut self, to: &Target) -> Result<()> {
        let floor = self.repo.catalog.repo_record(to.id)?.and_then(|r| r.lock).map_or_else(soon, |l| l.until);
        for set in self.repo.catalog.keysets()? {
            let Some(hash) = set.record_hash else { continue };
            let holders = self.repo.catalog.keyset_holders(set.seq)?;
            if holders.iter().any(|(t, _)| *t == to.id) {
                continue;
            }
            let secret = self.repo.secret();
            let check = |b: &[u8]| {
                if blake3::hash(b).to_hex().as_str() != hash {
                    bail!("it is not the key set recorded");
                }
                crate::format::keyset::KeySet::verify(b, secret).map(drop).map_err(|e| anyhow!(e))
            };
            let key = crate::format::keyset::key(set.seq);
            let copy = self.copy(to, &key, &holders, &check, floor, MAX_REPO_RECORD)?;
            self.repo.catalog.add_keyset_copy(to.id, set.seq, &copy)?;
        }
        Ok(())
    }

    /// Stores on `to` every pack of `packs` it lacks, copied from a target that holds it,
    /// locked at least until `until` (and as long as its lock where it is copied from).
    pub fn packs(&mut self, to: &Target, packs: &HashSet<i64>, until: i64) -> Result<()> {
        let mut ids: Vec<i64> = packs.iter().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let holders = self.repo.catalog.pack_holders(id)?;
            if holders.iter().any(|(t, _)| *t == to.id) {
                continue;
            }
            let hash = self.repo.catalog.pack_hash(id)?;
            let check = |b: &[u8]| match crate::format::pack_id(b) == hash {
                true => Ok(()),
                false => bail!("its content does not match its hash"),
            };
            let size = self.repo.catalog.pack_size(id)?;
            let copy = self.copy(to, &pack_key(&hash), &holders, &check, until, size)?;
            self.repo.catalog.add_pack_copy(to.id, id, &copy)?;
        }
        Ok(())
    }

    /// Copies `key` (at most `max` bytes) to `to` from the first holder that answers
    /// with bytes that pass `check`, locked until the later of `until` and the holder's
    /// lock. When no holder does, the error is [`Unavailable`].
    fn copy(
        &mut self,
        to: &Target,
        key: &str,
        holders: &[(TargetId, StoredCopy)],
        check: &dyn Fn(&[u8]) -> Result<()>,
        until: i64,
        max: u64,
    ) -> Result<StoredCopy> {
        let mut why = Vec::new();
        for (from_id, held) in holders {
            if *from_id == to.id || self.skip.contains(from_id) {
                continue;
            }
            let Some(from) = self.repo.targets.iter().find(|t| t.id == *from_id) else { continue };
            let bytes = match crate::runtime::block_on(from.get(key, held.version.as_deref(), max)) {
                Ok(b) => b,
                Err(e) => {
                    why.push(format!("target `{}`: {e:#}", from.name));
                    continue;
                }
            };
            if let Err(e) = check(&bytes) {
                why.push(format!("target `{}`: {key}: {e:#}", from.name));
                continue;
            }
            let until = held.lock.map_or(until, |l| l.until.max(until));
            let len = bytes.len() as u64;
            let copy = self.put_or_adopt(to, key, bytes, until)?;
            self.copied.add(len);
            return Ok(copy);
        }
        Err(Unavailable(match why.is_empty() {
            true => format!("no other target holds {key}"),
            false => format!("{key} could not be copied: {}", why.join("; ")),
        })
        .into())
    }

    /// Puts `bytes` as a new object; where `key` is there already (an earlier copy
    /// stopped before the catalog heard of it), keeps it if it holds the same bytes.
    fn put_or_adopt(&self, to: &Target, key: &str, bytes: Bytes, until: i64) -> Result<StoredCopy> {
        match crate::runtime::block_on(to.put_new(key, bytes.clone(), until)) {
            Ok(version) => Ok(StoredCopy { version, lock: to.lock_until(until) }),
            Err(e) if e.is::<AlreadyExists>() => {
                let other = || anyhow!("{key} on target `{}` holds other bytes than the copy it should hold", to.name);
                // Compared by size first: what is there is read only if it could be the copy.
                if crate::runtime::block_on(to.size_of(key, None))? != Some(bytes.len() as u64) {
                    return Err(other());
                }
                let (existing, version) = crate::runtime::block_on(to.get_with_version(key, None, bytes.len() as u64))?;
                if existing != bytes {
                    return Err(other());
                }
                let lock = crate::runtime::block_on(to.lock_of(key, version.as_deref()))?;
                if to.locks() && lock.is_none_or(|l| l.until < until) {
                    crate::runtime::block_on(to.extend_lock(key, version.as_deref(), until))?;
                }
                Ok(StoredCopy { version, lock: to.lock_until(until).or(lock) })
            }
            Err(e) => Err(e),
        }
    }
}

/// No target holds an intact copy of an object a lagging target needs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

/// A lock end in the near future, for an object whose holder has no lock to match (a
/// target that does not lock): the slack a new pack gets beyond its snapshot.
fn soon() -> i64 {
    crate::time::now_secs() + crate::config::EXTENSION_SLACK_DAYS * 86_400
}

/// Extends, on `to`, the locks of the packs a snapshot needs that would expire before
/// it may, to `retain_until` plus the slack (so that the next days' snapshots need
/// none); and the lock of `coffer.repo`, which every restore needs. Returns the number
/// of extension requests; a refused one is an error (the snapshot is not complete there).
pub fn extend_locks(repo: &Repo<Host>, to: &Target, packs: &HashSet<i64>, retain_until: i64, job: &str) -> Result<u64> {
    let until = retain_until + crate::config::EXTENSION_SLACK_DAYS * 86_400;
    let Some(lock) = to.lock_until(until) else { return Ok(0) };
    let refused = |key: &str, e: anyhow::Error| {
        let _ = repo.catalog.event("lock-refused", Some(job), &format!("{key} on target `{}`: {e:#}", to.name));
        e.context(format!(
            "cannot extend the lock of {key} on target `{}`; the snapshot is not complete there",
            to.name
        ))
    };
    let short = repo.catalog.packs_locked_before(to.id, packs, retain_until)?;
    for (id, hash, version) in &short {
        let key = pack_key(hash);
        crate::runtime::block_on(to.extend_lock(&key, version.as_deref(), until)).map_err(|e| refused(&key, e))?;
        repo.catalog.set_pack_lock(to.id, *id, lock, job, hash)?;
    }
    let mut requests = short.len() as u64;
    let record = repo.catalog.repo_record(to.id)?;
    if let Some(record) = record.filter(|r| r.lock.is_none_or(|l| l.until < retain_until)) {
        crate::runtime::block_on(to.extend_lock(REPO_KEY, record.version.as_deref(), until))
            .map_err(|e| refused(REPO_KEY, e))?;
        repo.catalog.set_repo_lock(to.id, lock, job)?;
        requests += 1;
    }
    // The key-set records too: a restore with a key added later needs its set's.
    for set in repo.catalog.keysets()?.into_iter().filter(|s| s.seq > 0) {
        let held = repo.catalog.keyset_holders(set.seq)?.into_iter().find(|(t, _)| *t == to.id);
        let Some((_, copy)) = held.filter(|(_, c)| c.lock.is_none_or(|l| l.until < retain_until)) else { continue };
        let key = crate::format::keyset::key(set.seq);
        crate::runtime::block_on(to.extend_lock(&key, copy.version.as_deref(), until)).map_err(|e| refused(&key, e))?;
        repo.catalog.set_keyset_lock(to.id, set.seq, lock, job)?;
        requests += 1;
    }
    Ok(requests)
}
