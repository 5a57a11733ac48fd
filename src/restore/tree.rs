//! A snapshot's entry stream, read back from the target: each chunk located through the
//! catalog, its pack fetched by recorded version, checked against its content hash,
//! decrypted, and the chunk verified against its keyed hash. Used by restore and verify.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::sync::Arc;

use anyhow::{Result, anyhow};

use crate::chunk_id::ChunkId;
use crate::format::entry::{ChunkedStream, EntryReader};
use crate::format::entry_check::{Refused, TreeCheck};
use crate::format::pack;
use crate::repo::{Repo, Restorer};

/// A decrypted pack, by its hash.
pub type Pack = (String, Arc<Vec<u8>>);

/// Reads single chunks, keeping the last decrypted pack (a stream's chunks are stored
/// together).
pub struct ChunkReader<'a> {
    repo: &'a Repo<Restorer>,
    last: Option<Pack>,
    /// The packs the snapshot being read was made with: where a chunk is stored more
    /// than once, its location there is read (its key set's keys can read it).
    made_with: Option<&'a HashSet<i64>>,
}

impl<'a> ChunkReader<'a> {
    /// Reads a snapshot's chunks from the packs it was made with (`made_with`), where known.
    pub fn new(repo: &'a Repo<Restorer>, made_with: Option<&'a HashSet<i64>>) -> Self {
        ChunkReader { repo, last: None, made_with }
    }

    /// As [`ChunkReader::new`], holding `pack`, the decrypted pack an earlier reader kept.
    pub fn with_pack(repo: &'a Repo<Restorer>, made_with: Option<&'a HashSet<i64>>, pack: Option<Pack>) -> Self {
        ChunkReader { repo, last: pack, made_with }
    }

    /// The decrypted pack it holds, for the next reader.
    pub fn into_pack(self) -> Option<Pack> {
        self.last
    }

    /// A chunk's plaintext, verified.
    pub fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self
            .repo
            .catalog
            .chunk_location(self.repo.read_target().id, id, self.made_with)?
            .ok_or_else(|| anyhow!("chunk {id} is not in the catalog"))?;
        let key = crate::format::pack_key(&loc.pack_hash);
        let plain = match &self.last {
            Some((hash, plain)) if *hash == loc.pack_hash => plain.clone(),
            _ => {
                let ct = crate::runtime::block_on(self.repo.read_target().get(
                    &key,
                    loc.pack_version.as_deref(),
                    loc.pack_size,
                ))?;
                let plain = match pack::open(&ct, &loc.pack_hash, self.repo.identity()) {
                    Ok(plain) => Arc::new(plain),
                    Err(e) => {
                        // Damaged, not unreachable: the next backup stores its chunks again.
                        if e.is_damage() {
                            self.repo.catalog.mark_damaged(&loc.pack_hash, &e.to_string())?;
                        }
                        return Err(anyhow!("{key}: {e}"));
                    }
                };
                self.last = Some((loc.pack_hash.clone(), plain.clone()));
                plain
            }
        };
        pack::verified_blob(&plain, &loc.blob(*id), self.repo.secret()).map_err(|e| anyhow!("{key}: {e}"))
    }

    /// The entry stream made of `tree`'s chunks, read as it is consumed.
    pub fn stream<'r>(&'r mut self, tree: &'r [ChunkId]) -> impl BufRead + 'r {
        let limits = self.repo.limits;
        let fetch = |id: &ChunkId| self.chunk(id).map_err(|e| std::io::Error::other(format!("{e:#}")));
        BufReader::new(crate::format::entry::Capped::new(ChunkedStream::new(tree.iter().copied(), fetch), &limits))
    }
}

/// Most refused entries named per snapshot in reports; the rest are counted.
pub const REFUSALS_NAMED: usize = 20;

/// What a snapshot's file list says of itself, read whole.
#[derive(Debug, Default)]
pub struct ListCheck {
    /// Entries a restore refuses.
    pub refused: Refused,
    /// Files whose chunks do not add up to their size (the first ones, and how many).
    pub wrong_sizes: Vec<String>,
    pub wrong_size_count: u64,
}

/// Runs a whole entry stream through the restore's rules, and checks each file's size
/// against its chunks' lengths (`chunk_size`: a chunk's plaintext length, `None` when it
/// is in no pack the catalog knows).
pub fn check_list(
    stream: impl BufRead,
    limits: &crate::format::entry::Limits,
    mut chunk_size: impl FnMut(&ChunkId) -> Option<u64>,
) -> Result<ListCheck> {
    let mut check = TreeCheck::default();
    let mut out = ListCheck::default();
    for entry in EntryReader::with_limits(stream, limits)? {
        let entry = entry?;
        if let Err(why) = check.check(&entry) {
            out.refused.add(&entry.path, why, REFUSALS_NAMED);
        }
        if entry.kind != crate::format::entry::Kind::File {
            continue;
        }
        let sizes: Option<u64> = entry.chunks.iter().map(&mut chunk_size).sum();
        if let Some(total) = sizes
            && total != entry.size
        {
            out.wrong_size_count += 1;
            if out.wrong_sizes.len() < REFUSALS_NAMED {
                let path = crate::escape::printable(&entry.path);
                out.wrong_sizes
                    .push(format!("file `{path}`: its chunks hold {total} bytes, its entry says {}", entry.size));
            }
        }
    }
    Ok(out)
}
