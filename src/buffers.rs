//! Buffers handed round the backup pipeline and back, instead of allocated for every
//! chunk (reader → compressors → packer) and every pack (packer → uploader).
//!
//! `main` sets malloc's mmap threshold at a chunk (1 MiB), so that freed chunks go back to
//! the system; the price is that every fresh chunk or pack buffer is a fresh mapping whose
//! pages fault in one by one, which cost as much CPU as copying the data into it. Buffers
//! of one size class are kept here instead, a few at a time: smaller ones come from
//! malloc's heaps, larger ones are rare.

use std::sync::Mutex;

/// A pool of buffers of one size class.
pub struct Buffers {
    /// Smaller requests come from malloc's heaps, not from here.
    smallest: usize,
    /// Every pooled buffer's capacity; larger requests are allocated.
    class: usize,
    /// How many free buffers are kept.
    keep: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

impl Buffers {
    /// For chunks: from the mmap threshold (1 MiB) to a large chunk or its compressed form
    /// (zstd's bound adds a little); eight kept, at most ~17 MiB.
    pub fn for_chunks() -> Self {
        Buffers { smallest: 1 << 20, class: (2 << 20) + (64 << 10), keep: 8, free: Mutex::default() }
    }

    /// For sealed packs of `pack_size`, whatever the last blob adds: one kept, the next
    /// pack's while the last one uploads.
    pub fn for_packs(pack_size: usize) -> Self {
        Buffers { smallest: 1 << 20, class: pack_size + pack_size / 4 + (1 << 20), keep: 1, free: Mutex::default() }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn empty(&self, capacity: usize) -> Vec<u8> {
        if !(self.smallest..=self.class).contains(&capacity) {
            return Vec::with_capacity(capacity);
        }
        let kept = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        kept.unwrap_or_else(|| Vec::with_capacity(self.class))
    }

    /// A buffer holding a copy of `data`.
    pub fn copy_of(&self, data: &[u8]) -> Vec<u8> {
        let mut buf = self.empty(data.len());
        buf.extend_from_slice(data);
        buf
    }

    /// Takes a buffer back for reuse, if it is of the pooled class and few are kept.
    pub fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() != self.class {
            return;
        }
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sized_buffers_are_reused_and_others_are_not() {
        let pool = Buffers::for_chunks();
        let a = pool.copy_of(&vec![7u8; 1_500_000]);
        assert_eq!((a.len(), a.capacity()), (1_500_000, pool.class));
        let ptr = a.as_ptr();
        pool.give_back(a);
        let b = pool.empty(1 << 20);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 0), "the same buffer, emptied");
        let small = pool.copy_of(b"tiny");
        assert!(small.capacity() < pool.smallest);
        pool.give_back(small);
        assert!(pool.free.lock().unwrap().is_empty());
        for _ in 0..pool.keep + 4 {
            pool.give_back(Vec::with_capacity(pool.class));
        }
        assert_eq!(pool.free.lock().unwrap().len(), pool.keep);
    }
}
