//! The one retry policy around every store kind: a call that fails with a failure its
//! kind marked [`Transient`] is tried again, with backoff, until the run's budget is
//! spent or a shutdown is asked ([`Retry`]). Kinds themselves never retry.

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;

use super::{AlreadyExists, Backend, BucketSettings, LockMode, ObjectVersion, Retention, Transient};
use crate::retry::Retry;

pub struct Retrying {
    inner: Arc<dyn Backend>,
    retry: Retry,
}

impl Retrying {
    pub fn wrap(inner: Arc<dyn Backend>, retry: Retry) -> Arc<dyn Backend> {
        Arc::new(Retrying { inner, retry })
    }

    /// Runs `call` until it succeeds, fails for good, or the budget is spent.
    async fn retried<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Err(e) if is_transient(&e) => {
                    attempt += 1;
                    self.retry.wait(attempt, &format!("{what}: {e:#}")).await?;
                }
                result => return result,
            }
        }
    }
}

/// Whether an error is one a retry may cure.
fn is_transient(e: &anyhow::Error) -> bool {
    e.is::<Transient>()
}

#[async_trait::async_trait]
impl Backend for Retrying {
    /// A put retried after a failure whose answer was lost may find its own first
    /// attempt stored: it is taken when it holds the same bytes.
    async fn put_new(&self, key: &str, body: Bytes, lock: Option<Retention>) -> Result<Option<String>> {
        let mut attempt = 0;
        loop {
            match self.inner.put_new(key, body.clone(), lock).await {
                Err(e) if is_transient(&e) => {
                    attempt += 1;
                    self.retry.wait(attempt, &format!("PUT {key}: {e:#}")).await?;
                }
                Err(e) if attempt > 0 && e.is::<AlreadyExists>() => {
                    let stored = self.retried(key, || self.inner.get(key, None, body.len() as u64)).await;
                    return match stored {
                        Ok((bytes, version)) if bytes == body => {
                            tracing::info!(key, "a retried upload found its first attempt stored");
                            Ok(version)
                        }
                        _ => Err(e),
                    };
                }
                result => return result,
            }
        }
    }

    async fn get(&self, key: &str, version: Option<&str>, max: u64) -> Result<(Bytes, Option<String>)> {
        self.retried(key, || self.inner.get(key, version, max)).await
    }

    async fn size_of(&self, key: &str, version: Option<&str>) -> Result<Option<u64>> {
        self.retried(key, || self.inner.size_of(key, version)).await
    }

    async fn list(&self, sub: &str, versions: bool) -> Result<Vec<ObjectVersion>> {
        self.retried(sub, || self.inner.list(sub, versions)).await
    }

    async fn lock_of(&self, key: &str, version: Option<&str>) -> Result<Option<Retention>> {
        self.retried(key, || self.inner.lock_of(key, version)).await
    }

    async fn set_lock(&self, key: &str, version: Option<&str>, lock: Retention) -> Result<()> {
        self.retried(key, || self.inner.set_lock(key, version, lock)).await
    }

    async fn delete(&self, key: &str, version: Option<&str>) -> Result<()> {
        self.retried(key, || self.inner.delete(key, version)).await
    }

    async fn check_immutability(&self, mode: LockMode, url: &str, allow_unprotected: bool) -> Result<Option<String>> {
        self.retried(url, || self.inner.check_immutability(mode, url, allow_unprotected)).await
    }

    async fn check_lock_configuration(&self, mode: Option<LockMode>, url: &str) -> Result<()> {
        self.retried(url, || self.inner.check_lock_configuration(mode, url)).await
    }

    async fn settings(&self) -> Result<Option<BucketSettings>> {
        self.retried("the bucket's settings", || self.inner.settings()).await
    }

    async fn legal_hold(&self, key: &str, version: Option<&str>) -> Result<bool> {
        self.retried(key, || self.inner.legal_hold(key, version)).await
    }

    fn with_credentials(&self, key_id: String, secret_key: String) -> Result<Option<Arc<dyn Backend>>> {
        let other = self.inner.with_credentials(key_id, secret_key)?;
        Ok(other.map(|inner| Retrying::wrap(inner, self.retry.clone())))
    }
}
