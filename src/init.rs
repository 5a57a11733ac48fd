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
use crate::target::{Target, TargetKind};

pub enum Outcome {
    Created { repo_id: String, kind: TargetKind },
    AlreadyInitialised { repo_id: String },
}

pub fn run(cfg: &Config) -> Result<Outcome> {
    crate::fsutil::create_private_dir(&cfg.state_dir)
        .with_context(|| format!("cannot create state directory {}", cfg.state_dir.display()))?;
    let catalog = Catalog::open(&cfg.catalog_path())?;
    if let Some(repo) = catalog.repo()? {
        if repo.target_url != cfg.target.url {
            bail!(
                "state directory {} already belongs to target {}; use another state_dir for {}",
                cfg.state_dir.display(),
                repo.target_url,
                cfg.target.url
            );
        }
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
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if runtime.block_on(target.exists(REPO_KEY))? {
        bail!(
            "target {} already holds a coffer repository ({REPO_KEY}); coffer never overwrites it. \
             Choose another bucket prefix, or rebuild this host's catalog from it with the identity",
            cfg.target.url
        );
    }
    let chunker = ChunkerParams::default();
    let record = RepoRecord::new(&secret, &cfg.recipients, chunker)?;
    let version = runtime.block_on(target.put_new(REPO_KEY, Bytes::from(record.encode())))?;
    catalog.set_repo(&RepoRow {
        repo_id: record.id.clone(),
        target_url: cfg.target.url.clone(),
        record_version: version,
        chunker,
    })?;
    catalog.event("init", None, &format!("repository {} on {}", record.id, cfg.target.url))?;
    Ok(Outcome::Created { repo_id: record.id, kind: target.kind })
}
