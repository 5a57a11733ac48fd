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

use anyhow::{Context, Result};

use crate::catalog::{Catalog, RepoRow, SnapshotRow};
use crate::config::Config;
use crate::format::repo::RepoRecord;
use crate::format::snapshot::{self, SnapshotRecord};
use crate::format::{REPO_KEY, snapshot_key};
use crate::keys::{Identity, RepoSecret};
use crate::retry::Retry;
use crate::target::Target;

/// The catalog, the target it describes, and the one runtime target calls run on; with
/// what `Role` holds.
pub struct Repo<Role = Bare> {
    pub catalog: Catalog,
    /// The catalog's repository row: chunker parameters, the record's version and lock.
    pub row: RepoRow,
    pub target: Target,
    pub runtime: tokio::runtime::Runtime,
    role: Role,
}

/// No key: sees what is stored, reads nothing of it.
pub struct Bare;

/// The backup host: the repository secret, to write with.
pub struct Host {
    secret: RepoSecret,
}

/// A restorer: the identity, and the secret it opened.
pub struct Restorer {
    identity: Arc<Identity>,
    secret: RepoSecret,
}

impl Repo<Bare> {
    /// Opens the state directory's catalog and the target it belongs to; target calls
    /// ride out brief failures.
    pub fn open(cfg: &Config) -> Result<Repo<Bare>> {
        Repo::open_with(cfg, Retry::brief())
    }

    /// As [`Repo::open`], with target calls retried under `retry` (a backup run's budget).
    pub fn open_with(cfg: &Config, retry: Retry) -> Result<Repo<Bare>> {
        let (catalog, row) = Catalog::open_repo(cfg)?;
        let target = Target::open_with(&cfg.target, retry)?;
        Ok(Repo { catalog, row, target, runtime: crate::target::runtime()?, role: Bare })
    }

    /// Takes the repository secret from its file: the backup host's handle.
    pub fn host(self, cfg: &Config) -> Result<Repo<Host>> {
        let secret = RepoSecret::load(&cfg.repo_secret_file)?;
        Ok(self.with_role(Host { secret }))
    }

    /// Opens the repository record (the recorded version) with the identity.
    pub fn unlock(self, identity: Arc<Identity>) -> Result<Repo<Restorer>> {
        let bytes = self.runtime.block_on(self.target.get(REPO_KEY, self.row.record_version.as_deref()))?;
        let (_, secret) = RepoRecord::open(&bytes, &identity)?;
        Ok(self.with_role(Restorer { identity, secret }))
    }
}

impl<Role> Repo<Role> {
    fn with_role<R>(self, role: R) -> Repo<R> {
        Repo { catalog: self.catalog, row: self.row, target: self.target, runtime: self.runtime, role }
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

    /// A snapshot's record, by the version the catalog recorded, opened and checked.
    pub fn snapshot_record(&self, snap: &SnapshotRow) -> Result<SnapshotRecord> {
        let key = snapshot_key(&snap.job, &snap.id);
        let object = self.runtime.block_on(self.target.get(&key, snap.record_version.as_deref()))?;
        snapshot::open(&object, &key, self.secret(), self.identity()).with_context(|| format!("snapshot record {key}"))
    }
}
