//! The tripwire's eyes during a run: an [`Observer`] that counts what changed against the
//! last snapshot, and measures, for each file read, its type and the entropy of a sample
//! of it, beside the previous version's. What it keeps in memory grows with the
//! directories and the files read, never with their bytes.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::catalog::Catalog;
use crate::chunk_id::ChunkId;
use crate::format::entry::Entry;
use crate::observer::{Change, Observer};

use super::traits::{Class, Traits};

/// What one run changed, as the tripwire measures it: the run's line in the job's
/// baseline (stored as JSON, read back as input).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measures {
    /// Files in this snapshot, and in the previous one.
    pub files: u64,
    pub previous: u64,
    pub added: u64,
    pub modified: u64,
    pub deleted: u64,
    /// New files named like a previous file plus an extension (`a.txt` → `a.txt.locked`).
    pub renamed: u64,
    /// Files deleted from directories that still hold files (a wiper's pattern; a
    /// removed folder takes its directories with it), and how many directories.
    pub deleted_in_kept_dirs: u64,
    pub dirs_hit: u64,
    /// Changed files whose previous sample had low entropy (text, most uncompressed
    /// formats), and of those, the ones whose sample now looks random or encoded.
    pub low_entropy_before: u64,
    pub high_entropy: u64,
    /// Changed files whose type can be judged (a known previous type, or an extension
    /// that promises one), and of those, the ones whose type changed or contradicts it.
    pub typed: u64,
    pub retyped: u64,
    /// Modified files of 4 chunks or more, and of those, the ones rewritten whole (no
    /// chunk in common) at about the same size: what encryption in place does.
    pub large: u64,
    pub rewritten: u64,
    /// New files with an extension the previous snapshot did not have.
    pub new_extension: u64,
    /// Copies of the most repeated new small file (same name, same bytes) across
    /// directories: what a ransom note left in every folder looks like.
    pub notes: u64,
    /// New small text files naming a Tor `.onion` address.
    pub onion: u64,
    /// Canary files that changed or went.
    pub canaries: Vec<String>,
    /// How many files of this snapshot have each extension (the 1024 most common).
    pub extensions: BTreeMap<String, u64>,
}

/// Bytes sampled from a file: its head, and a block at each MiB further on.
const BLOCK: usize = 4096;
const STRIDE: u64 = 1 << 20;
const MAX_BLOCKS: usize = 64;
/// Files of this size or less are candidates for ransom notes.
const NOTE_MAX: u64 = 64 * 1024;
/// Bounds on what grows with distinct names: past them, new names are not tracked.
const MAX_EXTENSIONS: usize = 1024;
const MAX_NOTES: usize = 100_000;

/// The tally of one run of a job.
pub struct Tally {
    job: String,
    /// The job's first run: nothing to compare new files with.
    first: bool,
    /// Its own connection, opened when first needed, to read the traits of the files a
    /// new file may have been renamed from.
    state_dir: std::path::PathBuf,
    catalog: Option<Catalog>,
    /// Canaries, by their path in the snapshot.
    canaries: HashMap<Vec<u8>, String>,
    sample: Vec<u8>,
    /// Whether `sample` belongs to the file being read.
    reading: bool,
    measures: Measures,
    previous_extensions: HashSet<String>,
    /// Parent directories of this snapshot's files (64-bit hashes), and the last one seen
    /// (a directory's files come one after another: hashed once).
    dirs: HashSet<u64>,
    last_dir: Vec<u8>,
    dirs_hit: HashSet<u64>,
    notes: HashMap<(Vec<u8>, ChunkId), u64>,
    /// The traits of the files read (by path key), in the order they were read, for the
    /// file cache.
    read: Option<TraitLog>,
    /// A catalog read that failed: the verdict cannot be trusted.
    error: Option<String>,
}

/// The traits of the files read, in the order they were read: 10 bytes a file (path key,
/// traits) in a scratch file ([`crate::spill`]), not in memory (16 MB at a million files).
pub struct TraitLog(crate::spill::Spill<10>);

impl TraitLog {
    fn new(state_dir: &std::path::Path) -> anyhow::Result<TraitLog> {
        Ok(TraitLog(crate::spill::Spill::new(crate::state_dir::StateDir(state_dir), "traits")?))
    }

    fn push(&mut self, key: u64, traits: u16) -> std::io::Result<()> {
        let mut record = [0u8; 10];
        record[..8].copy_from_slice(&key.to_le_bytes());
        record[8..].copy_from_slice(&traits.to_le_bytes());
        self.0.push(&record)
    }

    /// The entries written, from the first.
    fn read_back(self) -> anyhow::Result<TraitsRead> {
        Ok(TraitsRead { input: self.0.read_back()?, error: None })
    }
}

/// The entries of a [`TraitLog`], in order. A read that fails ends them, and says why in
/// `error`.
pub struct TraitsRead {
    input: crate::spill::SpillRead<10>,
    pub error: Option<std::io::Error>,
}

impl Iterator for TraitsRead {
    type Item = (u64, u16);

    fn next(&mut self) -> Option<(u64, u16)> {
        // A read that failed: the rest have no traits.
        match self.input.next()? {
            Ok(r) => Some((u64::from_le_bytes(r[..8].try_into().expect("8 bytes")), u16::from_le_bytes([r[8], r[9]]))),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

/// The low 64 bits of a path's blake3: the key of its traits.
pub fn path_key(path: &[u8]) -> u64 {
    u64::from_le_bytes(blake3::hash(path).as_bytes()[..8].try_into().expect("8 bytes"))
}

fn parent(path: &[u8]) -> &[u8] {
    path.iter().rposition(|&b| b == b'/').map_or(&[][..], |i| &path[..i])
}

fn name(path: &[u8]) -> &[u8] {
    path.iter().rposition(|&b| b == b'/').map_or(path, |i| &path[i + 1..])
}

/// A file name's extension, lowercased, if it is a short run of letters and digits (held
/// inline: every file has one looked up).
#[derive(Clone, Copy)]
pub struct Extension {
    bytes: [u8; 12],
    len: usize,
}

impl Extension {
    pub fn of(path: &[u8]) -> Option<Extension> {
        let name = name(path);
        let dot = name.iter().rposition(|&b| b == b'.').filter(|&i| i > 0)?;
        let ext = &name[dot + 1..];
        if ext.is_empty() || ext.len() > 12 || !ext.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        let mut bytes = [0; 12];
        bytes[..ext.len()].copy_from_slice(ext);
        bytes.make_ascii_lowercase();
        Some(Extension { bytes, len: ext.len() })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

/// Whether `text` names a Tor onion service: `.onion` after 16 or 56 base32 letters.
fn names_onion(text: &[u8]) -> bool {
    text.windows(6).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(b".onion")
            && i >= 16
            && text[..i].iter().rev().take_while(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')).count() >= 16
    })
}

impl Tally {
    /// The tally of a run of `job` (`first`: its first), reading the catalog in
    /// `state_dir`, with the extensions of the job's last judged run.
    pub fn new(
        job: &str,
        first: bool,
        state_dir: &std::path::Path,
        canaries: HashMap<Vec<u8>, String>,
        previous_extensions: HashSet<String>,
    ) -> anyhow::Result<Tally> {
        Ok(Tally {
            job: job.to_string(),
            first,
            state_dir: state_dir.to_path_buf(),
            catalog: None,
            canaries,
            sample: Vec::new(),
            reading: false,
            measures: Measures::default(),
            previous_extensions,
            dirs: HashSet::new(),
            last_dir: Vec::new(),
            dirs_hit: HashSet::new(),
            notes: HashMap::new(),
            read: Some(TraitLog::new(state_dir)?),
            error: None,
        })
    }

    /// The traits the last snapshot kept of the file at `path`, if it had one.
    fn previous_traits(&mut self, path: &[u8]) -> Option<Traits> {
        if self.catalog.is_none() {
            self.catalog = Catalog::open_existing(&self.state_dir).map_err(|e| self.failed(e)).ok();
        }
        match self.catalog.as_ref()?.cached_traits(&self.job, path) {
            Ok(t) => t.map(Traits::unpack),
            Err(e) => {
                self.failed(e);
                None
            }
        }
    }

    fn failed(&mut self, e: anyhow::Error) {
        self.error.get_or_insert_with(|| format!("cannot read the previous traits: {e:#}"));
    }

    /// Compares a changed file's traits with its previous version's (`before`).
    fn compare(&mut self, before: Option<Traits>, now: Traits, ext: Option<&str>) {
        let m = &mut self.measures;
        let contradicts = ext.is_some_and(|e| now.class.contradicts(e));
        let known_before = before.filter(|b| !matches!(b.class, Class::Binary | Class::Empty));
        if known_before.is_some() || ext.is_some_and(super::traits::promises) {
            m.typed += 1;
            if contradicts || known_before.is_some_and(|b| b.class != now.class && now.class != Class::Empty) {
                m.retyped += 1;
            }
        }
        // Text samples at 58–63 % (medians), Base64 at ~75 %, ciphertext at 95 % and more.
        if let (Some(was), Some(is)) = (before.and_then(|b| b.entropy), now.entropy)
            && was <= 70
        {
            m.low_entropy_before += 1;
            if is >= 73 && is >= was + 8 {
                m.high_entropy += 1;
            }
        }
    }

    /// A file of the previous snapshot that this one lacks.
    pub fn gone(&mut self, path: &[u8]) {
        let m = &mut self.measures;
        m.deleted += 1;
        let dir = path_key(parent(path));
        if self.dirs.contains(&dir) {
            m.deleted_in_kept_dirs += 1;
            self.dirs_hit.insert(dir);
        }
        if let Some(shown) = self.canaries.get(path) {
            m.canaries.push(format!("{shown} (gone)"));
        }
    }

    /// The first bytes of the file being read: the sample's first block.
    fn head(&self) -> &[u8] {
        &self.sample[..self.sample.len().min(BLOCK)]
    }

    /// A catalog read that failed during the walk (then the verdict cannot be trusted).
    pub fn take_error(&mut self) -> Option<String> {
        self.error.take()
    }

    /// For the file cache: the traits of the files read, in the order they were read.
    pub fn take_traits(&mut self) -> anyhow::Result<Option<TraitsRead>> {
        self.read.take().map(TraitLog::read_back).transpose()
    }

    /// The run's measures, once every file and every gone file was shown.
    pub fn finish(&mut self) -> Measures {
        let m = &mut self.measures;
        m.previous = m.files.saturating_sub(m.added) + m.deleted;
        m.dirs_hit = self.dirs_hit.len() as u64;
        m.notes = self.notes.values().copied().max().unwrap_or(0);
        m.canaries.sort();
        std::mem::take(m)
    }
}

impl Observer for Tally {
    fn chunk(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.sample.clear();
            self.reading = true;
        }
        let end = offset + data.len() as u64;
        // The blocks at 0, 1 MiB, 2 MiB…: a file encrypted in part is seen where it is.
        let mut block = offset / STRIDE * STRIDE;
        while block < end && self.sample.len() < MAX_BLOCKS * BLOCK {
            let from = block.max(offset);
            let to = (block + BLOCK as u64).min(end);
            if from < to {
                self.sample.extend_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            }
            block += STRIDE;
        }
    }

    fn file(&mut self, e: &Entry, change: Change<'_>) {
        self.measures.files += 1;
        let ext = Extension::of(&e.path);
        let ext = ext.as_ref().map(Extension::as_str);
        if let Some(ext) = ext {
            let n = self.measures.extensions.len();
            match self.measures.extensions.get_mut(ext) {
                Some(count) => *count += 1,
                None if n < MAX_EXTENSIONS => {
                    self.measures.extensions.insert(ext.to_string(), 1);
                }
                None => {}
            }
        }
        let dir = parent(&e.path);
        if dir != self.last_dir.as_slice() || self.dirs.is_empty() {
            self.dirs.insert(path_key(dir));
            self.last_dir = dir.to_vec();
        }
        let reading = std::mem::take(&mut self.reading);
        if matches!(change, Change::Unchanged) {
            return;
        }
        if let Some(shown) = self.canaries.get(&e.path) {
            self.measures.canaries.push(format!("{shown} (changed)"));
        }
        let now = match reading {
            true => Traits::of(&self.sample, BLOCK),
            false => Traits { class: Class::Empty, entropy: None },
        };
        if let Err(e) = self.read.as_mut().map_or(Ok(()), |log| log.push(path_key(&e.path), now.pack())) {
            self.error.get_or_insert_with(|| format!("cannot keep the traits of the files read: {e:#}"));
        }
        match change {
            Change::Unchanged => {}
            Change::Modified(before) => {
                self.measures.modified += 1;
                self.compare(before.traits.map(Traits::unpack), now, ext);
                if before.chunks.len() >= 4 {
                    self.measures.large += 1;
                    let old: HashSet<&ChunkId> = before.chunks.iter().collect();
                    if !e.chunks.iter().any(|c| old.contains(c)) && e.size.abs_diff(before.size) <= 4096 {
                        self.measures.rewritten += 1;
                    }
                }
            }
            Change::Added => {
                self.measures.added += 1;
                if self.first {
                    return;
                }
                if let Some(ext) = ext
                    && !self.previous_extensions.is_empty()
                    && !self.previous_extensions.contains(ext)
                {
                    self.measures.new_extension += 1;
                }
                // `a.txt.locked` where `a.txt` was: compared with what `a.txt` was.
                let stem = ext.as_ref().map(|x| &e.path[..e.path.len() - x.len() - 1]);
                let was = stem.and_then(|s| self.previous_traits(s));
                if was.is_some() {
                    self.measures.renamed += 1;
                }
                self.compare(was, now, ext);
                if e.size <= NOTE_MAX
                    && let Some(first) = e.chunks.first()
                {
                    let key = (name(&e.path).to_vec(), *first);
                    let n = self.notes.len();
                    match self.notes.get_mut(&key) {
                        Some(count) => *count += 1,
                        None if n < MAX_NOTES => {
                            self.notes.insert(key, 1);
                        }
                        None => {}
                    }
                    if reading && now.class == Class::Text && names_onion(self.head()) {
                        self.measures.onion += 1;
                    }
                }
            }
        }
    }
}

/// A tally shared between the run, which reads it after the walk, and its reader.
#[derive(Clone)]
pub struct Shared(pub std::sync::Arc<std::sync::Mutex<Tally>>);

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Observer for Shared {
    fn file(&mut self, e: &Entry, change: Change<'_>) {
        self.lock().file(e, change);
    }

    fn chunk(&mut self, offset: u64, data: &[u8]) {
        self.lock().chunk(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trait_log_reads_back_in_order() {
        let dir = std::env::temp_dir().join(format!("coffer-traits-{}", crate::hex::random(6)));
        let mut log = TraitLog::new(&dir).unwrap();
        for i in 0..1000u64 {
            log.push((i * 7) << 40, i as u16).unwrap();
        }
        let mut read = log.read_back().unwrap();
        let all: Vec<(u64, u16)> = read.by_ref().collect();
        assert_eq!(all.len(), 1000);
        assert!(all.iter().enumerate().all(|(i, &(k, t))| k == (i as u64 * 7) << 40 && t == i as u16));
        assert!(read.error.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn names_and_onions() {
        let ext = |p: &[u8]| Extension::of(p).map(|e| e.as_str().to_string());
        assert_eq!(ext(b"a/b/c.TXT").as_deref(), Some("txt"));
        assert_eq!(ext(b"a/.bashrc"), None);
        assert_eq!(ext(b"a.b/c"), None);
        assert_eq!(ext(b"x.tar.GZ").as_deref(), Some("gz"));
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert!(names_onion(b"pay at http://abcdefghijklmnop234567.onion/x"));
        assert!(!names_onion(b"the onion router"));
        assert!(!names_onion(b"x.onion"));
    }
}
