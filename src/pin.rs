//! The repository record, pinned.
//!
//! Whoever can write to ONE target (a NAS share, one provider's account) can put a
//! `coffer.repo` there with this repository's id and recipients and a secret of their
//! choice: no key is needed to encrypt to public recipients. Were that record believed,
//! its secret would authenticate the writer's snapshots, and backups would go on under a
//! secret they know. So the record is pinned when `init` writes it:
//!
//! - its **hash** (blake3 of its bytes) is kept in the catalog, and every copy coffer
//!   reads from any target (the host before every run, catch-up, verify, a restorer) must
//!   have it; a target whose copy differs or is gone is named and left out;
//! - its **fingerprint** binds those bytes to the repository secret (the hash, and a
//!   commitment derived from the secret). `init` prints it; the restorer keeps it beside
//!   the identity, and on a bare machine `recover` compares what every target holds
//!   with it. A forged record cannot have it without the secret.

use anyhow::{Result, bail};

use crate::keys::RepoSecret;
use crate::store::Target;

/// The pinned repository record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// blake3 of the record's bytes, hex.
    pub record_hash: String,
    /// The record bound to the secret, hex: what people compare.
    pub fingerprint: String,
}

impl Pin {
    /// The pin of the record `bytes`, whose secret is `secret`.
    pub fn of(bytes: &[u8], secret: &RepoSecret) -> Pin {
        let record_hash = blake3::hash(bytes);
        let commitment = blake3::derive_key("coffer 2026-12 repository secret commitment", secret.bytes());
        let mut h = blake3::Hasher::new_derive_key("coffer 2026-12 repository fingerprint");
        h.update(record_hash.as_bytes());
        h.update(&commitment);
        Pin { record_hash: record_hash.to_hex().to_string(), fingerprint: h.finalize().to_hex().to_string() }
    }

    /// Whether `bytes` are the pinned record.
    pub fn holds(&self, bytes: &[u8]) -> bool {
        blake3::hash(bytes).to_hex().as_str() == self.record_hash
    }

    /// What `record` (`None`: no object) is, against the pin.
    pub fn judge(&self, record: Option<&[u8]>) -> Verdict {
        match record {
            Some(bytes) if self.holds(bytes) => Verdict::Pinned,
            Some(_) => Verdict::Other,
            None => Verdict::Missing,
        }
    }
}

/// A fingerprint as a person types it: hex, any case, spaces, `-` and `:` ignored.
pub fn normalize(typed: &str) -> Result<String> {
    let hex: String = typed.chars().filter(|c| !matches!(c, ' ' | '-' | ':')).collect::<String>().to_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("a repository fingerprint is 64 hex digits (as `coffer init` printed it); got `{typed}`");
    }
    Ok(hex)
}

/// What a target holds where the pinned record should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The pinned record.
    Pinned,
    /// Nothing: an unmounted disk, a wrong bucket or prefix, or a wiped target.
    Missing,
    /// Other bytes: another repository's record, or a forged one.
    Other,
}

/// Reads `coffer.repo` (at `version`, where one was recorded) from `target`, bounded;
/// `None` when the target does not have it. A read that fails is an error.
pub async fn read(target: &Target, version: Option<&str>) -> Result<Option<bytes::Bytes>> {
    let key = crate::format::REPO_KEY;
    let Some(size) = target.size_of(key, version).await? else { return Ok(None) };
    let max = size.min(crate::format::MAX_REPO_RECORD);
    Ok(Some(target.get(key, version, max).await?))
}

/// How long a target has to show its repository record before anything is written to
/// it: one that does not answer is left out in seconds, not after its retry budget.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Whether `target` still holds the pinned record (its recorded `version`, read within
/// [`DEADLINE`]), before a command writes to it; why not, where it does not.
pub async fn confirm(target: &Target, pin: &Pin, version: Option<&str>) -> std::result::Result<(), String> {
    match tokio::time::timeout(DEADLINE, read(target, version)).await {
        Ok(Ok(bytes)) => refusal(target, pin.judge(bytes.as_deref())).map_or(Ok(()), Err),
        Ok(Err(e)) => Err(format!("target `{}`: {e:#}", target.name)),
        Err(_) => Err(format!("target `{}` did not answer within {DEADLINE:?}", target.name)),
    }
}

/// Why a target is not this repository, as a run or a check reports it.
pub fn refusal(target: &Target, found: Verdict) -> Option<String> {
    match found {
        Verdict::Pinned => None,
        Verdict::Missing => Some(format!(
            "target `{}` ({}) holds no {}, which it held: is its disk mounted, are its bucket and prefix right? \
             coffer writes nothing there until it is this repository again",
            target.name,
            target.url,
            crate::format::REPO_KEY
        )),
        Verdict::Other => Some(format!(
            "target `{}` ({}) holds another {} than the one this repository was made with (pinned at init): \
             it was replaced, or this is another repository's target; coffer neither writes there nor trusts it",
            target.name,
            target.url,
            crate::format::REPO_KEY
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_binds_the_record_to_its_secret() {
        let (a, b) = (RepoSecret::from_bytes([1; 32]), RepoSecret::from_bytes([2; 32]));
        let pin = Pin::of(b"record", &a);
        assert!(pin.holds(b"record") && !pin.holds(b"record "));
        assert_eq!(pin, Pin::of(b"record", &a));
        // The same bytes with another secret (a forger's) have another fingerprint.
        assert_eq!(pin.record_hash, Pin::of(b"record", &b).record_hash);
        assert_ne!(pin.fingerprint, Pin::of(b"record", &b).fingerprint);
        assert_ne!(pin.fingerprint, Pin::of(b"other", &a).fingerprint);
    }

    #[test]
    fn typed_fingerprints_are_normalized() {
        let fp = "ab".repeat(32);
        assert_eq!(normalize(&fp.to_uppercase()).unwrap(), fp);
        assert_eq!(normalize(&format!("{}-{} ", &fp[..32], &fp[32..])).unwrap(), fp);
        assert!(normalize("abc").is_err());
        assert!(normalize(&"zz".repeat(32)).is_err());
    }
}
