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

use crate::catalog::{Catalog, RepoRow};
use crate::config::Config;
use crate::format::snapshot::{self, SnapshotRecord};
use crate::format::{REPO_KEY, pack};
use crate::inventory::Finding;
use crate::keys::Identity;
use crate::progress::{Counters, ProgressLine};
use crate::repo::{Repo, Restorer};
use crate::target::Target;

pub struct Options {
    /// Download and re-hash data (needs `identity`).
    pub read_data: Option<Arc<Identity>>,
    /// With `read_data`: the fraction of packs to read, chosen at random.
    pub subset: f64,
    /// Draw a progress line on a terminal.
    pub progress: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub objects_checked: usize,
    pub packs_read: usize,
    pub chunks_verified: u64,
    pub bytes_read: u64,
    pub findings: Vec<Finding>,
    /// Snapshots (job/id) that need an object with a finding.
    pub snapshots_affected: BTreeSet<String>,
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
}

/// Objects checked at once.
const CONCURRENT_CHECKS: usize = 8;

pub fn run(cfg: &Config, opts: &Options) -> Result<Report> {
    let repo = Repo::open(cfg)?;
    let needed = needed_objects(&repo.catalog, &repo.row)?;
    let mut report = Report { objects_checked: needed.len(), ..Default::default() };
    tracing::info!(objects = needed.len(), "checking every recorded object version on the target");
    let missing = check_presence(&repo.runtime, &repo.target, &needed, &mut report)?;

    let catalog = match &opts.read_data {
        Some(identity) => {
            let repo = repo.unlock(identity.clone())?;
            let data = Data { repo: &repo };
            // What is missing or of the wrong size was reported above; the rest must read back.
            let records = data.records(&needed, &missing, &mut report)?;
            data.packs(&needed, &missing, opts, &mut report)?;
            data.file_lists(&records, &mut report)?;
            repo.catalog
        }
        None => repo.catalog,
    };
    // A pack that is missing or damaged no longer counts as storing its chunks: the next
    // backup stores them again.
    for f in &report.findings {
        if let (Finding::Unreadable { why, .. }, crate::inventory::Layout::Pack(hash)) =
            (f, crate::inventory::layout(f.key()))
        {
            catalog.mark_damaged(&hash, why)?;
        }
    }
    let detail = format!(
        "{} objects, {} packs read, {} findings",
        report.objects_checked,
        report.packs_read,
        report.findings.len()
    );
    let _ = catalog.event("verify", None, &detail);
    Ok(report)
}

/// Every object version the catalog says the target holds: the repository record, each
/// complete snapshot's record, and every pack, with the snapshots that need each.
fn needed_objects(catalog: &Catalog, repo: &RepoRow) -> Result<Vec<Needed>> {
    let snapshots: Vec<_> =
        catalog.snapshots(None)?.into_iter().filter(|s| s.state == crate::catalog::SnapshotState::Complete).collect();
    let mut needed = vec![Needed {
        key: REPO_KEY.into(),
        version: repo.record_version.clone(),
        size: None,
        locked_until: repo.record_lock.map(|l| l.until),
        snapshots: snapshots.iter().map(|s| format!("{}/{}", s.job, s.id)).collect(),
        pack: None,
    }];
    for s in &snapshots {
        needed.push(Needed {
            key: crate::format::snapshot_key(&s.job, &s.id),
            version: s.record_version.clone(),
            size: None,
            locked_until: s.lock_mode.as_ref().and(s.retain_until),
            snapshots: vec![format!("{}/{}", s.job, s.id)],
            pack: None,
        });
    }
    let jobs: HashMap<String, String> = snapshots.iter().map(|s| (s.id.clone(), s.job.clone())).collect();
    for (p, size, ids) in catalog.packs_with_snapshots()? {
        needed.push(Needed {
            key: crate::format::pack_key(&p.hash),
            version: p.version,
            size: Some(size),
            locked_until: p.lock.map(|l| l.until),
            snapshots: ids.iter().map(|id| format!("{}/{id}", jobs.get(id).map_or("?", |j| j))).collect(),
            pack: Some(p.id),
        });
    }
    Ok(needed)
}

/// Checks every needed version's existence, size and lock; returns the keys that are
/// missing or of the wrong size.
fn check_presence(
    runtime: &tokio::runtime::Runtime,
    target: &Target,
    needed: &[Needed],
    report: &mut Report,
) -> Result<HashSet<String>> {
    let checked: Vec<Result<Vec<Finding>>> = runtime.block_on(
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
        report: &mut Report,
    ) -> Result<Vec<(&'n Needed, SnapshotRecord)>> {
        let mut records = Vec::new();
        for n in needed.iter().filter(|n| n.pack.is_none() && n.key != REPO_KEY && !missing.contains(&n.key)) {
            let object = self.repo.runtime.block_on(self.repo.target.get(&n.key, n.version.as_deref()))?;
            match snapshot::open(&object, &n.key, self.repo.secret(), self.repo.identity()) {
                Ok(record) => records.push((n, record)),
                Err(e) => note(report, n, vec![unreadable(n, e.to_string())]),
            }
        }
        Ok(records)
    }

    /// Reads the packs (or a random `subset` of them): content hash, decryption, the
    /// trailer against the catalog, and every chunk re-hashed.
    fn packs(&self, needed: &[Needed], missing: &HashSet<String>, opts: &Options, report: &mut Report) -> Result<()> {
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
            let ct = self.repo.runtime.block_on(self.repo.target.get(&n.key, n.version.as_deref()))?;
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
                Err(e) => note(report, n, vec![unreadable(n, e.to_string())]),
            }
        }
        Ok(())
    }

    /// Reads each snapshot's file list whole and checks it against the restore's rules:
    /// a record that authenticates may still be forged by the secret's holder. A list
    /// stored in a pack already found damaged is that pack's finding.
    fn file_lists(&self, records: &[(&Needed, SnapshotRecord)], report: &mut Report) -> Result<()> {
        let catalog = &self.repo.catalog;
        let damaged: HashSet<String> = report.findings.iter().map(|f| f.key().to_string()).collect();
        let mut chunks = crate::restore::tree::ChunkReader::new(self.repo);
        for (n, record) in records {
            let packs: Vec<String> = record
                .tree
                .iter()
                .filter_map(|id| catalog.chunk_location(id).ok().flatten())
                .map(|l| crate::format::pack_key(&l.pack_hash))
                .collect();
            if packs.iter().any(|k| damaged.contains(k)) {
                continue;
            }
            let size = |id: &crate::ChunkId| catalog.chunk_location(id).ok().flatten().map(|l| u64::from(l.raw_length));
            match crate::restore::tree::check_list(chunks.stream(&record.tree), size) {
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

fn note(report: &mut Report, n: &Needed, findings: Vec<Finding>) {
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
        Some(_) => {}
    }
    let Some(recorded) = n.locked_until else { return Ok(Vec::new()) };
    Ok(match target.lock_of(&n.key, n.version.as_deref()).await? {
        Some(r) if r.until >= recorded => Vec::new(),
        r => vec![Finding::LowerLock { key: n.key.clone(), recorded, server: r.map_or(0, |r| r.until) }],
    })
}
