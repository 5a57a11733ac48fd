//! Which entries of an entry stream a restore refuses, and why.
//!
//! Root on the backup host holds the repository secret, so a snapshot whose MAC verifies
//! may still be forged. Its entry stream is checked as a whole before a restore writes
//! anything, and by `verify --read-data` and `recover`. A stream coffer wrote passes
//! every rule: each path is a clean relative path, appears once, and its parent came
//! before it as a directory (walks list a directory before its contents; bucket sources
//! list the directories that keys imply). An entry breaking a rule would write through a
//! symlink of the snapshot, over another entry, or outside the destination: it is
//! refused and named, and the entries below it are refused with it.
//!
//! The restore's file-system layer does not rely on this check: it never follows a
//! symlink whatever the stream says. The check is what lets the restore, verify and
//! recover say that a snapshot is hostile, and skip its entries cleanly.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::entry::{Entry, Kind, safe_relative};

/// The longest file name Linux file systems take (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Why an entry is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Absolute, empty, with `.`, `..` or empty components, or with a NUL byte.
    UnsafePath,
    /// The same path appeared earlier in the stream.
    Duplicate,
    /// An ancestor is a symlink of the snapshot: writing it would go through the link.
    ThroughSymlink { link: String },
    /// An ancestor is a regular file of the snapshot.
    UnderFile { file: String },
    /// Its directory does not appear before it (or was itself refused).
    Orphan { parent: String },
    /// A symlink with no target, or a target with a NUL byte.
    BadSymlink,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnsafePath => f.write_str("unsafe path (absolute, `..`, empty component or NUL): would escape"),
            Refusal::Duplicate => f.write_str("duplicate path: would replace an entry of the same snapshot"),
            Refusal::ThroughSymlink { link } => write!(f, "would write through the snapshot's symlink `{link}`"),
            Refusal::UnderFile { file } => write!(f, "its parent `{file}` is a file of the snapshot"),
            Refusal::Orphan { parent } => write!(f, "its directory `{parent}` does not come before it in the snapshot"),
            Refusal::BadSymlink => f.write_str("symlink without a valid target"),
        }
    }
}

impl Refusal {
    /// A short name for reports and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::UnsafePath => "unsafe-path",
            Refusal::Duplicate => "duplicate",
            Refusal::ThroughSymlink { .. } => "through-symlink",
            Refusal::UnderFile { .. } => "under-file",
            Refusal::Orphan { .. } => "orphan",
            Refusal::BadSymlink => "bad-symlink",
        }
    }
}

/// The rules, applied to a stream one entry at a time.
///
/// Each accepted entry is remembered by a 128-bit keyed hash of its path: a directory
/// or symlink with its kind (about 32 bytes), a file in 16 bytes ([`Ids`]); so a
/// stream of a million files costs about 17 MiB to check. The key is random per check,
/// so a forger cannot aim collisions at it; a collision could only refuse a harmless
/// entry, never admit a harmful one to the file system.
pub struct TreeCheck {
    key: [u8; 32],
    /// Directories and symlinks.
    seen: HashMap<u128, Kind>,
    files: Ids,
}

impl Default for TreeCheck {
    fn default() -> Self {
        let mut key = [0u8; 32];
        // A fixed key would only weaken the collision argument, never safety.
        let _ = getrandom::fill(&mut key);
        TreeCheck { key, seen: HashMap::new(), files: Ids::default() }
    }
}

/// A set of 128-bit ids in 16 bytes each: a sorted run, and the latest ids in a small
/// hash set that is merged into the run when full. (A hash map of every entry took
/// 69 MB at a million.)
#[derive(Default)]
struct Ids {
    sorted: Vec<u128>,
    recent: HashSet<u128>,
}

impl Ids {
    /// The most ids held in the hash set (about 2 MiB).
    const RECENT: usize = 1 << 16;

    fn contains(&self, id: u128) -> bool {
        self.recent.contains(&id) || self.sorted.binary_search(&id).is_ok()
    }

    fn insert(&mut self, id: u128) {
        self.recent.insert(id);
        if self.recent.len() >= Self::RECENT {
            let mut new: Vec<u128> = self.recent.drain().collect();
            new.sort_unstable();
            // Merged from the back, in place: each id moves once.
            let mut i = self.sorted.len();
            self.sorted.resize(i + new.len(), 0);
            for k in (0..self.sorted.len()).rev() {
                let take_old = i > 0 && new.last().is_none_or(|&n| self.sorted[i - 1] > n);
                self.sorted[k] = match take_old {
                    true => {
                        i -= 1;
                        self.sorted[i]
                    }
                    false => new.pop().expect("ids left to merge"),
                };
                if new.is_empty() {
                    break;
                }
            }
        }
    }
}

impl TreeCheck {
    fn id(&self, path: &[u8]) -> u128 {
        let h = blake3::keyed_hash(&self.key, path);
        u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
    }

    /// The kind of the accepted entry with this id, if any.
    fn kind(&self, id: u128) -> Option<Kind> {
        self.seen.get(&id).copied().or_else(|| self.files.contains(id).then_some(Kind::File))
    }

    /// Checks the next entry of the stream: `Err` when a restore must refuse it.
    pub fn check(&mut self, e: &Entry) -> Result<(), Refusal> {
        if !safe_relative(&e.path) {
            return Err(Refusal::UnsafePath);
        }
        if e.kind == Kind::Symlink && e.target.as_ref().is_none_or(|t| t.is_empty() || t.contains(&0)) {
            return Err(Refusal::BadSymlink);
        }
        let id = self.id(&e.path);
        if self.kind(id).is_some() {
            return Err(Refusal::Duplicate);
        }
        if let Some(cut) = e.path.iter().rposition(|&b| b == b'/') {
            let parent = &e.path[..cut];
            let name = || crate::escape::printable(parent);
            match self.kind(self.id(parent)) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => return Err(Refusal::ThroughSymlink { link: name() }),
                Some(Kind::File) => return Err(Refusal::UnderFile { file: name() }),
                None => return Err(Refusal::Orphan { parent: name() }),
            }
        }
        match e.kind {
            Kind::File => self.files.insert(id),
            kind => drop(self.seen.insert(id, kind)),
        }
        Ok(())
    }
}

/// The refused entries of a stream: the first `limit` by name, and how many in all (a
/// forged stream may hold millions).
#[derive(Debug, Default)]
pub struct Refused {
    pub named: Vec<(Vec<u8>, Refusal)>,
    pub total: u64,
}

impl Refused {
    pub fn add(&mut self, path: &[u8], why: Refusal, limit: usize) {
        self.total += 1;
        if self.named.len() < limit {
            self.named.push((path.to_vec(), why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &[u8], kind: Kind) -> Entry {
        let mut e = Entry::synthetic(path.to_vec(), kind, 0o644, 0);
        if kind == Kind::Symlink {
            e.target = Some(b"/etc".to_vec());
        }
        e
    }

    /// Runs a stream through the check: the refused paths with their kind.
    fn refused(stream: &[Entry]) -> Vec<(String, &'static str)> {
        let mut c = TreeCheck::default();
        stream
            .iter()
            .filter_map(|x| c.check(x).err().map(|r| (String::from_utf8_lossy(&x.path).into_owned(), r.kind())))
            .collect()
    }

    #[test]
    fn ids_merged_into_the_sorted_run_are_all_found() {
        let mut ids = Ids::default();
        let id = |n: u64| u128::from_le_bytes(blake3::hash(&n.to_le_bytes()).as_bytes()[..16].try_into().unwrap());
        let n = 3 * Ids::RECENT as u64 + 5;
        for i in 0..n {
            assert!(!ids.contains(id(i)));
            ids.insert(id(i));
        }
        assert_eq!(ids.sorted.len(), 3 * Ids::RECENT, "three merges");
        assert!(ids.sorted.is_sorted());
        assert!((0..n).all(|i| ids.contains(id(i))));
        assert!(!(n..n + 1000).any(|i| ids.contains(id(i))));
    }

    #[test]
    fn what_coffer_writes_passes() {
        use Kind::*;
        // A walk's order: a directory's children together, then its subdirectories.
        let walk = [e(b"a", Dir), e(b"b", Dir), e(b"l", Symlink), e(b"top", File), e(b"a/1", File), e(b"b/c", Dir)];
        assert!(refused(&walk).is_empty());
        // A bucket's order: implied directories just before the first key under them.
        let bucket = [e(b"x", Dir), e(b"x/y", Dir), e(b"x/y/o", File), e(b"x/z", File), e(b"zz", File)];
        assert!(refused(&bucket).is_empty());
    }

    /// A stream, and the paths refused with their kind.
    type Case<'a> = (&'a [Entry], &'a [(&'a str, &'a str)]);

    #[test]
    fn forged_streams_are_refused() {
        use Kind::*;
        let cases: &[Case] = &[
            (&[e(b"a", Symlink), e(b"a/x", File)], &[("a/x", "through-symlink")]),
            (&[e(b"a", Symlink), e(b"a", Dir)], &[("a", "duplicate")]),
            (
                &[e(b"a", Symlink), e(b"a/b", Symlink), e(b"a/b/c", File)],
                &[("a/b", "through-symlink"), ("a/b/c", "orphan")],
            ),
            (&[e(b"d", Dir), e(b"d", File)], &[("d", "duplicate")]),
            (&[e(b"f", File), e(b"f/x", File)], &[("f/x", "under-file")]),
            (&[e(b"n/x", File), e(b"n", Dir)], &[("n/x", "orphan")]),
            (
                &[e(b"/etc/passwd", File), e(b"../x", File), e(b"a\0b", File), e(b"a//b", File)],
                &[
                    ("/etc/passwd", "unsafe-path"),
                    ("../x", "unsafe-path"),
                    ("a\0b", "unsafe-path"),
                    ("a//b", "unsafe-path"),
                ],
            ),
        ];
        for (stream, want) in cases {
            let want: Vec<(String, &str)> = want.iter().map(|(p, k)| (p.to_string(), *k)).collect();
            assert_eq!(refused(stream), want);
        }
        let mut dangling = e(b"l", Symlink);
        dangling.target = Some(Vec::new());
        assert_eq!(refused(&[dangling]), [("l".to_string(), "bad-symlink")]);
    }
}
