//! What a restore will do, decided before it writes anything: one pass over the entry
//! stream checks every entry against the restore's rules (refused entries are named up
//! front), selects what `--path` asks for, and locates every chunk of the selected
//! files.
//!
//! Files are then put in the order of the pack that holds their first chunk (stable,
//! so a fresh snapshot keeps its walk order). A file whose data deduplicated against an
//! older one is written right after it, while that pack is still decoded in memory,
//! instead of fetching the pack again later. Packs are numbered by first need in that
//! order, and every chunk read knows when its pack is next needed, so the pack cache
//! can evict the one needed furthest ahead.
//!
//! Chunk locations are kept compactly in memory, 40 bytes per chunk read (a terabyte in
//! 1 MiB chunks: ~40 MiB), in stream order, so that the write pass makes no catalog
//! query. Files are reordered by a list of them (32 bytes a file while it is sorted,
//! then in a scratch file), not by copying their reads.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// A pack a restore reads: its hash, its version on the source target, and its recorded
/// size (the most the read may return).
pub type PackRef = (String, Option<String>, u64);

use anyhow::Result;

use std::os::unix::ffi::OsStrExt;

use crate::catalog::{Catalog, TargetId};
use crate::format::entry::{Entry, EntryReader, Kind};
use crate::format::entry_check::{Refused, TreeCheck};
use crate::spill::Spill;
use crate::state_dir::StateDir;

/// Where a chunk is: the pack's index in [`Plan::packs`] and its place in the pack.
#[derive(Debug, Clone, Copy)]
pub struct Loc {
    pub pack: u32,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    pub flags: u8,
}

/// How an entry relates to `--path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    /// Restored.
    Yes,
    /// A directory above a selected entry: created, and given its metadata.
    Ancestor,
}

/// What a restore restores: everything, or the entries under `--path`s, matching
/// `--include` globs (and what is under a match) and not `--exclude` ones (nor under a
/// match). Directories above a selected entry are created too ([`Selected::Ancestor`]).
#[derive(Default)]
pub struct Selection {
    paths: Vec<Vec<u8>>,
    include: Option<globset::GlobSet>,
    exclude: Option<globset::GlobSet>,
}

impl Selection {
    /// `paths` are relative to the snapshot's root; globs too.
    pub fn new(paths: Vec<Vec<u8>>, include: &[String], exclude: &[String]) -> Result<Selection> {
        let set = |globs: &[String], what: &str| -> Result<Option<globset::GlobSet>> {
            if globs.is_empty() {
                return Ok(None);
            }
            let mut b = globset::GlobSetBuilder::new();
            for g in globs {
                b.add(globset::Glob::new(g).map_err(|e| anyhow::anyhow!("--{what} `{g}`: {e}"))?);
            }
            Ok(Some(b.build()?))
        };
        Ok(Selection { paths, include: set(include, "include")?, exclude: set(exclude, "exclude")? })
    }

    /// Whether anything narrows the restore.
    pub fn narrows(&self) -> bool {
        !self.paths.is_empty() || self.include.is_some() || self.exclude.is_some()
    }

    /// Whether the entry at `path` is restored (its ancestors aside).
    pub fn selects(&self, path: &[u8]) -> bool {
        let at_or_below = |sub: &[u8]| path == sub || (path.starts_with(sub) && path.get(sub.len()) == Some(&b'/'));
        let prefixes = || {
            let ends = path.iter().enumerate().filter(|(_, b)| **b == b'/').map(|(i, _)| i).chain([path.len()]);
            ends.map(|i| Path::new(std::ffi::OsStr::from_bytes(&path[..i])))
        };
        (self.paths.is_empty() || self.paths.iter().any(|p| at_or_below(p)))
            && self.include.as_ref().is_none_or(|g| prefixes().any(|p| g.is_match(p)))
            && self.exclude.as_ref().is_none_or(|g| !prefixes().any(|p| g.is_match(p)))
    }
}

/// A selected file: where its line is in the entry stream, and its chunk reads.
#[derive(Debug, Clone, Copy)]
pub struct FileRef {
    /// The line, newline included.
    pub offset: u64,
    pub len: u64,
    /// Its first chunk read in [`Plan::locs`], and how many.
    pub first: usize,
    count: u32,
    /// The pack of its first chunk, by first need in stream order: the write order.
    order: u32,
}

/// A [`FileRef`] in the file list: offset, length, first read, reads.
const FILE_RECORD: usize = 28;

/// The selected files in the order they are written, in a scratch file: in memory they
/// took 32 bytes each, 32 MB at a million files, for the whole restore.
#[derive(Default)]
pub struct FileList {
    pub count: u64,
    records: Option<Spill<FILE_RECORD>>,
}

impl FileList {
    fn write(state: StateDir, files: &[FileRef]) -> Result<FileList> {
        let mut records = Spill::new(state, "restore-files")?;
        for f in files {
            let mut r = [0u8; FILE_RECORD];
            r[..8].copy_from_slice(&f.offset.to_le_bytes());
            r[8..16].copy_from_slice(&f.len.to_le_bytes());
            r[16..24].copy_from_slice(&(f.first as u64).to_le_bytes());
            r[24..].copy_from_slice(&f.count.to_le_bytes());
            records.push(&r)?;
        }
        Ok(FileList { count: files.len() as u64, records: Some(records) })
    }

    /// The files, in the order they are written (once: reading takes them).
    pub fn read(&mut self) -> Result<impl Iterator<Item = Result<FileRef>> + use<>> {
        let records = self.records.take().map(Spill::read_back).transpose()?;
        let u64_at = |r: &[u8], at: usize| u64::from_le_bytes(r[at..at + 8].try_into().expect("8 bytes"));
        Ok(records.into_iter().flatten().map(move |r| {
            let r = r.map_err(|e| anyhow::anyhow!("the restore's file list cannot be read back: {e}"))?;
            let count = u32::from_le_bytes(r[24..].try_into().expect("4 bytes"));
            Ok(FileRef { offset: u64_at(&r, 0), len: u64_at(&r, 8), first: u64_at(&r, 16) as usize, count, order: 0 })
        }))
    }
}

#[derive(Default)]
pub struct Plan {
    /// Packs in order of first need: (hash, version). The index is the schedule position.
    pub packs: Vec<PackRef>,
    /// The selected files, in the order they are written.
    pub files: FileList,
    /// Every chunk read, file after file in stream order: its location (`None`: in no
    /// pack the catalog knows), and when the next read from the same pack comes in the
    /// write order (how many reads come before it).
    pub locs: Vec<(Option<Loc>, u64)>,
    /// Stream positions of the entries the rules refuse.
    pub refused_at: HashSet<u64>,
    /// The refused entries, the first ones named (path and why), in stream order.
    pub refused: Refused,
    /// Bytes to restore (for progress).
    pub bytes: u64,
    /// Whether anything matched the selection.
    pub matched: bool,
    /// With a selection: the directories above a selected entry, created too.
    pub ancestors: HashSet<Vec<u8>>,
}

/// Most refusals kept by name; a forged stream may hold millions.
const REFUSALS_KEPT: usize = 1000;

impl Plan {
    /// `target`: where the packs are read from (their version ids there).
    pub fn make(
        (entries_path, state): (&Path, StateDir),
        selection: &Selection,
        catalog: &Catalog,
        (target, made_with): (TargetId, &std::collections::HashSet<i64>),
        limits: &crate::format::entry::Limits,
    ) -> Result<Plan> {
        let mut plan = Plan::default();
        let mut files = Vec::new();
        let mut check = TreeCheck::default();
        // Packs by first need in stream order.
        let mut stream_packs: Vec<PackRef> = Vec::new();
        let mut pack_index: HashMap<String, u32> = HashMap::new();
        let mut entries = EntryReader::with_limits(BufReader::new(File::open(entries_path)?), limits)?;
        let mut i = 0u64;
        loop {
            let offset = entries.offset();
            let Some(entry) = entries.next() else { break };
            let entry: Entry = entry?;
            let len = entries.offset() - offset;
            i += 1;
            if let Err(why) = check.check(&entry) {
                plan.refused_at.insert(i - 1);
                plan.refused.add(&entry.path, why, REFUSALS_KEPT);
                continue;
            }
            if !selection.selects(&entry.path) {
                continue;
            }
            plan.matched = true;
            if selection.narrows() {
                let mut parent = entry.path.as_slice();
                while let Some(cut) = parent.iter().rposition(|&b| b == b'/') {
                    parent = &parent[..cut];
                    if !plan.ancestors.insert(parent.to_vec()) {
                        break;
                    }
                }
            }
            if entry.kind != Kind::File {
                continue;
            }
            plan.bytes += entry.size;
            let first = plan.locs.len();
            for id in &entry.chunks {
                let loc = catalog.chunk_location(target, id, Some(made_with))?.map(|l| {
                    let pack = *pack_index.entry(l.pack_hash.clone()).or_insert_with(|| {
                        stream_packs.push((l.pack_hash, l.pack_version, l.pack_size));
                        (stream_packs.len() - 1) as u32
                    });
                    Loc { pack, offset: l.offset, length: l.length, raw_length: l.raw_length, flags: l.flags }
                });
                plan.locs.push((loc, u64::MAX));
            }
            let order = plan.locs[first..].iter().find_map(|(l, _)| l.map(|l| l.pack)).unwrap_or(0);
            let count = u32::try_from(entry.chunks.len())?;
            files.push(FileRef { offset, len, first, count, order });
        }
        drop((pack_index, check));
        // Stable: files of one pack keep their stream order (their lines' offsets).
        files.sort_unstable_by_key(|f| (f.order, f.offset));

        // Renumber the packs by first need in the write order, and link each read to
        // the next read of its pack.
        let mut renumbered: Vec<Option<u32>> = vec![None; stream_packs.len()];
        let mut last_read: Vec<Option<usize>> = Vec::new();
        let mut position = 0u64;
        for file in &files {
            for read in file.first..file.first + file.count as usize {
                if let Some(l) = &mut plan.locs[read].0 {
                    l.pack = *renumbered[l.pack as usize].get_or_insert_with(|| {
                        plan.packs.push(std::mem::take(&mut stream_packs[l.pack as usize]));
                        last_read.push(None);
                        (plan.packs.len() - 1) as u32
                    });
                    if let Some(previous) = last_read[l.pack as usize].replace(read) {
                        plan.locs[previous].1 = position;
                    }
                }
                position += 1;
            }
        }
        plan.files = FileList::write(state, &files)?;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_globs_select() {
        let all = Selection::default();
        assert!(all.selects(b"a/b") && !all.narrows());
        let path = Selection::new(vec![b"a/b".to_vec(), b"c".to_vec()], &[], &[]).unwrap();
        assert!(path.selects(b"a/b") && path.selects(b"a/b/c") && path.selects(b"c/d"));
        assert!(!path.selects(b"a") && !path.selects(b"a/bc") && !path.selects(b"b"));
        let include = Selection::new(vec![], &["*.html".into(), "docs".into()], &[]).unwrap();
        assert!(include.selects(b"www/index.html") && include.selects(b"docs/a/b.txt"));
        assert!(!include.selects(b"www/app.js") && !include.selects(b"www"));
        let exclude = Selection::new(vec![b"www".to_vec()], &[], &["**/cache".into()]).unwrap();
        assert!(exclude.selects(b"www/a.js") && !exclude.selects(b"www/x/cache/1.bin"));
        assert!(Selection::new(vec![], &["a[".into()], &[]).is_err());
    }
}
