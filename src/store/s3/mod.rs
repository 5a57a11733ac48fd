//! An `s3://BUCKET/PREFIX` target: any S3-compatible store. Plain reads and unlocked
//! puts go through `object_store`; what it does not do (locked puts, retention,
//! versions, the bucket's lock configuration) through the signed calls of
//! `object_lock.rs`.

mod object_lock;

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredentialProvider, Checksum};
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig};

use super::config::{KindOptions, PruneConfig, TargetConfig, read_options};
use super::object_io::{get, put_new, size_of};
use super::{Backend, Capabilities, Kind, LockMode, ObjectVersion, Retention};
use crate::retry::{GiveUp, Retry};
use crate::s3::S3Client;
use object_lock::LockApi;

pub const KIND: Kind = Kind {
    scheme: "s3",
    example: "s3://bucket/prefix",
    capabilities: Capabilities { versions: true, locks: true, create_only: true },
    options: |key, table, prune| Ok(Arc::new(S3Options::read(key, table, prune)?)),
    open: |cfg, rest| Ok(Arc::new(S3::open(cfg, rest)?)),
};

/// The keys of an `s3://` target's table beyond the shared ones.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    endpoint: Option<String>,
    region: Option<String>,
    #[serde(default)]
    instance_role: bool,
    access_key_id_env: Option<String>,
    secret_access_key_env: Option<String>,
    prune_access_key_id_env: Option<String>,
    prune_secret_access_key_env: Option<String>,
}

#[derive(Debug)]
pub struct S3Options {
    endpoint: Option<String>,
    region: Option<String>,
    /// Credentials come from the instance's or container's role (EC2, ECS, EKS) when no
    /// variable holds them; without this, missing credentials fail at once.
    instance_role: bool,
    /// The variables holding this target's key id and secret key; `None`: the standard
    /// AWS variables (or the role).
    credential_env: Option<(String, String)>,
    /// The variables holding prune's credentials for this target.
    prune: PruneConfig,
}

impl S3Options {
    fn read(key: &str, table: toml::Table, prune: &PruneConfig) -> Result<S3Options, String> {
        let t: RawOptions = read_options(key, table)?;
        let credential_env = match (t.access_key_id_env, t.secret_access_key_env) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "key `{key}`: `access_key_id_env` and `secret_access_key_env` go together (the names of the \
                     variables holding this target's keys)"
                ));
            }
        };
        let prune = PruneConfig {
            access_key_id_env: t.prune_access_key_id_env.unwrap_or_else(|| prune.access_key_id_env.clone()),
            secret_access_key_env: t.prune_secret_access_key_env.unwrap_or_else(|| prune.secret_access_key_env.clone()),
        };
        Ok(S3Options { endpoint: t.endpoint, region: t.region, instance_role: t.instance_role, credential_env, prune })
    }
}

impl KindOptions for S3Options {
    fn credential_vars(&self) -> Vec<String> {
        let own = self.credential_env.iter().flat_map(|(id, secret)| [id.clone(), secret.clone()]);
        own.chain([self.prune.access_key_id_env.clone(), self.prune.secret_access_key_env.clone()]).collect()
    }

    fn missing_credentials(&self, name: &str, url: &str) -> Option<String> {
        missing_credentials(self, name, url)
    }

    fn prune_credentials(&self) -> Option<(&str, &str)> {
        Some((&self.prune.access_key_id_env, &self.prune.secret_access_key_env))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Marks what a retry may cure: the signed calls' transient answers (they give up at
/// once, [`Retry::none`]) and `object_store`'s connection failures and 5xx answers.
fn classify(e: anyhow::Error) -> anyhow::Error {
    let transient = e.chain().any(|c| {
        c.is::<GiveUp>()
            || c.is::<object_store::client::HttpError>()
            || ["status code: 5", "status code: 429", "status code: 408"].iter().any(|s| c.to_string().contains(s))
    });
    if transient { super::transient(e) } else { e }
}

pub struct S3 {
    store: Arc<dyn ObjectStore>,
    api: LockApi,
    location: Location,
}

/// Where the bucket is, to reach it again with other credentials.
#[derive(Clone)]
struct Location {
    endpoint: Option<String>,
    bucket: String,
    prefix: String,
    region: String,
}

impl Location {
    fn client(&self, credentials: AwsCredentialProvider) -> Result<S3Client> {
        S3Client::new(credentials, self.endpoint.as_deref(), &self.bucket, &self.prefix, &self.region)
    }
}

/// The variables that hold credentials for an S3 target, in the order the AWS tools try
/// them: keys, a web identity token (EKS), a container role (ECS).
const CREDENTIAL_SOURCES: [&[&str]; 4] = [
    &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    &["AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"],
    &["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"],
    &["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
];

/// Why the target has no credentials, unless some variables hold them or the config says
/// the instance's role does.
fn missing_credentials(options: &S3Options, name: &str, url: &str) -> Option<String> {
    let set = |vars: &&[&str]| vars.iter().all(|v| crate::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if let Some((id, secret)) = &options.credential_env {
        let named: &[&str] = &[id, secret];
        return match set(&named) {
            true => None,
            false => Some(format!("no credentials for target `{name}` ({url}): set {id} and {secret}")),
        };
    }
    if options.instance_role || CREDENTIAL_SOURCES.iter().any(set) {
        return None;
    }
    Some(format!(
        "no credentials for target {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
         (or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, or run in a container with a task role), \
         or `instance_role = true` under [target] on an instance with a role"
    ))
}

/// Credentials that fail at once, saying which are missing.
#[derive(Debug)]
struct NoCredentials(String);

#[async_trait::async_trait]
impl object_store::CredentialProvider for NoCredentials {
    type Credential = object_store::aws::AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<Self::Credential>> {
        Err(object_store::Error::Generic { store: "S3", source: self.0.clone().into() })
    }
}

impl S3 {
    /// The bucket can lock: Object Lock enabled, and versioning with it (read only).
    async fn lock_ready(&self, url: &str) -> Result<()> {
        let config = self
            .api
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
        let versioning = self.api.versioning().await?;
        if versioning != "Enabled" {
            bail!("target {url}: bucket versioning is `{versioning}`; Object Lock needs it Enabled");
        }
        Ok(())
    }

    /// `rest` is the URL after `s3://`. Credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, …, or the instance's role), as the AWS tools find them.
    fn open(cfg: &TargetConfig, rest: &str) -> Result<S3> {
        let options: &S3Options = cfg.options.as_any().downcast_ref().context("an s3:// target without its options")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("target url `{}` names no bucket", cfg.url);
        }
        let mut b = match &options.credential_env {
            // Its own credentials, and nothing else from the AWS variables: they may
            // belong to another provider.
            Some((id, secret)) => AmazonS3Builder::new()
                .with_access_key_id(crate::env::var(id).unwrap_or_default())
                .with_secret_access_key(crate::env::var(secret).unwrap_or_default()),
            None => crate::env::s3_builder(),
        };
        if let Some(missing) = missing_credentials(options, &cfg.name, &cfg.url) {
            // Instead of asking the instance metadata endpoint for half a minute.
            b = b.with_credentials(Arc::new(NoCredentials(missing)));
        }
        // No retries here: the store layer retries around every kind.
        let mut b = b
            .with_bucket_name(bucket)
            .with_checksum_algorithm(Checksum::SHA256)
            .with_retry(RetryConfig { max_retries: 0, ..Default::default() });
        if let Some(region) = options.region.clone().or_else(|| crate::env::var("AWS_REGION").ok()) {
            b = b.with_region(region);
        }
        let endpoint = match &options.credential_env {
            None => options.endpoint.clone().or_else(|| crate::env::var("AWS_ENDPOINT_URL").ok()),
            Some(_) => options.endpoint.clone(),
        };
        if let Some(ep) = &endpoint {
            b = b.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
        }
        let region = b.get_config_value(&AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let s3 = b.build().with_context(|| format!("target {}", cfg.url))?;
        let prefix = prefix.trim_matches('/');
        let location = Location { endpoint, bucket: bucket.to_string(), prefix: prefix.to_string(), region };
        let api = LockApi::new(location.client(s3.credentials().clone())?.with_retry(Retry::none()));
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix)) };
        Ok(S3 { store, api, location })
    }
}

#[async_trait::async_trait]
impl Backend for S3 {
    async fn put_new(&self, key: &str, body: Bytes, lock: Option<Retention>) -> Result<Option<String>> {
        if let Some(lock) = lock {
            return self.api.put_locked(key, body, lock, true).await.map_err(classify);
        }
        put_new(&*self.store, key, body).await.map_err(classify)
    }

    async fn get(&self, key: &str, version: Option<&str>, max: u64) -> Result<(Bytes, Option<String>)> {
        get(&*self.store, key, version, max).await.map_err(classify)
    }

    async fn size_of(&self, key: &str, version: Option<&str>) -> Result<Option<u64>> {
        size_of(&*self.store, key, version).await.map_err(classify)
    }

    async fn list(&self, sub: &str, versions: bool) -> Result<Vec<ObjectVersion>> {
        // Both listings through coffer's own signed requests, whose answers are bounded
        // (object_store sizes a listing's buffer from the server's Content-Length).
        match versions {
            true => self.api.list_versions(sub).await,
            false => self.api.list_current(sub).await,
        }
        .map_err(classify)
    }

    async fn lock_of(&self, key: &str, version: Option<&str>) -> Result<Option<Retention>> {
        self.api.get_retention(key, version).await.map_err(classify)
    }

    async fn set_lock(&self, key: &str, version: Option<&str>, lock: Retention) -> Result<()> {
        self.api.put_retention(key, version, lock, false).await.map_err(classify)
    }

    async fn delete(&self, key: &str, version: Option<&str>) -> Result<()> {
        match version {
            Some(v) => self.api.delete_version(key, v).await,
            None => Ok(self.store.delete(&super::object_io::path(key)?).await?),
        }
        .map_err(classify)
    }

    /// The bucket must have Object Lock (and so versioning) enabled, or locked puts fail
    /// and nothing could be protected; and the credentials coffer runs with must not be
    /// able to delete a locked version (a canary proves it).
    async fn check_immutability(&self, mode: LockMode, url: &str, allow_unprotected: bool) -> Result<Option<String>> {
        self.prove_immutability(mode, url, allow_unprotected).await.map_err(classify)
    }

    async fn check_lock_configuration(&self, mode: Option<LockMode>, url: &str) -> Result<()> {
        match mode {
            Some(_) => self.lock_ready(url).await.map_err(classify),
            None => Ok(()),
        }
    }

    async fn settings(&self) -> Result<Option<super::BucketSettings>> {
        self.bucket_settings().await.map(Some).map_err(classify)
    }
    async fn legal_hold(&self, key: &str, version: Option<&str>) -> Result<bool> {
        self.api.legal_hold(key, version).await.map_err(classify)
    }

    fn with_credentials(&self, key_id: String, secret_key: String) -> Result<Option<Arc<dyn Backend>>> {
        let credential = object_store::aws::AwsCredential { key_id, secret_key, token: None };
        let provider = Arc::new(object_store::StaticCredentialProvider::new(credential));
        let api = LockApi::new(self.location.client(provider)?.with_retry(Retry::none()));
        Ok(Some(Arc::new(S3 { store: self.store.clone(), api, location: self.location.clone() })))
    }
}

impl S3 {
    /// The bucket must have Object Lock (and so versioning) enabled, or locked puts fail
    /// and nothing could be protected; and the credentials coffer runs with must not be
    /// able to delete a locked version (a canary proves it).
    async fn prove_immutability(&self, mode: LockMode, url: &str, allow_unprotected: bool) -> Result<Option<String>> {
        let api = &self.api;
        self.lock_ready(url).await?;
        // The canary: a tiny object with the shortest lock coffer uses (one day), which
        // these credentials must fail to delete. It stays until its lock expires (prune
        // removes it).
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

    /// The bucket's settings the audit looks at.
    async fn bucket_settings(&self) -> Result<super::BucketSettings> {
        let lock = self.api.lock_configuration().await?;
        Ok(super::BucketSettings {
            versioning: self.api.versioning().await?,
            default_retention: lock.default_rule.map(|r| (r, lock.default_days)),
            lifecycle: self.api.lifecycle_rules().await?,
        })
    }
}
