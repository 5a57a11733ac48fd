//! `coffer prune`: the only command that deletes.
//!
//! It deletes object versions whose lock has ended and that no live snapshot needs: packs
//! only forgotten snapshots used, the records of forgotten snapshots past their
//! retain-until, and init's expired canaries. On S3 it uses separate, privileged
//! credentials named in `[prune]` (the daemon's cannot delete), asks the server for each
//! version's lock first, and deletes only with `--yes`; without it, it shows what it
//! would delete. A job the tripwire froze (a suspicious run nobody acknowledged) keeps
//! every snapshot: none is forgotten, and nothing any of them needs is deleted.

use anyhow::{Context, Result, anyhow};

use crate::config::Config;
use crate::store::Target;

pub struct Options {
    pub yes: bool,
    /// Only this target (else every one, in turn).
    pub target: Option<String>,
}

/// One object version prune would delete (or did).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Candidate {
    /// The target's name.
    pub target: String,
    pub key: String,
    pub version: Option<String>,
    pub size: u64,
    pub what: What,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum What {
    Pack {
        id: i64,
        hash: String,
    },
    Snapshot {
        #[serde(rename = "snapshot")]
        id: String,
    },
    Canary,
}

/// An object version prune would delete but the server still locks.
#[derive(Debug, serde::Serialize)]
pub struct StillLocked {
    pub target: String,
    pub key: String,
    pub locked_until: i64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub forgotten: Vec<String>,
    /// Jobs whose snapshots prune leaves alone: the tripwire found a run of theirs
    /// suspicious and nobody acknowledged it (`coffer ack`).
    pub frozen: Vec<String>,
    pub candidates: Vec<Candidate>,
    /// Candidates the server still holds under lock: left alone.
    pub still_locked: Vec<StillLocked>,
    pub deleted: usize,
    pub deleted_bytes: u64,
}

pub fn run(cfg: &Config, opts: &Options) -> Result<Summary> {
    // No backup may run meanwhile: a pack it just uploaded is referenced by no snapshot yet.
    let _locks = cfg
        .jobs
        .iter()
        .map(|j| cfg.state().job_lock(&j.name).map_err(|e| e.context("prune runs only while no backup does")))
        .collect::<Result<Vec<_>>>()?;
    let repo = crate::repo::Repo::open(cfg)?;
    let now = crate::time::now_secs();
    let mut summary = Summary {
        forgotten: repo.catalog.forget_expired(now)?,
        frozen: repo.catalog.frozen_jobs()?,
        ..Default::default()
    };
    for target in repo.selected(opts.target.as_deref())? {
        prune_target(cfg, &repo, target, opts.yes, now, &mut summary)
            .with_context(|| format!("target `{}`", target.name))?;
    }
    Ok(summary)
}

/// Prunes one target: what no live snapshot needs there and whose lock there has ended.
fn prune_target(
    cfg: &Config,
    repo: &crate::repo::Repo,
    target: &Target,
    yes: bool,
    now: i64,
    summary: &mut Summary,
) -> Result<()> {
    let catalog = &repo.catalog;
    let name = &target.name;
    let mut candidates = Vec::new();
    for p in catalog.prunable_packs(target.id, now)? {
        let key = crate::format::pack_key(&p.hash);
        let what = What::Pack { id: p.id, hash: p.hash };
        candidates.push(Candidate { target: name.clone(), key, version: p.version, size: p.size, what });
    }
    for (id, job, version) in catalog.prunable_snapshots(target.id, now)? {
        let key = crate::format::snapshot_key(&job, &id);
        candidates.push(Candidate { target: name.clone(), key, version, size: 0, what: What::Snapshot { id } });
    }

    // On S3: the privileged credentials, the canaries, and the server's word on each lock.
    let privileged = privileged(cfg.target(name)?, target, yes)?;
    let target = privileged.as_ref().unwrap_or(target);
    if target.lists_versions() {
        for v in crate::runtime::block_on(target.list("canary/"))? {
            if !v.delete_marker {
                let (key, version, size) = (v.key, v.version_id, v.size);
                candidates.push(Candidate { target: name.clone(), key, version, size, what: What::Canary });
            }
        }
        let mut unlocked = Vec::new();
        for c in candidates {
            match crate::runtime::block_on(target.lock_of(&c.key, c.version.as_deref()))? {
                Some(lock) if lock.until > now => summary.still_locked.push(StillLocked {
                    target: name.clone(),
                    key: c.key.clone(),
                    locked_until: lock.until,
                }),
                _ => unlocked.push(c),
            }
        }
        candidates = unlocked;
    }
    if yes {
        for c in &candidates {
            crate::runtime::block_on(target.delete(&c.key, c.version.as_deref()))?;
            match &c.what {
                What::Pack { id, hash } => catalog.remove_pack(target.id, *id, hash)?,
                What::Snapshot { id } => catalog.remove_snapshot(target.id, id)?,
                What::Canary => catalog.event("pruned", None, &format!("{} from target `{name}`", c.key))?,
            }
            summary.deleted += 1;
            summary.deleted_bytes += c.size;
        }
    }
    summary.candidates.extend(candidates);
    Ok(())
}

/// The target with the prune credentials, on S3 (required to delete where it locks;
/// used to look when present).
fn privileged(cfg: &crate::config::TargetConfig, target: &Target, deleting: bool) -> Result<Option<Target>> {
    let Some((id_env, secret_env)) = cfg.options.prune_credentials() else {
        return Ok(None);
    };
    match (crate::env::var(id_env), crate::env::var(secret_env)) {
        (Ok(id), Ok(secret)) => target.privileged(id, secret),
        _ if deleting && target.locks() => Err(anyhow!(
            "prune deletes with the privileged credentials named in [prune] (or the target's \
             `prune_access_key_id_env`), which the daemon never holds: \
             set ${id_env} and ${secret_env}"
        )),
        _ => Ok(None),
    }
    .context("prune credentials")
}
