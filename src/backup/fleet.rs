//! A run's targets: which answer and hold the pinned repository, what they lag behind
//! and catch up on, and what each ends up holding.

use std::collections::HashSet;
use std::sync::Mutex;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;

use crate::catalog::{StoredCopy, TargetId};
use crate::replicate::{Copied, Copier};
use crate::store::Target;

use super::reader::lock;

pub(super) type Repo = crate::repo::Repo<crate::repo::Host>;

/// One target's part in a run.
#[derive(serde::Serialize)]
pub struct TargetSummary {
    #[serde(rename = "target")]
    pub name: String,
    /// COMPLIANCE, GOVERNANCE or UNPROTECTED.
    pub protection: crate::store::Protection,
    /// Until when the snapshot's objects are locked there, where the target locks.
    pub locked_until: Option<i64>,
    /// Why the target does not hold the snapshot (`None`: it does).
    pub lagging: Option<String>,
}

/// The targets that stopped answering during a run, with why; the run goes on with the
/// others, and the next run catches these up.
#[derive(Default)]
pub(super) struct Down(Mutex<std::collections::BTreeMap<TargetId, String>>);

impl Down {
    pub(super) fn mark(&self, target: &Target, why: &anyhow::Error) {
        if let std::collections::btree_map::Entry::Vacant(e) = lock(&self.0).entry(target.id) {
            tracing::warn!(target = %target.name, "target failed; the run goes on without it: {why:#}");
            e.insert(format!("{why:#}"));
        }
    }

    /// A target that is not this repository any more: an error, not an outage.
    pub(super) fn refuse(&self, target: &Target, why: String) {
        tracing::error!(target = %target.name, "target refused; the run goes on without it: {why}");
        lock(&self.0).insert(target.id, why);
    }

    pub(super) fn is_down(&self, id: TargetId) -> bool {
        lock(&self.0).contains_key(&id)
    }

    pub(super) fn ids(&self) -> HashSet<TargetId> {
        lock(&self.0).keys().copied().collect()
    }

    pub(super) fn why(&self, id: TargetId) -> Option<String> {
        lock(&self.0).get(&id).cloned()
    }
}

/// A run's targets, and those that stopped answering during it.
pub(super) struct Fleet {
    pub(super) targets: Vec<Target>,
    pub(super) down: Down,
}

impl Fleet {
    /// Before anything is written, every target must answer within [`crate::pin::DEADLINE`],
    /// and each that the catalog says holds the repository record must still hold the
    /// pinned one: one bounded read per target and run. A target that does not answer in
    /// time, holds nothing (an unmounted disk, a wrong bucket or prefix) or holds another
    /// record is named and left out of the run; with none left, the run fails. A catalog
    /// made before records were pinned pins what the targets hold, if they agree.
    pub(super) fn probe(&self, repo: &mut Repo) -> Result<()> {
        let records = repo.catalog.targets()?;
        let mut read = Vec::new();
        for t in &self.targets {
            // A target new here is only asked whether it answers: catch-up gives it the record.
            let held = records.iter().find(|r| r.id == t.id).and_then(|r| r.record.clone());
            let version = held.as_ref().and_then(|c| c.version.as_deref());
            let ask = async {
                match &held {
                    Some(_) => crate::pin::read(t, version).await.map(Some),
                    None => t.size_of(crate::format::REPO_KEY, None).await.map(|_| None),
                }
            };
            match crate::runtime::block_on(async { tokio::time::timeout(crate::pin::DEADLINE, ask).await }) {
                Ok(Ok(Some(bytes))) => read.push((t, bytes)),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => self.down.mark(t, &e.context("cannot read the repository record")),
                Err(_) => self.down.mark(t, &anyhow!("it did not answer within {:?}", crate::pin::DEADLINE)),
            }
        }
        let pin = match repo.row.pin.clone() {
            Some(pin) => pin,
            None => pin_on_first_use(repo, &read)?,
        };
        // A catalog made before key sets learns set 0 from the record.
        if let Some((_, Some(record))) = read.iter().find(|(_, b)| b.as_deref().is_some_and(|b| pin.holds(b))) {
            crate::keyring::learn_first_set(&repo.catalog, record)?;
        }
        for (t, bytes) in read {
            if let Some(why) = crate::pin::refusal(t, pin.judge(bytes.as_deref())) {
                repo.catalog.event("target-refused", None, &why)?;
                self.down.refuse(t, why);
            }
        }
        if self.up().next().is_none() {
            bail!("no target of the job can be written to: {}", down_reasons(&self.targets, &self.down));
        }
        Ok(())
    }

    /// Targets that lag (down during an earlier run, or new) first get what they miss,
    /// copied from the others; one that fails now is left out of this run.
    /// Returns what was copied, and the lagging snapshots no target holds intact.
    pub(super) fn catch_up(&self, repo: &Repo, job: &str) -> (Copied, Vec<String>) {
        let mut copier = Copier { repo, skip: HashSet::new(), copied: Copied::default() };
        let mut skipped = Vec::new();
        for t in &self.targets {
            if self.down.is_down(t.id) {
                continue;
            }
            copier.skip = self.down.ids();
            match copier.catch_up(t, job) {
                Ok(not_copied) => skipped.extend(not_copied),
                Err(e) => self.down.mark(t, &e.context(format!("catching up target `{}` failed", t.name))),
            }
        }
        (copier.copied, skipped)
    }

    /// The targets still answering.
    pub(super) fn up(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(|t| !self.down.is_down(t.id))
    }

    /// On each target, a snapshot is complete only when everything it needs is there and
    /// locked long enough: reused packs a target lacks are copied to it from another
    /// (locked until `until.0`), and short locks extended (for `until.1`). Returns the
    /// number of lock extensions.
    pub(super) fn make_ready(
        &self,
        repo: &Repo,
        needed: &HashSet<i64>,
        until: (i64, i64),
        job: &str,
        copied: &mut Copied,
    ) -> u64 {
        let (pack_until, retain_until) = until;
        let mut copier = Copier { repo, skip: HashSet::new(), copied: *copied };
        let mut extensions = 0;
        for t in self.up() {
            copier.skip = self.down.ids();
            let ready = copier
                .packs(t, needed, pack_until)
                .and_then(|()| crate::replicate::extend_locks(repo, t, needed, retain_until, job));
            match ready {
                Ok(n) => extensions += n,
                Err(e) => self.down.mark(t, &e),
            }
        }
        *copied = copier.copied;
        extensions
    }

    /// Puts the sealed snapshot record on each target still answering; its copies, or
    /// an error when no target stored it.
    pub(super) fn put_record(
        &self,
        key: &str,
        object: Bytes,
        retain_until: i64,
    ) -> Result<Vec<(TargetId, StoredCopy)>> {
        let mut copies = Vec::new();
        for t in self.up() {
            match crate::runtime::block_on(t.put_new(key, object.clone(), retain_until)) {
                Ok(version) => copies.push((t.id, StoredCopy { version, lock: t.lock_until(retain_until) })),
                Err(e) => self.down.mark(t, &e),
            }
        }
        if copies.is_empty() {
            bail!("no target stored the snapshot: {}", down_reasons(&self.targets, &self.down));
        }
        Ok(copies)
    }

    pub(super) fn summaries(&self, retain_until: i64) -> Vec<TargetSummary> {
        let summary = |t: &Target| TargetSummary {
            name: t.name.clone(),
            protection: t.protection(),
            locked_until: t.lock_until(retain_until).map(|l| l.until),
            lagging: self.down.why(t.id),
        };
        self.targets.iter().map(summary).collect()
    }
}

/// Pins the repository record of a catalog made before records were pinned: what the
/// targets that answered hold, if they all hold the same record.
pub(super) fn pin_on_first_use(repo: &mut Repo, read: &[(&Target, Option<Bytes>)]) -> Result<crate::pin::Pin> {
    let held: Vec<(&Target, &Bytes)> = read.iter().filter_map(|(t, b)| Some((*t, b.as_ref()?))).collect();
    let Some((_, first)) = held.first() else {
        bail!("no target holds the repository record ({}), so coffer cannot pin it", crate::format::REPO_KEY);
    };
    if let Some((other, _)) = held.iter().find(|(_, b)| b != first) {
        bail!(
            "the targets hold different repository records (target `{}` and target `{}`); coffer pins none and \
             writes nowhere until they agree: see `coffer verify`",
            held[0].0.name,
            other.name
        );
    }
    let pin = crate::pin::Pin::of(first, repo.secret());
    repo.catalog.set_pin(&pin)?;
    tracing::info!(fingerprint = %pin.fingerprint, "repository record pinned; keep the fingerprint beside the identity");
    repo.row.pin = Some(pin.clone());
    Ok(pin)
}

/// "target `a`: why; target `b`: why", for the targets that failed.
pub(super) fn down_reasons(targets: &[Target], down: &Down) -> String {
    let named = |t: &Target, why: String| match why.starts_with(&format!("target `{}`", t.name)) {
        true => why,
        false => format!("target `{}`: {why}", t.name),
    };
    let reasons = targets.iter().filter_map(|t| Some(named(t, down.why(t.id)?)));
    reasons.collect::<Vec<_>>().join("; ")
}
