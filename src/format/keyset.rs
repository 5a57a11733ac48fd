//! Key-set record v1, stored under `keys/<seq>` (six digits): the repository's recipients
//! after a `coffer key add` or `coffer key remove`, and the repository secret wrapped to
//! them, so that a key added later restores what is encrypted to it from then on.
//!
//! Object = the record's JSON, then a 32-byte MAC over its key and that JSON, keyed by the
//! repository secret: whoever writes to a target without the secret cannot add one. The
//! records form a chain: `previous` is the blake3 hash of the record before (of
//! `coffer.repo` for the first). A restorer whose key is only in a later set opens the
//! secret here, checks the MAC with it, and checks that secret against the repository's
//! pinned fingerprint, which binds it ([`crate::pin`]).
//!
//! Recipients are recorded as fingerprints (`Recipient::fingerprint`): the host compares
//! its config with them, and nothing here names a person's ssh key.

use serde::{Deserialize, Serialize};

use super::repo::RepoRecord;
use super::{DecodeError, malformed};
use crate::keys::{Identity, Recipient, RepoSecret, SECRET_LEN};

pub const VERSION: u32 = 1;
const MAC_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySet {
    pub format: u32,
    /// The repository's id.
    pub repo: String,
    /// 1 for the first change; `coffer.repo` is set 0.
    pub seq: u32,
    /// blake3 of the previous record's bytes, hex.
    pub previous: String,
    pub created: i64,
    /// The recipients' fingerprints, sorted.
    pub recipients: Vec<String>,
    /// Hex of an age stream holding the 32-byte repository secret, to those recipients.
    pub secret: String,
}

/// The object key of set `seq`.
pub fn key(seq: u32) -> String {
    format!("keys/{seq:06}")
}

/// The set number of an object key under `keys/`, if it is one.
pub fn seq_of(key: &str) -> Option<u32> {
    let digits = key.strip_prefix("keys/")?;
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

impl KeySet {
    /// Set `seq` after `previous` (its bytes' hash), wrapping `secret` to `recipients`.
    pub fn new(
        repo: &str,
        seq: u32,
        previous: &str,
        recipients: &[Recipient],
        secret: &RepoSecret,
    ) -> anyhow::Result<KeySet> {
        let mut fingerprints: Vec<String> = recipients.iter().map(Recipient::fingerprint).collect();
        fingerprints.sort();
        Ok(KeySet {
            format: VERSION,
            repo: repo.to_string(),
            seq,
            previous: previous.to_string(),
            created: crate::time::now_secs(),
            recipients: fingerprints,
            secret: crate::hex::encode(&crate::keys::encrypt(recipients, secret.bytes())?),
        })
    }

    /// The stored object: JSON and its MAC.
    pub fn seal(&self, secret: &RepoSecret) -> Vec<u8> {
        let mut object = serde_json::to_vec(self).unwrap_or_default();
        let mac = secret.record_mac(&key(self.seq), &object);
        object.extend_from_slice(&mac);
        object
    }

    /// Decodes a stored object without checking its MAC (see [`KeySet::verify`]).
    pub fn decode(object: &[u8]) -> Result<KeySet, DecodeError> {
        let json =
            object.len().checked_sub(MAC_LEN).map(|n| &object[..n]).ok_or_else(|| malformed("key set: too short"))?;
        let set: KeySet = serde_json::from_slice(json).map_err(|e| malformed(format!("key set: {e}")))?;
        if set.format != VERSION {
            return Err(DecodeError::Version(set.format));
        }
        Ok(set)
    }

    /// Checks a stored object's MAC under `secret`, for the key it is stored under.
    pub fn verify(object: &[u8], secret: &RepoSecret) -> Result<KeySet, DecodeError> {
        let set = Self::decode(object)?;
        let (json, mac) = object.split_at(object.len() - MAC_LEN);
        let expected = blake3::Hash::from(secret.record_mac(&key(set.seq), json));
        if expected != blake3::Hash::from(<[u8; 32]>::try_from(mac).unwrap_or_default()) {
            return Err(DecodeError::Mac);
        }
        Ok(set)
    }

    /// Opens the secret with the restorer's identity and checks the MAC with it.
    pub fn open(object: &[u8], identity: &Identity) -> Result<(KeySet, RepoSecret), DecodeError> {
        let set = Self::decode(object)?;
        let ct = crate::hex::decode(&set.secret).ok_or_else(|| malformed("key set: secret is not hex"))?;
        let plain = identity.decrypt(&ct)?;
        let bytes: [u8; SECRET_LEN] =
            plain.try_into().map_err(|_| malformed("key set: secret has the wrong length"))?;
        let secret = RepoSecret::from_bytes(bytes);
        Self::verify(object, &secret)?;
        Ok((set, secret))
    }
}

/// Opens the repository secret with a restorer's `identity`: from `coffer.repo`
/// (`record`), or else from the newest key set whose record the identity opens
/// (`sets()`: each set's number and stored bytes, read only when the record does not
/// open) and whose chain holds under that secret: every earlier set's MAC, each linked
/// to the one before by its hash, the first to `coffer.repo`. A set forged later than a
/// genuine one fails the chain; the caller checks the secret against the repository's
/// pin too ([`crate::pin::Pin::of`] of `record` and the secret), which a set forged
/// without the secret cannot pass.
pub fn open_secret(
    record: &[u8],
    identity: &Identity,
    sets: impl FnOnce() -> anyhow::Result<Vec<(u32, Vec<u8>)>>,
) -> anyhow::Result<(RepoRecord, RepoSecret)> {
    let first = match RepoRecord::open(record, identity) {
        Ok(opened) => return Ok(opened),
        Err(e) => e,
    };
    let decoded = RepoRecord::decode(record)?;
    let mut sets = sets()?;
    sets.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    for (seq, object) in &sets {
        if let Ok((set, secret)) = KeySet::open(object, identity)
            && set.seq == *seq
            && set.repo == decoded.id
            && chain_holds(record, &sets, *seq, &secret)
        {
            return Ok((decoded, secret));
        }
    }
    match sets.is_empty() {
        true => Err(first),
        false => Err(first.context(format!("nor does it open any of the {} key sets added since", sets.len()))),
    }
}

/// Whether sets 1 to `upto` are all there, each authentic under `secret` and linked to
/// the one before it by hash (set 1 to the repository record).
fn chain_holds(record: &[u8], sets: &[(u32, Vec<u8>)], upto: u32, secret: &RepoSecret) -> bool {
    let mut previous = blake3::hash(record);
    for seq in 1..=upto {
        let Some((_, object)) = sets.iter().find(|(s, _)| *s == seq) else { return false };
        match KeySet::verify(object, secret) {
            Ok(set) if set.seq == seq && set.previous == previous.to_hex().as_str() => previous = blake3::hash(object),
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_opens_with_its_keys_and_proves_itself_with_the_secret() {
        let dir = std::env::temp_dir().join(format!("coffer-keyset-{}", crate::hex::random(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let r = crate::keys::parse_recipient(&crate::keys::keygen(&dir.join("id.txt")).unwrap()).unwrap();
        let identity = Identity::load(&dir.join("id.txt")).unwrap();
        let secret = RepoSecret::from_bytes([9; 32]);
        let set = KeySet::new("repo", 1, "abc", std::slice::from_ref(&r), &secret).unwrap();
        assert_eq!(set.recipients, [r.fingerprint()]);
        let object = set.seal(&secret);
        let (opened, s) = KeySet::open(&object, &identity).unwrap();
        assert_eq!((opened, s.bytes()), (set.clone(), secret.bytes()));
        assert_eq!(KeySet::verify(&object, &secret).unwrap(), set);
        // Another secret's MAC, a changed byte, a truncation: refused.
        assert!(matches!(KeySet::verify(&object, &RepoSecret::from_bytes([1; 32])), Err(DecodeError::Mac)));
        let mut changed = object.clone();
        changed[10] ^= 1;
        assert!(KeySet::verify(&changed, &secret).is_err());
        assert!(KeySet::decode(&object[..10]).is_err());
        assert_eq!((seq_of(&key(12)), seq_of("keys/12"), seq_of("keys/0000a1")), (Some(12), None, None));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
