//! What protects a target's objects, and the types every store kind speaks in.

/// What protects the objects of a target from deletion and overwrite: an S3 Object Lock
/// mode, or nothing (a `file://` target, or `lock_mode = "none"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protection {
    Compliance,
    Governance,
    Unprotected,
}

impl Protection {
    pub fn of(mode: Option<LockMode>) -> Protection {
        match mode {
            Some(LockMode::Compliance) => Protection::Compliance,
            Some(LockMode::Governance) => Protection::Governance,
            None => Protection::Unprotected,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Compliance => "COMPLIANCE",
            Protection::Governance => "GOVERNANCE",
            Protection::Unprotected => "UNPROTECTED",
        }
    }
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Object Lock retention mode. COMPLIANCE locks can be extended but never shortened or
/// removed, not even by the account root; GOVERNANCE ones can by a privileged user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Compliance,
    Governance,
}

impl LockMode {
    /// The name S3 uses (and the catalog stores).
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }

    pub fn parse(s: &str) -> Option<LockMode> {
        match s {
            "COMPLIANCE" => Some(LockMode::Compliance),
            "GOVERNANCE" => Some(LockMode::Governance),
            _ => None,
        }
    }
}

/// A lock as set on one object version: mode and retain-until (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub mode: LockMode,
    pub until: i64,
}

/// One object version, or a delete marker, as a listing gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// Key relative to coffer's prefix.
    pub key: String,
    /// `None` on a store without versions.
    pub version_id: Option<String>,
    pub is_latest: bool,
    pub delete_marker: bool,
    pub size: u64,
    pub last_modified: i64,
    /// The ETag (for a single PUT, the MD5 of the content), without quotes.
    pub etag: Option<String>,
}

/// A put refused because the key exists (on S3: `If-None-Match: *` honoured).
#[derive(Debug, thiserror::Error)]
#[error("{key} already exists on the target; coffer never overwrites an object")]
pub struct AlreadyExists {
    pub key: String,
}

/// What a bucket is set to that bears on coffer's objects, for the audit
/// (`status --remote`, the scrub).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketSettings {
    /// `Enabled`, `Suspended`, or empty (never enabled).
    pub versioning: String,
    /// A default retention rule, described, and its period in days.
    pub default_retention: Option<(String, Option<u32>)>,
    /// Lifecycle rules over coffer's prefix, described.
    pub lifecycle: Vec<String>,
}
