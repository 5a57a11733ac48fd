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
use crate::objectlock::{LockApi, LockMode, Retention};
use crate::target::Target;

pub enum Outcome {
    /// `protection`: COMPLIANCE, GOVERNANCE or UNPROTECTED.
    Created {
        repo_id: String,
        protection: &'static str,
    },
    AlreadyInitialised {
        repo_id: String,
    },
}

/// The target bucket must have Object Lock (and so versioning) enabled, or locked puts
/// fail and nothing could be protected; and the credentials coffer runs with must not be
/// able to delete a locked version (a canary proves it). Returns why the target is not
/// protected, if `allow_unprotected` let init go on anyway.
async fn check_bucket(api: &LockApi, mode: LockMode, url: &str, allow_unprotected: bool) -> Result<Option<String>> {
    let config = api
        .lock_configuration()
        .await
        .with_context(|| format!("cannot read the Object Lock configuration of {url}"))?;
    if !config.enabled {
        bail!(
            "target {url}: the bucket has Object Lock disabled, so coffer cannot make its backups write-once. \
             Create the bucket with Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket), \
             or set `lock_mode = \"none\"` under [target] to store backups UNPROTECTED"
        );
    }
    let versioning = api.versioning().await?;
    if versioning != "Enabled" {
        bail!("target {url}: bucket versioning is `{versioning}`; Object Lock needs it Enabled");
    }
    // The canary: a tiny object with the shortest lock coffer uses (one day), which these
    // credentials must fail to delete. It stays until its lock expires (prune removes it).
    let key = format!("canary/{}", crate::hex::random(8));
    let lock = Retention { mode, until: crate::time::now_secs() + 86_400 };
    let version = api
        .put_locked(&key, Bytes::from_static(b"coffer canary: must not be deletable\n"), lock, true)
        .await
        .with_context(|| format!("target {url}: cannot write the canary object"))?;
    let Some(version) = version else {
        bail!("target {url}: the server returned no version id for the canary; versioning is not working");
    };
    if api.delete_version(&key, &version).await.is_ok() {
        let why = format!(
            "the credentials coffer runs with deleted a locked object version ({key}): they can destroy backups. \
             Give coffer credentials without s3:DeleteObjectVersion and s3:BypassGovernanceRetention (deploy/)"
        );
        if !allow_unprotected {
            bail!("target {url}: {why}; pass --allow-unprotected to go on anyway");
        }
        return Ok(Some(why));
    }
    Ok(None)
}

pub fn run(cfg: &Config, allow_unprotected: bool) -> Result<Outcome> {
    crate::fsutil::create_private_dir(&cfg.state_dir)
        .with_context(|| format!("cannot create state directory {}", cfg.state_dir.display()))?;
    let catalog = Catalog::open(&cfg.catalog_path())?;
    if let Some(repo) = catalog.repo()? {
        crate::catalog::ensure_same_target(&repo, cfg)?;
        return Ok(Outcome::AlreadyInitialised { repo_id: repo.repo_id });
    }
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
    let target = Target::open(&cfg.target)?;
    let runtime = crate::target::runtime()?;
    let unprotected = match (target.lock_api(), cfg.target.lock_mode) {
        (Some(api), Some(mode)) => runtime.block_on(check_bucket(api, mode, &cfg.target.url, allow_unprotected))?,
        _ => None,
    };
    // The repository record is needed as long as any snapshot: locked as long as the
    // longest job locks its snapshots, plus the slack (extended with them later).
    let longest = cfg.jobs.iter().map(|j| j.lock_days).max().unwrap_or(30);
    let record_until = crate::time::now_secs() + (i64::from(longest) + crate::config::EXTENSION_SLACK_DAYS) * 86_400;
    // The record is kept locally until the catalog knows it, so that an init interrupted
    // after the upload can finish instead of finding "its" record in the way.
    let pending = cfg.state_dir.join("coffer.repo.pending");
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
        let (stored, version) = runtime.block_on(target.get_with_version(REPO_KEY))?;
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
