//! The S3 target's private part: the calls that `object_store` does not make (PutObject
//! with Object Lock headers, Get/PutObjectRetention, GetObjectLockConfiguration,
//! GetBucketVersioning, ListObjectVersions, DeleteObject of a version).
//!
//! They are signed requests of [`crate::s3`]. Every put is a single PUT with
//! `x-amz-checksum-sha256`, `x-amz-sdk-checksum-algorithm: SHA256` and `Content-MD5`
//! (AWS and moto refuse lock headers without a checksum; some providers read only
//! `Content-MD5`) and a signed payload (Ceph 16 refuses aws-chunked trailers).

use anyhow::{Result, anyhow};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Deserialize;

use crate::s3::{Answer, S3Client, encode_query, parse_xml, s3_error};
use crate::store::{AlreadyExists, LockMode, ObjectVersion, Retention};

/// Which checksum a lock call carries, as the AWS SDKs say it: AWS and moto want this or
/// `Content-MD5` beside the lock headers ([`S3Client`] sends both digests).
fn checksum_algorithm() -> (&'static str, String) {
    ("x-amz-sdk-checksum-algorithm", "SHA256".to_string())
}

/// The bucket's Object Lock configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockConfig {
    pub enabled: bool,
    /// A default retention rule, if the bucket has one (coffer does not rely on it).
    pub default_rule: Option<String>,
    /// That rule's period in days (years counted as 366).
    pub default_days: Option<u32>,
}

/// Signs and sends Object Lock requests for one bucket and key prefix.
#[derive(Clone, Debug)]
pub struct LockApi {
    s3: S3Client,
}

impl LockApi {
    /// The calls, sent by `s3` (its credentials, bucket, prefix and retry policy).
    pub fn new(s3: S3Client) -> LockApi {
        LockApi { s3 }
    }

    fn object_url(&self, key: &str, query: &str) -> String {
        self.s3.object_url(key, query)
    }

    async fn send(&self, method: Method, url: &str, headers: &[(&str, String)], body: Bytes) -> Result<Answer> {
        self.s3.send(method, url, headers, body).await
    }

    /// Writes an object with a lock. With `create_only`, an existing key is refused
    /// (`AlreadyExists`); a retried PUT that finds its own first attempt stored is the
    /// retry wrapper's to recognise (`store::retrying`).
    pub async fn put_locked(
        &self,
        key: &str,
        body: Bytes,
        lock: Retention,
        create_only: bool,
    ) -> Result<Option<String>> {
        let mut headers = vec![
            ("x-amz-object-lock-mode", lock.mode.as_str().to_string()),
            ("x-amz-object-lock-retain-until-date", crate::time::format_utc(lock.until)),
            checksum_algorithm(),
        ];
        if create_only {
            headers.push(("if-none-match", "*".to_string()));
        }
        let url = self.object_url(key, "");
        let a = self.send(Method::PUT, &url, &headers, body).await?;
        match a.status {
            s if s.is_success() => Ok(version_id(&a.headers)),
            StatusCode::PRECONDITION_FAILED => Err(AlreadyExists { key: key.to_string() }.into()),
            s => Err(s3_error("PutObject", key, s, &a.body)),
        }
    }

    /// The retention of one object version (`None` when it has none).
    pub async fn get_retention(&self, key: &str, version: Option<&str>) -> Result<Option<Retention>> {
        let query = version_query("retention", version);
        let Answer { status, body: text, .. } =
            self.send(Method::GET, &self.object_url(key, &query), &[], Bytes::new()).await?;
        if !status.is_success() {
            if String::from_utf8_lossy(&text).contains("NoSuchObjectLockConfiguration") {
                return Ok(None);
            }
            return Err(s3_error("GetObjectRetention", key, status, &text));
        }
        let r: RetentionXml = parse_xml(&text, "GetObjectRetention")?;
        let mode =
            LockMode::parse(&r.mode).ok_or_else(|| anyhow!("GetObjectRetention {key}: unknown mode {}", r.mode))?;
        let until = crate::time::parse_utc(&r.retain_until_date)
            .ok_or_else(|| anyhow!("GetObjectRetention {key}: bad date {}", r.retain_until_date))?;
        Ok(Some(Retention { mode, until }))
    }

    /// Sets a version's retention. The server refuses to shorten a COMPLIANCE lock; a
    /// GOVERNANCE one only with `bypass_governance` and the permission for it.
    pub async fn put_retention(
        &self,
        key: &str,
        version: Option<&str>,
        lock: Retention,
        bypass_governance: bool,
    ) -> Result<()> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            lock.mode.as_str(),
            crate::time::format_utc(lock.until)
        );
        let body = Bytes::from(body);
        let mut headers = vec![checksum_algorithm()];
        if bypass_governance {
            headers.push(("x-amz-bypass-governance-retention", "true".to_string()));
        }
        let url = self.object_url(key, &version_query("retention", version));
        let Answer { status, body: text, .. } = self.send(Method::PUT, &url, &headers, body).await?;
        if !status.is_success() {
            return Err(s3_error("PutObjectRetention", key, status, &text));
        }
        Ok(())
    }

    /// The bucket's Object Lock configuration.
    pub async fn lock_configuration(&self) -> Result<LockConfig> {
        let url = format!("{}/?object-lock=", self.s3.bucket_url());
        let Answer { status, body: text, .. } = self.send(Method::GET, &url, &[], Bytes::new()).await?;
        if !status.is_success() {
            if String::from_utf8_lossy(&text).contains("ObjectLockConfigurationNotFound") {
                return Ok(LockConfig { enabled: false, default_rule: None, default_days: None });
            }
            return Err(s3_error("GetObjectLockConfiguration", "", status, &text));
        }
        let c: LockConfigXml = parse_xml(&text, "GetObjectLockConfiguration")?;
        let retention = c.rule.and_then(|r| r.default_retention);
        let default_days = retention.as_ref().and_then(|d| d.days.or(d.years.map(|y| y.saturating_mul(366))));
        let default_rule = retention.map(|d| {
            let period = d.days.map(|n| format!("{n} days")).or(d.years.map(|n| format!("{n} years")));
            format!("{} {}", d.mode, period.unwrap_or_default())
        });
        Ok(LockConfig { enabled: c.object_lock_enabled.as_deref() == Some("Enabled"), default_rule, default_days })
    }

    /// The bucket's lifecycle rules that apply to keys under coffer's prefix (a rule
    /// without a prefix applies to all), each described; none when it has none.
    pub async fn lifecycle_rules(&self) -> Result<Vec<String>> {
        let url = format!("{}/?lifecycle=", self.s3.bucket_url());
        let Answer { status, body: text, .. } = self.send(Method::GET, &url, &[], Bytes::new()).await?;
        if !status.is_success() {
            if String::from_utf8_lossy(&text).contains("NoSuchLifecycleConfiguration") {
                return Ok(Vec::new());
            }
            return Err(s3_error("GetBucketLifecycleConfiguration", "", status, &text));
        }
        let c: LifecycleXml = parse_xml(&text, "GetBucketLifecycleConfiguration")?;
        let ours = self.s3.prefix();
        Ok(c.rules
            .into_iter()
            .filter(|r| r.status == "Enabled")
            .filter_map(|r| {
                let prefix = r.prefix().unwrap_or_default();
                // It touches coffer's keys when either prefix starts the other.
                (ours.starts_with(&prefix) || prefix.starts_with(ours)).then(|| {
                    let id = r.id.clone().unwrap_or_default();
                    crate::escape::quote(format!("rule `{id}` on prefix `{prefix}`").as_bytes(), 200)
                })
            })
            .collect())
    }

    /// Whether an object version is under a legal hold.
    pub async fn legal_hold(&self, key: &str, version: Option<&str>) -> Result<bool> {
        let url = self.object_url(key, &version_query("legal-hold", version));
        let Answer { status, body: text, .. } = self.send(Method::GET, &url, &[], Bytes::new()).await?;
        if !status.is_success() {
            // No hold ever set: AWS and Ceph answer 404 with their own codes for it.
            let text = String::from_utf8_lossy(&text);
            let none = ["NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFound", "NoSuchObjectLegalHold"];
            if none.iter().any(|code| text.contains(code)) || text.contains("InvalidRequest") {
                return Ok(false);
            }
            return Err(s3_error("GetObjectLegalHold", key, status, text.as_bytes()));
        }
        let hold: LegalHoldXml = parse_xml(&text, "GetObjectLegalHold")?;
        Ok(hold.status.as_deref() == Some("ON"))
    }

    /// `Enabled`, `Suspended`, or empty when versioning was never turned on.
    pub async fn versioning(&self) -> Result<String> {
        let url = format!("{}/?versioning=", self.s3.bucket_url());
        let Answer { status, body: text, .. } = self.send(Method::GET, &url, &[], Bytes::new()).await?;
        if !status.is_success() {
            return Err(s3_error("GetBucketVersioning", "", status, &text));
        }
        let v: VersioningXml = parse_xml(&text, "GetBucketVersioning")?;
        Ok(v.status.unwrap_or_default())
    }

    /// The current objects under `sub` (relative to coffer's prefix), for a target that
    /// does not lock (ListObjectsV2).
    pub async fn list_current(&self, sub: &str) -> Result<Vec<ObjectVersion>> {
        let listed = self.s3.list_under(sub).await?;
        Ok(listed
            .into_iter()
            .map(|o| ObjectVersion {
                key: o.key,
                version_id: None,
                is_latest: true,
                delete_marker: false,
                size: o.size,
                last_modified: o.last_modified_ns.div_euclid(1_000_000_000),
                etag: o.etag,
            })
            .collect())
    }

    /// Every version and delete marker under `sub` (relative to coffer's prefix): as many
    /// as a listing may keep ([`crate::bounded::Listing`]).
    pub async fn list_versions(&self, sub: &str) -> Result<Vec<ObjectVersion>> {
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        let mut listing = crate::bounded::Listing::default();
        loop {
            let mut query = vec![("prefix", format!("{}{sub}", self.s3.prefix()))];
            if let Some((k, v)) = &marker {
                query.push(("key-marker", k.clone()));
                query.push(("version-id-marker", v.clone()));
            }
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode_query(v))).collect();
            let url = format!("{}/?versions=&{}", self.s3.bucket_url(), q.join("&"));
            let Answer { status, body: text, .. } = self.send(Method::GET, &url, &[], Bytes::new()).await?;
            if !status.is_success() {
                return Err(s3_error("ListObjectVersions", sub, status, &text));
            }
            let page: VersionsXml = parse_xml(&text, "ListObjectVersions")?;
            for (v, delete_marker) in
                page.versions.iter().map(|v| (v, false)).chain(page.delete_markers.iter().map(|v| (v, true)))
            {
                let kept = v.key.len() + v.version_id.len() + v.e_tag.as_ref().map_or(0, String::len);
                listing.keep(kept, "ListObjectVersions")?;
                out.push(ObjectVersion {
                    key: v.key.strip_prefix(self.s3.prefix()).unwrap_or(&v.key).to_string(),
                    version_id: Some(v.version_id.clone()),
                    is_latest: v.is_latest,
                    delete_marker,
                    size: v.size.unwrap_or(0),
                    last_modified: crate::time::parse_utc(&v.last_modified).unwrap_or(0),
                    etag: v.e_tag.as_ref().map(|e| e.trim_matches('"').to_string()),
                });
            }
            match (page.is_truncated, page.next_key_marker, page.next_version_id_marker) {
                (true, Some(k), Some(v)) => {
                    listing.next_page(&format!("{k}\n{v}"), "ListObjectVersions")?;
                    marker = Some((k, v))
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Deletes one object version. Outside `prune`, coffer calls it only on its own
    /// canary, to prove that its credentials cannot delete a locked version.
    pub async fn delete_version(&self, key: &str, version: &str) -> Result<()> {
        let url = self.object_url(key, &version_query("", Some(version)));
        let Answer { status, body: text, .. } = self.send(Method::DELETE, &url, &[], Bytes::new()).await?;
        if !status.is_success() {
            return Err(s3_error("DeleteObject", key, status, &text));
        }
        Ok(())
    }
}

fn version_id(headers: &http::HeaderMap) -> Option<String> {
    headers.get("x-amz-version-id").and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn version_query(sub: &str, version: Option<&str>) -> String {
    let mut q = Vec::new();
    if !sub.is_empty() {
        q.push(format!("{sub}="));
    }
    if let Some(v) = version {
        q.push(format!("versionId={}", encode_query(v)));
    }
    q.join("&")
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetentionXml {
    mode: String,
    retain_until_date: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LockConfigXml {
    object_lock_enabled: Option<String>,
    rule: Option<RuleXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RuleXml {
    default_retention: Option<DefaultRetentionXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DefaultRetentionXml {
    mode: String,
    days: Option<u32>,
    years: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LifecycleXml {
    #[serde(default, rename = "Rule")]
    rules: Vec<LifecycleRuleXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LifecycleRuleXml {
    #[serde(rename = "ID")]
    id: Option<String>,
    #[serde(default)]
    status: String,
    /// The old form: the prefix on the rule itself.
    prefix: Option<String>,
    filter: Option<LifecycleFilterXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LifecycleFilterXml {
    prefix: Option<String>,
    and: Option<LifecycleAndXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LifecycleAndXml {
    prefix: Option<String>,
}

impl LifecycleRuleXml {
    fn prefix(&self) -> Option<String> {
        let filter = self.filter.as_ref();
        let and = filter.and_then(|f| f.and.as_ref()).and_then(|a| a.prefix.clone());
        self.prefix.clone().or(filter.and_then(|f| f.prefix.clone())).or(and)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LegalHoldXml {
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VersioningXml {
    status: Option<String>,
}

#[cfg_attr(not(test), allow(dead_code))]
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VersionsXml {
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_version_id_marker: Option<String>,
    #[serde(default, rename = "Version")]
    versions: Vec<VersionXml>,
    #[serde(default, rename = "DeleteMarker")]
    delete_markers: Vec<VersionXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VersionXml {
    key: String,
    version_id: String,
    #[serde(default)]
    is_latest: bool,
    size: Option<u64>,
    last_modified: String,
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LockApi on a new lock-enabled bucket of the local S3 server, or `None` (test
    /// skipped) when no server is configured and COFFER_TEST_S3 does not require one.
    fn server_bucket(name: &str) -> Option<LockApi> {
        let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
            assert_ne!(std::env::var("COFFER_TEST_S3").as_deref(), Ok("require"), "no S3 server");
            eprintln!("SKIPPED: no local S3 server");
            return None;
        };
        let bucket = format!("ol-{name}-{}", crate::hex::random(4));
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server.sh");
        let ok = std::process::Command::new("bash").arg(script).args(["mkbucket", &bucket]).status().unwrap();
        assert!(ok.success());
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_allow_http(true)
            .build()
            .unwrap();
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
        Some(LockApi::new(
            S3Client::new(s3.credentials().clone(), Some(&endpoint), &bucket, "coffer", &region).unwrap(),
        ))
    }

    #[tokio::test]
    async fn locked_puts_are_kept_extended_never_shortened_or_deleted() {
        let Some(api) = server_bucket("lock") else { return };
        let config = api.lock_configuration().await.unwrap();
        assert!(config.enabled);
        assert_eq!(api.versioning().await.unwrap(), "Enabled");

        let until = crate::time::now_secs() + 3 * 86_400;
        let lock = Retention { mode: LockMode::Compliance, until };
        let v1 = api.put_locked("packs/ab/one", Bytes::from_static(b"first"), lock, true).await.unwrap().unwrap();
        assert_eq!(api.get_retention("packs/ab/one", Some(&v1)).await.unwrap(), Some(lock));

        // Extending is allowed; shortening and deleting are refused by the server.
        let longer = Retention { until: until + 86_400, ..lock };
        api.put_retention("packs/ab/one", Some(&v1), longer, false).await.unwrap();
        assert_eq!(api.get_retention("packs/ab/one", Some(&v1)).await.unwrap(), Some(longer));
        let shorter = Retention { until: until - 86_400, ..lock };
        assert!(api.put_retention("packs/ab/one", Some(&v1), shorter, true).await.is_err());
        assert!(api.delete_version("packs/ab/one", &v1).await.is_err());
        assert_eq!(api.get_retention("packs/ab/one", Some(&v1)).await.unwrap(), Some(longer));

        // A second put of the key is refused (AWS) or becomes a second version (Ceph 16
        // ignores If-None-Match on versioned buckets): either way the first stays.
        let second = api.put_locked("packs/ab/one", Bytes::from_static(b"second"), lock, true).await;
        let versions = api.list_versions("packs/").await.unwrap();
        let mine: Vec<_> = versions.iter().filter(|v| v.key == "packs/ab/one").collect();
        assert!(mine.iter().any(|v| v.version_id.as_deref() == Some(&*v1) && v.size == 5 && !v.delete_marker));
        assert_eq!(mine.len(), if second.is_ok() { 2 } else { 1 });
    }

    #[tokio::test]
    async fn governance_locks_can_be_shortened_only_with_bypass() {
        let Some(api) = server_bucket("gov") else { return };
        let until = crate::time::now_secs() + 86_400;
        let lock = Retention { mode: LockMode::Governance, until };
        let v = api.put_locked("k", Bytes::from_static(b"x"), lock, true).await.unwrap();
        let shorter = Retention { until: until - 3600, ..lock };
        assert!(api.put_retention("k", v.as_deref(), shorter, false).await.is_err());
        api.put_retention("k", v.as_deref(), shorter, true).await.unwrap();
        assert_eq!(api.get_retention("k", v.as_deref()).await.unwrap(), Some(shorter));
    }

    #[test]
    fn keys_and_queries_are_encoded() {
        assert_eq!(version_query("retention", Some("x/y+z")), "retention=&versionId=x%2Fy%2Bz");
        assert_eq!(version_query("", Some("v1")), "versionId=v1");
    }

    #[test]
    fn list_versions_answer_parses() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>c/</Prefix><IsTruncated>true</IsTruncated><NextKeyMarker>c/k2</NextKeyMarker><NextVersionIdMarker>v9</NextVersionIdMarker><Version><Key>c/k1</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><LastModified>2026-11-23T11:12:13.000Z</LastModified><ETag>"x"</ETag><Size>5</Size></Version><DeleteMarker><Key>c/k1</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest><LastModified>2026-11-23T11:12:14.000Z</LastModified></DeleteMarker><Version><Key>c/k2</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest><LastModified>2026-11-23T11:12:15.000Z</LastModified><Size>7</Size></Version></ListVersionsResult>"#;
        let page: VersionsXml = parse_xml(xml, "test").unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.versions.len(), 2);
        assert_eq!(page.delete_markers.len(), 1);
        assert_eq!(page.next_version_id_marker.as_deref(), Some("v9"));
        let err = s3_error(
            "PutObjectRetention",
            "k",
            StatusCode::FORBIDDEN,
            b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>",
        );
        assert!(err.to_string().contains("AccessDenied"));
    }
}
