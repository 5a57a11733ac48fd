//! Every format coffer writes to a target, in one place, each with a version.
//!
//! | object key | format | encrypted | module |
//! | --- | --- | --- | --- |
//! | `coffer.repo` | repository record v1: JSON; the repository secret inside is an age stream to the recipients | secret only | [`repo`] |
//! | `packs/<id[0..2]>/<id>` | pack v1: one age stream of `blob… trailer`; `id` = blake3 of the ciphertext | yes | [`pack`] |
//! | `snapshots/<job>/<id>` | snapshot record v1: age stream of JSON, then a 32-byte MAC keyed by the repository secret | yes | [`snapshot`] |
//! | (blobs in packs) | entry stream v1: JSON lines describing the files of a snapshot, chunked like file data | yes | [`entry`] |
//!
//! Decoders never panic on malformed input and never allocate more than the input's size.

pub mod entry;
pub mod pack;
pub mod repo;
pub mod snapshot;

use std::fmt;

/// A chunk's id: the keyed blake3 hash of its plaintext (see [`crate::keys::RepoSecret::chunk_id`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let b = crate::hex::decode(s)?;
        Some(ChunkId(b.try_into().ok()?))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &crate::hex::encode(&self.0)[..12])
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::encode(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChunkId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected a 64-digit hex chunk id"))
    }
}

/// A pack's id: the blake3 hash of its ciphertext, so anyone can check a pack's
/// integrity without any key.
pub fn pack_id(ciphertext: &[u8]) -> String {
    crate::hex::encode(blake3::hash(ciphertext).as_bytes())
}

pub fn pack_key(pack_id: &str) -> String {
    format!("packs/{}/{}", &pack_id[..2], pack_id)
}

pub fn snapshot_key(job: &str, id: &str) -> String {
    format!("snapshots/{job}/{id}")
}

pub const REPO_KEY: &str = "coffer.repo";

/// Errors of the decoders: what was malformed, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Malformed(String),
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("authentication failed (MAC mismatch): the record was altered or forged")]
    Mac,
    #[error("cannot decrypt: {0}")]
    Decrypt(#[from] age::DecryptError),
}

pub fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}
