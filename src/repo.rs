//! The repository as one handle, with the threat model in its type.
//!
//! The backup host holds the catalog, the target and the repository secret (which keys
//! chunk ids and seals records), never the identity. So [`Repo<Host>`] writes backups
//! and has no method that reads their data. Unlocking a handle with the identity, on a
//! restorer's machine, gives a [`Repo<Restorer>`]: it opens the repository record and
//! reads snapshot records by their recorded versions. Commands that only look at what is
//! stored (status, prune, verify without `--read-data`) keep the bare handle.
//!
//! `init` and `recover` come before a handle can exist: they make the catalog's
//! repository row that [`Repo::open`] requires.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

use crate::catalog::{Catalog, RepoRow, SnapshotRow};
use crate::config::Config;
use crate::format::repo::RepoRecord;
use crate::format::snapshot::{self, SnapshotRecord};
use crate::format::{REPO_KEY, snapshot_key};
use crate::keys::{Identity, RepoSecret};
use crate::retry::Retry;
use crate::target::Target;

/// The catalog, the targets it describes, and the one runtime target calls run on; with
/// what `Role` holds.
pub struct Repo<Role = Bare> {
    pub catalog: Catalog,
    /// The catalog's repository row: its id and chunker parameters.
    pub row: RepoRow,
    /// Every configured target, in config order.
    pub targets: Vec<Target>,
    pub runtime: tokio::runtime::Runtime,
    role: Role,
}

/// No key: sees what is stored, reads nothing of it.
pub struct Bare;

/// The backup host: the repository secret, to write with.
pub struct Host {
    secret: RepoSecret,
}

/// A restorer: the identity, the secret it opened, and the target it reads from.
pub struct Restorer {
    identity: Arc<Identity>,
    secret: RepoSecret,
    source: usize,
}

impl Repo<Bare> {
    /// Opens the state directory's catalog and the targets it belongs to; target calls
    /// ride out brief failures.
    pub fn open(cfg: &Config) -> Result<Repo<Bare>> {
        Repo::open_with(cfg, |_| Retry::brief())
    }

    /// As [`Repo::open`], with each target's calls retried under `retry(target)` (a
    /// backup run's budget). A target new to the config joins the catalog, holding
    /// nothing yet: backups catch it up.
    pub fn open_with(cfg: &Config, retry: impl Fn(&crate::config::TargetConfig) -> Retry) -> Result<Repo<Bare>> {
        let (catalog, row) = Catalog::open_repo(cfg)?;
        let known = catalog.targets()?;
        let mut targets = Vec::new();
        for t in &cfg.targets {
            let id = match known.iter().find(|k| k.name == t.name) {
                Some(k) => {
                    crate::catalog::ensure_same_url(k, cfg, &t.url)?;
                    k.id
                }
                None => {
                    if let Some(k) = known.iter().find(|k| k.url == t.url) {
                        bail!(
                            "target `{}` has the URL of target `{}`, which the catalog in {} knows by that name; \
                             keep its name",
                            t.name,
                            k.name,
                            cfg.state_dir.display()
                        );
                    }
                    catalog.add_target(&t.name, &t.url)?
                }
            };
            targets.push(Target::open_with(t, id, retry(t))?);
        }
        Ok(Repo { catalog, row, targets, runtime: crate::target::runtime()?, role: Bare })
    }

    /// Takes the repository secret from its file: the backup host's handle.
    pub fn host(self, cfg: &Config) -> Result<Repo<Host>> {
        let secret = RepoSecret::load(&cfg.repo_secret_file)?;
        Ok(self.with_role(Host { secret }))
    }

    /// Opens the repository record with the identity, from the target named `wanted`, or
    /// else from the first target (in config order) that holds `snapshot` (when given)
    /// and answers. Everything the handle reads then comes from that target.
    pub fn unlock(
        self,
        identity: Arc<Identity>,
        wanted: Option<&str>,
        snapshot: Option<&SnapshotRow>,
    ) -> Result<Repo<Restorer>> {
        let holders = match snapshot {
            Some(s) => self.catalog.snapshot_holders(&s.id)?.into_iter().map(|(t, _)| t).collect(),
            None => self.targets.iter().map(|t| t.id).collect::<Vec<_>>(),
        };
        let records = self.catalog.targets()?;
        let mut failures = Vec::new();
        for (i, target) in self.targets.iter().enumerate() {
            if wanted.is_some_and(|w| w != target.name) {
                continue;
            }
            let record = records.iter().find(|r| r.id == target.id).and_then(|r| r.record.clone());
            let (Some(record), true) = (record, holders.contains(&target.id)) else {
                let what = snapshot.map_or("the repository".to_string(), |s| format!("snapshot {}", s.id));
                failures.push(format!("target `{}` does not hold {what} yet", target.name));
                continue;
            };
            match self.runtime.block_on(target.get(REPO_KEY, record.version.as_deref())) {
                Ok(bytes) => {
                    let (_, secret) = RepoRecord::open(&bytes, &identity)?;
                    return Ok(self.with_role(Restorer { identity, secret, source: i }));
                }
                Err(e) => failures.push(format!("target `{}`: {e:#}", target.name)),
            }
        }
        match (wanted, failures.is_empty()) {
            (Some(w), true) => Err(anyhow!("no target `{w}` in the config")),
            _ => Err(anyhow!("no target could be read: {}", failures.join("; "))),
        }
    }
}

impl<Role> Repo<Role> {
    fn with_role<R>(self, role: R) -> Repo<R> {
        Repo { catalog: self.catalog, row: self.row, targets: self.targets, runtime: self.runtime, role }
    }

    /// The target named `name`, or the first one.
    pub fn target(&self, name: Option<&str>) -> Result<&Target> {
        match name {
            None => Ok(&self.targets[0]),
            Some(name) => self.targets.iter().find(|t| t.name == name).ok_or_else(|| {
                let known: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
                anyhow!("no target `{name}` (targets: {})", known.join(", "))
            }),
        }
    }

    /// The targets named (`Some`), or all of them.
    pub fn selected(&self, name: Option<&str>) -> Result<Vec<&Target>> {
        match name {
            None => Ok(self.targets.iter().collect()),
            Some(_) => Ok(vec![self.target(name)?]),
        }
    }
}

impl Repo<Host> {
    pub fn secret(&self) -> &RepoSecret {
        &self.role.secret
    }
}

impl Repo<Restorer> {
    pub fn identity(&self) -> &Arc<Identity> {
        &self.role.identity
    }

    pub fn secret(&self) -> &RepoSecret {
        &self.role.secret
    }

    /// Reads from `self.targets[index]` from now on (verify checks each target in turn).
    pub fn read_from(&mut self, index: usize) {
        self.role.source = index;
    }

    /// The target this handle reads from.
    pub fn source(&self) -> &Target {
        &self.targets[self.role.source]
    }

    /// A snapshot's record, by the version the catalog recorded on the source target,
    /// opened and checked.
    pub fn snapshot_record(&self, snap: &SnapshotRow) -> Result<SnapshotRecord> {
        let key = snapshot_key(&snap.job, &snap.id);
        let source = self.source();
        let holders = self.catalog.snapshot_holders(&snap.id)?;
        let Some((_, copy)) = holders.iter().find(|(t, _)| *t == source.id) else {
            bail!("target `{}` does not hold snapshot {} yet", source.name, snap.id);
        };
        let object = self.runtime.block_on(source.get(&key, copy.version.as_deref()))?;
        snapshot::open(&object, &key, self.secret(), self.identity()).with_context(|| format!("snapshot record {key}"))
    }
}
