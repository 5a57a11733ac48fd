//! Sources: what a job backs up. A directory tree is walked; git repositories are
//! mirrored and their mirrors walked; a command's output is streamed as one file; a
//! bucket's objects (S3, Azure Blob) are listed and streamed as files under their keys.
//!
//! Each kind lives in one file that owns its config table, its preparation, and the
//! identity its fast path compares; it is registered by one line in [`KINDS`]. What a
//! kind hands the backup is one of three shapes ([`Input`]): a tree, a stream, or a
//! bucket's objects. The backup (dedup, chunking, the entry stream) knows only those.

pub mod azure;
pub mod bucket;
pub mod command;
pub mod git;
pub mod path;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};

use crate::format::contents::Contents;
use crate::format::snapshot::EntryError;

/// Every source kind, by the key that selects it in `source = { KEY = … }`.
pub const KINDS: &[Kind] = &[path::KIND, git::KIND, command::KIND, bucket::KIND, azure::KIND];

/// One kind of source: the key that selects it, its form as the config error shows it,
/// and how its table is read (strictly: an unknown key is an error).
pub struct Kind {
    pub key: &'static str,
    pub form: &'static str,
    pub parse: Parse,
}

/// Reads a kind's table into its source, or says what is wrong with it.
pub type Parse = fn(toml::Table, &Resolve<'_>) -> Result<Arc<dyn Source>, String>;

/// Resolves a path written in the config against the config file's directory.
pub type Resolve<'a> = dyn Fn(&Path) -> PathBuf + 'a;

/// A configured source.
pub trait Source: fmt::Display + fmt::Debug + Send + Sync {
    /// The environment variables holding its credentials: a job's children never get them.
    fn secret_vars(&self) -> Vec<&str> {
        Vec::new()
    }

    /// What it lacks on this host before a run, one line per problem (the preflight):
    /// by default, its credentials' variables that are not set.
    fn check(&self) -> Vec<String> {
        unset_vars(&self.secret_vars())
    }

    /// What it cannot read right now but may by its next fire time (a directory not
    /// mounted yet): warned about, so that a daemon never refuses to start over it.
    fn unavailable(&self) -> Vec<String> {
        Vec::new()
    }

    /// Makes it ready to read: fetches the mirrors, starts the command, lists the bucket.
    fn prepare(&self, job: &JobContext) -> Result<Prepared>;

    /// The trees `backup --dry-run` may walk to say what a run would read: a path
    /// source's, which walking does not change. Other kinds know only when they run (a
    /// fetch, a command, a listing): `None`.
    fn trees(&self, job: &JobContext) -> Option<Result<Vec<path::TreeRoot>>> {
        let _ = job;
        None
    }

    /// The path in the snapshot of the file at `path` (absolute, no `..`), if this source
    /// reads it: where a canary is looked for.
    fn stored_path(&self, path: &Path) -> Option<Vec<u8>> {
        let _ = path;
        None
    }

    /// For `restore --to-bucket URL`: the bucket at `url`, opened with this source's
    /// endpoint and credentials, to write the snapshot's objects back to.
    fn origin(&self, url: &str) -> Result<bucket::Bucket> {
        let _ = url;
        bail!("this job backs up a {self}, not a bucket")
    }
}

/// "environment variable V (the source's credentials) is not set", for each unset `vars`.
pub fn unset_vars(vars: &[&str]) -> Vec<String> {
    vars.iter()
        .filter(|v| crate::env::var_os(v).is_none_or(|x| x.is_empty()))
        .map(|v| format!("environment variable {v} (the source's credentials) is not set"))
        .collect()
}

/// Whether `program` can be started: a path to an executable, or a name found in PATH.
pub fn findable(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return executable(Path::new(program));
    }
    crate::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| executable(&d.join(program))))
}

/// What a source needs to know about the job that backs it up.
pub struct JobContext<'a> {
    pub name: &'a str,
    pub exclude: &'a [String],
    /// Directories holding one of these names are left out whole.
    pub exclude_if_present: &'a [String],
    /// Directories with a valid CACHEDIR.TAG are left out whole.
    pub exclude_caches: bool,
    /// Mount points inside the tree are kept as empty directories, not entered.
    pub one_file_system: bool,
    /// The environment its children (a command source) get.
    pub env: &'a crate::process::ChildEnv,
    pub state: crate::state_dir::StateDir<'a>,
}

/// A source made ready to read.
pub struct Prepared {
    pub input: Input,
    /// What the snapshot records about the source beyond its files.
    pub contents: Option<Contents>,
    /// Parts of the source that could not be had (a repository that failed to fetch).
    pub errors: Vec<EntryError>,
    /// A started command: its exit decides whether the read counts.
    pub command: Option<command::Running>,
}

impl Prepared {
    /// A directory tree, at the snapshot's root, and nothing else.
    pub fn tree(root: PathBuf, excludes: path::Excludes) -> Prepared {
        Prepared::trees(vec![path::TreeRoot { path: root, under: PathBuf::new(), excludes }])
    }

    /// Directory trees, each under its own name, and nothing else.
    pub fn trees(roots: Vec<path::TreeRoot>) -> Prepared {
        Prepared { input: Input::Tree { roots }, contents: None, errors: Vec::new(), command: None }
    }
}

/// What the backup reads, in one of three shapes.
// One Input per run: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// Directory trees (a path source's, or a job's git mirrors).
    Tree { roots: Vec<path::TreeRoot> },
    /// One file whose bytes come from a stream (a command's stdout).
    Stream { name: String, data: std::process::ChildStdout },
    /// A bucket's objects, listed, each streamed unless unchanged.
    Objects { bucket: bucket::Bucket, objects: Vec<bucket::Object> },
}

/// Reads a `source = { … }` table: the one kind whose key it holds, strictly.
pub fn parse(table: toml::Table, resolve: &Resolve<'_>) -> Result<Arc<dyn Source>, String> {
    let mut kinds = KINDS.iter().filter(|k| table.contains_key(k.key));
    match (kinds.next(), kinds.next()) {
        (Some(kind), None) => (kind.parse)(table, resolve),
        _ => {
            let forms: Vec<&str> = KINDS.iter().map(|k| k.form).collect();
            Err(format!("expected one of {}", forms.join(", ")))
        }
    }
}

/// A kind's table as its own strict type (`#[serde(deny_unknown_fields)]`); an unknown
/// key is named with the kind it does not belong to.
pub fn table<T: serde::de::DeserializeOwned>(table: toml::Table, kind: &str) -> Result<T, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| format!("a {kind} source: {}", e.message().trim()))
}
