//! Where backups go: an object store behind `object_store`, with coffer's key layout.
//!
//! Every write is a single PUT with `PutMode::Create` (never an overwrite); the version
//! id the store returns is what the catalog records and what restores read. `file://`
//! targets exist for trying coffer out; they have no write-once protection.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

use crate::config::TargetConfig;
use crate::objectlock::{AlreadyExists, LockApi, LockMode, Retention};
use crate::retry::Retry;

/// The async runtime target calls run on: two workers, as the machines coffer is built
/// for have few cores and its I/O is a handful of requests at a time.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

#[derive(Clone)]
pub struct Target {
    store: Arc<dyn ObjectStore>,
    /// The configured URL (no credentials are ever part of it).
    pub url: String,
    /// On S3 with Object Lock: the lock calls and the mode every object is written with.
    lock: Option<(LockApi, LockMode)>,
    /// On S3: where the bucket is, for calls with other credentials (prune).
    s3: Option<S3Location>,
}

#[derive(Clone)]
struct S3Location {
    endpoint: Option<String>,
    bucket: String,
    prefix: String,
    region: String,
}

impl Target {
    /// The target for a one-off command: transient failures are retried briefly.
    pub fn open(cfg: &TargetConfig) -> Result<Target> {
        Target::open_with(cfg, Retry::brief())
    }

    /// The target for a backup run: transient failures are retried under `retry`.
    pub fn open_with(cfg: &TargetConfig, retry: Retry) -> Result<Target> {
        if let Some(path) = cfg.url.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("target url `{}`: a file:// target needs an absolute path (file:///dir)", cfg.url);
            }
            std::fs::create_dir_all(path).with_context(|| format!("cannot create target directory {path}"))?;
            let store = LocalFileSystem::new_with_prefix(path)
                .with_context(|| format!("cannot open target directory {path}"))?
                .with_fsync(true);
            return Ok(Target { store: Arc::new(store), url: cfg.url.clone(), lock: None, s3: None });
        }
        let rest = cfg
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| anyhow!("target url `{}`: expected file:// or s3://", cfg.url))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("target url `{}` names no bucket", cfg.url);
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_checksum_algorithm(Checksum::SHA256)
            .with_retry(RetryConfig { max_retries: 100, retry_timeout: retry.budget(), ..Default::default() });
        if let Some(region) = cfg.region.clone().or_else(|| std::env::var("AWS_REGION").ok()) {
            b = b.with_region(region);
        }
        let endpoint = cfg.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(ep) = &endpoint {
            b = b.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
        }
        let region = b.get_config_value(&AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let s3 = b.build().with_context(|| format!("target {}", cfg.url))?;
        let prefix = prefix.trim_matches('/');
        let lock = match cfg.lock_mode {
            Some(mode) => {
                let api = LockApi::new(s3.credentials().clone(), endpoint.as_deref(), bucket, prefix, &region)?
                    .with_retry(retry);
                Some((api, mode))
            }
            None => None,
        };
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix)) };
        let s3 = S3Location { endpoint, bucket: bucket.to_string(), prefix: prefix.to_string(), region };
        Ok(Target { store, url: cfg.url.clone(), lock, s3: Some(s3) })
    }

    /// The S3 calls signed with other credentials than the daemon's (prune's); `None` for
    /// a directory target.
    pub fn privileged_api(&self, key_id: String, secret_key: String) -> Result<Option<LockApi>> {
        let Some(loc) = &self.s3 else { return Ok(None) };
        let credential = object_store::aws::AwsCredential { key_id, secret_key, token: None };
        let provider = Arc::new(object_store::StaticCredentialProvider::new(credential));
        Ok(Some(LockApi::new(provider, loc.endpoint.as_deref(), &loc.bucket, &loc.prefix, &loc.region)?))
    }

    /// Deletes an object of a directory target (S3 deletes go through `privileged_api`).
    pub async fn delete_local(&self, key: &str) -> Result<()> {
        self.store.delete(&ObjPath::from(key)).await.with_context(|| format!("cannot delete {key} from {}", self.url))
    }

    /// What protects the objects: `COMPLIANCE`, `GOVERNANCE` or `UNPROTECTED`.
    pub fn protection(&self) -> &'static str {
        self.lock.as_ref().map_or("UNPROTECTED", |(_, mode)| mode.as_str())
    }

    /// The Object Lock calls, on an S3 target written with locks.
    pub fn lock_api(&self) -> Option<&LockApi> {
        self.lock.as_ref().map(|(api, _)| api)
    }

    /// The lock of one object version as the server reports it (`None` on a target that
    /// does not lock, or for a version without a lock).
    pub async fn lock_of(&self, key: &str, version: Option<&str>) -> Result<Option<Retention>> {
        match self.lock_api() {
            Some(api) => api.get_retention(key, version).await.with_context(|| format!("the lock of {key}")),
            None => Ok(None),
        }
    }

    /// The lock every object is written with until `until`, where the target locks.
    pub fn lock_until(&self, until: i64) -> Option<Retention> {
        self.lock.as_ref().map(|(_, mode)| Retention { mode: *mode, until })
    }

    /// Writes a new object, locked until `retain_until` (unix seconds) where the target
    /// locks; returns its version id where the store keeps versions.
    pub async fn put_new(&self, key: &str, body: Bytes, retain_until: i64) -> Result<Option<String>> {
        if let Some((api, mode)) = &self.lock {
            let lock = Retention { mode: *mode, until: retain_until };
            return api.put_locked(key, body, lock, true).await.map_err(|e| {
                if e.is::<AlreadyExists>() { e } else { e.context(format!("upload of {key} to {} failed", self.url)) }
            });
        }
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&ObjPath::from(key), PutPayload::from_bytes(body), opts).await {
            Ok(r) => Ok(r.version),
            Err(object_store::Error::AlreadyExists { .. }) => Err(AlreadyExists { key: key.to_string() }.into()),
            Err(e) => Err(anyhow!(e).context(format!("upload of {key} to {} failed", self.url))),
        }
    }

    /// Reads an object, by exact version when one was recorded.
    pub async fn get(&self, key: &str, version: Option<&str>) -> Result<Bytes> {
        let opts = GetOptions { version: version.map(str::to_string), ..Default::default() };
        let r = self
            .store
            .get_opts(&ObjPath::from(key), opts)
            .await
            .with_context(|| format!("cannot read {key} from {}", self.url))?;
        r.bytes().await.with_context(|| format!("cannot read {key} from {}", self.url))
    }

    /// Reads the current version of an object, with its version id.
    pub async fn get_with_version(&self, key: &str) -> Result<(Bytes, Option<String>)> {
        let r = self
            .store
            .get_opts(&ObjPath::from(key), GetOptions::default())
            .await
            .with_context(|| format!("cannot read {key} from {}", self.url))?;
        let version = r.meta.version.clone();
        let bytes = r.bytes().await.with_context(|| format!("cannot read {key} from {}", self.url))?;
        Ok((bytes, version))
    }

    /// The size of one object version, or `None` when the server does not have it.
    pub async fn size_of(&self, key: &str, version: Option<&str>) -> Result<Option<u64>> {
        let opts = GetOptions { version: version.map(str::to_string), head: true, ..Default::default() };
        match self.store.get_opts(&ObjPath::from(key), opts).await {
            Ok(r) => Ok(Some(r.meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("cannot read {key} from {}", self.url))),
        }
    }

    /// Every current object under coffer's prefix (for a target without versions; on a
    /// versioned bucket, `LockApi::list_versions` sees more).
    pub async fn list(&self) -> Result<Vec<object_store::ObjectMeta>> {
        use futures::TryStreamExt;
        self.store.list(None).try_collect().await.with_context(|| format!("cannot list {}", self.url))
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&ObjPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(anyhow!(e).context(format!("cannot reach target {}", self.url))),
        }
    }
}
