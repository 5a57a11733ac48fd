//! Pack v2 (v1 is still read).
//!
//! Plaintext layout, encrypted as a single age stream to every recipient:
//! ```text
//! v2: blob 0 | blob 1 | … | blob n-1 | table: n × entry | n: u32 LE | key set: u32 LE | "CPK2"
//! v1: blob 0 | blob 1 | … | blob n-1 | table: n × entry | n: u32 LE | "CPK1"
//! entry = chunk id (32) | offset u64 LE | length u32 LE | raw length u32 LE | flags u8 (1 = zstd)
//! ```
//! The key set is the repository's set of recipients the pack is encrypted to
//! ([`super::keyset`]; a v1 pack is set 0's): `recover` learns from it which keys can
//! read the pack. The provider sees only the size of the whole pack, never the size of
//! a chunk.

use super::{ChunkId, DecodeError, malformed};

const MAGIC_V1: &[u8; 4] = b"CPK1";
const MAGIC: &[u8; 4] = b"CPK2";
/// The bytes of one blob table entry.
pub const ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 1;
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

    /// The pack's plaintext size so far: its data and the table that will follow it
    /// (a pack of tiny files has a table as large as its data).
    pub fn len(&self) -> usize {
        self.data.len() + self.blobs.len() * ENTRY_LEN + 12
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// The plaintext of the pack, encrypted to key set `keyset`, and its blob table.
    pub fn finish(mut self, keyset: u32) -> (Vec<u8>, Vec<BlobEntry>) {
        write_entries(&self.blobs, &mut self.data);
        self.data.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        self.data.extend_from_slice(&keyset.to_le_bytes());
        self.data.extend_from_slice(MAGIC);
        (self.data, self.blobs)
    }
}

/// The most bytes a stored pack can have, for packs of `pack_size` bytes and chunks of
/// at most `chunk_max`. The packer closes a pack once its data and table reach its size,
/// so the last blob may overshoot by a chunk; packs written before the table counted
/// (tables of tiny files) get as much again. Then age's framing (16 bytes per 64 KiB).
/// What a target serves beyond this is not a pack coffer wrote.
pub fn max_stored(pack_size: u64, chunk_max: u32) -> u64 {
    let plain = 2 * (pack_size + u64::from(chunk_max)) + (1 << 20);
    plain + plain / 4096 + (64 << 10)
}

/// Reads the blob table of a decrypted pack, checking every entry lies within the data.
/// (The catalog already holds the table; this is how the bucket alone is read back.)
pub fn read_trailer(plain: &[u8]) -> Result<Vec<BlobEntry>, DecodeError> {
    Ok(read_table(plain)?.0)
}

/// The blob table of a decrypted pack and the key set it is encrypted to (0 for v1).
pub fn read_table(plain: &[u8]) -> Result<(Vec<BlobEntry>, u32), DecodeError> {
    let u32_at = |at: usize| u32::from_le_bytes(plain[at..at + 4].try_into().unwrap_or_default());
    let n = plain.len();
    let (count_at, keyset) = match plain.get(n.saturating_sub(4)..) {
        Some(m) if m == MAGIC && n >= 12 => (n - 12, u32_at(n - 8)),
        Some(m) if m == MAGIC_V1 && n >= 8 => (n - 8, 0),
        _ => return Err(malformed("pack: missing trailer magic")),
    };
    let count = u32_at(count_at) as usize;
    let table_len = count.checked_mul(ENTRY_LEN).ok_or_else(|| malformed("pack: blob count overflows"))?;
    let table_start = count_at
        .checked_sub(table_len)
        .ok_or_else(|| malformed(format!("pack: trailer claims {count} blobs, more than the pack holds")))?;
    let mut blobs = Vec::with_capacity(count);
    for e in plain[table_start..count_at].chunks_exact(ENTRY_LEN) {
        let b = entry(e)?;
        exact_length(&b)?;
        match b.offset.checked_add(u64::from(b.length)) {
            Some(end) if end <= table_start as u64 => {}
            _ => {
                return Err(malformed(format!("pack: blob {} lies outside the pack's data", b.id)));
            }
        }
        blobs.push(b);
    }
    Ok((blobs, keyset))
}

/// Appends the table entries of `blobs` in the layout above (the catalog also keeps a
/// pack's chunks this way, until it indexes them).
pub fn write_entries(blobs: &[BlobEntry], out: &mut Vec<u8>) {
    for b in blobs {
        out.extend_from_slice(&b.id.0);
        out.extend_from_slice(&b.offset.to_le_bytes());
        out.extend_from_slice(&b.length.to_le_bytes());
        out.extend_from_slice(&b.raw_length.to_le_bytes());
        out.push(b.flags);
    }
}

/// Table entries written by [`write_entries`], without a pack around them.
pub fn read_entries(bytes: &[u8]) -> Result<Vec<BlobEntry>, DecodeError> {
    if !bytes.len().is_multiple_of(ENTRY_LEN) {
        let n = bytes.len();
        return Err(malformed(format!("blob table: {n} bytes, not a whole number of {ENTRY_LEN}-byte entries")));
    }
    bytes.chunks_exact(ENTRY_LEN).map(entry).collect()
}

/// One table entry (`e` is [`ENTRY_LEN`] bytes long).
fn entry(e: &[u8]) -> Result<BlobEntry, DecodeError> {
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
    Ok(b)
}

/// A stored blob is its chunk (raw) or decompresses to it: a raw blob's stored length is
/// its raw length, or the table lies about the chunk it holds (a reader that trusted
/// the raw length would hand out more or fewer bytes than the chunk has).
fn exact_length(b: &BlobEntry) -> Result<(), DecodeError> {
    if b.flags & FLAG_ZSTD == 0 && b.length != b.raw_length {
        return Err(malformed(format!(
            "blob {} is stored raw with {} bytes but claims {} bytes of chunk",
            b.id, b.length, b.raw_length
        )));
    }
    Ok(())
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
        return Err(DecodeError::Corrupt("content hash mismatch: the stored pack is corrupt or was replaced".into()));
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
    exact_length(b)?;
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
        if stored.len() != raw_length as usize {
            return Err(malformed("raw blob's length is not its chunk's"));
        }
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
        let (plain, table) = b.finish(3);
        assert_eq!(read_table(&plain).unwrap(), (table.clone(), 3));
        assert_eq!(read_trailer(&plain).unwrap(), table);
        assert_eq!(blob_bytes(&plain, table[1].offset, table[1].length).unwrap(), b"world!");
    }

    #[test]
    fn malformed_trailers_are_errors() {
        let mut b = PackBuilder::default();
        b.add(ChunkId([1; 32]), b"hello", 5, 0);
        let (plain, _) = b.finish(0);
        for cut in 0..plain.len() {
            let _ = read_trailer(&plain[cut..]);
            let _ = read_trailer(&plain[..cut]);
        }
        let mut huge = plain.clone();
        let n = huge.len();
        huge[n - 12..n - 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_trailer(&huge).is_err());
        let mut bad_offset = plain.clone();
        bad_offset[5 + 32] = 0xff;
        assert!(read_trailer(&bad_offset).is_err());
        // A raw blob whose table claims another length than it has (the forger's 0).
        let mut lying = plain.clone();
        lying[5 + 44..5 + 48].copy_from_slice(&0u32.to_le_bytes());
        let e = read_trailer(&lying).unwrap_err();
        assert!(e.to_string().contains("stored raw with 5 bytes but claims 0"), "{e}");
        let secret = crate::keys::RepoSecret::from_bytes([3; 32]);
        let b = BlobEntry { id: secret.chunk_id(b"hello"), offset: 0, length: 5, raw_length: 0, flags: 0 };
        assert!(verified_blob(&plain, &b, &secret).is_err());
        assert!(verified_blob(&plain, &BlobEntry { raw_length: 5, ..b }, &secret).is_ok());
        assert!(unpack_blob(b"garbage", 100, FLAG_ZSTD).is_err());
        assert!(unpack_blob(b"x", u32::MAX, FLAG_ZSTD).is_err());
    }
}
