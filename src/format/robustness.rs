//! The decoders against malformed input. Every on-target format is read back from a
//! bucket an attacker may have written to, so each decoder must turn any input into a
//! value or an error: never a panic, never an allocation the input does not justify.
//!
//! A deterministic mutation fuzzer: the stored format samples (`tests/fixtures/formats`,
//! the corpus) are mutated many thousand times — bit flips, boundary integers written
//! over length fields, truncation, deletion, duplication, insertion, splicing — and fed
//! to the decoders, with the largest single allocation each made tracked by the test
//! allocator below. `COFFER_FUZZ_ITERATIONS` runs it longer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::entry::{EntryReader, safe_relative};
use super::pack;
use super::repo::RepoRecord;
use super::snapshot;
use crate::keys::{Identity, RepoSecret};

/// The test binary's allocator: the system's, noting per thread the largest request.
pub struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// No decoder may ask for more than this at once, whatever the input (the largest
/// legitimate request is a chunk of at most `MAX_CHUNK_LIMIT`).
const ALLOCATION_LIMIT: usize = 64 << 20;

/// xorshift64: reproducible mutations from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Integers that break length and count fields.
const BOUNDARIES: [u32; 8] = [0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_fffe, 0xffff_ffff];

fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0, 0xff, b'"', b'\n', b'{', b'9'][rng.below(6)];
            }
            2 if len >= 4 => {
                // Half of these land in the last 128 bytes, where packs keep their table.
                let i = if rng.below(2) == 0 { rng.below(len - 3) } else { len - 4 - rng.below((len - 3).min(128)) };
                v[i..i + 4].copy_from_slice(&BOUNDARIES[rng.below(BOUNDARIES.len())].to_le_bytes());
            }
            3 => v.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                v.drain(a.min(b)..a.max(b));
            }
            5 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let piece = v[a.min(b)..a.max(b)].to_vec();
                let at = rng.below(len);
                v.splice(at..at, piece);
            }
            6 => {
                let at = rng.below(len + 1);
                let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                v.splice(at..at, junk);
            }
            _ => {
                // Splice: the head of this input onto the tail of another sample.
                let (a, b) = (rng.below(len + 1), rng.below(other.len() + 1));
                v.truncate(a);
                v.extend_from_slice(&other[b..]);
            }
        }
    }
    v
}

fn iterations() -> usize {
    std::env::var("COFFER_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

/// `COFFER_FUZZ_SEED` explores other mutations than CI's fixed default.
fn seed() -> u64 {
    std::env::var("COFFER_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x00c0_ffee)
}

/// Feeds `iterations() * rounds` mutations of each corpus item to `decode`; fails on a panic or an
/// oversized allocation, naming the input (hex) so that it can become a corpus item.
fn fuzz(name: &str, corpus: &[Vec<u8>], rounds: usize, decode: impl Fn(&[u8])) {
    let mut rng = Rng((seed() ^ name.len() as u64) | 1);
    for item in corpus {
        decode(item);
    }
    let (inputs, started) = (iterations() * rounds * corpus.len(), std::time::Instant::now());
    for i in 0..inputs {
        let input = mutate(&corpus[i % corpus.len()], &corpus[(i + 1) % corpus.len()], &mut rng);
        LARGEST.with(|l| l.set(0));
        let outcome = catch_unwind(AssertUnwindSafe(|| decode(&input)));
        let largest = LARGEST.with(|l| l.get());
        let shown: String = input.iter().take(256).map(|b| format!("{b:02x}")).collect();
        assert!(outcome.is_ok(), "{name}: the decoder panicked on input {i} ({} bytes): {shown}", input.len());
        assert!(largest <= ALLOCATION_LIMIT, "{name}: input {i} made it allocate {largest} bytes: {shown}");
    }
    eprintln!("{name}: {inputs} inputs in {:.1?}, no panic, no oversized allocation", started.elapsed());
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats").join(name)).unwrap()
}

fn identity() -> Identity {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats/identity.txt");
    Identity::parse(&sample("identity.txt"), &path).unwrap()
}

#[test]
fn pack_decoders_reject_malformed_packs() {
    let id = identity();
    let plain = [id.decrypt(&sample("pack-v1.age")).unwrap(), id.decrypt(&sample("pack-v2.age")).unwrap()];
    // Cheap to decode and full of length fields: many rounds.
    fuzz("pack plaintext", &plain, 10, |p| {
        if let Ok((table, _)) = pack::read_table(p) {
            for b in table {
                if let Ok(stored) = pack::blob_bytes(p, b.offset, b.length) {
                    let _ = pack::unpack_blob(stored, b.raw_length, b.flags);
                }
            }
        }
    });
    // The age layer in front of it: a tampered ciphertext is an error.
    fuzz("pack ciphertext", &[sample("pack-v1.age")], 1, |c| {
        let _ = id.decrypt(c);
    });
}

#[test]
fn entry_stream_decoder_rejects_malformed_streams() {
    fuzz("entry stream", &[sample("entries-v1.jsonl")], 1, |s| {
        if let Ok(reader) = EntryReader::new(s) {
            for e in reader.flatten() {
                let _ = safe_relative(&e.path);
            }
        }
    });
}

#[test]
fn repository_record_decoder_rejects_malformed_records() {
    let id = identity();
    fuzz("repository record", &[sample("repo-v1.json")], 1, |r| {
        if let Ok(rec) = RepoRecord::decode(r) {
            let _ = rec.open_secret(&id);
        }
    });
}

#[test]
fn key_set_decoder_rejects_malformed_sets() {
    let (id, secret) = (identity(), RepoSecret::from_bytes([7; 32]));
    let object = sample("keyset-v1.bin");
    fuzz("key set", std::slice::from_ref(&object), 1, |o| {
        if o != object.as_slice() {
            assert!(crate::format::keyset::KeySet::verify(o, &secret).is_err(), "a changed key set passed its MAC");
        }
        let _ = crate::format::keyset::KeySet::open(o, &id);
    });
}

#[test]
fn snapshot_record_decoders_reject_malformed_records() {
    const KEY: &str = "snapshots/sample/00112233aabbccdd";
    let (id, secret) = (identity(), RepoSecret::from_bytes([7; 32]));
    let object = sample("snapshot-v1.bin");
    // The MAC rejects any change to the object before the identity is needed...
    fuzz("snapshot object", std::slice::from_ref(&object), 1, |o| {
        if o != object.as_slice() {
            assert!(snapshot::open(o, KEY, &secret, &id).is_err(), "a changed record passed its MAC");
        }
    });
    // ...and the JSON behind it is parsed defensively all the same.
    let json = id.decrypt(&object[..object.len() - 32]).unwrap();
    fuzz("snapshot record", &[json], 1, |j| {
        let _ = snapshot::parse(j, KEY);
    });
}
