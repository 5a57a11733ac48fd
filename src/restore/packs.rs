//! Decoded packs for a restore. A few threads fetch packs by recorded version, check
//! them against their content hash and decrypt them, ahead of need and in the order the
//! restore will need them; a few recently used ones stay cached for chunks that files
//! share. With the whole sequence of reads known, the pack evicted is the one whose next
//! use is furthest away (Belady's choice, optimal for a known sequence).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};

use crate::format::pack;
use crate::keys::Identity;
use crate::store::Target;

/// Decoded packs kept for chunks shared between files.
const CACHE_BYTES: usize = 48 << 20;
/// Packs decoded ahead of the one the restore waits for (each holds a pack in memory).
const PREFETCH_WINDOW: usize = 1;
const FETCH_THREADS: usize = 2;

/// A decoded pack, or why it cannot be had.
pub type Plain = Result<Arc<Vec<u8>>, PackError>;

/// Why a pack cannot be had: the target did not give it, or what it gave is damaged.
#[derive(Debug, Clone)]
pub struct PackError {
    pub why: String,
    /// The content hash, the decryption or the format failed (not the transfer).
    pub damaged: bool,
}

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

pub struct Packs {
    shared: Arc<Fetch>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Cached packs: (index, plaintext, position of the next use).
    cache: Vec<(u32, Arc<Vec<u8>>, u64)>,
    cached_bytes: usize,
    /// Packs found unreadable, with why (never fetched twice).
    bad: HashMap<u32, PackError>,
    /// Packs fetched a second time because they had left the cache.
    refetched: usize,
}

struct Fetch {
    target: Target,
    identity: Arc<Identity>,
    /// Packs in order of first need: (hash, version). A pack's index is its position.
    schedule: Vec<super::plan::PackRef>,
    state: Mutex<FetchState>,
    wake: Condvar,
}

#[derive(Default)]
struct FetchState {
    /// Next schedule position to fetch.
    next: usize,
    /// Furthest position the restore has asked for; fetchers stay within a window of it.
    wanted: usize,
    ready: HashMap<usize, Plain>,
    taken: HashSet<usize>,
    stop: bool,
}

impl Fetch {
    /// Fetches a pack by version, checks its content hash, decrypts it.
    fn fetch(&self, i: usize) -> Plain {
        let error = |why: String, damaged| PackError { why, damaged };
        let Some((hash, version, size)) = self.schedule.get(i) else {
            return Err(error("no such pack".into(), false));
        };
        let key = crate::format::pack_key(hash);
        let ct = crate::runtime::block_on(self.target.get(&key, version.as_deref(), *size))
            .map_err(|e| error(format!("{e:#}"), false))?;
        pack::open(&ct, hash, &self.identity).map(Arc::new).map_err(|e| match e.is_damage() {
            true => error(e.to_string(), true),
            false => error(format!("{e}: {}", super::OTHER_KEYS), false),
        })
    }

    fn worker(&self) {
        loop {
            let i = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if st.stop || st.next >= self.schedule.len() {
                        return;
                    }
                    if st.next <= st.wanted + PREFETCH_WINDOW {
                        break;
                    }
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.next += 1;
                st.next - 1
            };
            let result = self.fetch(i);
            self.state.lock().unwrap_or_else(|p| p.into_inner()).ready.insert(i, result);
            self.wake.notify_all();
        }
    }
}

impl Packs {
    pub fn start(target: Target, identity: Arc<Identity>, schedule: Vec<super::plan::PackRef>) -> Packs {
        let shared = Arc::new(Fetch {
            target,
            identity,
            schedule,
            state: Mutex::new(FetchState::default()),
            wake: Condvar::new(),
        });
        let threads = (0..FETCH_THREADS)
            .map(|_| {
                let f = shared.clone();
                std::thread::spawn(move || f.worker())
            })
            .collect();
        Packs { shared, threads, cache: Vec::new(), cached_bytes: 0, bad: HashMap::new(), refetched: 0 }
    }

    /// The packs found damaged so far: (hash, why).
    pub fn damaged(&self) -> Vec<super::DamagedPack> {
        let hash = |i: &u32| self.shared.schedule.get(*i as usize).map(|(h, _, _)| h.clone());
        let damaged = self.bad.iter().filter(|(_, e)| e.damaged);
        damaged.filter_map(|(i, e)| Some(super::DamagedPack { pack: hash(i)?, why: e.why.clone() })).collect()
    }

    /// The object key of pack `i`, for messages.
    pub fn key(&self, i: u32) -> String {
        self.shared.schedule.get(i as usize).map_or_else(String::new, |(h, _, _)| crate::format::pack_key(h))
    }

    /// Pack `i`'s plaintext, verified; `next_use` is the position of its next use after
    /// this one (`u64::MAX`: none).
    pub fn get(&mut self, i: u32, next_use: u64) -> Plain {
        if let Some(k) = self.cache.iter().position(|c| c.0 == i) {
            // Its last use: it leaves the cache now instead of holding memory until it
            // is evicted (a fresh snapshot's packs are each read through once).
            if next_use == u64::MAX {
                let (_, plain, _) = self.cache.swap_remove(k);
                self.cached_bytes -= plain.len();
                return Ok(plain);
            }
            self.cache[k].2 = next_use;
            return Ok(self.cache[k].1.clone());
        }
        if let Some(why) = self.bad.get(&i) {
            return Err(why.clone());
        }
        let plain = self.wait_for(i as usize).unwrap_or_else(|| {
            self.refetched += 1;
            self.shared.fetch(i as usize)
        });
        let plain = plain.inspect_err(|why| {
            self.bad.insert(i, why.clone());
        })?;
        if next_use != u64::MAX {
            self.cached_bytes += plain.len();
            self.cache.push((i, plain.clone(), next_use));
            while self.cached_bytes > CACHE_BYTES && self.cache.len() > 1 {
                let victim = (0..self.cache.len()).max_by_key(|&k| self.cache[k].2).unwrap_or(0);
                let (_, old, _) = self.cache.swap_remove(victim);
                self.cached_bytes -= old.len();
            }
        }
        Ok(plain)
    }

    /// The prefetched result for schedule position `i`, or `None` if it was already taken
    /// (then the caller fetches it again itself).
    fn wait_for(&self, i: usize) -> Option<Plain> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.taken.contains(&i) || i >= self.shared.schedule.len() {
            return None;
        }
        if i > st.wanted {
            st.wanted = i;
            self.shared.wake.notify_all();
        }
        loop {
            if let Some(r) = st.ready.remove(&i) {
                st.taken.insert(i);
                return Some(r);
            }
            st = self.shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Packs {
    fn drop(&mut self) {
        if !self.shared.schedule.is_empty() {
            tracing::debug!(packs = self.shared.schedule.len(), refetched = self.refetched, "restore pack reads");
        }
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk_id::ChunkId;
    use crate::store::{TargetConfig, TargetId};
    use age::secrecy::ExposeSecret;
    use std::os::unix::fs::OpenOptionsExt;

    /// Three one-chunk packs stored in a `file://` target, and a restore's view of them.
    fn packs() -> Packs {
        let dir = std::env::temp_dir().join(format!("coffer-packs-{}", crate::hex::random(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let identity = age::x25519::Identity::generate();
        let key_file = dir.join("identity.txt");
        let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&key_file).unwrap();
        std::io::Write::write_all(&mut f, identity.to_string().expose_secret().as_bytes()).unwrap();
        let cfg = TargetConfig {
            name: "t".into(),
            url: format!("file://{}", dir.join("target").display()),
            upload_concurrency: 1,
            lock_mode: None,
            retry_budget: std::time::Duration::from_secs(1),
            max_lock_days: 1,
            options: Arc::new(crate::store::config::NoOptions),
        };
        let target = crate::store::Target::open(&cfg, TargetId(1)).unwrap();
        let recipients = [crate::keys::Recipient::X25519(identity.to_public())];
        let schedule = (0..3u8)
            .map(|n| {
                let mut builder = pack::PackBuilder::default();
                builder.add(ChunkId([n; 32]), &[n; 1000], 1000, 0);
                let (plain, _) = builder.finish(1);
                let mut ciphertext = Vec::new();
                crate::keys::encrypt_into(&recipients, &plain, &mut ciphertext).unwrap();
                let hash = crate::format::pack_id(&ciphertext);
                let size = ciphertext.len() as u64;
                let key = crate::format::pack_key(&hash);
                crate::runtime::block_on(target.put_new(&key, ciphertext.into(), 0)).unwrap();
                (hash, None, size)
            })
            .collect();
        Packs::start(target, Arc::new(Identity::load(&key_file).unwrap()), schedule)
    }

    #[test]
    fn a_pack_leaves_the_cache_at_its_last_use() {
        let mut packs = packs();
        // Pack 0 read at positions 0, 1 and 3; pack 1 at 2; pack 2 at 4.
        packs.get(0, 1).unwrap();
        packs.get(0, 3).unwrap();
        assert_eq!(packs.cache.len(), 1, "kept for its next use");
        packs.get(1, u64::MAX).unwrap();
        assert_eq!(packs.cache.len(), 1, "a pack read once is never cached");
        packs.get(0, u64::MAX).unwrap();
        assert!(packs.cache.is_empty() && packs.cached_bytes == 0, "its last use frees it");
        packs.get(2, u64::MAX).unwrap();
        assert_eq!(packs.refetched, 0);
    }
}
