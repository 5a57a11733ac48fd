//! The bucket audit: what on a target puts coffer's objects at risk without changing a
//! byte of them. Someone holding the daemon's (or the account's) credentials can lock an
//! object for decades (a lock bomb: storage paid for until then, and nothing can remove
//! it), put it under a legal hold, suspend versioning, set a default retention, or add a
//! lifecycle rule over coffer's prefix. `status --remote` and the scrub report each as a
//! finding; objects coffer did not write are the inventory's (`unknown-key`).

use anyhow::Result;

use crate::inventory::Finding;
use crate::store::Target;

/// The bucket's settings that put coffer's objects at risk.
pub async fn settings(target: &Target) -> Result<Vec<Finding>> {
    let Some(s) = target.settings().await? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    let finding = |setting: &str, why: String| Finding::BucketSetting { setting: setting.into(), why };
    if s.versioning != "Enabled" {
        let why = format!("versioning is `{}`: a key's earlier versions are no longer kept", s.versioning);
        out.push(finding("versioning", why));
    }
    if let Some((rule, days)) = s.default_retention
        && days.is_none_or(|d| d > target.max_lock_days())
    {
        let why = format!(
            "the bucket locks every object it is given without a lock of its own for {rule}, past max_lock_days ({} \
             days)",
            target.max_lock_days()
        );
        out.push(finding("default-retention", why));
    }
    for rule in s.lifecycle {
        let why = format!("{rule} applies to coffer's objects (expiring or moving what restores need)");
        out.push(finding("lifecycle", why));
    }
    Ok(out)
}

/// What is wrong with one object version's protection as the server reports it: a lock
/// past the horizon (`server_until`, as read), a legal hold.
pub async fn object(
    target: &Target,
    key: &str,
    version: Option<&str>,
    server_until: Option<i64>,
) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let horizon = target.lock_horizon();
    let v = || version.unwrap_or_default().to_string();
    if let Some(server) = server_until.filter(|&u| u > horizon) {
        out.push(Finding::LockBeyond { key: key.to_string(), version: v(), server });
    }
    if target.legal_hold(key, version).await? {
        out.push(Finding::LegalHold { key: key.to_string(), version: v() });
    }
    Ok(out)
}
