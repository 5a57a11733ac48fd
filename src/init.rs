//! `coffer init`: the state directory, the catalog, the repository secret, and the
//! repository record on the target, written once.

use anyhow::{Context, Result, bail};
use bytes::Bytes;

use crate::catalog::{Catalog, RepoRow};
use crate::chunker::ChunkerParams;
use crate::config::Config;
use crate::format::REPO_KEY;
use crate::format::repo::RepoRecord;
use crate::keys::RepoSecret;
use crate::target::{Protection, Target};

pub enum Outcome {
    Created { repo_id: String, protection: Protection },
    AlreadyInitialised { repo_id: String },
}

/// All or nothing: the target is checked before anything is made here, so a refused
/// init leaves the state directory as it found it. Once the repository record may have
/// been uploaded, what was made stays, and `init` run again finishes the job.
pub fn run(cfg: &Config, allow_unprotected: bool) -> Result<Outcome> {
    let catalog_path = cfg.state().catalog();
    if catalog_path.exists() {
        let catalog = Catalog::open_existing(cfg)?;
        if let Some(repo) = catalog.repo()? {
            crate::catalog::ensure_same_target(&repo, cfg)?;
            return Ok(Outcome::AlreadyInitialised { repo_id: repo.repo_id });
        }
    }
    if cfg.repo_secret_file.exists() {
        RepoSecret::load(&cfg.repo_secret_file)?;
    }
    let target = Target::open(&cfg.target)?;
    let runtime = crate::target::runtime()?;
    // The bucket must protect what coffer writes, against coffer's own credentials too.
    let unprotected = runtime.block_on(target.check_immutability(allow_unprotected))?;

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
    let version = if runtime.block_on(target.exists(REPO_KEY))? {
        let (stored, version) = runtime.block_on(target.get_with_version(REPO_KEY, None))?;
        if stored != record.encode() {
            bail!(
                "target {} already holds a coffer repository ({REPO_KEY}); coffer never overwrites it. \
                 Choose another bucket prefix, or rebuild this host's catalog from it with the identity",
                cfg.target.url
            );
        }
        version
    } else {
        runtime.block_on(target.put_new(REPO_KEY, Bytes::from(record.encode()), record_until))?
    };
    catalog.set_repo(&RepoRow {
        repo_id: record.id.clone(),
        target_url: cfg.target.url.clone(),
        record_version: version,
        chunker: record.chunker,
        record_lock: target.lock_until(record_until),
        unprotected: unprotected.clone(),
    })?;
    if let Some(why) = &unprotected {
        catalog.event("unprotected", None, why)?;
    }
    catalog.event("init", None, &format!("repository {} on {}", record.id, cfg.target.url))?;
    let _ = std::fs::remove_file(&pending);
    Ok(Outcome::Created { repo_id: record.id, protection: target.protection() })
}
