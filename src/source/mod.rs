//! Sources: what a job backs up. A directory tree is walked; git repositories are
//! mirrored and their mirrors walked; a command's output is streamed as one file; a
//! bucket's objects are listed and streamed as files under their keys.

pub mod bucket;
pub mod command;
pub mod git;
pub mod path;

use serde::{Deserialize, Serialize};

/// What a snapshot's source contained beyond its files: recorded in the snapshot record
/// and the catalog, shown by `coffer snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Contents {
    Git { repos: Vec<git::RepoState> },
    Command(command::CommandState),
    Bucket(bucket::BucketState),
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
