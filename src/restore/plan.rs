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
//! Chunk locations are kept compactly in memory, 32 bytes per chunk read (a terabyte in
//! 1 MiB chunks: ~32 MiB), so that the write pass makes no catalog query.

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
    /// Its first chunk read in [`Plan::locs`].
    pub first: usize,
}

#[derive(Default)]
pub struct Plan {
    /// Packs in order of first need: (hash, version). The index is the schedule position.
    pub packs: Vec<PackRef>,
    /// The selected files, in the order they are written.
    pub files: Vec<FileRef>,
    /// Every chunk read, file after file in that order: its location (`None`: in no pack
    /// the catalog knows), and the position of the next read from the same pack.
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
        entries_path: &Path,
        selection: &Selection,
        catalog: &Catalog,
        (target, made_with): (TargetId, &std::collections::HashSet<i64>),
        limits: &crate::format::entry::Limits,
    ) -> Result<Plan> {
        let mut plan = Plan::default();
        let mut check = TreeCheck::default();
        // Packs by first need in stream order, then chunk reads in stream order.
        let mut stream_packs: Vec<PackRef> = Vec::new();
        let mut pack_index: HashMap<String, u32> = HashMap::new();
        let mut reads: Vec<Option<Loc>> = Vec::new();
        // (order key, file, its first read and count in `reads`)
        let mut files: Vec<(u32, FileRef, usize)> = Vec::new();
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
            let first = reads.len();
            for id in &entry.chunks {
                reads.push(catalog.chunk_location(target, id, Some(made_with))?.map(|l| {
                    let pack = *pack_index.entry(l.pack_hash.clone()).or_insert_with(|| {
                        stream_packs.push((l.pack_hash, l.pack_version, l.pack_size));
                        (stream_packs.len() - 1) as u32
                    });
                    Loc { pack, offset: l.offset, length: l.length, raw_length: l.raw_length, flags: l.flags }
                }));
            }
            let key = reads[first..].iter().flatten().map(|l| l.pack).next().unwrap_or(0);
            files.push((key, FileRef { offset, len, first }, entry.chunks.len()));
        }
        drop(pack_index);
        files.sort_by_key(|(key, _, _)| *key);

        // Renumber the packs by first need in the write order, and link each read to
        // the next read of its pack.
        let mut renumbered: Vec<Option<u32>> = vec![None; stream_packs.len()];
        let mut last_read: Vec<Option<usize>> = Vec::new();
        plan.locs.reserve_exact(reads.len());
        plan.files.reserve_exact(files.len());
        for (_, file, count) in files {
            let start = plan.locs.len();
            for loc in &reads[file.first..file.first + count] {
                let loc = loc.map(|mut l| {
                    l.pack = *renumbered[l.pack as usize].get_or_insert_with(|| {
                        plan.packs.push(std::mem::take(&mut stream_packs[l.pack as usize]));
                        last_read.push(None);
                        (plan.packs.len() - 1) as u32
                    });
                    l
                });
                let position = plan.locs.len();
                if let Some(l) = &loc
                    && let Some(previous) = last_read[l.pack as usize].replace(position)
                {
                    plan.locs[previous].1 = position as u64;
                }
                plan.locs.push((loc, u64::MAX));
            }
            plan.files.push(FileRef { first: start, ..file });
        }
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
