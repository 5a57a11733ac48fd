//! What a snapshot record stores of its source beyond the files (`contents` in the
//! snapshot record v1): a format, so its types live here, where a change to a source
//! cannot change them unseen.

use serde::{Deserialize, Serialize};

/// What a snapshot's source contained beyond its files: recorded in the snapshot record
/// and the catalog, shown by `coffer snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Contents {
    Git { repos: Vec<RepoState> },
    Command(CommandState),
    Bucket(BucketState),
}

impl Contents {
    /// One line for the snapshot table.
    pub fn summary(&self) -> String {
        match self {
            Contents::Git { repos } => {
                let refs: usize = repos.iter().map(|r| r.refs.len()).sum();
                let failed = repos.iter().filter(|r| r.error.is_some()).count();
                let mut s = format!("{} repos, {refs} refs", repos.len());
                if failed > 0 {
                    s.push_str(&format!(", {failed} not fetched"));
                }
                s
            }
            Contents::Command(c) => format!("{} {}", c.file, crate::progress::bytes(c.bytes)),
            Contents::Bucket(b) => format!("{} objects", b.objects),
        }
    }
}

/// What a snapshot records of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    /// The directory in the snapshot (`<name>.git`).
    pub dir: String,
    /// The URL, with any password replaced by `***`.
    pub url: String,
    /// Where HEAD points (`refs/heads/main`), when it is symbolic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// Every ref with its object id, as `git for-each-ref` lists them.
    pub refs: Refs,
    /// Why the fetch failed; the mirror in the snapshot is then the last good one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every ref with its object id: `(ref, object id)` pairs.
pub type Refs = Vec<(String, String)>;

/// What a snapshot records of the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandState {
    pub program: String,
    pub file: String,
    pub bytes: u64,
}

/// What a snapshot records of the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketState {
    pub url: String,
    pub objects: u64,
}
