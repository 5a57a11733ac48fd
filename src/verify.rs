//! `coffer verify`: checks the catalog against the target.
//!
//! Every object version the catalog records (the repository record, each snapshot
//! record, each pack) must exist on the server by its exact version id, with the
//! recorded size and at least the recorded lock. With `--read-data` and the identity,
//! packs are downloaded, checked against their content hash, decrypted, and every chunk
//! the catalog places in them is decompressed and re-hashed; snapshot records are
//! authenticated and decrypted, and their file lists checked against the restore's rules
//! (an authentic record may still be forged by the holder of the repository secret).
//! Each finding names the snapshots that need the object.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Result;
use futures::StreamExt;
use serde::Serialize;

use crate::catalog::{Catalog, StoredCopy, TargetId};
use crate::config::Config;
use crate::format::snapshot::{self, SnapshotRecord};
use crate::format::{REPO_KEY, pack};
use crate::inventory::{Finding, Found};
use crate::keys::Identity;
use crate::progress::{Counters, ProgressLine};
use crate::repo::{Repo, Restorer};
use crate::store::Target;

pub struct Options {
    /// Only this target (else every one, in turn).
    pub target: Option<String>,
    /// Download and re-hash data (needs `identity`).
    pub read_data: Option<Arc<Identity>>,
    /// With `read_data`: the fraction of packs to read, chosen at random.
    pub subset: f64,
    /// Draw a progress line on a terminal.
    pub progress: bool,
}

/// What verify found, over every target it checked.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The targets checked, by name.
    pub targets: Vec<String>,
    pub objects_checked: usize,
    /// Objects found on a target that the catalog did not know it held (after
    /// `recover` from another target), now recorded.
    pub learned: usize,
    pub packs_read: usize,
    /// Packs read that are encrypted to keys the identity is not one of (written
    /// before it was added): not checked past their content hash.
    pub packs_for_other_keys: usize,
    pub chunks_verified: u64,
    pub bytes_read: u64,
    pub findings: Vec<Found>,
    /// Snapshots (job/id) that need an object with a finding.
    pub snapshots_affected: BTreeSet<String>,
}

/// What verify found on one target.
#[derive(Default)]
struct Checked {
    objects_checked: usize,
    learned: usize,
    packs_read: usize,
    other_keys: usize,
    chunks_verified: u64,
    bytes_read: u64,
    findings: Vec<Finding>,
    snapshots_affected: BTreeSet<String>,
}

/// An object version the catalog says the target holds.
struct Needed {
    key: String,
    version: Option<String>,
    size: Option<u64>,
    locked_until: Option<i64>,
    /// Snapshots (job/id) that need it.
    snapshots: Vec<String>,
    /// The pack's catalog row, for packs.
    pack: Option<i64>,
    /// The blake3 hash its bytes must have, where it is checked without the identity:
    /// the repository record's pinned hash.
    hash: Option<String>,
}

/// Objects checked at once.
const CONCURRENT_CHECKS: usize = 8;

pub fn run(cfg: &Config, opts: &Options) -> Result<Report> {
    let repo = Repo::open(cfg)?;
    let selected: Vec<usize> = {
        let names: Vec<&str> = repo.selected(opts.target.as_deref())?.iter().map(|t| t.name.as_str()).collect();
        (0..repo.targets.len()).filter(|&i| names.contains(&repo.targets[i].name.as_str())).collect()
    };
    let mut report = Report::default();
    let catalog = match &opts.read_data {
        Some(identity) => {
            let mut repo = repo.unlock(identity.clone(), opts.target.as_deref(), None)?;
            for i in selected {
                repo.read_from(i);
                let checked = check_target(&repo, &repo.targets[i], Some(&Data { repo: &repo }), opts)?;
                merge(&mut report, &repo.targets[i].name, checked);
            }
            repo.catalog
        }
        None => {
            for i in selected {
                let checked = check_target(&repo, &repo.targets[i], None, opts)?;
                merge(&mut report, &repo.targets[i].name, checked);
            }
            repo.catalog
        }
    };
    let detail = format!(
        "{} objects on {} targets, {} packs read, {} findings",
        report.objects_checked,
        report.targets.len(),
        report.packs_read,
        report.findings.len()
    );
    let _ = catalog.event("verify", None, &detail);
    Ok(report)
}

/// Adds one target's findings to the report.
fn merge(report: &mut Report, target: &str, c: Checked) {
    report.targets.push(target.to_string());
    report.objects_checked += c.objects_checked;
    report.learned += c.learned;
    report.packs_read += c.packs_read;
    report.packs_for_other_keys += c.other_keys;
    report.chunks_verified += c.chunks_verified;
    report.bytes_read += c.bytes_read;
    report.snapshots_affected.extend(c.snapshots_affected);
    report.findings.extend(c.findings.into_iter().map(|finding| Found { target: target.to_string(), finding }));
}

/// Checks what the catalog records on one target (with `data`, reading it back).
fn check_target<R>(repo: &Repo<R>, target: &Target, data: Option<&Data>, opts: &Options) -> Result<Checked> {
    let (learned, foreign) = learn(repo, target)?;
    let needed = needed_objects(&repo.catalog, target.id)?;
    let mut report = Checked { objects_checked: needed.len(), learned, findings: foreign, ..Default::default() };
    tracing::info!(target = %target.name, objects = needed.len(), "checking every recorded object version");
    let missing = check_presence(target, &needed, &mut report)?;
    if let Some(data) = data {
        // What is missing or of the wrong size was reported above; the rest must read back.
        let records = data.records(&needed, &missing, &mut report)?;
        data.packs(&needed, &missing, opts, &mut report)?;
        data.file_lists(&records, &mut report)?;
    }
    // A pack that is missing or damaged no longer counts as storing its chunks: the next
    // backup stores them again.
    for f in &report.findings {
        if let (Finding::Unreadable { why, .. }, crate::inventory::Layout::Pack(hash)) =
            (f, crate::inventory::layout(f.key()))
        {
            repo.catalog.mark_damaged(&hash, &format!("on target `{}`: {why}", target.name))?;
        }
    }
    Ok(report)
}

/// Records what `target` holds of this repository that the catalog does not know it
/// holds: after `recover` rebuilt the catalog from another target, or a copy whose
/// catalog write a crash lost. Each key's oldest version is the one coffer wrote (as
/// `recover` judges); a pack must have the size recorded for it, the repository record
/// this repository's id. What is learned is then checked like everything recorded, and
/// read back with `--read-data` (a pack proves itself by its hash, a record by its MAC).
fn learn<R>(repo: &Repo<R>, target: &Target) -> Result<(usize, Vec<Finding>)> {
    let catalog = &repo.catalog;
    let known: HashMap<String, Option<String>> = catalog.recorded_objects(target.id)?;
    let inventory = crate::runtime::block_on(crate::inventory::Inventory::read(target))?;
    let mut learned = 0;
    let mut foreign = Vec::new();
    for (key, versions) in &inventory.keys {
        let Some(oldest) = versions.versions.first() else { continue };
        if known.contains_key(key) {
            continue;
        }
        let lock = || crate::runtime::block_on(target.lock_of(key, oldest.id.as_deref()));
        match crate::inventory::layout(key) {
            crate::inventory::Layout::Pack(hash) => {
                let Some(id) = catalog.pack_id(&hash)? else { continue };
                if catalog.pack_size(id)? != oldest.size {
                    continue;
                }
                catalog.add_pack_copy(target.id, id, &StoredCopy { version: oldest.id.clone(), lock: lock()? })?;
            }
            crate::inventory::Layout::Snapshot { id, .. } => {
                if !catalog.has_snapshot(&id)? {
                    continue;
                }
                catalog.add_snapshot_copy(target.id, &id, &StoredCopy { version: oldest.id.clone(), lock: lock()? })?;
            }
            crate::inventory::Layout::KeySet(seq) => {
                let known = catalog.keysets()?.into_iter().find(|s| s.seq == seq).and_then(|s| s.record_hash);
                let Some(hash) = known else { continue };
                let bytes =
                    crate::runtime::block_on(target.get(key, oldest.id.as_deref(), crate::format::MAX_REPO_RECORD))?;
                if blake3::hash(&bytes).to_hex().as_str() != hash {
                    continue;
                }
                catalog.add_keyset_copy(target.id, seq, &StoredCopy { version: oldest.id.clone(), lock: lock()? })?;
            }
            crate::inventory::Layout::Repo => {
                let bytes =
                    crate::runtime::block_on(target.get(key, oldest.id.as_deref(), crate::format::MAX_REPO_RECORD))?;
                let ours = match &repo.row.pin {
                    Some(pin) => pin.holds(&bytes),
                    None => crate::format::repo::RepoRecord::decode(&bytes).is_ok_and(|r| r.id == repo.row.repo_id),
                };
                if !ours {
                    let why = "not the repository record pinned at init: it is not recorded as this target's \
                               copy, and no restore opens it"
                        .into();
                    foreign.push(Finding::Replaced { key: key.clone(), why });
                    continue;
                }
                catalog.set_repo_record(target.id, &StoredCopy { version: oldest.id.clone(), lock: lock()? })?;
            }
            _ => continue,
        }
        learned += 1;
    }
    if learned > 0 {
        tracing::info!(target = %target.name, objects = learned, "recorded what the target holds");
    }
    Ok((learned, foreign))
}

/// Every object version the catalog says `target` holds: the repository record, the
/// record of each complete snapshot there, and every pack there, with the snapshots that
/// need each.
fn needed_objects(catalog: &Catalog, target: TargetId) -> Result<Vec<Needed>> {
    let mut snapshots = Vec::new();
    for s in catalog.snapshots(None)? {
        let held = catalog.snapshot_holders(&s.id)?.into_iter().find(|(t, _)| *t == target);
        if let (crate::catalog::SnapshotState::Complete, Some((_, copy))) = (s.state, held) {
            snapshots.push((s, copy));
        }
    }
    let mut needed = Vec::new();
    let pin_hash = catalog.repo()?.and_then(|r| r.pin).map(|p| p.record_hash);
    if let Some(record) = catalog.repo_record(target)? {
        needed.push(Needed {
            key: REPO_KEY.into(),
            version: record.version,
            size: None,
            locked_until: record.lock.map(|l| l.until),
            snapshots: snapshots.iter().map(|(s, _)| format!("{}/{}", s.job, s.id)).collect(),
            pack: None,
            hash: pin_hash,
        });
    }
    for set in catalog.keysets()? {
        let Some((_, copy)) = catalog.keyset_holders(set.seq)?.into_iter().find(|(t, _)| *t == target) else {
            continue;
        };
        needed.push(Needed {
            key: crate::format::keyset::key(set.seq),
            version: copy.version,
            size: None,
            locked_until: copy.lock.map(|l| l.until),
            snapshots: snapshots.iter().map(|(s, _)| format!("{}/{}", s.job, s.id)).collect(),
            pack: None,
            hash: set.record_hash,
        });
    }
    for (s, copy) in &snapshots {
        needed.push(Needed {
            key: crate::format::snapshot_key(&s.job, &s.id),
            version: copy.version.clone(),
            size: None,
            locked_until: copy.lock.map(|l| l.until),
            snapshots: vec![format!("{}/{}", s.job, s.id)],
            pack: None,
            hash: None,
        });
    }
    let jobs: HashMap<String, String> = snapshots.iter().map(|(s, _)| (s.id.clone(), s.job.clone())).collect();
    for (p, size, ids) in catalog.packs_with_snapshots(target)? {
        needed.push(Needed {
            key: crate::format::pack_key(&p.hash),
            version: p.version,
            size: Some(size),
            locked_until: p.lock.map(|l| l.until),
            snapshots: ids.iter().map(|id| format!("{}/{id}", jobs.get(id).map_or("?", |j| j))).collect(),
            pack: Some(p.id),
            hash: None,
        });
    }
    Ok(needed)
}

/// Checks every needed version's existence, size and lock; returns the keys that are
/// missing or of the wrong size.
fn check_presence(target: &Target, needed: &[Needed], report: &mut Checked) -> Result<HashSet<String>> {
    let checked: Vec<Result<Vec<Finding>>> = crate::runtime::block_on(
        futures::stream::iter(needed.iter().map(|n| check_object(target, n)))
            .buffered(CONCURRENT_CHECKS)
            .collect::<Vec<_>>(),
    );
    let mut missing = HashSet::new();
    for (n, findings) in needed.iter().zip(checked) {
        let findings = findings?;
        if findings.iter().any(|f| matches!(f, Finding::Unreadable { .. })) {
            missing.insert(n.key.clone());
        }
        note(report, n, findings);
    }
    Ok(missing)
}

/// `verify --read-data`: what reading needs.
struct Data<'a> {
    repo: &'a Repo<Restorer>,
}

impl Data<'_> {
    /// Authenticates and decrypts every snapshot record that is there.
    fn records<'n>(
        &self,
        needed: &'n [Needed],
        missing: &HashSet<String>,
        report: &mut Checked,
    ) -> Result<Vec<(&'n Needed, SnapshotRecord)>> {
        let mut records = Vec::new();
        let is_record =
            |n: &&Needed| matches!(crate::inventory::layout(&n.key), crate::inventory::Layout::Snapshot { .. });
        for n in needed.iter().filter(is_record).filter(|n| !missing.contains(&n.key)) {
            let object = crate::runtime::block_on(self.repo.read_target().get(
                &n.key,
                n.version.as_deref(),
                crate::format::MAX_SNAPSHOT_RECORD,
            ))?;
            match snapshot::open(&object, &n.key, self.repo.secret(), self.repo.identity()) {
                Ok(record) => records.push((n, record)),
                Err(e) => note(report, n, vec![unreadable(n, e.to_string())]),
            }
        }
        Ok(records)
    }

    /// Reads the packs (or a random `subset` of them): content hash, decryption, the
    /// trailer against the catalog, and every chunk re-hashed.
    fn packs(&self, needed: &[Needed], missing: &HashSet<String>, opts: &Options, report: &mut Checked) -> Result<()> {
        let mut packs: Vec<&Needed> = needed.iter().filter(|n| n.pack.is_some()).collect();
        crate::status::shuffle(&mut packs);
        let take = (packs.len() as f64 * opts.subset).ceil() as usize;
        packs.truncate(take.min(packs.len()));
        tracing::info!(packs = packs.len(), "reading and re-hashing data");
        let counters = Arc::new(Counters::default());
        let _progress = ProgressLine::start(counters.clone(), opts.progress, crate::progress::packs_line(packs.len()));
        for n in &packs {
            Counters::add(&counters.packs, 1);
            if missing.contains(&n.key) {
                continue;
            }
            let size = n.size.unwrap_or(crate::format::MAX_SNAPSHOT_RECORD);
            let ct = crate::runtime::block_on(self.repo.read_target().get(&n.key, n.version.as_deref(), size))?;
            report.bytes_read += ct.len() as u64;
            Counters::add(&counters.bytes_read, ct.len() as u64);
            report.packs_read += 1;
            let hash = n.key.rsplit('/').next().unwrap_or_default();
            let blobs = self.repo.catalog.pack_chunks(n.pack.unwrap_or_default())?;
            let result = pack::open(&ct, hash, self.repo.identity()).and_then(|plain| {
                let trailer: HashMap<_, _> = pack::read_trailer(&plain)?.into_iter().map(|b| (b.id, b)).collect();
                for b in &blobs {
                    if trailer.get(&b.id) != Some(b) {
                        return Err(crate::format::malformed(format!(
                            "the pack's table does not hold chunk {} where the catalog places it",
                            b.id
                        )));
                    }
                    pack::verified_blob(&plain, b, self.repo.secret())?;
                }
                Ok(())
            });
            match result {
                Ok(()) => report.chunks_verified += blobs.len() as u64,
                // Encrypted to keys this identity is not one of (a key added since): not damage.
                Err(e) if !e.is_damage() => report.other_keys += 1,
                Err(e) => note(report, n, vec![unreadable(n, e.to_string())]),
            }
        }
        Ok(())
    }

    /// Reads each snapshot's file list whole and checks it against the restore's rules:
    /// a record that authenticates may still be forged by the secret's holder. A list
    /// stored in a pack already found damaged is that pack's finding.
    fn file_lists(&self, records: &[(&Needed, SnapshotRecord)], report: &mut Checked) -> Result<()> {
        let catalog = &self.repo.catalog;
        let damaged: HashSet<String> = report.findings.iter().map(|f| f.key().to_string()).collect();
        for (n, record) in records {
            let made_with = catalog.snapshot_pack_ids(&record.id)?;
            let mut chunks = crate::restore::tree::ChunkReader::new(self.repo, Some(&made_with));
            let locate = |id: &crate::chunk_id::ChunkId| {
                catalog.chunk_location(self.repo.read_target().id, id, Some(&made_with)).ok().flatten()
            };
            let packs: Vec<String> =
                record.tree.iter().filter_map(locate).map(|l| crate::format::pack_key(&l.pack_hash)).collect();
            if packs.iter().any(|k| damaged.contains(k)) {
                continue;
            }
            let size = |id: &crate::chunk_id::ChunkId| locate(id).map(|l| u64::from(l.raw_length));
            match crate::restore::tree::check_list(chunks.stream(&record.tree), &self.repo.limits, size) {
                Ok(list) => {
                    note(report, n, crate::inventory::unsafe_entries(&n.key, list.refused));
                    if list.wrong_size_count > 0 {
                        let more = list.wrong_size_count - list.wrong_sizes.len() as u64;
                        let mut why = list.wrong_sizes.join("; ");
                        if more > 0 {
                            why.push_str(&format!("; and {more} more"));
                        }
                        note(report, n, vec![unreadable(n, why)]);
                    }
                }
                Err(e) => {
                    note(report, n, vec![unreadable(n, format!("the snapshot's file list cannot be read: {e:#}"))])
                }
            }
        }
        Ok(())
    }
}

fn unreadable(n: &Needed, why: String) -> Finding {
    Finding::Unreadable { key: n.key.clone(), version: version(n), why }
}

fn version(n: &Needed) -> String {
    n.version.clone().unwrap_or_default()
}

fn note(report: &mut Checked, n: &Needed, findings: Vec<Finding>) {
    if !findings.is_empty() {
        report.snapshots_affected.extend(n.snapshots.iter().cloned());
    }
    report.findings.extend(findings);
}

/// Existence by exact version, size, and lock of one object. A failed request is an
/// error (the check is incomplete), not a finding.
async fn check_object(target: &Target, n: &Needed) -> Result<Vec<Finding>> {
    match target.size_of(&n.key, n.version.as_deref()).await? {
        None => return Ok(vec![unreadable(n, "the recorded version is not on the target".into())]),
        Some(size) if n.size.is_some_and(|s| s != size) => {
            let why = format!("{size} bytes on the target, {} recorded", n.size.unwrap_or_default());
            return Ok(vec![unreadable(n, why)]);
        }
        Some(size) => {
            if let Some(hash) = &n.hash {
                let bytes = target.get(&n.key, n.version.as_deref(), size.min(crate::format::MAX_REPO_RECORD)).await?;
                if blake3::hash(&bytes).to_hex().as_str() != hash {
                    let why = "not the repository record pinned at init: replaced, or another repository's".into();
                    return Ok(vec![Finding::Replaced { key: n.key.clone(), why }]);
                }
            }
        }
    }
    let Some(recorded) = n.locked_until else { return Ok(Vec::new()) };
    Ok(match target.lock_of(&n.key, n.version.as_deref()).await? {
        Some(r) if r.until >= recorded => Vec::new(),
        r => vec![Finding::LowerLock { key: n.key.clone(), recorded, server: r.map_or(0, |r| r.until) }],
    })
}
