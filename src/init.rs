//! `coffer init`: the state directory, the catalog, the repository secret, and the
//! repository record on the target, written once.

use anyhow::{Context, Result, bail};
use bytes::Bytes;

use crate::catalog::{Catalog, NewTarget, RepoRow, StoredCopy, TargetId};
use crate::chunker::ChunkerParams;
use crate::config::Config;
use crate::format::REPO_KEY;
use crate::format::repo::RepoRecord;
use crate::keys::RepoSecret;
use crate::store::{Protection, Target};

pub enum Outcome {
    /// Made, with how each target protects what coffer writes.
    Created {
        repo_id: String,
        /// What the restorer keeps beside the identity ([`crate::pin`]).
        fingerprint: String,
        targets: Vec<(String, Protection)>,
    },
    AlreadyInitialised {
        repo_id: String,
        fingerprint: Option<String>,
    },
}

/// All or nothing: every target is checked before anything is made here, so a refused
/// init leaves the state directory as it found it. Once the repository record may have
/// been uploaded, what was made stays, and `init` run again finishes the job.
pub fn run(cfg: &Config, allow_unprotected: bool) -> Result<Outcome> {
    let catalog_path = cfg.state().catalog();
    if catalog_path.exists() {
        let catalog = Catalog::open_existing(&cfg.state_dir)?;
        if let Some(repo) = catalog.repo()? {
            for known in catalog.targets()? {
                if let Ok(t) = cfg.target(&known.name) {
                    crate::catalog::ensure_same_url(&known, &cfg.state_dir, &t.url)?;
                }
            }
            return Ok(Outcome::AlreadyInitialised {
                repo_id: repo.repo_id,
                fingerprint: repo.pin.map(|p| p.fingerprint),
            });
        }
    }
    if cfg.repo_secret_file.exists() {
        RepoSecret::load(&cfg.repo_secret_file)?;
    }
    let mut checked = Vec::new();
    for t in &cfg.targets {
        let target = Target::open(t, TargetId::NONE)?;
        // The bucket must protect what coffer writes, against coffer's own credentials too.
        let unprotected = crate::runtime::block_on(target.check_immutability(allow_unprotected))?;
        checked.push((target, unprotected));
    }

    cfg.state().create()?;
    let catalog = Catalog::open(&catalog_path)?;
    let secret = if cfg.repo_secret_file.exists() {
        RepoSecret::load(&cfg.repo_secret_file)?
    } else {
        if let Some(dir) = cfg.repo_secret_file.parent() {
            crate::fsutil::create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let s = RepoSecret::generate()?;
        s.create_file(&cfg.repo_secret_file)?;
        s
    };
    // The repository record is needed as long as any snapshot: locked as long as the
    // longest job locks its snapshots, plus the slack (extended with them later).
    let longest = cfg.jobs.iter().map(|j| j.lock_days).max().unwrap_or(30);
    let record_until = crate::time::now_secs() + (i64::from(longest) + crate::config::EXTENSION_SLACK_DAYS) * 86_400;
    // The record is kept locally until the catalog knows it, so that an init interrupted
    // after the upload can finish instead of finding "its" record in the way.
    let pending = cfg.state().pending_repo();
    let record = match std::fs::read(&pending) {
        Ok(bytes) => RepoRecord::decode(&bytes)?,
        Err(_) => {
            let record = RepoRecord::new(&secret, &cfg.recipients, ChunkerParams::default())?;
            crate::fsutil::write_new_private(&pending, &record.encode())
                .with_context(|| format!("cannot write {}", pending.display()))?;
            record
        }
    };
    let mut stored = Vec::new();
    for (target, _) in &checked {
        stored.push(put_record(target, &record, record_until)?);
    }
    // Only once every target holds the record does the catalog say so, in one
    // transaction: an init stopped before then is finished by the next.
    let targets: Vec<NewTarget> = checked
        .iter()
        .zip(stored)
        .map(|((t, unprotected), record)| NewTarget {
            name: &t.name,
            url: &t.url,
            record,
            unprotected: unprotected.as_deref(),
        })
        .collect();
    let pin = crate::pin::Pin::of(&record.encode(), &secret);
    let row = RepoRow { repo_id: record.id.clone(), chunker: record.chunker, pin: Some(pin.clone()) };
    catalog.set_repo(&row, &targets)?;
    // (An init finishing an interrupted one may find set 0 there already.)
    if catalog.current_keyset()?.is_none() {
        catalog.add_keyset(&crate::keyring::first_set(&cfg.recipients, record.created), &[])?;
    }
    for (target, unprotected) in &checked {
        if let Some(why) = unprotected {
            catalog.event("unprotected", None, &format!("target `{}`: {why}", target.name))?;
        }
    }
    let urls: Vec<&str> = cfg.targets.iter().map(|t| t.url.as_str()).collect();
    let detail = format!("repository {} on {}, fingerprint {}", record.id, urls.join(", "), pin.fingerprint);
    catalog.event("init", None, &detail)?;
    let _ = std::fs::remove_file(&pending);
    let targets = checked.iter().map(|(t, _)| (t.name.clone(), t.protection())).collect();
    Ok(Outcome::Created { repo_id: record.id, fingerprint: pin.fingerprint, targets })
}

/// Stores the repository record on a target, or finds it there from an init that
/// stopped before the catalog heard of it; another repository's record is refused.
fn put_record(target: &Target, record: &RepoRecord, until: i64) -> Result<StoredCopy> {
    let bytes = record.encode();
    let version = if let Some(size) = crate::runtime::block_on(target.size_of(REPO_KEY, None))? {
        // Compared by size first: a target's object is read only if it could be ours.
        let stored = match size == bytes.len() as u64 {
            true => Some(crate::runtime::block_on(target.get_with_version(REPO_KEY, None, size))?),
            false => None,
        };
        let Some((_, version)) = stored.filter(|(stored, _)| *stored == bytes) else {
            bail!(
                "target {} already holds a coffer repository ({REPO_KEY}); coffer never overwrites it. \
                 Choose another bucket prefix, or rebuild this host's catalog from it with the identity",
                target.url
            );
        };
        version
    } else {
        crate::runtime::block_on(target.put_new(REPO_KEY, Bytes::from(bytes), until))?
    };
    Ok(StoredCopy { version, lock: target.lock_until(until) })
}
