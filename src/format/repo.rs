//! Repository record v1, stored once under `coffer.repo`.
//!
//! Plain JSON: format version, id, creation time, chunker parameters and the public
//! recipients, so anyone can see what the repository is; the repository secret inside
//! is an age stream (hex) to the recipients, so only the restorer's identity recovers it.

use serde::{Deserialize, Serialize};

use super::{DecodeError, malformed};
use crate::chunker::ChunkerParams;
use crate::keys::{Identity, RepoSecret, SECRET_LEN};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    pub format: u32,
    pub id: String,
    pub created: i64,
    pub chunker: ChunkerParams,
    pub recipients: Vec<String>,
    /// Hex of an age stream holding the 32-byte repository secret.
    pub secret: String,
}

impl RepoRecord {
    pub fn new(
        secret: &RepoSecret,
        recipients: &[crate::keys::Recipient],
        chunker: ChunkerParams,
    ) -> anyhow::Result<Self> {
        Ok(RepoRecord {
            format: VERSION,
            id: crate::hex::random(16),
            created: crate::time::now_secs(),
            chunker,
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            secret: crate::hex::encode(&crate::keys::encrypt(recipients, secret.bytes())?),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let r: RepoRecord = serde_json::from_slice(bytes).map_err(|e| malformed(format!("repository record: {e}")))?;
        if r.format != VERSION {
            return Err(DecodeError::Version(r.format));
        }
        r.chunker.validate().map_err(|e| malformed(format!("repository record: {e}")))?;
        Ok(r)
    }

    /// Decodes a stored record and recovers its secret with the restorer's identity, with
    /// an error that says why an identity does not fit.
    pub fn open(bytes: &[u8], identity: &Identity) -> anyhow::Result<(RepoRecord, RepoSecret)> {
        let record = RepoRecord::decode(bytes)?;
        let secret = record.open_secret(identity).map_err(|e| match e {
            DecodeError::Decrypt(age::DecryptError::NoMatchingKeys) => anyhow::anyhow!(
                "identity {} cannot open this repository: it is not one of its recipients ({})",
                identity.path.display(),
                record.recipients.join(", ")
            ),
            other => anyhow::anyhow!("cannot open the repository secret with {}: {other}", identity.path.display()),
        })?;
        Ok((record, secret))
    }

    /// Recovers the repository secret with the restorer's identity.
    pub fn open_secret(&self, identity: &Identity) -> Result<RepoSecret, DecodeError> {
        let ct = crate::hex::decode(&self.secret).ok_or_else(|| malformed("repository record: secret is not hex"))?;
        let plain = identity.decrypt(&ct)?;
        let bytes: [u8; SECRET_LEN] =
            plain.try_into().map_err(|_| malformed("repository record: secret has the wrong length"))?;
        Ok(RepoSecret::from_bytes(bytes))
    }
}
