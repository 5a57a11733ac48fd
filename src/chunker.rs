//! Content-defined chunking (FastCDC 2020) over any reader, with a reused buffer.
//!
//! Cut points depend only on the content near them, so an insertion shifts only the
//! chunks around it and the rest deduplicate. The gear table is seeded from the
//! repository secret so that chunk boundaries do not follow a public table.

use std::io::{self, Read};

use fastcdc::v2020::{FastCDC, Normalization};
use serde::{Deserialize, Serialize};

/// The largest raw chunk any repository may use (fastcdc's own upper bound).
pub const MAX_CHUNK_LIMIT: u32 = fastcdc::v2020::MAXIMUM_MAX as u32;

/// Fixed per repository (recorded in `coffer.repo`): changing them would stop dedup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min: 512 * 1024, avg: 1024 * 1024, max: 8 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::*;
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&(self.min as usize))
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&(self.avg as usize))
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&(self.max as usize))
            && self.min <= self.avg
            && self.avg <= self.max;
        if ok { Ok(()) } else { Err(format!("invalid chunker parameters {self:?}")) }
    }
}

/// Why chunking a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The source could not be read: report it for this file and go on.
    #[error("read error: {0}")]
    Read(#[from] io::Error),
    /// The consumer failed: the whole run stops.
    #[error(transparent)]
    Sink(anyhow::Error),
}

pub struct Chunker {
    params: ChunkerParams,
    seed: u64,
    buf: Vec<u8>,
}

impl Chunker {
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        Chunker { params, seed, buf: Vec::new() }
    }

    /// Splits `src` into chunks, calling `sink` with each in order. Returns the bytes read.
    pub fn chunk_stream<R: Read>(
        &mut self,
        mut src: R,
        mut sink: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> Result<u64, ChunkError> {
        let max = self.params.max as usize;
        if self.buf.len() < 2 * max {
            self.buf = vec![0u8; 2 * max];
        }
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            if !eof && end - start < max {
                self.buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while end < self.buf.len() {
                    match src.read(&mut self.buf[end..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => {
                            end += n;
                            total += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(ChunkError::Read(e)),
                    }
                }
            }
            if start == end {
                return Ok(total);
            }
            let window = &self.buf[start..end];
            let cdc = FastCDC::with_level_and_seed(
                window,
                self.params.min as usize,
                self.params.avg as usize,
                self.params.max as usize,
                Normalization::Level1,
                self.seed,
            );
            let (_, cut) = cdc.cut(0, window.len());
            sink(&window[..cut]).map_err(ChunkError::Sink)?;
            start += cut;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks(data: &[u8], params: ChunkerParams) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        // A reader that returns short reads, as pipes and sockets do.
        struct Short<'a>(&'a [u8]);
        impl Read for Short<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(self.0.len()).min(777_777);
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let n = Chunker::new(params, 42)
            .chunk_stream(Short(data), |c| {
                out.push(c.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(n as usize, data.len());
        out
    }

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let p = ChunkerParams { min: 4096, avg: 16384, max: 65536 };
        let data = pseudo_random(1_000_000, 7);
        let cs = chunks(&data, p);
        assert_eq!(cs.concat(), data);
        for c in &cs[..cs.len() - 1] {
            assert!(c.len() >= 4096 && c.len() <= 65536);
        }
        assert!(chunks(&[], p).is_empty());
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let p = ChunkerParams { min: 4096, avg: 16384, max: 65536 };
        let data = pseudo_random(2_000_000, 9);
        let mut edited = data.clone();
        edited.splice(1_000_000..1_000_000, b"inserted".iter().copied());
        let a = chunks(&data, p);
        let b = chunks(&edited, p);
        let same = b.iter().filter(|c| a.contains(c)).count();
        assert!(same + 3 >= b.len(), "{same} of {} chunks reused", b.len());
    }

    #[test]
    fn default_params_are_valid() {
        ChunkerParams::default().validate().unwrap();
        assert!(ChunkerParams { min: 10, avg: 5, max: 1 }.validate().is_err());
    }
}
