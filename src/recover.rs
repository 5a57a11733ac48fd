//! `coffer recover`: rebuilds the catalog from the target alone, with the restorer's
//! identity, and reports what an attacker did to the bucket.
//!
//! For every key it takes the version coffer wrote, not the current one: the oldest
//! version that proves itself (a pack whose content hash is its name, a snapshot record
//! whose MAC holds, a repository record the identity opens). Delete markers and later
//! versions change nothing; they are reported (`inventory`). Every pack is read once:
//! its content hash and trailer give its chunks, and the chunks of snapshot file lists
//! are kept (verified) to rebuild which packs each snapshot needs.
//!
//! Crash-safe and resumable: the catalog is built in `catalog.sqlite.recovering`, one
//! transaction per pack and per snapshot, and renamed into place only when complete. A
//! killed recovery resumes where it stopped, without reading a recorded pack again.

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde::Serialize;

use crate::catalog::{Catalog, KeySetRow, RepoRow, SnapshotRow, StoredCopy, StoredPack, TargetId};
use crate::chunk_id::ChunkId;
use crate::config::Config;
use crate::format::entry::{ChunkedStream, EntryReader, Kind};
use crate::format::entry_check::{Refused, TreeCheck};
use crate::format::repo::RepoRecord;
use crate::format::snapshot::{self, SnapshotRecord};
use crate::format::{MAX_REPO_RECORD, MAX_SNAPSHOT_RECORD, REPO_KEY, pack};
use crate::inventory::{Finding, Inventory, Layout};
use crate::keys::{Identity, RepoSecret};
use crate::progress::{Counters, ProgressLine};
use crate::store::Target;

pub struct Options {
    pub identity: PathBuf,
    /// The target to rebuild from (else the first); `verify --target` then learns what
    /// the others hold.
    pub target: Option<String>,
    /// The repository fingerprint `init` printed, which the record must have.
    pub expect_fingerprint: Option<String>,
    /// Draw a progress line on a terminal.
    pub progress: bool,
}

/// What `coffer recover` prints (and `--json` shows as is).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub repo_id: String,
    /// The repository's fingerprint ([`crate::pin`]), and how it was checked.
    pub fingerprint: String,
    pub fingerprint_check: String,
    /// The target the catalog was rebuilt from.
    pub target: String,
    /// Recovered snapshots, oldest first.
    pub snapshots: Vec<Recovered>,
    pub packs: usize,
    /// Packs already recorded by an earlier, interrupted recovery.
    pub packs_resumed: usize,
    /// Versions identical to the one coffer wrote (a retried upload), not tampering.
    pub duplicates: usize,
    /// Tampering and damage, in key order.
    pub findings: Vec<Finding>,
    /// Authentic snapshot records and packs encrypted to keys the identity is not one
    /// of (written before its key was added): recover with an older key to include them.
    pub other_keys: Vec<String>,
}

/// A snapshot recover put back in the catalog.
#[derive(Debug, Serialize)]
pub struct Recovered {
    pub job: String,
    pub snapshot: String,
}

impl Report {
    pub fn tampered(&self) -> bool {
        self.findings.iter().any(Finding::is_tampering)
    }
}

/// Packs read ahead of the one being recorded.
const READ_AHEAD: usize = 2;

pub fn run(cfg: &Config, opts: &Options) -> Result<Report> {
    let final_path = cfg.state().catalog();
    if final_path.exists() {
        bail!(
            "{} already holds a catalog; recover builds a new one from the target into an empty state \
             directory (move the old catalog away to rebuild it)",
            cfg.state_dir.display()
        );
    }
    cfg.state().create()?;
    let _lock = cfg.state().recover_lock()?;
    let identity = Arc::new(Identity::load(&opts.identity)?);
    let target_cfg = match &opts.target {
        Some(name) => cfg.target(name)?,
        None => &cfg.targets[0],
    };
    tracing::info!(target = %target_cfg.name, url = %target_cfg.url, "listing every object version");
    let inventory = crate::runtime::block_on(Inventory::read(&Target::open(target_cfg, TargetId::NONE)?))?;
    // Which repository this is, before anything is written here (the secret included).
    let opened = open_repo(&Target::open(target_cfg, TargetId::NONE)?, &inventory, &identity)?;
    let checked = check_fingerprint(cfg, &identity, &target_cfg.name, &opened, opts)?;

    let partial = cfg.state().recovering_catalog();
    let mut catalog = Catalog::open(&partial)?;
    catalog.begin_recovery()?;
    // A resumed recovery finds the target it began with.
    let id = match catalog.target_named(&target_cfg.name)? {
        Some(known) => {
            crate::catalog::ensure_same_url(&known, &cfg.state_dir, &target_cfg.url)?;
            known.id
        }
        None => catalog.add_target(&target_cfg.name, &target_cfg.url)?,
    };
    let target = Target::open(target_cfg, id)?;
    let mut r = Recovery {
        target: &target,
        identity: &identity,
        inventory: &inventory,
        report: Report { target: target.name.clone(), ..Default::default() },
        genuine: HashMap::new(),
        pack_ceiling: 0,
        limits: cfg.limits,
    };
    // The repository record first: its secret authenticates everything else. Then the
    // snapshot records (small), so that each pack knows which chunks to keep; then the
    // packs; then the snapshots, each with the packs its file list needs.
    r.report.fingerprint_check = checked;
    let secret = r.repository(cfg, &catalog, opened)?;
    let records = r.snapshot_records(&secret)?;
    r.packs(&mut catalog, &records, opts.progress)?;
    r.snapshots(&mut catalog, &records, &secret)?;
    catalog.forget_expired(crate::time::now_secs())?;
    let report = r.judge_the_rest();

    catalog.end_recovery(&report.findings)?;
    catalog.close()?;
    std::fs::rename(&partial, &final_path)
        .with_context(|| format!("cannot move the recovered catalog to {}", final_path.display()))?;
    crate::fsutil::sync_dir(&final_path)?;
    Ok(report)
}

/// One recovery under way: what the target holds, and what has been proven so far.
struct Recovery<'a> {
    target: &'a Target,
    identity: &'a Arc<Identity>,
    inventory: &'a Inventory,
    report: Report,
    /// The version of each key that proved itself.
    genuine: HashMap<String, Option<String>>,
    /// The most bytes a pack of this repository can have (a larger answer is refused).
    pack_ceiling: u64,
    /// How much of a snapshot's file list is read.
    limits: crate::format::entry::Limits,
}

/// A snapshot record that proved itself: its key, version, content, and when the server
/// stored it.
type Proven = (String, Option<String>, SnapshotRecord, i64);

impl Recovery<'_> {
    /// Keeps the opened repository's secret and records the repository (unless a
    /// resumed recovery did).
    fn repository(&mut self, cfg: &Config, catalog: &Catalog, opened: Opened) -> Result<RepoSecret> {
        let Opened { record: repo, version: repo_version, secret, pin, sets, unread } = opened;
        for (key, version, why) in unread {
            self.report.findings.push(Finding::Unreadable { key, version: version.unwrap_or_default(), why });
        }
        self.genuine.insert(REPO_KEY.to_string(), repo_version.clone());
        self.report.repo_id = repo.id.clone();
        self.report.fingerprint = pin.fingerprint.clone();
        self.pack_ceiling = pack::max_stored(cfg.pack_size, repo.chunker.max);
        keep_secret(cfg, &self.target.url, &secret)?;
        if catalog.repo()?.is_none() {
            let lock = crate::runtime::block_on(self.target.lock_of(REPO_KEY, repo_version.as_deref()))?;
            catalog.set_repo(&RepoRow { repo_id: repo.id.clone(), chunker: repo.chunker, pin: Some(pin) }, &[])?;
            catalog.set_repo_record(self.target.id, &StoredCopy { version: repo_version, lock })?;
        }
        if catalog.current_keyset()?.is_none() {
            let recipients = repo.recipients.iter().map(|r| crate::keys::fingerprint_of(r)).collect();
            catalog.add_keyset(&KeySetRow { seq: 0, created_at: repo.created, recipients, record_hash: None }, &[])?;
        }
        self.key_sets(catalog, &repo.id, &secret, sets)?;
        Ok(secret)
    }

    /// Records every key-set record that proves itself under the secret, in order; one
    /// that does not is a forgery (a finding), and so is a gap in the chain.
    fn key_sets(
        &mut self,
        catalog: &Catalog,
        repo_id: &str,
        secret: &RepoSecret,
        mut sets: Vec<(u32, Option<String>, Vec<u8>)>,
    ) -> Result<()> {
        sets.sort_by_key(|(seq, ..)| *seq);
        let known: Vec<u32> = catalog.keysets()?.iter().map(|s| s.seq).collect();
        for (seq, version, bytes) in sets {
            let key = crate::format::keyset::key(seq);
            let proven =
                crate::format::keyset::KeySet::verify(&bytes, secret).map_err(|e| e.to_string()).and_then(|s| {
                    match s.seq == seq && s.repo == repo_id {
                        true => Ok(s),
                        false => Err("it is stored under another set's key, or is another repository's".into()),
                    }
                });
            match proven {
                Ok(set) if !known.contains(&seq) => {
                    let lock = crate::runtime::block_on(self.target.lock_of(&key, version.as_deref()))?;
                    let row = KeySetRow {
                        seq,
                        created_at: set.created,
                        recipients: set.recipients.into_iter().collect(),
                        record_hash: Some(blake3::hash(&bytes).to_hex().to_string()),
                    };
                    catalog.add_keyset(&row, &[(self.target.id, StoredCopy { version: version.clone(), lock })])?;
                    self.genuine.insert(key, version);
                }
                Ok(_) => {
                    self.genuine.insert(key, version);
                }
                Err(why) => {
                    let version = version.unwrap_or_default();
                    self.report.findings.push(Finding::ForgedRecord { key, version, why });
                }
            }
        }
        Ok(())
    }

    /// Every snapshot record's oldest version that proves itself, in creation order.
    fn snapshot_records(&mut self, secret: &RepoSecret) -> Result<Vec<Proven>> {
        let mut records = Vec::new();
        for (key, versions) in &self.inventory.keys {
            if !matches!(crate::inventory::layout(key), Layout::Snapshot { .. }) {
                continue;
            }
            let (mut accepted, mut rejected) = (None, Vec::new());
            for v in &versions.versions {
                let object = crate::runtime::block_on(self.target.get(key, v.id.as_deref(), MAX_SNAPSHOT_RECORD))?;
                match snapshot::open(&object, key, secret, self.identity) {
                    Ok(record) => {
                        if let Some(f) =
                            crate::inventory::backdated(key, record.created, record.stats.duration_ms, v.last_modified)
                        {
                            self.report.findings.push(f);
                        }
                        accepted = Some(v.id.clone());
                        records.push((key.clone(), v.id.clone(), record, v.last_modified));
                        break;
                    }
                    // Authentic, encrypted to keys this identity is not one of (made
                    // before it was added): another key recovers it.
                    Err(e) if !e.is_damage() => {
                        self.report.other_keys.push(key.clone());
                        accepted = Some(v.id.clone());
                        break;
                    }
                    Err(e) => rejected.push(Finding::ForgedRecord {
                        key: key.clone(),
                        version: v.id.clone().unwrap_or_default(),
                        why: e.to_string(),
                    }),
                }
            }
            // With a genuine version, the others are judged against it like any key's.
            if let Some(version) = accepted {
                self.genuine.insert(key.clone(), version);
            } else {
                self.report.findings.extend(rejected);
            }
        }
        // Creation order (runs of a job never overlap); records without nanoseconds
        // (older ones) within one second in the order the server received them.
        records.sort_by_key(|(key, _, r, stored)| {
            (r.created_ns.unwrap_or(r.created.saturating_mul(1_000_000_000)), *stored, key.clone())
        });
        Ok(records)
    }

    /// How many packs the target holds, and those a resumed recovery has not recorded
    /// yet (key, id); the recorded ones count as resumed.
    fn unread_packs(&mut self, catalog: &Catalog) -> Result<(usize, Vec<(String, String)>)> {
        let packs: Vec<(String, String)> = self
            .inventory
            .keys
            .keys()
            .filter_map(|key| match crate::inventory::layout(key) {
                Layout::Pack(id) => Some((key.clone(), id)),
                _ => None,
            })
            .collect();
        let total = packs.len();
        let mut todo = Vec::new();
        for (key, id) in packs {
            if catalog.has_pack(&id)? {
                self.report.packs_resumed += 1;
                // Which version was recorded matters for the findings.
                let version = catalog.pack_version(self.target.id, &id)?;
                self.genuine.insert(key, version);
            } else {
                todo.push((key, id));
            }
        }
        Ok((total, todo))
    }

    /// Every pack, read once: checked against its name, its trailer recorded, and the
    /// chunks of the snapshots' file lists kept (verified). Packs a resumed recovery
    /// already recorded are not read again.
    fn packs(&mut self, catalog: &mut Catalog, records: &[Proven], progress: bool) -> Result<()> {
        let tree_chunks: HashSet<ChunkId> = records.iter().flat_map(|(_, _, r, _)| r.tree.iter().copied()).collect();
        let (total, todo) = self.unread_packs(catalog)?;
        tracing::info!(packs = total, resumed = self.report.packs_resumed, "reading packs");
        let counters = Arc::new(Counters::default());
        Counters::add(&counters.packs, self.report.packs_resumed as u64);
        let _progress = ProgressLine::start(counters.clone(), progress, crate::progress::packs_line(total));
        let (target, identity, inventory) = (self.target, self.identity, self.inventory);
        let ceiling = self.pack_ceiling;
        crate::runtime::block_on(async {
            let reads = futures::stream::iter(todo.into_iter().map(|(key, id)| {
                let (target, identity) = (target.clone(), identity.clone());
                let versions = inventory.keys[&key].versions.clone();
                tokio::spawn(async move {
                    // The oldest version whose content hash is the pack's id is the one
                    // coffer wrote. A read that fails (after retries) stops the recovery,
                    // which can resume; a version that fails its hash is a finding.
                    let mut last_error = String::from("no version");
                    for v in versions {
                        let ct = target.get(&key, v.id.as_deref(), ceiling).await?;
                        match pack::open(&ct, &id, &identity) {
                            Ok(plain) => return anyhow::Ok((key, id, Ok(Ok((v, ct.len() as u64, plain))))),
                            // The pack coffer wrote, for keys this identity is not one of.
                            Err(e) if !e.is_damage() => return Ok((key, id, Ok(Err(v.id)))),
                            Err(e) => last_error = e.to_string(),
                        }
                    }
                    Ok((key, id, Err(last_error)))
                })
            }));
            let mut reads = reads.buffered(READ_AHEAD);
            while let Some(joined) = reads.next().await {
                let (key, id, read) = joined.map_err(|e| anyhow!("a pack reader failed: {e}"))??;
                Counters::add(&counters.packs, 1);
                let (v, size, plain) = match read {
                    Ok(Ok(ok)) => {
                        Counters::add(&counters.bytes_read, ok.1);
                        ok
                    }
                    Ok(Err(version)) => {
                        self.report.other_keys.push(key.clone());
                        self.genuine.insert(key, version);
                        continue;
                    }
                    Err(why) => {
                        self.report.findings.push(Finding::Unreadable { key, version: String::new(), why });
                        continue;
                    }
                };
                let (blobs, keyset) = match pack::read_table(&plain) {
                    Ok(b) => b,
                    Err(e) => {
                        let why = format!("pack trailer: {e}");
                        self.report.findings.push(Finding::Unreadable {
                            key: key.clone(),
                            version: String::new(),
                            why,
                        });
                        self.genuine.insert(key, v.id);
                        continue;
                    }
                };
                let mut tree = Vec::new();
                for b in blobs.iter().filter(|b| tree_chunks.contains(&b.id)) {
                    // Kept as stored, verified when read: a chunk that fails then is
                    // missed by its snapshot, which reports it.
                    if let Ok(stored) = pack::blob_bytes(&plain, b.offset, b.length) {
                        tree.push((b, stored));
                    }
                }
                let lock = target.lock_of(&key, v.id.as_deref()).await?;
                let copies = [(target.id, StoredCopy { version: v.id.clone(), lock })];
                let stored = StoredPack { hash: &id, size, keyset, blobs: &blobs, copies: &copies };
                catalog.add_recovered_pack(&stored, &tree)?;
                tracing::debug!("recorded {key}");
                self.genuine.insert(key, v.id);
            }
            anyhow::Ok(())
        })?;
        self.report.packs = total;
        Ok(())
    }

    /// The snapshots, oldest first: each one's file list says which packs it needs.
    fn snapshots(&mut self, catalog: &mut Catalog, records: &[Proven], secret: &RepoSecret) -> Result<()> {
        for (key, version, record, _) in records {
            if catalog.has_snapshot(&record.id)? {
                self.report.snapshots.push(Recovered { job: record.job.clone(), snapshot: record.id.clone() });
                continue;
            }
            let (packs, missing, refused) = match needed_packs(catalog, record, secret, &self.limits) {
                Ok(found) => found,
                Err(e) => {
                    let why = format!("the snapshot's file list cannot be read: {e:#}");
                    self.report.findings.push(Finding::Unreadable { key: key.clone(), version: String::new(), why });
                    continue;
                }
            };
            if missing > 0 {
                let why = format!("{missing} chunks of this snapshot are in no readable pack");
                self.report.findings.push(Finding::Unreadable { key: key.clone(), version: String::new(), why });
            }
            self.report.findings.extend(crate::inventory::unsafe_entries(key, refused));
            let lock = crate::runtime::block_on(self.target.lock_of(key, version.as_deref()))?;
            let copies = [(self.target.id, StoredCopy { version: version.clone(), lock })];
            catalog.complete_snapshot(
                &SnapshotRow::from_record(record),
                &copies,
                &packs,
                std::iter::empty(),
                |_| Ok(true),
                None,
            )?;
            self.report.snapshots.push(Recovered { job: record.job.clone(), snapshot: record.id.clone() });
        }
        Ok(())
    }

    /// Everything the target holds that coffer did not write, judged against the
    /// versions that proved themselves; the report, findings in key order.
    fn judge_the_rest(mut self) -> Report {
        let report = &mut self.report;
        let reported: HashSet<String> = report.findings.iter().map(|f| f.key().to_string()).collect();
        for (key, versions) in &self.inventory.keys {
            if crate::inventory::layout(key) == Layout::Unknown {
                continue;
            }
            let genuine = match self.genuine.get(key) {
                Some(version) => version.clone(),
                // No version proved itself: already reported as unreadable or forged.
                None if reported.contains(key) => continue,
                // Keys recover does not read (canaries) are judged against their oldest
                // version.
                None => versions.versions.first().and_then(|v| v.id.clone()),
            };
            report.findings.extend(self.inventory.findings_for(key, genuine.as_deref(), &mut report.duplicates));
        }
        report.findings.extend(self.inventory.unknown_keys());
        report.findings.sort_by(|a, b| a.key().cmp(b.key()).then(a.kind().cmp(b.kind())));
        self.report
    }
}

/// The record recovered from must be the repository the restorer means: the one whose
/// fingerprint they kept, or else the one every other configured target that answers
/// holds too. A storage-only attacker can replace the record on one target (with a
/// secret of their choice, encrypted to the public recipients): choosing between
/// disagreeing targets is left to the restorer. Returns how it was checked.
fn check_fingerprint(cfg: &Config, identity: &Identity, from: &str, opened: &Opened, opts: &Options) -> Result<String> {
    let mine = &opened.pin.fingerprint;
    if let Some(expected) = &opts.expect_fingerprint {
        let expected = crate::pin::normalize(expected)?;
        if *mine != expected {
            bail!(
                "target `{from}` holds a repository whose fingerprint is {mine}, not the {expected} expected: its \
                 {REPO_KEY} was replaced, or this is another repository; nothing was recovered"
            );
        }
        return Ok("the fingerprint expected".into());
    }
    let mut agree = vec![from.to_string()];
    let mut differ = Vec::new();
    for t in cfg.targets.iter().filter(|t| t.name != from) {
        let other = Target::open(t, TargetId::NONE).and_then(|other| {
            let inventory = crate::runtime::block_on(Inventory::read_repository(&other))?;
            open_repo(&other, &inventory, identity)
        });
        match other {
            Ok(o) if o.pin.fingerprint == *mine => agree.push(t.name.clone()),
            Ok(o) => differ.push(format!("target `{}` holds {}", t.name, o.pin.fingerprint)),
            Err(e) => tracing::warn!(target = %t.name, "cannot compare this target's {REPO_KEY}: {e:#}"),
        }
    }
    if !differ.is_empty() {
        bail!(
            "the targets disagree on which repository this is: target `{from}` holds {mine}; {}. One of them was \
             replaced: run recover again with --expect-fingerprint and the fingerprint `coffer init` printed",
            differ.join("; ")
        );
    }
    Ok(match agree.len() {
        1 => "only this target could be read: compare the fingerprint with the one `coffer init` printed".into(),
        _ => format!("every target that answered holds it ({})", agree.join(", ")),
    })
}

/// A repository record the identity opened (directly, or through a key set added
/// later): its version, its secret, its pin, and the key-set records the target holds.
struct Opened {
    record: RepoRecord,
    version: Option<String>,
    secret: RepoSecret,
    pin: crate::pin::Pin,
    /// Each `keys/<seq>` object: its set number, version (the oldest) and bytes.
    sets: Vec<(u32, Option<String>, Vec<u8>)>,
    /// Key-set objects not read (past [`MAX_KEY_SETS_READ`], too large, or failing):
    /// their keys, versions, and why.
    unread: Vec<(String, Option<String>, String)>,
}

/// The most bytes of key-set records recover reads from one target. A repository's are
/// a few KiB each, one per `coffer key add` or `remove`; whoever writes to the target
/// could plant them by the thousand, each as large as one may be.
const MAX_KEY_SETS_READ: u64 = 16 << 20;

/// The oldest version of `coffer.repo` that decodes and that the identity opens, or
/// whose secret a key set the identity opens holds.
fn open_repo(target: &Target, inventory: &Inventory, identity: &Identity) -> Result<Opened> {
    let versions = inventory.keys.get(REPO_KEY).map(|k| k.versions.as_slice()).unwrap_or_default();
    if versions.is_empty() {
        bail!("target {} holds no repository record ({REPO_KEY}): nothing to recover", target.url);
    }
    // Lowest numbers first (the listing is in key order): the genuine chain starts at 1.
    let (mut sets, mut unread, mut budget) = (Vec::new(), Vec::new(), MAX_KEY_SETS_READ);
    for (key, held) in &inventory.keys {
        if let (Layout::KeySet(seq), Some(v)) = (crate::inventory::layout(key), held.versions.first()) {
            let why = match v.size {
                n if n > MAX_REPO_RECORD => format!("not read: {n} bytes, more than a key set can have"),
                n if n > budget => {
                    format!(
                        "not read: the key sets before it fill the {} MiB a repository's can",
                        MAX_KEY_SETS_READ >> 20
                    )
                }
                n => match crate::runtime::block_on(target.get(key, v.id.as_deref(), n)) {
                    Ok(bytes) => {
                        budget -= bytes.len() as u64;
                        sets.push((seq, v.id.clone(), bytes.to_vec()));
                        continue;
                    }
                    Err(e) => format!("{e:#}"),
                },
            };
            unread.push((key.clone(), v.id.clone(), why));
        }
    }
    let mut reasons = Vec::new();
    for v in versions {
        let bytes = crate::runtime::block_on(target.get(REPO_KEY, v.id.as_deref(), MAX_REPO_RECORD))?;
        let objects = || Ok(sets.iter().map(|(seq, _, b)| (*seq, b.clone())).collect());
        match crate::format::keyset::open_secret(&bytes, identity, objects) {
            Ok((record, secret)) => {
                let pin = crate::pin::Pin::of(&bytes, &secret);
                return Ok(Opened { record, version: v.id.clone(), secret, pin, sets, unread });
            }
            Err(e) => reasons.push(format!("version {}: {e:#}", v.id.as_deref().unwrap_or("-"))),
        }
    }
    bail!("no version of {REPO_KEY} on {} can be opened: {}", target.url, reasons.join("; "))
}

/// Writes the recovered repository secret where the config expects it, so that backups
/// can go on; an existing file must hold the same secret.
fn keep_secret(cfg: &Config, url: &str, secret: &RepoSecret) -> Result<()> {
    let path = &cfg.repo_secret_file;
    if path.exists() {
        let existing = RepoSecret::load(path)?;
        if existing.bytes() != secret.bytes() {
            bail!(
                "{} holds the secret of another repository than the one on {}; move it away so that recover \
                 can write this repository's",
                path.display(),
                url
            );
        }
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        crate::fsutil::create_private_dir(dir)?;
    }
    secret.create_file(path)
}

/// What a snapshot's file list says: the packs it needs (its file list's and its files'
/// chunks), how many of its chunks no recovered pack holds, and the entries a restore
/// would refuse (the first ones, and how many).
type Needed = (HashSet<i64>, usize, Refused);

fn needed_packs(
    catalog: &Catalog,
    record: &SnapshotRecord,
    secret: &RepoSecret,
    limits: &crate::format::entry::Limits,
) -> Result<Needed> {
    let mut packs = HashSet::new();
    let mut missing = 0;
    let (mut check, mut refused) = (TreeCheck::default(), Refused::default());
    // Where a chunk is in several packs, the one the snapshot was made with is one its
    // keys can read: a pack of its key set, or of a set holding all of its keys.
    let sets: HashMap<u32, std::collections::BTreeSet<String>> =
        catalog.keysets()?.into_iter().map(|s| (s.seq, s.recipients)).collect();
    let own = sets.get(&record.keyset.unwrap_or(0)).cloned().unwrap_or_default();
    let locate = |id: &ChunkId| -> Result<Option<i64>> {
        let found = catalog.chunk_packs(id)?;
        let readable = found.iter().find(|(_, k)| sets.get(k).is_some_and(|r| r.is_superset(&own)));
        Ok(readable.or(found.first()).map(|(p, _)| *p))
    };
    for id in &record.tree {
        packs.insert(locate(id)?.ok_or_else(|| anyhow!("chunk {id} is in no readable pack"))?);
    }
    let fetch = |id: &ChunkId| {
        let kept = catalog.recovered_blob(id).map_err(std::io::Error::other)?;
        let (blob, stored) = kept.ok_or_else(|| std::io::Error::other(format!("chunk {id} is in no readable pack")))?;
        pack::verified_blob(&stored, &blob, secret).map_err(std::io::Error::other)
    };
    let stream = ChunkedStream::new(record.tree.iter().copied(), fetch);
    for entry in EntryReader::with_limits(BufReader::new(crate::format::entry::Capped::new(stream, limits)), limits)? {
        let entry = entry?;
        if let Err(why) = check.check(&entry) {
            refused.add(&entry.path, why, crate::restore::tree::REFUSALS_NAMED);
        }
        if entry.kind != Kind::File {
            continue;
        }
        for id in &entry.chunks {
            match locate(id)? {
                Some(p) => {
                    packs.insert(p);
                }
                None => missing += 1,
            }
        }
    }
    Ok((packs, missing, refused))
}
