//! Snapshot record v1, stored under `snapshots/<job>/<id>`.
//!
//! Object = age stream (to the recipients) of the record's JSON, followed by a 32-byte
//! MAC over the object key and that ciphertext, keyed by the repository secret. The MAC
//! can be checked without the identity (by the status check); only the identity reads it.

use serde::{Deserialize, Serialize};

use super::{ChunkId, DecodeError, malformed};
use crate::keys::{Identity, RepoSecret};

pub const VERSION: u32 = 1;
const MAC_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub format: u32,
    pub id: String,
    pub job: String,
    pub host: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix nanoseconds of the same moment: orders a job's snapshots made within one
    /// second when the catalog is rebuilt from the records (absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ns: Option<i64>,
    /// What was backed up, e.g. `path /srv/docs`.
    pub source: String,
    /// Chunks of the entry stream, in order.
    pub tree: Vec<ChunkId>,
    pub stats: SnapshotStats,
    /// Files that could not be read; they are not in the snapshot.
    #[serde(default)]
    pub errors: Vec<EntryError>,
    /// Until when the snapshot is kept (and its objects locked), as decided when it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<i64>,
    /// What the source contained beyond its files (git refs, a command's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<crate::format::contents::Contents>,
    /// The key set ([`super::keyset`]) this record and the packs written with it are
    /// encrypted to (absent in records written before key sets: set 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyset: Option<u32>,
    /// Labels the run was given (`backup --tag`, the job's `tags`); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// The most tags a snapshot carries, and the longest tag.
pub const MAX_TAGS: usize = 16;
pub const MAX_TAG_LEN: usize = 64;

#[cfg(test)]
#[test]
fn tags_are_short_and_need_no_quoting() {
    for good in ["weekly", "db:prod", "v1.2_rc-3", "a@b+c", &"x".repeat(MAX_TAG_LEN)] {
        assert!(check_tag(good).is_ok(), "{good}");
    }
    for bad in ["", "two words", "a,b", "ä", "\u{1b}[31m", &"x".repeat(MAX_TAG_LEN + 1)] {
        assert!(check_tag(bad).is_err(), "{bad:?}");
    }
}

/// Whether `tag` can label a snapshot: 1 to 64 of `A-Z a-z 0-9 . _ - : @ +`, so that it
/// prints as typed and never needs quoting.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-:@+".contains(c);
    match tag.len() {
        0 => Err("a tag is empty".into()),
        n if n > MAX_TAG_LEN => Err(format!("a tag is {n} bytes long; at most {MAX_TAG_LEN}")),
        _ if !tag.chars().all(allowed) => {
            Err(format!("tag `{}`: only letters, digits and . _ - : @ +", tag.escape_debug()))
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Total size of the files in the snapshot.
    pub bytes: u64,
    /// Bytes read from the source (unchanged files are not read).
    pub bytes_read: u64,
    /// Plaintext bytes of chunks not stored before.
    pub bytes_new: u64,
    /// Bytes of packs uploaded (compressed and encrypted).
    pub bytes_uploaded: u64,
    pub packs_uploaded: u64,
    pub duration_ms: u64,
    /// Lock extension requests for older packs this snapshot reuses.
    #[serde(default)]
    pub lock_extensions: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryError {
    pub path: String,
    pub error: String,
}

/// Encrypts and authenticates a record for `key`.
pub fn seal(
    record: &SnapshotRecord,
    key: &str,
    recipients: &[crate::keys::Recipient],
    secret: &RepoSecret,
) -> anyhow::Result<Vec<u8>> {
    let json = serde_json::to_vec(record)?;
    let mut object = crate::keys::encrypt(recipients, &json)?;
    let mac = secret.record_mac(key, &object);
    object.extend_from_slice(&mac);
    Ok(object)
}

/// Checks the MAC only (no identity needed).
pub fn verify_mac(object: &[u8], key: &str, secret: &RepoSecret) -> Result<(), DecodeError> {
    if object.len() < MAC_LEN {
        return Err(malformed("snapshot record: too short"));
    }
    let (body, mac) = object.split_at(object.len() - MAC_LEN);
    // blake3's Hash comparison is constant-time.
    if blake3::Hash::from(secret.record_mac(key, body))
        != blake3::Hash::from(<[u8; 32]>::try_from(mac).unwrap_or_default())
    {
        return Err(DecodeError::Mac);
    }
    Ok(())
}

/// Verifies, decrypts and parses a record stored under `key`.
pub fn open(object: &[u8], key: &str, secret: &RepoSecret, identity: &Identity) -> Result<SnapshotRecord, DecodeError> {
    verify_mac(object, key, secret)?;
    let json = identity.decrypt(&object[..object.len() - MAC_LEN])?;
    parse(&json, key)
}

/// Parses a decrypted record and checks it belongs at `key`.
pub fn parse(json: &[u8], key: &str) -> Result<SnapshotRecord, DecodeError> {
    let record: SnapshotRecord =
        serde_json::from_slice(json).map_err(|e| malformed(format!("snapshot record: {e}")))?;
    if record.format != VERSION {
        return Err(DecodeError::Version(record.format));
    }
    if super::snapshot_key(&record.job, &record.id) != key {
        return Err(malformed(format!("snapshot record names {}/{} but is stored at {key}", record.job, record.id)));
    }
    Ok(record)
}
