//! What the target holds under coffer's prefix, key by key and version by version, and
//! what in it coffer did not write: the tamper findings.
//!
//! coffer writes every key once (`If-None-Match: *`) and deletes only in prune, so on a
//! versioned bucket each key has exactly one version, the one it wrote. Anything more is
//! evidence: a later version with other content is an overwrite, a delete marker a
//! deletion attempt, a key outside coffer's layout an intruder's. One exception is
//! benign: a server that ignores If-None-Match (Ceph) keeps a second version when a PUT
//! is retried after a lost answer. It has the original's size and ETag (the MD5 of a
//! single PUT), so it is counted as a duplicate, not reported as tampering.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::store::Target;

/// One stored version of a key.
#[derive(Debug, Clone)]
pub struct Version {
    /// `None` on a target without versions (`file://`).
    pub id: Option<String>,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: i64,
}

/// Everything stored under one key.
#[derive(Debug, Clone, Default)]
pub struct KeyVersions {
    /// Oldest first: the first is the one coffer wrote, unless tampering came first.
    pub versions: Vec<Version>,
    /// Delete markers: (version id, time).
    pub delete_markers: Vec<(String, i64)>,
}

/// Where a key sits in coffer's layout (`format`'s table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    Repo,
    Pack(String),
    Snapshot { job: String, id: String },
    KeySet(u32),
    Canary,
    Unknown,
}

pub fn layout(key: &str) -> Layout {
    let parts: Vec<&str> = key.split('/').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    match parts.as_slice() {
        [k] if *k == crate::format::REPO_KEY => Layout::Repo,
        ["packs", dir, id] if hex(id, 64) && id.starts_with(dir) && dir.len() == 2 => Layout::Pack(id.to_string()),
        ["snapshots", job, id] if !job.is_empty() && !id.is_empty() => {
            Layout::Snapshot { job: job.to_string(), id: id.to_string() }
        }
        ["canary", id] if hex(id, 16) => Layout::Canary,
        ["keys", _] => crate::format::keyset::seq_of(key).map_or(Layout::Unknown, Layout::KeySet),
        _ => Layout::Unknown,
    }
}

/// The target's contents under coffer's prefix.
pub struct Inventory {
    pub keys: BTreeMap<String, KeyVersions>,
    /// Whether the listing saw versions (a versioned bucket) or only current objects.
    pub versioned: bool,
}

impl Inventory {
    /// Lists every version and delete marker (S3 with Object Lock), or every object
    /// (a target without versions).
    pub async fn read(target: &Target) -> Result<Inventory> {
        Self::listed(target, "", |_| true).await
    }

    /// The repository record and the key-set records alone (a directory lists by
    /// folder, not by key prefix: there the record is looked up).
    pub async fn read_repository(target: &Target) -> Result<Inventory> {
        let repo = crate::format::REPO_KEY;
        let mut inventory = match target.lists_versions() {
            true => Self::listed(target, repo, |k| k == repo).await?,
            false => {
                let mut keys = BTreeMap::new();
                if let Some(size) = target.size_of(repo, None).await? {
                    let version = Version { id: None, size, etag: None, last_modified: 0 };
                    keys.insert(repo.to_string(), KeyVersions { versions: vec![version], delete_markers: Vec::new() });
                }
                Inventory { keys, versioned: false }
            }
        };
        let sets = Self::listed(target, "keys/", |k| matches!(layout(k), Layout::KeySet(_))).await?;
        inventory.keys.extend(sets.keys);
        Ok(inventory)
    }

    async fn listed(target: &Target, sub: &str, keep: impl Fn(&str) -> bool) -> Result<Inventory> {
        let mut keys: BTreeMap<String, KeyVersions> = BTreeMap::new();
        let versioned = target.lists_versions();
        for v in target.list(sub).await?.into_iter().filter(|v| keep(&v.key)) {
            let entry = keys.entry(v.key).or_default();
            match (v.delete_marker, v.version_id) {
                (true, Some(id)) => entry.delete_markers.push((id, v.last_modified)),
                (true, None) => {}
                (false, id) => {
                    entry.versions.push(Version { id, size: v.size, etag: v.etag, last_modified: v.last_modified })
                }
            }
        }
        // A listing of versions gives each key's newest first.
        if versioned {
            for k in keys.values_mut() {
                k.versions.reverse();
            }
        }
        Ok(Inventory { keys, versioned })
    }

    /// What is wrong with `key`, given the version that is genuine (the one the catalog
    /// recorded, or the one recovery verified; `None` when no version is). Versions
    /// identical to the genuine one are counted in `duplicates`.
    pub fn findings_for(&self, key: &str, genuine: Option<&str>, duplicates: &mut usize) -> Vec<Finding> {
        let Some(k) = self.keys.get(key) else { return Vec::new() };
        let mut out: Vec<Finding> = k
            .delete_markers
            .iter()
            .map(|(v, at)| Finding::DeleteMarker { key: key.to_string(), version: v.clone(), at: *at })
            .collect();
        if !self.versioned {
            return out;
        }
        let original = k.versions.iter().find(|v| v.id.is_some() && v.id.as_deref() == genuine);
        for v in &k.versions {
            if v.id.as_deref() == genuine {
                continue;
            }
            let same = original.is_some_and(|o| o.size == v.size && o.etag.is_some() && o.etag == v.etag);
            if same {
                *duplicates += 1;
                continue;
            }
            out.push(Finding::Overwrite {
                key: key.to_string(),
                version: v.id.clone().unwrap_or_default(),
                at: v.last_modified,
                size: v.size,
            });
        }
        out
    }

    /// Keys that are not part of coffer's layout.
    pub fn unknown_keys(&self) -> impl Iterator<Item = Finding> + '_ {
        self.keys.keys().filter(|k| layout(k) == Layout::Unknown).map(|k| Finding::UnknownKey { key: k.clone() })
    }
}

/// A finding, and the target it is on.
#[derive(Debug, Serialize)]
pub struct Found {
    pub target: String,
    #[serde(flatten)]
    pub finding: Finding,
}

/// Something on the target that coffer did not put there, or that is not as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Finding {
    /// Someone tried to delete the key (coffer never does outside prune).
    DeleteMarker { key: String, version: String, at: i64 },
    /// A version with other content than the genuine one.
    Overwrite { key: String, version: String, at: i64, size: u64 },
    /// A key outside coffer's layout.
    UnknownKey { key: String },
    /// A snapshot or key-set record that fails its MAC or does not decode: forged or
    /// damaged.
    ForgedRecord { key: String, version: String, why: String },
    /// The repository record is not the one pinned at init: replaced, or another
    /// repository's.
    Replaced { key: String, why: String },
    /// A snapshot record whose claimed creation time is far from when the server got it.
    Backdated { key: String, created: i64, stored: i64 },
    /// A lock that ends earlier on the server than the catalog recorded.
    LowerLock { key: String, recorded: i64, server: i64 },
    /// A needed object version that is missing, corrupt, or cannot be read.
    Unreadable { key: String, version: String, why: String },
    /// A lock reaching past `max_lock_days`: only someone holding the daemon's (or the
    /// account's) credentials sets one (a lock bomb: the object cannot be deleted until then).
    LockBeyond { key: String, version: String, server: i64 },
    /// A legal hold: the object cannot be deleted until someone lifts it.
    LegalHold { key: String, version: String },
    /// A bucket setting that puts coffer's objects at risk (versioning suspended, a
    /// lifecycle rule over its prefix, a default retention longer than any of coffer's).
    BucketSetting { setting: String, why: String },
    /// An entry of an authentic snapshot record (its MAC holds) that a restore refuses:
    /// it would escape the destination or write through the snapshot's own symlinks.
    /// Only a forger holding the repository secret writes such a stream.
    UnsafeEntry { key: String, path: String, refusal: String, why: String },
}

impl Finding {
    /// Findings that only an attacker (or a broken server) explains, as opposed to data
    /// that is damaged.
    pub fn is_tampering(&self) -> bool {
        !matches!(self, Finding::Unreadable { .. })
    }

    /// The object key the finding is about.
    pub fn key(&self) -> &str {
        match self {
            Finding::DeleteMarker { key, .. }
            | Finding::Overwrite { key, .. }
            | Finding::UnknownKey { key }
            | Finding::ForgedRecord { key, .. }
            | Finding::Replaced { key, .. }
            | Finding::Backdated { key, .. }
            | Finding::LowerLock { key, .. }
            | Finding::Unreadable { key, .. }
            | Finding::LockBeyond { key, .. }
            | Finding::LegalHold { key, .. }
            | Finding::UnsafeEntry { key, .. } => key,
            Finding::BucketSetting { setting, .. } => setting,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Finding::DeleteMarker { .. } => "delete-marker",
            Finding::Overwrite { .. } => "overwrite",
            Finding::UnknownKey { .. } => "unknown-key",
            Finding::ForgedRecord { .. } => "forged-record",
            Finding::Replaced { .. } => "replaced",
            Finding::Backdated { .. } => "backdated",
            Finding::LowerLock { .. } => "lower-lock",
            Finding::Unreadable { .. } => "unreadable",
            Finding::UnsafeEntry { .. } => "unsafe-entry",
            Finding::LockBeyond { .. } => "lock-beyond",
            Finding::LegalHold { .. } => "legal-hold",
            Finding::BucketSetting { .. } => "bucket-setting",
        }
    }
}

/// As text, a finding is escaped whole: its key comes from a listing, its reasons from
/// forged records (`--json` keeps them exact).
impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::escape::printable(self.text().as_bytes()))
    }
}

impl Finding {
    fn text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let f = &mut out;
        let t = crate::time::format_utc;
        let _ = match self {
            Finding::DeleteMarker { key, at, .. } => write!(f, "{key}: delete marker placed at {}", t(*at)),
            Finding::Overwrite { key, version, at, size } => {
                write!(f, "{key}: overwritten at {} by version {version} ({size} bytes)", t(*at))
            }
            Finding::UnknownKey { key } => write!(f, "{key}: not an object coffer writes"),
            Finding::ForgedRecord { key, version, why } => {
                write!(f, "{key}: record version {version} rejected: {why}")
            }
            Finding::Replaced { key, why } => write!(f, "{key}: {why}"),
            Finding::Backdated { key, created, stored } => {
                write!(f, "{key}: the record claims {} but the server received it at {}", t(*created), t(*stored))
            }
            Finding::LowerLock { key, recorded, server } => {
                write!(f, "{key}: locked until {} on the server, less than the {} recorded", t(*server), t(*recorded))
            }
            Finding::Unreadable { key, version, why } if version.is_empty() => write!(f, "{key}: {why}"),
            Finding::Unreadable { key, version, why } => write!(f, "{key} (version {version}): {why}"),
            Finding::UnsafeEntry { key, path, refusal, why } => {
                write!(f, "{key}: entry `{path}` ({refusal}): {why}; a restore refuses it")
            }
            Finding::LockBeyond { key, version, server } => write!(
                f,
                "{key} (version {version}): locked until {}, past max_lock_days: a lock bomb (it cannot be deleted \
                 until then)",
                t(*server)
            ),
            Finding::LegalHold { key, version } => {
                write!(f, "{key} (version {version}): under a legal hold (it cannot be deleted until it is lifted)")
            }
            Finding::BucketSetting { setting, why } => write!(f, "{setting}: {why}"),
        };
        out
    }
}

/// The findings for a snapshot whose entry stream holds refused entries: the first
/// ones by name, then how many more.
pub fn unsafe_entries(key: &str, refused: crate::format::entry_check::Refused) -> Vec<Finding> {
    let (shown, total) = (refused.named.len() as u64, refused.total);
    let mut out: Vec<Finding> = refused
        .named
        .into_iter()
        .map(|(path, r)| Finding::UnsafeEntry {
            key: key.to_string(),
            path: String::from_utf8_lossy(&path).into_owned(),
            refusal: r.kind().to_string(),
            why: r.to_string(),
        })
        .collect();
    if total > shown {
        out.push(Finding::UnsafeEntry {
            key: key.to_string(),
            path: "…".into(),
            refusal: "more".into(),
            why: format!("{} more entries are refused", total - shown),
        });
    }
    out
}

/// How far a record's server time may be from the time it claims (its run's length
/// aside) before it counts as backdated: generous for clock skew and slow uploads.
pub const RECORD_TIME_SLACK: i64 = 3600;

/// A snapshot record claiming a creation time its upload time contradicts.
pub fn backdated(key: &str, created: i64, duration_ms: u64, stored: i64) -> Option<Finding> {
    let finished = created + (duration_ms / 1000) as i64;
    let off = stored < created - RECORD_TIME_SLACK || stored > finished + RECORD_TIME_SLACK;
    off.then(|| Finding::Backdated { key: key.to_string(), created, stored })
}

/// Counts of findings by kind, for reports: `3 delete-marker, 1 overwrite`.
pub fn summarize(findings: &[Finding]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for f in findings {
        *by.entry(f.kind()).or_default() += 1;
    }
    by.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_by_layout() {
        let id = "ab".to_string() + &"0".repeat(62);
        assert_eq!(layout("coffer.repo"), Layout::Repo);
        assert_eq!(layout(&format!("packs/ab/{id}")), Layout::Pack(id.clone()));
        assert_eq!(layout(&format!("packs/cd/{id}")), Layout::Unknown);
        assert_eq!(layout("packs/ab/short"), Layout::Unknown);
        assert_eq!(layout("snapshots/docs/0123"), Layout::Snapshot { job: "docs".into(), id: "0123".into() });
        assert_eq!(layout("snapshots/docs"), Layout::Unknown);
        assert_eq!(layout("canary/0123456789abcdef"), Layout::Canary);
        assert_eq!(layout("keys/000003"), Layout::KeySet(3));
        assert_eq!(layout("keys/3"), Layout::Unknown);
        assert_eq!(layout("ransom-note.txt"), Layout::Unknown);
    }

    fn version(id: &str, size: u64, etag: &str, at: i64) -> Version {
        Version { id: Some(id.into()), size, etag: Some(etag.into()), last_modified: at }
    }

    #[test]
    fn later_versions_are_overwrites_unless_identical() {
        let mut inv = Inventory { keys: BTreeMap::new(), versioned: true };
        inv.keys.insert(
            "coffer.repo".into(),
            KeyVersions {
                versions: vec![version("v1", 10, "e1", 100), version("v2", 10, "e1", 101), version("v3", 7, "e9", 200)],
                delete_markers: vec![("m1".into(), 300)],
            },
        );
        let mut dups = 0;
        let f = inv.findings_for("coffer.repo", Some("v1"), &mut dups);
        assert_eq!(dups, 1, "the identical retry is a duplicate");
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].kind(), "delete-marker");
        assert!(matches!(&f[1], Finding::Overwrite { version, .. } if version == "v3"));
        // With no genuine version, every version is suspect.
        let mut dups = 0;
        assert_eq!(inv.findings_for("coffer.repo", None, &mut dups).len(), 4);
        assert_eq!(dups, 0);
    }

    #[test]
    fn record_times_are_checked_against_the_server() {
        assert_eq!(backdated("k", 1000, 5_000_000, 1000 + 5000 + 60), None);
        assert!(backdated("k", 1000, 0, 1000 + 2 * RECORD_TIME_SLACK).is_some());
        assert!(backdated("k", 10 * RECORD_TIME_SLACK, 0, 0).is_some());
    }
}
