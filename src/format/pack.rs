//! Pack v1.
//!
//! Plaintext layout, encrypted as a single age stream to every recipient:
//! ```text
//! blob 0 | blob 1 | … | blob n-1 | table: n × entry | n: u32 LE | "CPK1"
//! entry = chunk id (32) | offset u64 LE | length u32 LE | raw length u32 LE | flags u8 (1 = zstd)
//! ```
//! The provider sees only the size of the whole pack, never the size of a chunk.

use super::{ChunkId, DecodeError, malformed};

const MAGIC: &[u8; 4] = b"CPK1";
const ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 1;
pub const FLAG_ZSTD: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    pub flags: u8,
}

/// Collects blobs in memory until the pack is sealed.
#[derive(Default)]
pub struct PackBuilder {
    data: Vec<u8>,
    blobs: Vec<BlobEntry>,
}

impl PackBuilder {
    /// A builder writing into `buffer` (emptied first), to reuse its memory.
    pub fn with_buffer(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        PackBuilder { data: buffer, blobs: Vec::new() }
    }

    pub fn add(&mut self, id: ChunkId, stored: &[u8], raw_length: u32, flags: u8) {
        self.blobs.push(BlobEntry {
            id,
            offset: self.data.len() as u64,
            length: stored.len() as u32,
            raw_length,
            flags,
        });
        self.data.extend_from_slice(stored);
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// The plaintext of the pack and its blob table.
    pub fn finish(mut self) -> (Vec<u8>, Vec<BlobEntry>) {
        for b in &self.blobs {
            self.data.extend_from_slice(&b.id.0);
            self.data.extend_from_slice(&b.offset.to_le_bytes());
            self.data.extend_from_slice(&b.length.to_le_bytes());
            self.data.extend_from_slice(&b.raw_length.to_le_bytes());
            self.data.push(b.flags);
        }
        self.data.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        self.data.extend_from_slice(MAGIC);
        (self.data, self.blobs)
    }
}

/// Reads the blob table of a decrypted pack, checking every entry lies within the data.
/// (The catalog already holds the table; this is how the bucket alone is read back.)
#[allow(dead_code)]
pub fn read_trailer(plain: &[u8]) -> Result<Vec<BlobEntry>, DecodeError> {
    if plain.len() < 8 || &plain[plain.len() - 4..] != MAGIC {
        return Err(malformed("pack: missing trailer magic"));
    }
    let count = u32::from_le_bytes(plain[plain.len() - 8..plain.len() - 4].try_into().unwrap_or_default()) as usize;
    let table_len = count.checked_mul(ENTRY_LEN).ok_or_else(|| malformed("pack: blob count overflows"))?;
    let table_start = (plain.len() - 8)
        .checked_sub(table_len)
        .ok_or_else(|| malformed(format!("pack: trailer claims {count} blobs, more than the pack holds")))?;
    let mut blobs = Vec::with_capacity(count);
    for e in plain[table_start..plain.len() - 8].chunks_exact(ENTRY_LEN) {
        let u32_at = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&e[32..40]);
        let b = BlobEntry {
            id: ChunkId(id),
            offset: u64::from_le_bytes(off),
            length: u32_at(40),
            raw_length: u32_at(44),
            flags: e[48],
        };
        if b.flags > FLAG_ZSTD {
            return Err(malformed(format!("pack: blob {} has unknown flags {}", b.id, b.flags)));
        }
        match b.offset.checked_add(u64::from(b.length)) {
            Some(end) if end <= table_start as u64 => {}
            _ => {
                return Err(malformed(format!("pack: blob {} lies outside the pack's data", b.id)));
            }
        }
        blobs.push(b);
    }
    Ok(blobs)
}

/// The stored bytes of a blob, bounds-checked against the pack.
pub fn blob_bytes(plain: &[u8], offset: u64, length: u32) -> Result<&[u8], DecodeError> {
    let start = usize::try_from(offset).map_err(|_| malformed("blob offset too large"))?;
    start
        .checked_add(length as usize)
        .and_then(|end| plain.get(start..end))
        .ok_or_else(|| malformed(format!("blob at {offset}+{length} lies outside the pack")))
}

/// A pack as stored: checked against its content hash (its id), then decrypted.
pub fn open(ciphertext: &[u8], id: &str, identity: &crate::keys::Identity) -> Result<Vec<u8>, DecodeError> {
    if super::pack_id(ciphertext) != id {
        return Err(malformed("content hash mismatch: the stored pack is corrupt or was replaced"));
    }
    Ok(identity.decrypt(ciphertext)?)
}

/// A chunk's plaintext out of a decrypted pack, checked against its keyed hash.
pub fn verified_blob(plain: &[u8], b: &BlobEntry, secret: &crate::keys::RepoSecret) -> Result<Vec<u8>, DecodeError> {
    with_verified_blob(plain, b, secret, <[u8]>::to_vec)
}

/// Calls `f` with a chunk's verified plaintext, without allocating per chunk: a raw blob
/// is a slice of the pack, a compressed one is decompressed into a buffer of the thread
/// (so `f` must not decode another blob itself).
pub fn with_verified_blob<T>(
    plain: &[u8],
    b: &BlobEntry,
    secret: &crate::keys::RepoSecret,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T, DecodeError> {
    let stored = blob_bytes(plain, b.offset, b.length)?;
    let check = |data: &[u8]| {
        if secret.chunk_id(data) != b.id {
            return Err(malformed(format!("chunk {} fails verification: the data is not what was backed up", b.id)));
        }
        Ok(())
    };
    if b.flags & FLAG_ZSTD == 0 {
        check(stored)?;
        return Ok(f(stored));
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        decompress_into(stored, b.raw_length, &mut buf)?;
        check(&buf)?;
        Ok(f(&buf))
    })
}

/// Turns a stored blob back into its plaintext; the caller verifies the chunk id.
pub fn unpack_blob(stored: &[u8], raw_length: u32, flags: u8) -> Result<Vec<u8>, DecodeError> {
    if flags & FLAG_ZSTD == 0 {
        return Ok(stored.to_vec());
    }
    let mut out = Vec::new();
    decompress_into(stored, raw_length, &mut out)?;
    Ok(out)
}

thread_local! {
    /// A decompression context per thread: making one per blob costs more than
    /// decompressing a small blob.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    /// The plaintext of the last compressed blob `with_verified_blob` decoded.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn decompress_into(stored: &[u8], raw_length: u32, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    // The capacity bound comes from the (authenticated) table; the chunker caps it at 8 MiB
    // by default and the format at 4 GiB, so refuse anything a chunker could not produce.
    if raw_length > crate::chunker::MAX_CHUNK_LIMIT {
        return Err(malformed(format!("blob raw length {raw_length} exceeds the chunk limit")));
    }
    out.clear();
    out.reserve_exact(raw_length as usize);
    let n = DCTX.with(|cell| {
        let mut ctx = cell.borrow_mut();
        let ctx = match &mut *ctx {
            Some(c) => c,
            None => ctx.insert(zstd::bulk::Decompressor::new().map_err(|e| malformed(format!("zstd: {e}")))?),
        };
        ctx.decompress_to_buffer(stored, out).map_err(|e| malformed(format!("blob does not decompress: {e}")))
    })?;
    if n != raw_length as usize || out.len() != n {
        return Err(malformed("blob decompressed to the wrong length"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trip() {
        let mut b = PackBuilder::default();
        b.add(ChunkId([1; 32]), b"hello", 5, 0);
        b.add(ChunkId([2; 32]), b"world!", 9, FLAG_ZSTD);
        let (plain, table) = b.finish();
        assert_eq!(read_trailer(&plain).unwrap(), table);
        assert_eq!(blob_bytes(&plain, table[1].offset, table[1].length).unwrap(), b"world!");
    }

    #[test]
    fn malformed_trailers_are_errors() {
        let mut b = PackBuilder::default();
        b.add(ChunkId([1; 32]), b"hello", 5, 0);
        let (plain, _) = b.finish();
        for cut in 0..plain.len() {
            let _ = read_trailer(&plain[cut..]);
            let _ = read_trailer(&plain[..cut]);
        }
        let mut huge = plain.clone();
        let n = huge.len();
        huge[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_trailer(&huge).is_err());
        let mut bad_offset = plain.clone();
        bad_offset[5 + 32] = 0xff;
        assert!(read_trailer(&bad_offset).is_err());
        assert!(unpack_blob(b"garbage", 100, FLAG_ZSTD).is_err());
        assert!(unpack_blob(b"x", u32::MAX, FLAG_ZSTD).is_err());
    }
}
