//! An Azure Blob container as a source: `az://ACCOUNT/CONTAINER/PREFIX`, every blob
//! under the prefix a file under its name, exactly as an S3 bucket source
//! ([`super::bucket`]): its own endpoint and credentials, never the target's; a blob
//! with an unchanged size and ETag not downloaded; each streamed through the chunker,
//! and read only if it still has the ETag the listing gave.
//!
//! Blobs are read through object_store, whose paths refuse some names S3 keys may have
//! (an empty segment, `.` or `..`): a container holding one fails the listing, and the
//! run says so.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::prefix::PrefixStore;

use crate::source::bucket::{Bucket, env_var};
use crate::source::{JobContext, Prepared, Resolve, Source};

pub const KIND: super::Kind =
    super::Kind { key: "azure", form: "`{ azure = \"az://account/container/prefix\" }`", parse };

/// `source = { azure = "az://ACCOUNT/CONTAINER/PREFIX", endpoint = "…", access_key_env = "…" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSource {
    pub url: String,
    /// The Blob service's URL, for a sovereign cloud or an emulator
    /// (`http://127.0.0.1:10000/ACCOUNT` for Azurite); by default Azure's public one.
    pub endpoint: Option<String>,
    /// The name of the environment variable holding the storage account key; without it,
    /// object_store's `AZURE_STORAGE_*` variables (a SAS token, a service principal, a
    /// managed identity).
    pub access_key_env: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    azure: String,
    endpoint: Option<String>,
    access_key_env: Option<String>,
}

fn parse(table: toml::Table, _: &Resolve<'_>) -> Result<Arc<dyn Source>, String> {
    let raw: Raw = super::table(table, "azure")?;
    split(&raw.azure).map_err(|e| format!("`azure`: {e}"))?;
    Ok(Arc::new(AzureSource { url: raw.azure, endpoint: raw.endpoint, access_key_env: raw.access_key_env }))
}

/// `az://ACCOUNT/CONTAINER/PREFIX` → (account, container, prefix).
fn split(url: &str) -> Result<(&str, &str, &str), String> {
    let rest = url.strip_prefix("az://").ok_or(format!("expected `az://account/container/prefix`, found `{url}`"))?;
    let mut parts = rest.splitn(3, '/');
    let (account, container) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if account.is_empty() || container.is_empty() {
        return Err(format!("expected `az://account/container/prefix`, found `{url}`"));
    }
    Ok((account, container, parts.next().unwrap_or("").trim_end_matches('/')))
}

impl std::fmt::Display for AzureSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bucket {}", self.url)
    }
}

impl Source for AzureSource {
    fn secret_vars(&self) -> Vec<&str> {
        self.access_key_env.as_deref().into_iter().collect()
    }

    fn prepare(&self, _: &JobContext) -> Result<Prepared> {
        self.origin(&self.url)?.prepare()
    }

    fn origin(&self, url: &str) -> Result<Bucket> {
        let (account, container, prefix) = split(url).map_err(|e| anyhow!("{e}"))?;
        let mut b = match &self.access_key_env {
            Some(var) => MicrosoftAzureBuilder::new().with_access_key(env_var(url, var)?),
            None => crate::env::azure_builder(),
        };
        b = b.with_account(account).with_container_name(container);
        if let Some(ep) = &self.endpoint {
            b = b.with_endpoint(ep.clone()).with_allow_http(ep.starts_with("http://"));
        }
        let store = b.build().with_context(|| format!("bucket source {url}"))?;
        Ok(Bucket::with_store(url, Arc::new(PrefixStore::new(store, prefix))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_account_container_and_prefix() {
        assert_eq!(split("az://acct/c/a/b/"), Ok(("acct", "c", "a/b")));
        assert_eq!(split("az://acct/c"), Ok(("acct", "c", "")));
        for bad in ["az://acct", "az:///c", "s3://b/p", "az://acct//p"] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }
}
