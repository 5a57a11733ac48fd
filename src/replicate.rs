//! Catching a target up: what one target lacks is copied from another, verbatim.
//!
//! The host cannot read the ciphertext it copies, and need not: a pack proves itself by
//! its hash (its key), a snapshot record by its MAC under the repository secret, the
//! repository record by its id. So a target that was down, or was added to the config
//! later, gets the very objects the others hold, locked as long as the snapshots that
//! need them, without the source being read again.

use std::collections::HashSet;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;

use crate::catalog::{Copy, TargetId};
use crate::format::{REPO_KEY, pack_key, snapshot_key};
use crate::repo::{Host, Repo};
use crate::target::{AlreadyExists, Target};

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
    /// snapshot of the job it lacks (its packs, then its record), oldest first.
    pub fn catch_up(&mut self, to: &Target, job: &str) -> Result<()> {
        self.repo_record(to)?;
        for snap in self.repo.catalog.lagging_snapshots(to.id, job)? {
            let until = snap.retain_until.unwrap_or_else(soon);
            let packs = self.repo.catalog.snapshot_packs(to.id, &snap.id)?.into_iter().map(|p| p.id).collect();
            self.packs(to, &packs, until)?;
            extend_locks(self.repo, to, &packs, until, job)?;
            let key = snapshot_key(&snap.job, &snap.id);
            let holders = self.repo.catalog.snapshot_holders(&snap.id)?;
            let secret = self.repo.secret();
            let check = |b: &[u8]| crate::format::snapshot::verify_mac(b, &key, secret).map_err(|e| anyhow!(e));
            let copy = self.copy(to, &key, &holders, &check, until)?;
            self.repo.catalog.add_snapshot_copy(to.id, &snap.id, &copy)?;
            tracing::info!(target = %to.name, snapshot = %snap.id, "snapshot copied to a lagging target");
        }
        Ok(())
    }

    /// Stores `coffer.repo` on `to` if it is not there yet.
    pub fn repo_record(&mut self, to: &Target) -> Result<()> {
        let targets = self.repo.catalog.targets()?;
        if targets.iter().any(|t| t.id == to.id && t.record.is_some()) {
            return Ok(());
        }
        let holders: Vec<(TargetId, Copy)> = targets.iter().filter_map(|t| Some((t.id, t.record.clone()?))).collect();
        let repo_id = &self.repo.row.repo_id;
        let check = |b: &[u8]| match crate::format::repo::RepoRecord::decode(b) {
            Ok(r) if &r.id == repo_id => Ok(()),
            Ok(r) => bail!("it is the record of another repository ({})", r.id),
            Err(e) => Err(anyhow!(e)),
        };
        // Locked as long as the longest lock it has anywhere (every restore needs it), and
        // extended with the snapshots copied after it.
        let until = holders.iter().filter_map(|(_, c)| c.lock.map(|l| l.until)).fold(soon(), i64::max);
        let copy = self.copy(to, REPO_KEY, &holders, &check, until)?;
        self.repo.catalog.set_repo_record(to.id, &copy)?;
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
            let copy = self.copy(to, &pack_key(&hash), &holders, &check, until)?;
            self.repo.catalog.add_pack_copy(to.id, id, &copy)?;
        }
        Ok(())
    }

    /// Copies `key` to `to` from the first holder that answers with bytes that pass
    /// `check`, locked until the later of `until` and the holder's lock.
    fn copy(
        &mut self,
        to: &Target,
        key: &str,
        holders: &[(TargetId, Copy)],
        check: &dyn Fn(&[u8]) -> Result<()>,
        until: i64,
    ) -> Result<Copy> {
        let mut why = Vec::new();
        for (from_id, held) in holders {
            if *from_id == to.id || self.skip.contains(from_id) {
                continue;
            }
            let Some(from) = self.repo.targets.iter().find(|t| t.id == *from_id) else { continue };
            let bytes = match self.repo.runtime.block_on(from.get(key, held.version.as_deref())) {
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
        match why.is_empty() {
            true => bail!("no other target holds {key}"),
            false => bail!("{key} could not be copied: {}", why.join("; ")),
        }
    }

    /// Puts `bytes` as a new object; where `key` is there already (an earlier copy
    /// stopped before the catalog heard of it), keeps it if it holds the same bytes.
    fn put_or_adopt(&self, to: &Target, key: &str, bytes: Bytes, until: i64) -> Result<Copy> {
        let rt = &self.repo.runtime;
        match rt.block_on(to.put_new(key, bytes.clone(), until)) {
            Ok(version) => Ok(Copy { version, lock: to.lock_until(until) }),
            Err(e) if e.is::<AlreadyExists>() => {
                let (existing, version) = rt.block_on(to.get_with_version(key, None))?;
                if existing != bytes {
                    bail!("{key} on target `{}` holds other bytes than the copy it should hold", to.name);
                }
                let lock = rt.block_on(to.lock_of(key, version.as_deref()))?;
                if to.locks() && lock.is_none_or(|l| l.until < until) {
                    rt.block_on(to.extend_lock(key, version.as_deref(), until))?;
                }
                Ok(Copy { version, lock: to.lock_until(until).or(lock) })
            }
            Err(e) => Err(e),
        }
    }
}

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
        repo.runtime.block_on(to.extend_lock(&key, version.as_deref(), until)).map_err(|e| refused(&key, e))?;
        repo.catalog.set_pack_lock(to.id, *id, lock, job, hash)?;
    }
    let mut requests = short.len() as u64;
    let record = repo.catalog.repo_record(to.id)?;
    if let Some(record) = record.filter(|r| r.lock.is_none_or(|l| l.until < retain_until)) {
        repo.runtime
            .block_on(to.extend_lock(REPO_KEY, record.version.as_deref(), until))
            .map_err(|e| refused(REPO_KEY, e))?;
        repo.catalog.set_repo_lock(to.id, lock, job)?;
        requests += 1;
    }
    Ok(requests)
}
