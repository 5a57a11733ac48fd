//! Where backups go: one lock-neutral API over every kind of object store, with coffer's
//! key layout above it and the kinds below it.
//!
//! Every write is a single create-only PUT (never an overwrite); the version id the store
//! returns is what the catalog records and what restores read. Where a store locks
//! (S3 Object Lock), every object is written locked, and locks are extended, never
//! shortened.
//!
//! A store kind is one file that implements [`Backend`] and declares its [`Kind`] (scheme,
//! capabilities, its own config keys and credentials), and one line in [`KINDS`]:
//!
//! | kind      | file       | protection                                        |
//! |-----------|------------|---------------------------------------------------|
//! | `file://` | `local.rs` | none: for trying coffer out                       |
//! | `s3://`   | `s3/`      | Object Lock, COMPLIANCE or GOVERNANCE (or none)   |
//!
//! Beside them: `config.rs`, the `[target]` keys every kind shares; `retrying.rs`, the
//! one retry policy around every kind; `protection.rs`, the lock types every kind speaks
//! in; `object_io.rs`, the `object_store` calls the kinds built on it share.

pub mod config;
mod local;
mod object_io;
mod protection;
mod retrying;
mod s3;

use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;

pub use config::TargetConfig;
pub use protection::{AlreadyExists, BucketSettings, LockMode, ObjectVersion, Protection, Retention};

use crate::retry::Retry;

/// A target's row id in the catalog, which stores every copy by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId(pub i64);

impl TargetId {
    /// A target not in a catalog (yet): what `init` and `check-config` check before one exists.
    pub const NONE: TargetId = TargetId(0);
}

/// Every store kind coffer opens, by URL scheme: one line each.
pub static KINDS: &[Kind] = &[local::KIND, s3::KIND];

/// One kind of object store: how the config names it, what it can do, how it reads its
/// own keys of a `[target]` table, and how it is opened.
pub struct Kind {
    /// The URL scheme (`s3` for `s3://`).
    pub scheme: &'static str,
    /// The URL's form, as errors show it.
    pub example: &'static str,
    pub capabilities: Capabilities,
    /// Reads the kind's keys: what is left of the table `key` once the shared ones are
    /// taken; `[prune]` gives prune's credential variables by default.
    pub options: ReadOptions,
    /// Opens the store `cfg` names; `rest` is the URL after `scheme://`. A kind does not
    /// retry: [`Target`] wraps every kind in the run's retry policy.
    pub open: fn(cfg: &TargetConfig, rest: &str) -> Result<Arc<dyn Backend>>,
}

/// How a kind reads its keys of a `[target]` table (`key` names the table in errors).
pub type ReadOptions =
    fn(key: &str, table: toml::Table, prune: &config::PruneConfig) -> Result<config::Options, String>;

/// What a kind of store can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Keeps every version of an object, with an id for each.
    pub versions: bool,
    /// Locks objects (write-once retention) in the config's `lock_mode`.
    pub locks: bool,
    /// Refuses a write to a key that exists (coffer never overwrites).
    pub create_only: bool,
}

/// A call the store kind cannot make (a lock on a directory): a bug in the caller, named.
#[derive(Debug, thiserror::Error)]
#[error("{what}: a {scheme}:// target cannot do this")]
pub struct Unsupported {
    pub scheme: &'static str,
    pub what: String,
}

/// A failure worth retrying (a connection refused or reset, a timeout, a 5xx, SlowDown),
/// as the kind that saw it judged; it reads as the failure itself.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Transient(anyhow::Error);

/// Marks `e` as worth retrying.
pub fn transient(e: anyhow::Error) -> anyhow::Error {
    Transient(e).into()
}

/// One kind of object store, as [`Target`] uses it. Keys are relative to the target's
/// prefix; `version` is a version id the store returned, or `None` for the current one.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Writes a new object, locked by `lock` where given; an existing key is refused
    /// with [`AlreadyExists`]. Returns the new version's id, where the store keeps
    /// versions.
    async fn put_new(&self, key: &str, body: Bytes, lock: Option<Retention>) -> Result<Option<String>>;

    /// Reads an object version of at most `max` bytes, with its version id; a larger one
    /// is refused before it is read.
    async fn get(&self, key: &str, version: Option<&str>, max: u64) -> Result<(Bytes, Option<String>)>;

    /// The size of an object version, or `None` when the store does not have it.
    async fn size_of(&self, key: &str, version: Option<&str>) -> Result<Option<u64>>;

    /// Every object under `sub`: each version and delete marker when `versions` (and the
    /// store keeps them), else the current objects.
    async fn list(&self, sub: &str, versions: bool) -> Result<Vec<ObjectVersion>>;

    /// The lock of an object version as the store reports it (`None`: no lock).
    async fn lock_of(&self, key: &str, version: Option<&str>) -> Result<Option<Retention>>;

    /// Sets a version's lock; stores refuse to shorten a COMPLIANCE one.
    async fn set_lock(&self, key: &str, version: Option<&str>, lock: Retention) -> Result<()>;

    /// Deletes an object version (the current object when `None`).
    async fn delete(&self, key: &str, version: Option<&str>) -> Result<()>;

    /// Proves the store can protect what it is given with `mode`: returns why it cannot
    /// (and so the backups are not protected) when `allow_unprotected`, else fails.
    async fn check_immutability(&self, mode: LockMode, url: &str, allow_unprotected: bool) -> Result<Option<String>>;

    /// Checks, reading only, that the store is set up to lock in `mode` (or not at all).
    async fn check_lock_configuration(&self, mode: Option<LockMode>, url: &str) -> Result<()>;

    /// The bucket's settings the audit looks at (`None` for a kind without them).
    async fn settings(&self) -> Result<Option<BucketSettings>>;

    /// Whether an object version is under a legal hold.
    async fn legal_hold(&self, key: &str, version: Option<&str>) -> Result<bool>;

    /// The same store, reached with other credentials (prune's); `None` where a store
    /// kind has no credentials.
    fn with_credentials(&self, key_id: String, secret_key: String) -> Result<Option<Arc<dyn Backend>>>;
}

#[derive(Clone)]
pub struct Target {
    backend: Arc<dyn Backend>,
    /// The configured name (`default` for a single `[target]`).
    pub name: String,
    /// Its row in the catalog, whose copies of each object it holds.
    pub id: TargetId,
    /// The configured URL (no credentials are ever part of it).
    pub url: String,
    /// How many puts a backup makes to it at once.
    pub upload_concurrency: usize,
    /// The mode every object is written with, where the target locks.
    lock: Option<LockMode>,
    /// How far ahead a lock may reach, in days (`max_lock_days`).
    max_lock_days: u32,
    /// Whether listings show every version (a locked target, or one reached with prune's
    /// credentials, which may read them); else only current objects.
    versions: bool,
    /// What its kind can do.
    capabilities: Capabilities,
}

impl Target {
    /// The target for a one-off command, its catalog row `id`: transient failures are
    /// retried briefly.
    pub fn open(cfg: &TargetConfig, id: TargetId) -> Result<Target> {
        Target::open_with(cfg, id, Retry::brief())
    }

    /// The target for a backup run: transient failures are retried under `retry`.
    pub fn open_with(cfg: &TargetConfig, id: TargetId, retry: Retry) -> Result<Target> {
        let Some(kind) = config::kind_of(&cfg.url) else {
            let forms: Vec<&str> = KINDS.iter().map(|k| k.example).collect();
            bail!("target url `{}`: expected {}", cfg.url, forms.join(" or "));
        };
        let rest = &cfg.url[kind.scheme.len() + 3..];
        let backend = retrying::Retrying::wrap((kind.open)(cfg, rest)?, retry);
        let lock = if kind.capabilities.locks { cfg.lock_mode } else { None };
        Ok(Target {
            backend,
            name: cfg.name.clone(),
            id,
            url: cfg.url.clone(),
            upload_concurrency: cfg.upload_concurrency,
            lock,
            max_lock_days: cfg.max_lock_days,
            versions: lock.is_some(),
            capabilities: kind.capabilities,
        })
    }

    /// The same target reached with prune's credentials, which may delete versions and
    /// read every one; `None` for a store kind without credentials.
    pub fn privileged(&self, key_id: String, secret_key: String) -> Result<Option<Target>> {
        Ok(self.backend.with_credentials(key_id, secret_key)?.map(|backend| Target {
            backend,
            name: self.name.clone(),
            id: self.id,
            url: self.url.clone(),
            upload_concurrency: self.upload_concurrency,
            lock: self.lock,
            max_lock_days: self.max_lock_days,
            versions: true,
            capabilities: self.capabilities,
        }))
    }

    /// What the target's kind of store can do.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// What protects the objects.
    pub fn protection(&self) -> Protection {
        Protection::of(self.lock)
    }

    /// Whether objects are written locked.
    pub fn locks(&self) -> bool {
        self.lock.is_some()
    }

    /// Whether listings show every version and delete marker.
    pub fn lists_versions(&self) -> bool {
        self.versions
    }

    /// The lock every object is written with until `until`, where the target locks.
    pub fn lock_until(&self, until: i64) -> Option<Retention> {
        self.lock.map(|mode| Retention { mode, until })
    }

    /// Writes a new object, locked until `retain_until` (unix seconds) where the target
    /// locks; returns its version id where the store keeps versions.
    pub async fn put_new(&self, key: &str, body: Bytes, retain_until: i64) -> Result<Option<String>> {
        self.within_horizon(key, retain_until)?;
        self.backend.put_new(key, body, self.lock_until(retain_until)).await.map_err(|e| {
            if e.is::<AlreadyExists>() { e } else { e.context(format!("upload of {key} to {} failed", self.url)) }
        })
    }

    /// Reads an object, by exact version when one was recorded, of at most `max` bytes
    /// (the ceiling for its kind: `format::MAX_REPO_RECORD`, a pack's recorded size…).
    pub async fn get(&self, key: &str, version: Option<&str>, max: u64) -> Result<Bytes> {
        Ok(self.get_with_version(key, version, max).await?.0)
    }

    /// Reads an object version (the current one when `None`) of at most `max` bytes, with
    /// its version id.
    pub async fn get_with_version(
        &self,
        key: &str,
        version: Option<&str>,
        max: u64,
    ) -> Result<(Bytes, Option<String>)> {
        self.backend.get(key, version, max).await.map_err(|e| e.context(format!("cannot read {key} from {}", self.url)))
    }

    /// The size of one object version, or `None` when the target does not have it.
    pub async fn size_of(&self, key: &str, version: Option<&str>) -> Result<Option<u64>> {
        self.backend.size_of(key, version).await.map_err(|e| e.context(format!("cannot read {key} from {}", self.url)))
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.size_of(key, None).await?.is_some())
    }

    /// Every object under `sub`: every version and delete marker where
    /// [`Target::lists_versions`], else the current objects.
    pub async fn list(&self, sub: &str) -> Result<Vec<ObjectVersion>> {
        self.backend.list(sub, self.versions).await.map_err(|e| e.context(format!("cannot list {}", self.url)))
    }

    /// The lock of one object version as the server reports it (`None` on a target that
    /// does not lock, or for a version without a lock).
    pub async fn lock_of(&self, key: &str, version: Option<&str>) -> Result<Option<Retention>> {
        if !self.versions {
            return Ok(None);
        }
        self.backend.lock_of(key, version).await.map_err(|e| e.context(format!("the lock of {key}")))
    }

    /// Extends an object version's lock to `until`, in the target's mode; nothing on a
    /// target that does not lock.
    pub async fn extend_lock(&self, key: &str, version: Option<&str>, until: i64) -> Result<()> {
        self.within_horizon(key, until)?;
        match self.lock_until(until) {
            Some(lock) => self.backend.set_lock(key, version, lock).await,
            None => Ok(()),
        }
    }

    /// A lock no further ahead than `max_lock_days`: a compliance lock cannot be taken
    /// back, so one that long (by a bug, or a config that asks for decades) is refused.
    fn within_horizon(&self, key: &str, until: i64) -> Result<()> {
        if self.lock.is_some() && until > self.lock_horizon() {
            bail!(
                "{key}: a lock until {} would reach past max_lock_days ({} days); coffer refuses it",
                crate::time::format_utc(until),
                self.max_lock_days
            );
        }
        Ok(())
    }

    /// Deletes what prune found unneeded: the recorded version where listings show
    /// versions (through [`Target::privileged`] where the store locks), else the object.
    pub async fn delete(&self, key: &str, version: Option<&str>) -> Result<()> {
        let version = match (self.versions, version) {
            (true, None) => return Err(anyhow!("{key} has no recorded version id")),
            (true, v) => v,
            (false, _) => None,
        };
        self.backend.delete(key, version).await.map_err(|e| e.context(format!("cannot delete {key} from {}", self.url)))
    }

    /// The bucket's settings the audit looks at, where the target locks.
    pub async fn settings(&self) -> Result<Option<BucketSettings>> {
        if !self.versions {
            return Ok(None);
        }
        self.backend.settings().await.map_err(|e| e.context(format!("the settings of {}", self.url)))
    }

    /// Whether an object version is under a legal hold (never on a target that does not lock).
    pub async fn legal_hold(&self, key: &str, version: Option<&str>) -> Result<bool> {
        if !self.versions {
            return Ok(false);
        }
        self.backend.legal_hold(key, version).await.map_err(|e| e.context(format!("the legal hold of {key}")))
    }

    /// How far ahead a lock may reach, in days.
    pub fn max_lock_days(&self) -> u32 {
        self.max_lock_days
    }

    /// The latest time a lock may reach from now (`max_lock_days` ahead).
    pub fn lock_horizon(&self) -> i64 {
        crate::time::now_secs() + i64::from(self.max_lock_days) * 86_400
    }

    /// Checks, reading only, that the store is set up as the config says it locks
    /// (`check-config --remote`); [`Target::check_immutability`] proves it with a canary.
    pub async fn check_lock_configuration(&self) -> Result<()> {
        self.backend.check_lock_configuration(self.lock, &self.url).await
    }

    /// Proves that the target protects what coffer writes, where it is to lock: returns
    /// why it does not when `allow_unprotected` lets init go on anyway.
    pub async fn check_immutability(&self, allow_unprotected: bool) -> Result<Option<String>> {
        match self.lock {
            Some(mode) => self.backend.check_immutability(mode, &self.url, allow_unprotected).await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: String) -> TargetConfig {
        TargetConfig {
            name: "t".into(),
            url,
            upload_concurrency: 1,
            lock_mode: Some(LockMode::Compliance),
            retry_budget: std::time::Duration::from_secs(1),
            max_lock_days: 40,
            options: Arc::new(config::NoOptions),
        }
    }

    #[tokio::test]
    async fn a_directory_target_writes_once_and_never_locks() {
        let dir = std::env::temp_dir().join(format!("coffer-target-{}", crate::hex::random(6)));
        let target = Target::open(&config(format!("file://{}", dir.display())), TargetId(1)).unwrap();
        assert_eq!(target.protection(), Protection::Unprotected);
        assert_eq!(target.lock_until(5), None);
        target.put_new("packs/ab/one", Bytes::from_static(b"first"), 10).await.unwrap();
        let again = target.put_new("packs/ab/one", Bytes::from_static(b"second"), 10).await.unwrap_err();
        assert!(again.is::<AlreadyExists>(), "{again:#}");
        assert_eq!(&target.get("packs/ab/one", None, 5).await.unwrap()[..], b"first");
        let e = target.get("packs/ab/one", None, 4).await.unwrap_err();
        assert!(format!("{e:#}").contains("announces 5 bytes, more than the 4"), "{e:#}");
        assert_eq!(target.size_of("packs/ab/one", None).await.unwrap(), Some(5));
        assert!(!target.exists("packs/ab/two").await.unwrap());
        let listed = target.list("packs").await.unwrap();
        assert_eq!(listed.iter().map(|v| (v.key.as_str(), v.size)).collect::<Vec<_>>(), [("packs/ab/one", 5)]);
        assert_eq!(target.lock_of("packs/ab/one", None).await.unwrap(), None);
        target.extend_lock("packs/ab/one", None, 20).await.unwrap();
        assert_eq!(target.check_immutability(false).await.unwrap(), None);
        assert!(target.privileged("id".into(), "secret".into()).unwrap().is_none());
        target.delete("packs/ab/one", None).await.unwrap();
        assert!(!target.exists("packs/ab/one").await.unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unknown_scheme_is_named() {
        let e = Target::open(&config("gs://bucket".into()), TargetId(1)).err().unwrap();
        assert!(e.to_string().contains("expected file:///absolute/path or s3://bucket/prefix"), "{e}");
        let e = Target::open(&config("file://relative".into()), TargetId(1)).err().unwrap();
        assert!(e.to_string().contains("absolute path"), "{e}");
    }
}
