//! A `file://` target: a directory, for trying coffer out. Objects are files written
//! create-only with fsync; nothing protects them (no versions, no locks).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::local::LocalFileSystem;

use super::config::NoOptions;
use super::object_io::{get, list_current, put_new, size_of};
use super::{Backend, Capabilities, Kind, LockMode, ObjectVersion, Retention, Unsupported};

pub const KIND: Kind = Kind {
    scheme: "file",
    example: "file:///absolute/path",
    capabilities: Capabilities { versions: false, locks: false, create_only: true },
    options: |key, table, _prune| {
        super::config::read_options::<Empty>(key, table)?;
        Ok(Arc::new(NoOptions))
    },
    open: |cfg, rest| Ok(Arc::new(Local::open(&cfg.url, rest)?)),
};

/// A `file://` target has no keys of its own.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

pub struct Local {
    store: LocalFileSystem,
}

impl Local {
    /// `path` is the URL after `file://`: an absolute directory, created if missing.
    pub fn open(url: &str, path: &str) -> Result<Local> {
        if !path.starts_with('/') {
            bail!("target url `{url}`: a file:// target needs an absolute path (file:///dir)");
        }
        std::fs::create_dir_all(path).with_context(|| format!("cannot create target directory {path}"))?;
        let store = LocalFileSystem::new_with_prefix(path)
            .with_context(|| format!("cannot open target directory {path}"))?
            .with_fsync(true);
        Ok(Local { store })
    }
}

#[async_trait::async_trait]
impl Backend for Local {
    async fn put_new(&self, key: &str, body: Bytes, _lock: Option<Retention>) -> Result<Option<String>> {
        put_new(&self.store, key, body).await
    }

    async fn get(&self, key: &str, version: Option<&str>, max: u64) -> Result<(Bytes, Option<String>)> {
        get(&self.store, key, version, max).await
    }

    async fn size_of(&self, key: &str, version: Option<&str>) -> Result<Option<u64>> {
        size_of(&self.store, key, version).await
    }

    async fn list(&self, sub: &str, _versions: bool) -> Result<Vec<ObjectVersion>> {
        list_current(&self.store, sub).await
    }

    async fn lock_of(&self, _key: &str, _version: Option<&str>) -> Result<Option<Retention>> {
        Ok(None)
    }

    async fn set_lock(&self, key: &str, _version: Option<&str>, _lock: Retention) -> Result<()> {
        Err(Unsupported { scheme: KIND.scheme, what: format!("a lock on {key}") }.into())
    }

    async fn delete(&self, key: &str, _version: Option<&str>) -> Result<()> {
        Ok(self.store.delete(&super::object_io::path(key)?).await?)
    }

    async fn check_immutability(&self, _mode: LockMode, url: &str, _allow: bool) -> Result<Option<String>> {
        Ok(Some(format!("{url} is a directory: nothing keeps its objects from being deleted")))
    }

    async fn check_lock_configuration(&self, _mode: Option<LockMode>, _url: &str) -> Result<()> {
        Ok(())
    }

    async fn settings(&self) -> Result<Option<super::BucketSettings>> {
        Ok(None)
    }

    async fn legal_hold(&self, _key: &str, _version: Option<&str>) -> Result<bool> {
        Ok(false)
    }

    fn with_credentials(&self, _key_id: String, _secret_key: String) -> Result<Option<Arc<dyn Backend>>> {
        Ok(None)
    }
}
